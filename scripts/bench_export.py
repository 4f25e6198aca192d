"""Export benchmark: `svdfaiss export recommendations` against the HTTP route, same run.

On the generated 1M-item bundle of scripts/bench_service.py (same generator and build
flags), each round:
- exports the recommendations (k 10) of a fixed random sample of users to Parquet,
  in-process through svdfaiss.export (batched FAISS searches), timed from the first chunk
  to the renamed file; users/s;
- asks `svdfaiss serve` (one worker, 127.0.0.1, default settings: the fast path) for the
  same users' `GET /users/{id}/recommendations?k=10` under wrk (32 connections, one wrk
  thread, --duration seconds), requests/s, and the same with SVDFAISS_FAST_PATH=false
  (every request through the FastAPI route).
The ratio is export users/s over HTTP requests/s, per round, median over rounds. Both share
the machine's two cores with wrk and whatever else runs. Needs `wrk` (Debian package).
Prints a table and writes JSON.

    python scripts/bench_export.py --work /tmp/svdfaiss-bench --json docs/results/export-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from bench_service import (  # noqa: E402
    BUILD_ARGS,
    EVENTS,
    ITEMS,
    USERS,
    ensure_bundle,
    lua_script,
    start,
    stop,
    wrk,
)
from serving import free_port, wait_ready  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--build-args", default=BUILD_ARGS)
    parser.add_argument("--export-users", type=int, default=200_000,
                        help="users exported each round (a fixed random sample)")
    parser.add_argument("--duration", type=int, default=8, help="wrk seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    index_dir, model = ensure_bundle(args.work, args.items, args.users, args.events,
                                     args.build_args)

    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from svdfaiss.export import export_recommendations
    from svdfaiss.recommender import Recommender

    faiss.omp_set_num_threads(1)  # as the service sets it: one core each, side by side
    rec = Recommender.load(index_dir, model)
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(rec.n_users, min(args.export_users, rec.n_users),
                               replace=False))
    paths = [f"/users/{urllib.parse.quote(rec.user_ids[u].decode(), safe='')}"
             "/recommendations?k=10" for u in users[:20_000].tolist()]

    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    serve = [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir),
             "--model", model]
    ports = {"fast path": free_port(), "FastAPI route": free_port()}
    procs = {"fast path": start([*serve, "--port", str(ports["fast path"])], env),
             "FastAPI route": start([*serve, "--port", str(ports["FastAPI route"])],
                                    {**env, "SVDFAISS_FAST_PATH": "false"})}
    runs: dict[str, list[dict[str, Any]]] = {"export": [], "fast path": [],
                                             "FastAPI route": []}
    out_dir = Path(tempfile.mkdtemp(prefix="export-", dir=args.work))
    try:
        for name, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[name])
        script = lua_script(args.work / "export-users.lua", paths, None)
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", file=sys.stderr)
            out = out_dir / "recommendations.parquet"
            summary = export_recommendations(rec, out, k=10, users=users)
            runs["export"].append({
                "users": summary.ids, "rows": summary.rows, "seconds": round(summary.seconds, 3),
                "users_per_s": round(summary.ids / summary.seconds, 1),
                "single_queries": summary.singles, "reasons": summary.reasons,
                "file_mb": round(out.stat().st_size / 2**20, 1),
                "row_groups": pq.ParquetFile(out).num_row_groups})
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}"
                wrk(url, 4, 2, script)  # warm-up
                runs[name].append(wrk(url, 32, args.duration, script))
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(out_dir, ignore_errors=True)

    def ratio(base: str) -> float:
        per_round = [e["users_per_s"] / h["requests_per_s"]
                     for e, h in zip(runs["export"], runs[base], strict=True)]
        return round(float(statistics.median(per_round)), 2)

    medians = {
        "export users/s": statistics.median(r["users_per_s"] for r in runs["export"]),
        "fast path requests/s": statistics.median(r["requests_per_s"]
                                                  for r in runs["fast path"]),
        "FastAPI route requests/s": statistics.median(r["requests_per_s"]
                                                      for r in runs["FastAPI route"]),
    }
    ratios = {"export / fast path": ratio("fast path"),
              "export / FastAPI route": ratio("FastAPI route")}
    manifest = rec.manifest
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus (shared)",
        "bundle": {"items": manifest["counts"]["items"], "users": manifest["counts"]["users"],
                   "recommendation_index": manifest["indexes"]["items_mips"]},
        "exported_users_per_round": int(users.size), "k": 10, "rounds": args.rounds,
        "wrk": {"connections": 32, "threads": 1, "seconds": args.duration,
                "distinct_users": len(paths)},
        "faiss_threads": 1, "medians": medians, "ratios_median_of_rounds": ratios,
        "runs": runs,
    }
    print(f"\n{manifest['counts']['items']:,} items, {manifest['counts']['users']:,} users; "
          f"{users.size:,} users exported a round, k 10, {args.rounds} rounds")
    print(f"{'':28}{'median':>10}   per round")
    print(f"{'export, users/s':28}{medians['export users/s']:>10,.0f}   "
          + ", ".join(f"{r['users_per_s']:,.0f}" for r in runs["export"]))
    for name in ("fast path", "FastAPI route"):
        print(f"{'HTTP ' + name + ', req/s':28}{medians[name + ' requests/s']:>10,.0f}   "
              + ", ".join(f"{r['requests_per_s']:,.0f}" for r in runs[name]))
    for name, value in ratios.items():
        print(f"{name}: {value:.1f}x (median of per-round ratios)")
    print(f"single-query fallbacks in the export: {runs['export'][0]['single_queries']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
