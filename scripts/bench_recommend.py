"""Single-query latency of a plain recommendation in process, one thread: the call the fast
path makes on a cache miss (fold-in, evidence check, index search, catalog fields, JSON).

    OMP_NUM_THREADS=1 python scripts/bench_recommend.py --index-dir /tmp/recall-bench/1m/new \\
        --model m --json docs/results/recommend-1m.json

Loads the bundle as the service does (checksums not verified), samples `--users` users with
collaborative evidence (a fixed seed, so two checkouts run on the same users), warms up on
them once, then times `--rounds` passes, one query at a time, of
`Recommender.recommend(user, 10, fallback="popular")` and its encoding
(service.responses.items_body), and separately the index search alone
(query.retrieval.top_k). Prints p50/p99 in ms per pass and over all passes; writes JSON.
Run it with another checkout's src on PYTHONPATH for a before/after figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from results import write_result  # noqa: E402
from svdfaiss import bundle, evidence, recall  # noqa: E402
from svdfaiss.data import decode_ids  # noqa: E402
from svdfaiss.query.retrieval import top_k  # noqa: E402
from svdfaiss.query.vectors import seen_items, user_vector  # noqa: E402
from svdfaiss.recommender import Recommender  # noqa: E402
from svdfaiss.service.responses import items_body  # noqa: E402


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    version_dir, manifest = bundle.current_bundle(bundle.model_dir(args.index_dir, args.model))
    rec = Recommender.open(version_dir, manifest, verify=False)
    eligible = evidence.users_with_evidence(rec.evidence.components, rec.rows) \
        if rec.evidence.components is not None else np.ones(rec.n_users, dtype=bool)
    users = recall.sample_users(eligible, args.users, seed=12345)
    ids = decode_ids(rec.user_ids[users])
    queries = [user_vector(rec, int(u)) for u in users]
    seen = [seen_items(rec, int(u)) for u in users]
    for user_id in ids:  # warm-up: page the mapped arrays and the index in
        items_body(rec, rec.recommend(user_id, 10, fallback="popular"))
    calls: list[float] = []
    searches: list[float] = []
    passes = []
    for _ in range(args.rounds):
        one: list[float] = []
        for user_id in ids:
            start = time.perf_counter()
            items_body(rec, rec.recommend(user_id, 10, fallback="popular"))
            one.append(time.perf_counter() - start)
        calls += one
        passes.append(percentiles(one))
        for q, s in zip(queries, seen, strict=True):
            start = time.perf_counter()
            top_k(rec._mips, q, 10, None, s)
            searches.append(time.perf_counter() - start)
    meta = manifest["indexes"]["items_mips"]
    result = {"bundle": str(version_dir), "items": rec.n_items, "users": rec.n_users,
              "index": meta["type"], "queries": len(ids), "rounds": args.rounds,
              "recommend_and_encode": percentiles(calls), "per_pass": passes,
              "search_only": percentiles(searches)}
    print(f"{rec.n_items:,} items, {meta['type']} index, {len(ids)} users x {args.rounds}")
    print(f"recommend + encode: p50 {result['recommend_and_encode']['p50_ms']} ms, "
          f"p99 {result['recommend_and_encode']['p99_ms']} ms; per pass p50 "
          f"{[p['p50_ms'] for p in passes]}")
    print(f"search only (top_k): p50 {result['search_only']['p50_ms']} ms, "
          f"p99 {result['search_only']['p99_ms']} ms")
    write_result(args.json, **result)


if __name__ == "__main__":
    main()
