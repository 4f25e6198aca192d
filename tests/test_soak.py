"""The soak script's short version: a minute of paced traffic with reloads, nothing lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


@pytest.mark.slow
def test_a_one_minute_soak_with_reloads_loses_no_request_and_keeps_rss_flat(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "60", "--rate", "300",
                          "--reload-every", "15", "--json", str(out)],
                         capture_output=True, text=True, timeout=400)
    report = json.loads(out.read_text())
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["requests"]["sent"] == 18_000
    assert report["requests"]["errors"] == 0 and report["server_errors"] == 0
    assert report["unexpected_statuses"] == 0
    assert len(report["reloads"]) >= 3 and report["failed_reloads"] == 0
    assert {r["to"] for r in report["reloads"]} == {"soak-a", "soak-b"}
    assert report["rss_flat"], report["rss_mb_over_time"]
    # A tenth of the mix is POST /events, each acknowledged only once fsynced.
    assert report["events_logged"] == report["requests"]["sent"] // 10
