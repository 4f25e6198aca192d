"""What content vectors cost a build: the same log and catalog built with --content off and
on, side by side, with the content stage and the hybrid neighbours timed; then what the
catalog-only items in the recommendation index cost a query: recommendations in mode hybrid
(with them) against mode cf (without), interleaved on the content-on bundle; and the similar
items of a catalog-only item in mode hybrid (content plus the CF vector its content predicts)
against mode content, interleaved.

    python scripts/bench_content.py --items 200000 --json docs/results/content-build-200k.json

Generates the sample shape at --items (2x users, 10 events per item, 20 categories) under
--work unless it exists (bench_filters.py uses the same files). Prints per-stage seconds of
both builds and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from results import write_result
from svdfaiss.builder import BuildConfig, build
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample


def recommend_latency(rec: Recommender, users: int, rounds: int) -> dict[str, Any]:
    """p50 and p99 milliseconds of `recommend` (k 10) in each mode, rounds interleaved."""
    rng = np.random.default_rng(0)
    ids = [rec.user_ids[u].decode() for u in rng.choice(rec.n_users, users, replace=False)]
    timings: dict[str, list[float]] = {"hybrid": [], "cf": []}
    new_in_top10 = 0
    for _ in range(rounds):
        for mode, times in timings.items():
            for user_id in ids:
                start = time.perf_counter()
                result = rec.recommend(user_id, 10, mode=mode)
                times.append(1e3 * (time.perf_counter() - start))
                if mode == "hybrid":
                    new_in_top10 += int((result.indexes >= rec.n_items).sum())
    out: dict[str, Any] = {mode: {"p50_ms": round(float(np.percentile(t, 50)), 3),
                                     "p99_ms": round(float(np.percentile(t, 99)), 3)}
                              for mode, t in timings.items()}
    out["new_items_share_of_top10"] = round(new_in_top10 / (10 * users * rounds), 4)
    out["index"] = rec.manifest["indexes"]["items_mips"]["type"]
    out["rows"] = rec.manifest["indexes"]["items_mips"]["rows"]
    return out


def new_item_similar_latency(rec: Recommender, items: int, rounds: int) -> dict[str, Any]:
    """p50 and p99 milliseconds of `similar_items` (k 10) for catalog-only items in mode
    hybrid (two index searches and the fusion) and content (one search), interleaved."""
    rng = np.random.default_rng(1)
    new = rec.new_item_ids[rng.choice(rec.new_item_ids.shape[0], items, replace=False)]
    ids = [i.decode() for i in new]
    timings: dict[str, list[float]] = {"hybrid": [], "content": []}
    for _ in range(rounds):
        for mode, times in timings.items():
            for item_id in ids:
                start = time.perf_counter()
                rec.similar_items(item_id, 10, mode=mode)
                times.append(1e3 * (time.perf_counter() - start))
    return {mode: {"p50_ms": round(float(np.percentile(t, 50)), 3),
                   "p99_ms": round(float(np.percentile(t, 99)), 3)}
            for mode, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--users", type=int, default=500, help="users timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = args.work / f"filters-{args.items}"
    events, catalog = data / "events.csv", data / "items.csv"
    if not events.exists():
        write_sample(SampleSpec(users=args.items * 2, items=args.items,
                                events=args.items * 10, categories=20), data)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for content in ("off", "on"):
            start = time.perf_counter()
            report = build(BuildConfig(input=events, model=f"content-{content}",
                                       index_dir=Path(tmp), catalog=catalog,
                                       content=content))  # type: ignore[arg-type]
            runs[content] = {"total_s": round(time.perf_counter() - start, 1),
                             "stages_s": report.seconds,
                             "items": report.manifest["counts"]["items"],
                             "content": report.manifest["content"]}
        rec = Recommender.load(Path(tmp), "content-on")
        latency = recommend_latency(rec, args.users, args.rounds)
        similar = new_item_similar_latency(rec, args.users, args.rounds)
        del rec
    stages = list(dict.fromkeys([*runs["off"]["stages_s"], *runs["on"]["stages_s"]]))
    print(f"{runs['on']['items']:,} items; catalog {catalog}")
    print(f"{'stage':<20} {'content off':>12} {'content on':>12}")
    for stage in stages:
        print(f"{stage:<20} {runs['off']['stages_s'].get(stage, 0.0):>12.2f} "
              f"{runs['on']['stages_s'].get(stage, 0.0):>12.2f}")
    print(f"{'total':<20} {runs['off']['total_s']:>12.2f} {runs['on']['total_s']:>12.2f}")
    print(f"recommendations, {latency['rows']:,} rows in the {latency['index']} index, "
          f"{args.users} users x {args.rounds} rounds interleaved:")
    for mode in ("hybrid", "cf"):
        print(f"  mode {mode:<7} p50 {latency[mode]['p50_ms']:.3f} ms  "
              f"p99 {latency[mode]['p99_ms']:.3f} ms")
    print(f"  new items' share of the hybrid top 10: {latency['new_items_share_of_top10']:.3f}")
    print(f"similar items of catalog-only items, {args.users} items x {args.rounds} rounds "
          "interleaved:")
    for mode in ("hybrid", "content"):
        print(f"  mode {mode:<7} p50 {similar[mode]['p50_ms']:.3f} ms  "
              f"p99 {similar[mode]['p99_ms']:.3f} ms")
    write_result(args.json, runs=runs, recommend=latency, new_item_similar=similar)


if __name__ == "__main__":
    main()
