"""What the build's own tuning costs: `svdfaiss build LOG` (auto-tuned) against
`svdfaiss build LOG --no-tune`, in child processes, alternated on each log so both see the
same machine load; wall seconds (median of --repeat runs), the tune stage's seconds and what
it chose. Prints a table and writes JSON.

    python scripts/bench_tune.py ../shared/data/ml-latest-small/ratings.csv \
        ../shared/data/amazon-electronics-sample/ratings_Electronics.csv \
        /tmp/tune-1m/events.csv --json docs/results/build-tuning.json

(/tmp/tune-1m/events.csv: `svdfaiss synth --out /tmp/tune-1m --users 50000 --items 20000
--events 1000000`.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"


def build_once(log: Path, out: Path, tune: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "svdfaiss", "build", str(log), "--out", str(out),
           "--model", "bench", "--json", *([] if tune else ["--no-tune"])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads(proc.stdout)
    return {"wall_s": round(wall, 2), "tune_s": manifest["timings_seconds"].get("tune", 0.0),
            "stages_s": round(sum(manifest["timings_seconds"].values()), 2),
            "tuning": {k: manifest["tuning"].get(k) for k in (
                "status", "reason", "chosen", "validation_ndcg@10",
                "defaults_validation_ndcg@10")},
            "interactions": manifest["counts"]["interactions"],
            "shape": [manifest["counts"]["users"], manifest["counts"]["items"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, nargs="+")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for log in args.logs:
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tuned": []}
            for _ in range(args.repeat):
                runs["plain"].append(build_once(log, Path(tmp), tune=False))
                runs["tuned"].append(build_once(log, Path(tmp), tune=True))
            plain = round(statistics.median(r["wall_s"] for r in runs["plain"]), 2)
            tuned = round(statistics.median(r["wall_s"] for r in runs["tuned"]), 2)
            last = runs["tuned"][-1]
            row = {"log": str(log), "interactions": last["interactions"],
                   "shape": last["shape"], "plain_wall_s": plain, "tuned_wall_s": tuned,
                   "ratio": round(tuned / plain, 2),
                   "tune_stage_s": round(statistics.median(r["tune_s"] for r in runs["tuned"]),
                                         2),
                   "tuning": last["tuning"], "runs": runs}
            rows.append(row)
            print(f"{log.name}: {row['interactions']:,} interactions, plain {plain:.1f} s, "
                  f"auto-tuned {tuned:.1f} s ({row['ratio']:.2f}x; tune stage "
                  f"{row['tune_stage_s']:.1f} s), {last['tuning']['status']}: "
                  f"{last['tuning']['chosen']}", flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version()}, "repeat": args.repeat, "logs": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
