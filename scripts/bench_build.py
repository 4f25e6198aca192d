"""Scale benchmark: an Amazon-shaped log from CSV to a published bundle, against implicit ALS.

Generates the log (4.2M users, 476k items, 7.8M events by default) unless it exists, runs
`svdfaiss build` in a child process (wall time and that child's peak RSS), then factorizes
the same weighted matrix with implicit's ALS (64 factors, 15 iterations) in another child,
and measures recall@10 of the built bundle's approximate indexes against exact search.
Prints a table and writes JSON. Needs the bench extra: pip install -e ".[bench]".

    python scripts/bench_build.py --work /tmp/svdfaiss-bench --json bench-results/build.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_child(cmd: list[str]) -> dict[str, Any]:
    """Run a command; its wall seconds, peak RSS (GB) and exit code."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2),
            "stdout": stdout}


ALS_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from svdfaiss.data import read_log, build_interactions
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_rows
t = time.perf_counter()
inter = build_interactions(read_log(Path(sys.argv[1])))
scale, mean = item_column_scale(inter.matrix, "log", 0.0)
x = weight_rows(inter.matrix, WeightingParams("log", mean_row_length=mean), scale)
prepare = time.perf_counter() - t
from implicit.cpu.als import AlternatingLeastSquares
model = AlternatingLeastSquares(factors=64, iterations=15, random_state=0,
                                calculate_training_loss=False)
t = time.perf_counter()
model.fit(x, show_progress=False)
print(json.dumps({"prepare_s": round(prepare, 2), "fit_s": round(time.perf_counter() - t, 2)}))
"""

RECALL_CHILD = r"""
import json, sys
import numpy as np
from pathlib import Path
from svdfaiss.recommender import Recommender
from svdfaiss.index import exact_top_k, normalize_rows
from svdfaiss.data import decode_ids
rec = Recommender.load(Path(sys.argv[1]), sys.argv[2])
n = int(sys.argv[3])
rng = np.random.default_rng(0)
out = {}
items = rng.choice(rec.n_items, n, replace=False)
vectors = np.asarray(rec.item_vectors)
hits = 0
for i in items:
    got = rec.similar_items(decode_ids(rec.item_ids[i:i + 1])[0], 10)
    mask = np.ones(rec.n_items, bool); mask[i] = False
    scores, _ = exact_top_k(vectors[mask], vectors[i], 10)
    hits += sum(s >= scores[-1] - 1e-5 for s in got.scores)
out["similar_items"] = hits / (10 * n)
users = rng.choice(rec.n_users, n, replace=False)
factors = np.asarray(rec.item_factors)
hits = 0
for u in users:
    got = rec.recommend(decode_ids(rec.user_ids[u:u + 1])[0], 10)
    scores = factors @ rec.user_vector(u)
    scores[rec.seen_items(u)] = -np.inf
    kth = np.sort(scores)[-10]
    hits += sum(s >= kth - 1e-5 for s in got.scores)
out["recommend"] = hits / (10 * n)
if "users" in rec.manifest["indexes"]:
    hits = 0
    everyone = rec._users.exact_vectors(None)
    for u in users[: max(10, n // 5)]:
        got = rec.similar_users(decode_ids(rec.user_ids[u:u + 1])[0], 10)
        sims = everyone @ everyone[u]
        sims[u] = -np.inf
        kth = np.sort(sims)[-10]
        hits += sum(s >= kth - 1e-5 for s in got.scores)
    out["similar_users"] = hits / (10 * max(10, n // 5))
print(json.dumps({k: round(v, 4) for k, v in out.items()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--users", type=int, default=4_200_000)
    parser.add_argument("--items", type=int, default=476_000)
    parser.add_argument("--events", type=int, default=7_800_000)
    parser.add_argument("--single-event-share", type=float, default=0.7)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--skip-als", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = args.work / f"amazon-shaped-{args.users}-{args.items}-{args.events}"
    events = data / "events.csv"
    if not events.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdfaiss", "synth", "--out", str(data),
                        "--users", str(args.users), "--items", str(args.items),
                        "--events", str(args.events), "--categories", "20",
                        "--single-event-share", str(args.single_event_share)], check=True)
        print(f"generated {events} in {time.perf_counter() - t:.1f} s")
    index_dir = args.work / "indexes"
    build = run_child([sys.executable, "-m", "svdfaiss", "build", str(events), "--model",
                       "amazon", "--out", str(index_dir), "--json"])
    manifest = json.loads(build.pop("stdout"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus",
        "input": {"path": str(events), "bytes": events.stat().st_size, "rows": args.events},
        "shape": manifest["counts"],
        "svdfaiss_build": {**build, "stages_s": manifest["timings_seconds"]},
        "indexes": {k: {"type": v["type"], "rows": v["rows"], "params": v["params"]}
                    for k, v in manifest["indexes"].items()},
    }
    if not args.skip_als:
        als = run_child([sys.executable, "-c", ALS_CHILD, str(events)])
        result["implicit_als_64f_15it"] = {**json.loads(als.pop("stdout")), **als}
    recall = run_child([sys.executable, "-c", RECALL_CHILD, str(index_dir), "amazon",
                        str(args.recall_queries)])
    result["recall_at_10_vs_exact"] = json.loads(recall["stdout"])

    b = result["svdfaiss_build"]
    print(f"\nAmazon-shaped log: {manifest['counts']['users']:,} users x "
          f"{manifest['counts']['items']:,} items, {args.events:,} events")
    print(f"{'':34}{'seconds':>10}{'peak RSS GB':>14}")
    print(f"{'svdfaiss build, CSV to bundle':34}{b['wall_s']:>10.1f}{b['peak_rss_gb']:>14.2f}")
    for stage, secs in b["stages_s"].items():
        print(f"{'  ' + stage:34}{secs:>10.1f}")
    if "implicit_als_64f_15it" in result:
        a = result["implicit_als_64f_15it"]
        fact = b["stages_s"]["factorize"]
        print(f"{'implicit ALS fit (64 f, 15 it)':34}{a['fit_s']:>10.1f}{a['peak_rss_gb']:>14.2f}")
        print(f"{'svdfaiss factorize (k=64)':34}{fact:>10.1f}")
        print(f"ratio ALS fit / svdfaiss factorize: {a['fit_s'] / fact:.2f}x")
    print("recall@10 against exact:", result["recall_at_10_vs_exact"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
