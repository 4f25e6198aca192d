"""What the evidence rule costs at catalog scale: the build's evidence stage and the
co-occurrence query (reason co_bought), on an Amazon-shaped generated matrix.

    python scripts/bench_evidence.py --items 1000000 --users 4200000 --events 9000000 \
        --json docs/results/evidence-1m.json

The matrix is drawn in memory (item popularity Zipf-like, most users with one or two
events), so nothing is written to disk. Times `evidence.item_components` and
`evidence.item_evidence` (what `svdfaiss build` adds), then single-thread latency of
`query.cooccurrence.co_bought` for items the rule sends to it (fewer than MIN_CO_USERS
co-users), sampled as traffic would ask (by popularity) and uniformly, and the first call's
one-off cost (the item -> users index). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from results import write_result  # noqa: E402
from svdfaiss import evidence  # noqa: E402
from svdfaiss.query.cooccurrence import co_bought  # noqa: E402
from svdfaiss.query.popularity import Popularity  # noqa: E402


def amazon_shaped(n_users: int, n_items: int, n_events: int, seed: int) -> sp.csr_matrix:
    """Users x items, binary: geometric row lengths (mean events / users), Zipf items."""
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(n_users / n_events, n_users)
    lengths = np.minimum(lengths, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    items = rng.choice(n_items, int(lengths.sum()), p=popularity)
    rows = np.repeat(np.arange(n_users), lengths)
    matrix = sp.csr_matrix((np.ones(items.size, dtype=np.float32), (rows, items)),
                           shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3),
            "max_ms": round(float(values.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=4_200_000)
    parser.add_argument("--events", type=int, default=9_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    matrix = amazon_shaped(args.users, args.items, args.events, args.seed)
    generated = time.perf_counter() - start
    timings: dict[str, float] = {}
    start = time.perf_counter()
    components = evidence.item_components(matrix)
    timings["item_components_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    co_users = evidence.item_evidence(matrix).astype(np.int32)
    timings["item_evidence_s"] = round(time.perf_counter() - start, 2)
    summary = evidence.summary(components, co_users, matrix)
    start = time.perf_counter()
    by_item = matrix.tocsc()  # what LoadedModel.item_users builds on the first such query
    timings["item_users_index_s"] = round(time.perf_counter() - start, 2)
    model: Any = SimpleNamespace(rows=matrix, popularity=Popularity(matrix, args.items),
                                 item_users=lambda: by_item)
    model.popularity.counts_and_order()
    has = ~evidence.isolated(components)
    routed = np.flatnonzero(has & (co_users < evidence.MIN_CO_USERS))
    rng = np.random.default_rng(args.seed + 1)
    counts = model.popularity.counts[routed].astype(np.float64)
    samples = {"by popularity": rng.choice(routed, args.queries, p=counts / counts.sum()),
               "uniform": rng.choice(routed, args.queries)}
    excluded = np.empty(0, dtype=np.int64)
    latency: dict[str, dict[str, float]] = {}
    for name, items in samples.items():
        spent = []
        for item in items.tolist():
            t0 = time.perf_counter()
            co_bought(model, item, 10, None, np.append(excluded, item))
            spent.append(time.perf_counter() - t0)
        latency[name] = percentiles(spent)
    print(f"matrix {args.users:,} users x {args.items:,} items, {matrix.nnz:,} events "
          f"(generated in {generated:.1f} s)")
    print(f"items with cf evidence {summary['items_with_cf_evidence']:,}, by factors "
          f"{summary['items_by_factors']:,}, by co-occurrence {summary['items_by_co_occurrence']:,}"
          f"; users with evidence {summary['users_with_cf_evidence']:,}")
    for name, seconds in timings.items():
        print(f"{name:<22} {seconds:>8.2f}")
    print(f"{'co_bought query':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in latency.items():
        print(f"{name:<22} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['max_ms']:>8.3f}")
    write_result(args.json, shape={"users": args.users, "items": args.items,
                                   "events": int(matrix.nnz)},
                 evidence={k: v for k, v in summary.items() if k != "measure"},
                 build_seconds=timings, co_bought_latency=latency, queries=args.queries)


if __name__ == "__main__":
    main()
