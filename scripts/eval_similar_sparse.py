"""Similar items on a sparse purchase log: svdfaiss against co-occurrence item-kNN, popularity,
random and candidate blends, on the next-purchase protocol.

    python scripts/eval_similar_sparse.py --data both --out docs/results/similar-sparse.json

Protocol (docs/evaluation.md, "Similar items on a sparse purchase log"): every user with at
least 2 distinct items gives their latest item (by timestamp) to the test set; the builder
(`svdfaiss.builder.build`, defaults) builds a bundle from the rest of the log in a
temporary folder; each test user's query is the item they bought just before the held-out
one, and a method's 10 similar items of it should name the held-out item. Hit@10 and
NDCG@10 per query, and their paired bootstrap differences against item-kNN (95%).

Methods:
- svdfaiss: `Recommender.open(bundle).similar_items(item, k=10, mode="cf")` (served) and in
  the default mode (default: the evidence rule's fallbacks included), as served;
- item-kNN: cosine of binary buyer columns (X^T X normalised), ties by popularity (so an
  item nobody co-bought gets the most popular items);
- popular: most bought training items, the query left out; random: a seeded order;
- knn>svd: item-kNN's neighbours with a positive cosine, then svdfaiss's to fill 10;
- gate co>=t: svdfaiss's neighbours when the query has at least t co-buyers (users who
  bought it and another item; svdfaiss.evidence.item_evidence), else item-kNN when it has
  one, else popular; gate norm>=q: the same with the pre-normalisation SVD vector norm
  against its q-quantile over the catalog;
- svd in component: svdfaiss's cosine over the items of the query's connected component of
  the co-purchase graph (svdfaiss.evidence.item_components), popular to fill;
- blend w: for a query with a co-buyer, item-kNN cosine + w x svd cosine (ties by
  popularity), else popular;
- co a=A [+W svd] >pop, a grid: the items co-bought with the query, ranked by
  evaluation.cooccurrence_similarity with exponent A (|B_i & B_j| / (|B_i|^(1-A) |B_j|^A):
  A = 0.5 is item-kNN's cosine, A = 0 the share of the query's buyers who bought j) plus W x
  the svd cosine, ties by popularity, then popular to fill 10. The rule is chosen on a
  validation split inside the training log (the same protocol once more: each test user's
  latest remaining item held out), per dataset and over both (best worst-case hit@10
  relative to item-kNN).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from results import write_result
from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import ReadOptions, build_interactions, decode_ids, lookup, read_log
from svdfaiss.errors import SvdfaissError
from svdfaiss.evaluation import (
    cooccurrence_similarity,
    fill_lists,
    fit_svd,
    hits_per_query,
    last_times,
    next_item_queries,
    other_component_share,
    paired_difference,
    rank_rows,
)
from svdfaiss.evidence import co_item_counts, item_components, item_evidence
from svdfaiss.recommender import Recommender

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = {
    "amazon": SHARED_DATA / "amazon-electronics-sample" / "ratings_Electronics.csv",
    "ml": SHARED_DATA / "ml-latest-small" / "ratings.csv",
}
K = 10
GATE_CO_USERS = (1, 3, 5, 10, 20, 50)
GATE_NORM_QUANTILES = (0.5, 0.9)
BLEND_WEIGHTS = (0.01, 0.1)
# The co-occurrence grid, chosen on a validation split of the training log (below):
# exponent a of cooccurrence_similarity (0.5 cosine, 0 P(j | i)) x weight w of the SVD
# cosine that re-orders its neighbours.
EXPONENTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
SVD_WEIGHTS = (0.0, 0.01, 0.1)
SEED = 42


def rule_name(a: float, w: float) -> str:
    return f"co a={a:g}" + (f" +{w:g}svd" if w else "") + " >pop"


def grid_lists(train: sp.csr_matrix, queries: np.ndarray,
               cf: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The top 10 of every co-occurrence rule of the grid: neighbours with
    a co-buyer ordered by cooccurrence_similarity(a) + w x svd cosine (ties by popularity),
    then the most popular items to fill 10."""
    popularity = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    rows = np.arange(queries.size)
    pop = np.broadcast_to(popularity, (queries.size, popularity.size)).copy()
    pop[rows, queries] = -np.inf
    pop_lists = rank_rows(pop, K)
    cf_rows = cf[queries] @ cf.T
    out = {}
    for a in EXPONENTS:
        sim = cooccurrence_similarity(train, queries, a)
        sim[rows, queries] = 0
        for w in SVD_WEIGHTS:
            scores = np.where(sim > 0, sim + w * cf_rows, -np.inf)
            lists = fill_lists(rank_rows(scores, K, tiebreak=popularity), pop_lists, K)
            out[rule_name(a, w)] = lists
    return out


def svd_cosine(train: sp.csr_matrix, config: BuildConfig, feedback: str) -> np.ndarray:
    """The builder's similar-items vectors (normalised V S) fitted on `train`, and the
    pre-normalisation norms."""
    model = fit_svd(train, config.resolved_k(*train.shape), config.resolved_weighting(feedback),
                    config.beta, config.shrinkage, seed=config.seed)
    raw = model.factors.item_factors * model.factors.singular_values
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return np.asarray(raw / np.where(norms > 0, norms, 1), dtype=np.float64)


def training_log(path: Path, out: Path) -> dict[str, Any]:
    """Write the log minus each test user's held-out (user, item) rows to `out`; return the
    protocol's queries and targets as external ids."""
    log = read_log(path, ReadOptions())
    inter = build_interactions(log, 1, 1, "last")
    if not (np.array_equal(inter.user_ids, log.user_ids)
            and np.array_equal(inter.item_ids, log.item_ids)):
        raise SystemExit("the log's ids were filtered: the protocol expects none dropped")
    times = last_times(log, inter)
    assert times is not None, "the log needs timestamps"
    protocol = next_item_queries(inter.matrix, times)
    users = protocol.split.test_users
    held = set((users * inter.n_items + protocol.targets).tolist())
    key = log.user_codes.astype(np.int64) * inter.n_items + log.item_codes
    keep = ~np.isin(key, np.fromiter(held, dtype=np.int64))
    cols = log.columns
    user_text = decode_ids(log.user_ids)
    item_text = decode_ids(log.item_ids)
    assert log.timestamps is not None
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([cols.user, cols.item, cols.value or "rating", cols.timestamp])
        for row in np.flatnonzero(keep).tolist():
            writer.writerow([user_text[log.user_codes[row]], item_text[log.item_codes[row]],
                             f"{log.values[row]:g}", f"{log.timestamps[row]:.0f}"])
    full_co_users = item_evidence(inter.matrix)
    return {"log": {"users": inter.n_users, "items": inter.n_items,
                    "interactions": int(inter.matrix.nnz),
                    "items_without_cobuyer": float(np.mean(full_co_users == 0))},
            "queries": [item_text[i] for i in protocol.queries.tolist()],
            "targets": [item_text[i] for i in protocol.targets.tolist()],
            "held_rows": int((~keep).sum())}


def evaluate(name: str, path: Path, seed: int = SEED) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparse-eval-") as tmp:
        train_csv = Path(tmp) / path.name
        protocol = training_log(path, train_csv)
        config = BuildConfig(input=train_csv, model="sparse", index_dir=Path(tmp) / "indexes")
        report = build(config)
        rec = Recommender.open(report.path)
        inter = build_interactions(read_log(train_csv, ReadOptions()), 1, 1, "last")
        if not np.array_equal(inter.item_ids, rec.item_ids):
            raise SystemExit("the bundle's items are not the training log's")
        val_times = last_times(read_log(train_csv, ReadOptions()), inter)
        assert val_times is not None
        queries = lookup(inter.item_ids, protocol["queries"])
        targets = lookup(inter.item_ids, protocol["targets"])  # -1: never bought in training
        served: list[np.ndarray] = []
        served_default: list[np.ndarray] = []
        reasons: dict[str, int] = {}
        failures = 0
        for item in protocol["queries"]:
            try:
                result = rec.similar_items(item, k=K, mode="cf")
                served.append(lookup(inter.item_ids, result.ids))
            except SvdfaissError:  # NoEvidence: an item nothing relates to another
                failures += 1
                served.append(np.empty(0, dtype=np.int64))
            answer = rec.similar_items(item, k=K)  # the default mode, as the service answers
            served_default.append(lookup(inter.item_ids, answer.ids))
            for reason in answer.reasons or [answer.reason or ""]:
                reasons[reason] = reasons.get(reason, 0) + 1
        build_seconds = report.seconds
    train = inter.matrix
    n_items = train.shape[1]
    if (queries < 0).any():
        raise SystemExit("a query item is missing from the training log")

    # Validation: the same protocol once more inside the training log (each test user's
    # remaining latest item held out), to choose the co-occurrence rule without the test.
    val = next_item_queries(train, val_times)
    val_grid = {r: hits_per_query(lists, val.targets, K) for r, lists in grid_lists(
        val.split.train, val.queries, svd_cosine(val.split.train, config, inter.feedback)
    ).items()}
    validation = {"queries": int(val.queries.size),
                  "rules": {r: {"hit@10": float(h.mean()), "ndcg@10": float(n.mean())}
                            for r, (h, n) in val_grid.items()}}

    # Evidence per item, on the training log.
    co_users = item_evidence(train)
    co_items = co_item_counts(train)
    labels = item_components(train)
    popularity = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    scheme = config.resolved_weighting(inter.feedback)
    k = config.resolved_k(*train.shape)
    model = fit_svd(train, k, scheme, config.beta, config.shrinkage, seed=config.seed)
    raw = model.factors.item_factors * model.factors.singular_values
    norms = np.linalg.norm(raw, axis=1)
    cf = np.asarray(rec.item_vectors, dtype=np.float64)  # what the bundle serves

    cf_rows = cf[queries] @ cf.T
    cf_rows[np.arange(queries.size), queries] = -np.inf
    knn_rows = cooccurrence_similarity(train, queries)
    knn_rows[np.arange(queries.size), queries] = -np.inf
    pop_rows = np.broadcast_to(popularity, cf_rows.shape).copy()
    pop_rows[np.arange(queries.size), queries] = -np.inf
    has_evidence = co_users[queries] >= 1

    svd_lists = rank_rows(cf_rows, K)
    knn_lists = rank_rows(knn_rows, K, tiebreak=popularity)
    pop_lists = rank_rows(pop_rows, K)
    knn_positive = [lst[knn_rows[r, lst] > 0] for r, lst in enumerate(knn_lists)]
    rng = np.random.default_rng(seed)
    random_rows = rng.random(cf_rows.shape)
    random_rows[np.arange(queries.size), queries] = -np.inf

    def gate(use_svd: np.ndarray) -> tuple[list[np.ndarray], dict[str, float]]:
        lists = [svd_lists[r] if use_svd[r] else knn_lists[r] if has_evidence[r]
                 else pop_lists[r] for r in range(queries.size)]
        via = {"svd": float(np.mean(use_svd)),
               "knn": float(np.mean(~use_svd & has_evidence)),
               "popular": float(np.mean(~use_svd & ~has_evidence))}
        return lists, via

    methods: dict[str, list[np.ndarray]] = {
        "svdfaiss (served)": served,
        "svdfaiss (default)": served_default,
        "item-kNN": knn_lists,
        "popular": pop_lists,
        "random": rank_rows(random_rows, K),
        "knn>svd": fill_lists(knn_positive, svd_lists, K),
    }
    sources: dict[str, dict[str, float]] = {
        "svdfaiss (served)": {"svd": 1.0},
        "svdfaiss (default)": {reason: count / max(sum(reasons.values()), 1)
                               for reason, count in sorted(reasons.items())},
        "item-kNN": {"knn": float(has_evidence.mean()),
                     "popular": float(1 - has_evidence.mean())},
        "popular": {"popular": 1.0}, "random": {"random": 1.0},
        "knn>svd": {"knn": float(has_evidence.mean()), "svd": float(1 - has_evidence.mean())},
    }
    for t in GATE_CO_USERS:
        methods[f"gate co>={t}"], sources[f"gate co>={t}"] = gate(co_users[queries] >= t)
    for q in GATE_NORM_QUANTILES:
        cut = float(np.quantile(norms, q))
        name_q = f"gate norm>=q{int(100 * q)}"
        methods[name_q], sources[name_q] = gate((norms[queries] >= cut) & has_evidence)
    same = labels[None, :] == labels[queries][:, None]
    in_component = np.where(same, cf_rows, -np.inf)
    methods["svd in component"] = fill_lists(
        [lst if has_evidence[r] else lst[:0]
         for r, lst in enumerate(rank_rows(in_component, K))], pop_lists, K)
    sources["svd in component"] = {"svd": float(has_evidence.mean()),
                                   "popular": float(1 - has_evidence.mean())}
    for w in BLEND_WEIGHTS:
        blended = rank_rows(knn_rows + w * cf_rows, K, tiebreak=popularity)
        methods[f"blend {w:g}"] = [blended[r] if has_evidence[r] else pop_lists[r]
                                   for r in range(queries.size)]
        sources[f"blend {w:g}"] = sources["item-kNN"]

    # The numpy cosine lists must be what the service serves (the sanity check of cf).
    agreement = float(np.mean([np.array_equal(a, b) for a, b in zip(served, svd_lists,
                                                                    strict=True)]))
    for rule, lists in grid_lists(train, queries, cf).items():
        methods.setdefault(rule, lists)
        sources.setdefault(rule, sources["item-kNN"])
    per_query = {m: hits_per_query(lists, targets, K) for m, lists in methods.items()}
    base_hit, base_ndcg = per_query["item-kNN"]
    pop_hit, _ = per_query["popular"]
    rows: dict[str, dict[str, Any]] = {}
    for m, lists in methods.items():
        hit, ndcg = per_query[m]
        rows[m] = {
            "hit@10": float(hit.mean()), "ndcg@10": float(ndcg.mean()),
            "hit@10_cobought_queries": float(hit[has_evidence].mean()),
            "hit@10_isolated_queries": (float(hit[~has_evidence].mean())
                                        if (~has_evidence).any() else None),
            "diff_hit@10_vs_knn": paired_difference(hit, base_hit, seed),
            "diff_ndcg@10_vs_knn": paired_difference(ndcg, base_ndcg, seed),
            "diff_hit@10_vs_popular": paired_difference(hit, pop_hit, seed),
            "other_component_share@10": other_component_share(
                queries[has_evidence], [lists[r] for r in np.flatnonzero(has_evidence)],
                labels),
            "answered_by": sources[m],
            "empty_lists": int(sum(len(x) == 0 for x in lists)),
        }
    # Catalog-wide: the user's report, on the training log.
    cobought = np.flatnonzero(co_users >= 1)
    sample = cobought if cobought.size <= 3000 else np.random.default_rng(seed).choice(
        cobought, 3000, replace=False)
    sims = cf[sample] @ cf.T
    sims[np.arange(sample.size), sample] = -np.inf
    catalog_other = other_component_share(sample, rank_rows(sims, K), labels)
    n_labels = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=n_labels)
    return {
        "dataset": name, "input": str(path), **protocol["log"],
        "train": {"users": int(train.shape[0]), "items": n_items,
                  "interactions": int(train.nnz), "held_rows": protocol["held_rows"]},
        "svd": {"k": k, "weighting": scheme, "shrinkage": config.shrinkage,
                "build_seconds": {s: round(v, 2) for s, v in build_seconds.items()}},
        "queries": int(queries.size),
        "target_in_training": float(np.mean(targets >= 0)),
        "query_has_cobuyer": float(has_evidence.mean()),
        "served_errors": failures,
        "served_equals_numpy_cosine": agreement,
        "catalog": {
            "items_without_cobuyer": float(np.mean(co_users == 0)),
            "items_with_one_co_item_or_more": float(np.mean(co_items >= 1)),
            "components_with_2_items_or_more": int((sizes >= 2).sum()),
            "largest_component_items": int(sizes.max()),
            "svd_other_component_share@10_of_cobought_items": catalog_other,
            "norm_median_without_cobuyer": float(np.median(norms[co_users == 0]))
            if (co_users == 0).any() else None,
            "norm_median_with_cobuyer": float(np.median(norms[co_users >= 1])),
            "norm_quantiles": {str(q): float(np.quantile(norms, q))
                               for q in GATE_NORM_QUANTILES},
        },
        "methods": rows,
        "validation": validation,
        "seconds": round(time.perf_counter() - start, 1),
    }


def interval(d: dict[str, float]) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def print_table(result: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(f"\n{result['dataset']}: {result['queries']:,} queries, {result['users']:,} users x "
        f"{result['items']:,} items; query has a co-buyer {result['query_has_cobuyer']:.1%}, "
        f"target bought in training {result['target_in_training']:.1%}; served = numpy "
        f"cosine on {result['served_equals_numpy_cosine']:.1%} of queries")
    c = result["catalog"]
    say(f"items without a co-buyer: {result['items_without_cobuyer']:.1%} in the whole log, "
        f"{c['items_without_cobuyer']:.1%} in training; "
        f"svd top 10 of co-bought items in another component: "
        f"{c['svd_other_component_share@10_of_cobought_items']:.1%}")
    say(f"{'method':20}{'hit@10':>8} {'hit - kNN [95%]':>28}{'ndcg@10':>9} "
        f"{'ndcg - kNN [95%]':>28}{'hit co':>8}{'hit iso':>8}{'other cc':>9}  answered by")
    for m, r in result["methods"].items():
        iso = r["hit@10_isolated_queries"]
        say(f"{m:20}{r['hit@10']:>8.4f} {interval(r['diff_hit@10_vs_knn']):>28}"
            f"{r['ndcg@10']:>9.4f} {interval(r['diff_ndcg@10_vs_knn']):>28}"
            f"{r['hit@10_cobought_queries']:>8.4f}"
            f"{(f'{iso:.4f}' if iso is not None else '-'):>8}"
            f"{r['other_component_share@10']:>9.3f}  "
            + ", ".join(f"{s} {v:.0%}" for s, v in r["answered_by"].items() if v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("amazon", "ml", "both"), default="both")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--amazon", type=Path, default=DATA["amazon"])
    parser.add_argument("--ml", type=Path, default=DATA["ml"])
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    names = ("amazon", "ml") if args.data == "both" else (args.data,)
    results = {}
    for name in names:
        path = args.amazon if name == "amazon" else args.ml
        if not path.is_file():
            sys.exit(f"{path}: not found")
        results[name] = evaluate(name, path, args.seed)
        print_table(results[name])
    chosen = choose_rule(results)
    print_grid(results, chosen)
    per_dataset = {}
    for name, result in results.items():
        rule = choose_rule({name: result})
        row = result["methods"][rule]
        per_dataset[name] = rule
        print(f"{name}: chosen on its own validation ({result['validation']['queries']:,} "
              f"queries): {rule}; test hit@10 {row['hit@10']:.4f}, - item-kNN "
              f"{interval(row['diff_hit@10_vs_knn'])}, - popular "
              f"{interval(row['diff_hit@10_vs_popular'])}; NDCG@10 {row['ndcg@10']:.4f}, "
              f"- item-kNN {interval(row['diff_ndcg@10_vs_knn'])}")
    write_result(args.out, protocol="next purchase: each repeat buyer's last item held "
                 "out, similar items (k 10) of the item bought just before it",
                 seed=args.seed, chosen_on_validation=chosen,
                 chosen_per_dataset=per_dataset, results=results)


def choose_rule(results: dict[str, Any]) -> str:
    """The grid's rule with the best worst-case validation hit@10 relative to item-kNN
    (a = 0.5, w = 0) over the datasets run; ties to the simpler rule (listed first)."""
    knn = rule_name(0.5, 0.0)

    def worst(rule: str) -> float:
        return min(r["validation"]["rules"][rule]["hit@10"]
                   / max(r["validation"]["rules"][knn]["hit@10"], 1e-12)
                   for r in results.values())

    rules = [rule_name(a, w) for w in SVD_WEIGHTS for a in EXPONENTS]
    return max(rules, key=lambda rule: (round(worst(rule), 6), -rules.index(rule)))


def print_grid(results: dict[str, Any], chosen: str) -> None:
    names = list(results)
    print("\nco-occurrence rules: validation hit@10 | test hit@10 (test NDCG@10), per dataset")
    print(f"{'rule':26}" + "".join(f"{n + ' val':>12}{n + ' test':>24}" for n in names))
    for w in SVD_WEIGHTS:
        for a in EXPONENTS:
            rule = rule_name(a, w)
            cells = ""
            for n in names:
                val = results[n]["validation"]["rules"][rule]["hit@10"]
                test = results[n]["methods"][rule]
                cells += f"{val:>12.4f}{test['hit@10']:>12.4f} ({test['ndcg@10']:.4f})"
            print(f"{rule + (' *' if rule == chosen else ''):26}{cells}")
    print(f"chosen on validation (best worst-case hit@10 over item-kNN): {chosen}")


if __name__ == "__main__":
    main()
