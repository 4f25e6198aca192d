"""Latency of filtered queries against unfiltered ones, on one bundle, in one run.

Builds (or reuses) a bundle of the generated sample at the given size with its catalog, then
times `Recommender.recommend` and `similar_items` in process for price filters keeping 50%,
5% and 0.1% of the catalog (a price bound at that quantile), and checks every filtered answer
holds k items that pass the filter. Prints a table (median and p99 in ms, and the ratio to
unfiltered) and writes JSON.

    python scripts/bench_filters.py --work /tmp/svdfaiss-bench --items 200000 \
        --json docs/results/filters-200k.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.recommender import CatalogFilter, Recommender
from svdfaiss.synthetic import SampleSpec, write_sample

SELECTIVITIES = (1.0, 0.5, 0.05, 0.001)


def timed(calls: list[Any]) -> tuple[list[float], list[Any]]:
    seconds, results = [], []
    for call in calls:
        start = time.perf_counter()
        results.append(call())
        seconds.append(time.perf_counter() - start)
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = args.work / f"filters-{args.items}"
    index_dir = data / "indexes"
    if not (index_dir / "bench" / "CURRENT").exists():
        files = write_sample(SampleSpec(users=args.items * 2, items=args.items,
                                        events=args.items * 10, categories=20), data)
        build(BuildConfig(input=files.events, model="bench", index_dir=index_dir,
                          catalog=files.catalog))
    rec = Recommender.load(index_dir, "bench")
    rng = np.random.default_rng(0)
    users = decode_ids(rec.user_ids[rng.choice(rec.n_users, args.queries, replace=False)])
    items = decode_ids(rec.item_ids[rng.choice(rec.n_items, args.queries, replace=False)])
    prices = np.asarray(rec.catalog["price"], dtype=np.float64)
    rows = []
    base: dict[str, float] = {}
    for share in SELECTIVITIES:
        f = (CatalogFilter() if share == 1.0
             else CatalogFilter(max_price=float(np.quantile(prices, share))))
        allowed = rec.filter_set(f)
        kept = rec.n_items if allowed is None else int(allowed.size)
        for name, calls in (
                ("recommend", [lambda u=u, f=f: rec.recommend(u, args.k, catalog_filter=f)
                               for u in users]),
                ("similar", [lambda i=i, f=f: rec.similar_items(i, args.k, use_cache=False,
                                                                catalog_filter=f)
                             for i in items])):
            timed(calls[:20])  # warm-up
            seconds, results = timed(calls)
            full = all(len(r) == args.k for r in results)  # kept is always far above k
            passing = allowed is None or all(np.isin(r.indexes, allowed).all() for r in results)
            ms = np.asarray(seconds) * 1e3
            median = float(np.median(ms))
            if share == 1.0:
                base[name] = median
            row = {"query": name, "selectivity": share, "items_kept": kept,
                   "median_ms": median, "p99_ms": float(np.percentile(ms, 99)),
                   "ratio_to_unfiltered": median / base[name], "k_results_always": full,
                   "all_pass_filter": passing}
            rows.append(row)
            print(f"{name:10} {share:>7.1%} kept {kept:>8,}  median {median:7.3f} ms  p99 "
                  f"{row['p99_ms']:7.3f} ms  x{row['ratio_to_unfiltered']:.2f}  "
                  f"k always: {full}  pass: {passing}", flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "items": rec.n_items, "users": rec.n_users, "k": args.k,
              "indexes": {n: m["type"] for n, m in rec.manifest["indexes"].items()},
              "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
