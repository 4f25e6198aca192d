"""How the benchmark scripts write their JSON: the date, then the figures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def write_result(path: Path | None, **figures: Any) -> None:
    """Write `figures` to `path` as JSON with the date of the run (nothing when no path)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **figures},
                               indent=2) + "\n")
