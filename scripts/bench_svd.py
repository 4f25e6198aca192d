"""svdfaiss's truncated SVD against scipy's svds (ARPACK) on the same weighted matrix.

Prints seconds and the largest relative difference of the singular values; writes JSON.

    python scripts/bench_svd.py EVENTS.csv --k 64 --json bench-results/svd.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import svds

from svdfaiss.data import build_interactions, read_log
from svdfaiss.factorize import truncated_svd
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    inter = build_interactions(read_log(args.events))
    scale, mean = item_column_scale(inter.matrix, "log", 0.0)
    x = weight_rows(inter.matrix, WeightingParams("log", mean_row_length=mean), scale)
    start = time.perf_counter()
    ours = truncated_svd(x, args.k)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    v0 = np.random.default_rng(0).standard_normal(min(x.shape)).astype(x.dtype)
    _, s, _ = svds(x, k=args.k, v0=v0)
    svds_s = time.perf_counter() - start
    s = np.sort(s)[::-1]
    diff = float(np.max(np.abs(ours.singular_values - s) / s))
    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.platform()}, {os.cpu_count()} cpus",
              "shape": list(x.shape), "nnz": int(x.nnz), "k": args.k,
              "svdfaiss_s": round(ours_s, 1), "scipy_svds_s": round(svds_s, 1),
              "ratio": round(svds_s / ours_s, 2), "max_rel_singular_value_diff": diff}
    print(f"{x.shape[0]:,} x {x.shape[1]:,}, {x.nnz:,} nnz, k={args.k}")
    print(f"svdfaiss truncated_svd {ours_s:7.1f} s")
    print(f"scipy svds (ARPACK)    {svds_s:7.1f} s   ({svds_s / ours_s:.2f}x)")
    print(f"largest relative singular value difference {diff:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
