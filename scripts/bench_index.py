"""Index build time, single-query latency and recall@10 for flat, HNSW and IVF by size.

Vectors are clustered Gaussians, L2-normalised (the similar-items case). Prints a table and
writes JSON; the figures choose `IndexParams` auto thresholds (docs/benchmarks.md).

    python scripts/bench_index.py --sizes 20000 100000 400000 --json bench-results/index.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from svdfaiss.index import IndexParams, build_index, normalize_rows, search


def clustered(n: int, d: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, d)).astype(
        np.float32)
    return normalize_rows(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 400_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        x = clustered(n, args.dim, 0)
        rng = np.random.default_rng(1)
        q = x[rng.choice(n, args.queries, replace=False)]
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(x)
        _, truth = exact.search(q, 11)
        for kind in args.kinds:
            faiss.omp_set_num_threads(2)
            start = time.perf_counter()
            index = build_index(x, IndexParams(kind=kind))
            build_s = time.perf_counter() - start
            faiss.omp_set_num_threads(1)
            latencies = []
            hits = 0
            for i in range(args.queries):
                t = time.perf_counter()
                _, ids = search(index, q[i : i + 1], 11)
                latencies.append(time.perf_counter() - t)
                hits += len(set(ids[0][1:]) & set(truth[i][1:]))
            row = {"n": n, "kind": kind, "build_s": round(build_s, 2),
                   "p50_us": round(float(np.percentile(latencies, 50)) * 1e6, 1),
                   "p99_us": round(float(np.percentile(latencies, 99)) * 1e6, 1),
                   "recall@10": round(hits / (10 * args.queries), 4),
                   "params": IndexParams(kind=kind).resolved(n).to_dict()}
            rows.append(row)
            print(f"{n:>9,} {kind:5} build {row['build_s']:7.2f} s  p50 {row['p50_us']:8.1f} us"
                  f"  p99 {row['p99_us']:8.1f} us  recall@10 {row['recall@10']:.4f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(),
                                         "cpus": faiss.omp_get_max_threads(),
                                         "date": time.strftime("%Y-%m-%d"), "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
