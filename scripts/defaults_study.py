"""How the build defaults compare with the best setting `svdfaiss tune` finds, per dataset.

Reads `svdfaiss tune --json` results and prints, for chosen settings, the validation NDCG@10
as a share of the best trial on each dataset, and the worst share across datasets (the
figure a default must keep high). Settings given as k:weighting:shrinkage; "defaults" means
what `svdfaiss build` picks without flags for that dataset (auto k and auto weighting).

    python scripts/defaults_study.py docs/results/tune-*.json --feedback explicit explicit implicit
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from svdfaiss.builder import AUTO_K_SMALL, DEFAULT_SHRINKAGE


def share(trials: list[dict[str, Any]], k: int, weighting: str, shrinkage: float) -> float:
    best = max(t["ndcg@10"] for t in trials)
    for t in trials:
        if (t["k"], t["weighting"], t["shrinkage"], t["beta"]) == (k, weighting, shrinkage, 0):
            return float(t["ndcg@10"] / best)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--feedback", nargs="+", required=True,
                        help="explicit or implicit, one per results file (auto weighting).")
    parser.add_argument("--setting", action="append", default=[],
                        help="k:weighting:shrinkage (repeatable).")
    args = parser.parse_args()
    runs = {path.stem.removeprefix("tune-"): json.loads(path.read_text())["validation"]
            for path in args.results}
    settings: list[tuple[str, list[tuple[int, str, float]]]] = []
    defaults = [(AUTO_K_SMALL, "none" if fb == "explicit" else "log", DEFAULT_SHRINKAGE)
                for fb in args.feedback]
    settings.append(("defaults (auto k and weighting, shrinkage "
                     f"{DEFAULT_SHRINKAGE:g})", defaults))
    for text in args.setting:
        k, weighting, shrinkage = text.split(":")
        settings.append((text, [(int(k), weighting, float(shrinkage))] * len(runs)))
    names = list(runs)
    print(f"{'setting':48}" + "".join(f"{n[:22]:>24}" for n in names) + f"{'worst':>8}")
    rows = []
    for label, per_dataset in settings:
        shares = [share(runs[n], *s) for n, s in zip(names, per_dataset, strict=True)]
        rows.append({"setting": label, "shares": dict(zip(names, shares, strict=True)),
                     "worst": min(shares)})
        print(f"{label:48}" + "".join(f"{v:>24.3f}" for v in shares) + f"{min(shares):>8.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
