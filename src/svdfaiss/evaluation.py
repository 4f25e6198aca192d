"""Offline evaluation: a fixed holdout split, top-N metrics, baselines and the ANN loss.

The protocol (docs/evaluation.md): every user with at least `min_interactions` interactions
gives a random `test_fraction` of them (at least one, seed 42) to the test set; the rest, plus
every interaction of the other users, is train. Each method recommends from the whole catalog
except the user's own train items (never sampled negatives), and is scored against the
user's test items.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.data import InteractionLog, Interactions
from svdfaiss.errors import InvalidInput
from svdfaiss.factorize import (
    Embedding,
    Factors,
    check_rank,
    fold_in,
    shrinkage_embedding,
    truncated_svd,
)
from svdfaiss.index import MIPS_HEAD, BandedIndex, IndexParams, build_rec_index, kind_of
from svdfaiss.query.retrieval import top_k
from svdfaiss.recall import rec_space
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_rows

DEFAULT_CUTOFFS = (10, 20)
# EASE and item-kNN hold dense items x items matrices (3.2 GB at 20k items): skipped above.
MAX_DENSE_ITEMS = 20_000
METRICS = ("precision", "recall", "f1", "ndcg", "map", "hit_rate", "mrr")


@dataclass(frozen=True)
class Split:
    """Train matrix (all users) and each test user's held-out items."""

    train: sp.csr_matrix
    test_users: np.ndarray
    test_items: list[np.ndarray]


def _split(matrix: sp.csr_matrix, keep: np.ndarray, users: list[int],
           items: list[np.ndarray], min_interactions: int) -> Split:
    """The Split that keeps the `keep` entries of `matrix` as train."""
    if not users:
        raise InvalidInput(f"no user has {min_interactions} interactions or more: nothing to "
                           "hold out")
    coo = matrix.tocoo()
    train = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])),
                          shape=matrix.shape, dtype=matrix.dtype)
    return Split(train, np.asarray(users, dtype=np.int64), items)


def holdout_split(matrix: sp.csr_matrix, test_fraction: float = 0.2,
                  min_interactions: int = 5, seed: int = 42) -> Split:
    """Hold out a random `test_fraction` of each eligible user's interactions."""
    if not 0 < test_fraction < 1:
        raise InvalidInput(f"test fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    matrix = matrix.tocsr()
    keep = np.ones(matrix.nnz, dtype=bool)
    users, items = [], []
    for user in range(matrix.shape[0]):
        start, end = matrix.indptr[user], matrix.indptr[user + 1]
        n = end - start
        if n < min_interactions:
            continue
        held = start + rng.choice(n, max(1, round(test_fraction * n)), replace=False)
        keep[held] = False
        users.append(user)
        items.append(np.sort(matrix.indices[held]))
    return _split(matrix, keep, users, items, min_interactions)


def last_times(log: InteractionLog, inter: Interactions) -> sp.csr_matrix | None:
    """The latest timestamp of each stored (user, item) of `inter`, in its sparsity pattern;
    None when the log has no timestamps."""
    if log.timestamps is None:
        return None
    users = _positions(inter.user_ids, log.user_ids)[log.user_codes]
    items = _positions(inter.item_ids, log.item_ids)[log.item_codes]
    kept = (users >= 0) & (items >= 0)
    users, items, times = users[kept], items[kept], log.timestamps[kept].astype(np.float64)
    order = np.lexsort((times, items, users))  # by user, item, then time: last is latest
    key = users[order] * inter.n_items + items[order]
    last = np.append(key[1:] != key[:-1], True)
    latest = sp.csr_matrix((times[order][last], (users[order][last], items[order][last])),
                           shape=inter.matrix.shape)
    latest.sort_indices()
    return latest


def _positions(kept: np.ndarray, all_ids: np.ndarray) -> np.ndarray:
    """Index in the sorted `kept` ids of each of the sorted `all_ids`; -1 where filtered out."""
    found = np.searchsorted(kept, all_ids)
    clipped = np.minimum(found, max(kept.size - 1, 0))
    return np.where((found < kept.size) & (kept[clipped] == all_ids), found, -1)


def leave_last_out_split(matrix: sp.csr_matrix, times: sp.csr_matrix,
                         min_interactions: int = 5) -> Split:
    """Hold out each eligible user's latest interaction (ties: the higher item index)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    if times.shape != matrix.shape or times.nnz != matrix.nnz:
        raise InvalidInput("timestamps do not match the interactions matrix")
    keep = np.ones(matrix.nnz, dtype=bool)
    users, items = [], []
    for user in range(matrix.shape[0]):
        start, end = matrix.indptr[user], matrix.indptr[user + 1]
        if end - start < min_interactions:
            continue
        row_times = times.data[start:end]
        held = start + int(np.flatnonzero(row_times == row_times.max())[-1])
        keep[held] = False
        users.append(user)
        items.append(matrix.indices[held : held + 1].copy())
    return _split(matrix, keep, users, items, min_interactions)


def ranking_metrics(ranked: Sequence[np.ndarray], relevant: Sequence[np.ndarray],
                    cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """Mean precision, recall, F1, NDCG, MAP, hit rate and MRR at each cutoff.

    Averaged over users with at least one relevant item (others carry no signal). A list
    shorter than k (fewer candidates, or none) counts its missing places as misses:
    precision divides by k. NDCG's ideal puts min(k, relevant) hits first. MAP@k is
    trec_eval's map_cut_k (and ranx's map@k), dividing by every relevant item, not
    min(k, relevant):

        AP@k = (1 / |R|) * sum over ranks r <= k with item_r in R of precision@r

    so a user with more relevant items than k cannot reach 1.
    """
    sums = {f"{m}@{k}": 0.0 for k in cutoffs for m in METRICS}
    counted = 0
    for recs, rel in zip(ranked, relevant, strict=True):
        if len(rel) == 0:
            continue
        counted += 1
        hits_all = np.isin(np.asarray(recs, dtype=np.int64), rel)
        for k in cutoffs:
            hits = hits_all[:k].astype(np.float64)
            n_hits = float(hits.sum())
            precision = n_hits / k
            recall = n_hits / len(rel)
            ranks = np.arange(1, hits.size + 1)
            ideal = np.sum(1.0 / np.log2(np.arange(2, min(k, len(rel)) + 2)))
            first = np.flatnonzero(hits)
            sums[f"precision@{k}"] += precision
            sums[f"recall@{k}"] += recall
            sums[f"f1@{k}"] += (2 * precision * recall / (precision + recall)
                                if n_hits else 0.0)
            sums[f"ndcg@{k}"] += float(np.sum(hits / np.log2(ranks + 1)) / ideal)
            sums[f"map@{k}"] += float(np.sum(np.cumsum(hits) / ranks * hits) / len(rel))
            sums[f"hit_rate@{k}"] += 1.0 if n_hits else 0.0
            sums[f"mrr@{k}"] += 1.0 / (first[0] + 1) if first.size else 0.0
    return {name: (value / counted if counted else 0.0) for name, value in sums.items()}


def coverage(ranked: Sequence[np.ndarray], n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-k list."""
    seen = np.unique(np.concatenate([np.asarray(r[:k], dtype=np.int64) for r in ranked]
                                    or [np.empty(0, dtype=np.int64)]))
    return float(seen.size / n_items) if n_items else 0.0


# ------------------------------------------------------------------------ recommenders

Scorer = Callable[[np.ndarray], np.ndarray]  # user rows -> (users x items) scores


def top_n_from_scores(scores: np.ndarray, seen: sp.csr_matrix, n: int) -> list[np.ndarray]:
    """Top n items per row of a dense score block, excluding each user's train items.

    Ties break towards the lower item index (a stable order), so runs are reproducible.
    """
    scores = np.array(scores, dtype=np.float64)
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n else np.empty((len(scores), 0))
    out = []
    for row, candidates in enumerate(part.astype(np.int64)):
        values = scores[row, candidates]
        order = np.lexsort((candidates, -values))
        ranked = candidates[order]
        out.append(ranked[np.isfinite(scores[row, ranked])])
    return out


def recommend_all(scorer: Scorer, train: sp.csr_matrix, users: np.ndarray, n: int,
                  block: int = 512) -> list[np.ndarray]:
    """Top-n lists of `users` from a scorer, in blocks to bound memory."""
    out: list[np.ndarray] = []
    for start in range(0, users.size, block):
        chunk = users[start : start + block]
        out += top_n_from_scores(scorer(chunk), train[chunk], n)
    return out


def popularity_scorer(train: sp.csr_matrix) -> Scorer:
    """Most popular: the number of train users per item, the same for everyone."""
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    return lambda users: np.broadcast_to(counts, (users.size, counts.size))


def item_knn_scorer(train: sp.csr_matrix, neighbours: int = 100) -> Scorer:
    """Item-kNN: cosine between binary item columns, each item keeping its top neighbours."""
    binary = (train > 0).astype(np.float32).tocsc()
    norms = np.sqrt(np.asarray(binary.power(2).sum(axis=0)).ravel())
    norms[norms == 0] = 1
    normalized = binary @ sp.diags(1 / norms)
    sim = (normalized.T @ normalized).toarray()
    np.fill_diagonal(sim, 0)
    if neighbours < sim.shape[0]:
        cut = np.partition(sim, -neighbours, axis=0)[-neighbours]
        sim[sim < cut] = 0
    rows = (train > 0).astype(np.float32).tocsr()
    return lambda users: np.asarray(rows[users] @ sim)


def ease_scorer(train: sp.csr_matrix, lam: float = 500.0) -> Scorer:
    """EASE (Steck 2019): a closed-form item-item model, B = I - P / diag(P), P = (X'X + lI)^-1."""
    x = (train > 0).astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0)
    rows = x.tocsr()
    return lambda users: np.asarray(rows[users] @ b)


@dataclass(frozen=True)
class SvdModel:
    """The factorization `svdfaiss build` makes, fitted on a train matrix."""

    embedding: Embedding
    weighting: WeightingParams
    scale: np.ndarray
    factors: Factors

    @property
    def explained_energy(self) -> float:
        return self.factors.explained_energy

    @property
    def item_factors(self) -> np.ndarray:
        return self.embedding.items

    def queries(self, rows: sp.csr_matrix) -> np.ndarray:
        return fold_in(weight_rows(rows, self.weighting, self.scale), self.embedding.fold)

    def scorer(self, train: sp.csr_matrix) -> Scorer:
        def score(users: np.ndarray) -> np.ndarray:
            return np.asarray(self.queries(train[users]) @ self.embedding.items.T)

        return score


def fit_svd(train: sp.csr_matrix, k: int, scheme: str, beta: float, shrinkage: float = 0.0,
            seed: int = 0, factors: Factors | None = None) -> SvdModel:
    """The builder's model on `train`; `factors` of the same k, weighting and beta skip the
    SVD (a shrinkage grid needs only one)."""
    check_rank(k, train.shape)
    scale, mean_row = item_column_scale(train, scheme, beta)
    weighting = WeightingParams(scheme=scheme, beta=beta,  # type: ignore[arg-type]
                                mean_row_length=mean_row)
    if factors is None:
        factors = truncated_svd(weight_rows(train, weighting, scale), k, seed=seed)
    return SvdModel(shrinkage_embedding(factors, shrinkage, train.shape[1]), weighting,
                    scale, factors)


def ann_lists(model: SvdModel, train: sp.csr_matrix, users: np.ndarray, n: int,
              params: IndexParams, seed: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Top-n lists through the recommendation index the builder would make, and its recall
    against exact scoring."""
    vectors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    index = build_rec_index(vectors, params, seed)
    space = rec_space(index, vectors)
    queries = np.asarray(model.queries(train[users]), dtype=np.float32)
    start = time.perf_counter()
    out = []
    for row, user in enumerate(users):  # one at a time, through the service's search path
        seen = train.indices[train.indptr[user] : train.indptr[user + 1]].astype(np.int64)
        out.append(top_k(space, queries[row], n, None, seen)[1])
    seconds = time.perf_counter() - start
    kind = "banded" if isinstance(index, BandedIndex) else kind_of(index)
    return out, {"index": kind, "ms_per_query": 1e3 * seconds / max(1, users.size)}


def evaluate_topn(matrix: sp.csr_matrix, k_factors: int, scheme: str, beta: float,
                  shrinkage: float = 0.0, cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
                  test_fraction: float = 0.2,
                  min_interactions: int = 5, seed: int = 42, rec_index: IndexParams | None = None,
                  ease_lambda: float = 500.0, include_ease: bool = True,
                  include_knn: bool = True, split: Split | None = None) -> dict[str, Any]:
    """Every method's top-N metrics on one holdout split, and the ANN loss of svdfaiss.

    The split defaults to the protocol's random holdout; pass another (leave-last-out) to
    score the same methods on it.
    """
    protocol = {"split": "random holdout per user", "test_fraction": test_fraction,
                "seed": seed}
    if split is None:
        split = holdout_split(matrix, test_fraction, min_interactions, seed)
    else:
        protocol = {"split": "leave last out (latest timestamp per user)"}
    n = max(cutoffs)
    users = split.test_users
    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    lists: dict[str, list[np.ndarray]] = {}

    def run(name: str, make: Callable[[], Scorer]) -> None:
        start = time.perf_counter()
        scorer = make()
        ranked = recommend_all(scorer, split.train, users, n)
        timings[name] = round(time.perf_counter() - start, 3)
        lists[name] = ranked
        results[name] = {**ranking_metrics(ranked, split.test_items, cutoffs),
                         **{f"coverage@{c}": coverage(ranked, matrix.shape[1], c)
                            for c in cutoffs}}

    model = fit_svd(split.train, k_factors, scheme, beta, shrinkage)
    run("svdfaiss", lambda: model.scorer(split.train))
    run("most popular", lambda: popularity_scorer(split.train))
    skipped = []
    dense_ok = matrix.shape[1] <= MAX_DENSE_ITEMS
    for name, wanted, make in (
            ("item-kNN", include_knn, lambda: item_knn_scorer(split.train)),
            ("EASE", include_ease, lambda: ease_scorer(split.train, ease_lambda))):
        if wanted and dense_ok:
            run(name, make)
        elif wanted:
            skipped.append(f"{name}: over {MAX_DENSE_ITEMS:,} items")
    ann: dict[str, Any] = {}
    params = rec_index or IndexParams(kind="auto", flat_max=25_000, hnsw_max=0,
                                      mips_head=MIPS_HEAD)
    approx, info = ann_lists(model, split.train, users, n, params)
    results["svdfaiss (ANN index)"] = {
        **ranking_metrics(approx, split.test_items, cutoffs),
        **{f"coverage@{c}": coverage(approx, matrix.shape[1], c) for c in cutoffs}}
    overlap = [len(np.intersect1d(a[:10], e[:10])) / max(1, min(10, len(e)))
               for a, e in zip(approx, lists["svdfaiss"], strict=True)]
    ann = {**info, "recall@10_vs_exact": float(np.mean(overlap))}
    return {
        "protocol": {**protocol, "min_interactions": min_interactions,
                     "candidates": "whole catalog minus the user's train items",
                     "cutoffs": list(cutoffs), "users": int(matrix.shape[0]),
                     "items": int(matrix.shape[1]), "interactions": int(matrix.nnz),
                     "test_users": int(users.size),
                     "test_interactions": int(sum(len(t) for t in split.test_items)),
                     "skipped": skipped},
        "svd": {"k": k_factors, "weighting": scheme, "beta": beta, "shrinkage": shrinkage,
                "explained_energy": model.explained_energy},
        "topn": results,
        "fit_seconds": timings,
        "ann": ann,
    }


# Below either, an evaluation says its test set is small: too few users for differences
# between methods to stand out of the noise, or too small a share for the test users (those
# with min_interactions) to stand for the log's users.
SMALL_TEST_USERS = 500
SMALL_TEST_SHARE = 0.05


def evaluation_warnings(report: dict[str, Any]) -> list[str]:
    """What an evaluation report should warn about, as sentences: a small test set (with
    the standard error sqrt(p (1 - p) / n) of svdfaiss's hit rate p@10 over its n test
    users), and a rating model that predicts worse than its biases alone."""
    warnings = []
    for name, part in (("random holdout", report),
                       ("leave last out", report.get("leave_last_out"))):
        if not part:
            continue
        protocol = part["protocol"]
        n = int(protocol.get("test_users", 0))
        users = int(protocol.get("users", report["protocol"].get("users", 0)))
        share = n / users if users else 0.0
        if n >= SMALL_TEST_USERS and share >= SMALL_TEST_SHARE:
            continue
        why = []
        if n < SMALL_TEST_USERS:
            why.append(f"fewer than {SMALL_TEST_USERS}")
        if share < SMALL_TEST_SHARE:
            why.append(f"under {SMALL_TEST_SHARE:.0%} of the users")
        text = (f"small test set ({name}): {n:,} of {users:,} users ({share:.1%}) are "
                f"tested, {' and '.join(why)}")
        hit = part.get("topn", {}).get("svdfaiss", {}).get("hit_rate@10")
        if hit is not None and n > 0:
            error = float(np.sqrt(hit * (1 - hit) / n))
            text += (f"; svdfaiss's hit rate@10 {hit:.3f} has a standard error of "
                     f"{error:.3f}, so differences between methods below about "
                     f"{2 * error:.3f} are noise")
        if "min_interactions" in protocol:
            text += (f" (only users with {protocol['min_interactions']} or more interactions "
                     "are tested: --min-test-interactions)")
        warnings.append(text)
    rating = report.get("rating") or {}
    model, biases = rating.get("svdfaiss rating model"), rating.get("biases only")
    if model and biases and model["rmse"] > biases["rmse"]:
        warnings.append(
            f"the rating model predicts worse than its biases alone: RMSE {model['rmse']:.4f} "
            f"against {biases['rmse']:.4f} (5 folds); its factors add noise on this log. "
            "Build with --objective rating --rating-k 0 for the biases alone, or let "
            "svdfaiss tune choose (its grid includes k 0)")
    return warnings


TUNE_GRID: dict[str, tuple[Any, ...]] = {
    "k": (32, 64, 128, 256),
    "weighting": ("none", "binary", "log", "bm25"),
    "beta": (0.0,),  # popularity down-weighting never won on validation (docs/evaluation.md)
    "shrinkage": (0.0, 10.0, 30.0, 100.0),
}


def tune_svd(matrix: sp.csr_matrix, grid: dict[str, tuple[Any, ...]] | None = None,
             test_fraction: float = 0.2, min_interactions: int = 5, seed: int = 42,
             metric: str = "ndcg@10",
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Choose k, weighting and beta on a validation split carved from train (never test).

    The validation split applies the same protocol to the train part of the test split,
    with the next seed. The winner is then scored once on the test split. `progress` hears
    a line after each trial ("trial 3/32: k 64, log, ... ndcg@10 0.3412").
    """
    grid = {**TUNE_GRID, **(grid or {})}
    split = holdout_split(matrix, test_fraction, min_interactions, seed)
    validation = holdout_split(split.train, test_fraction, min_interactions, seed + 1)
    n = max(DEFAULT_CUTOFFS)
    trials = []
    total = sum(len(grid["shrinkage"]) for k, _, _ in itertools.product(
        grid["k"], grid["weighting"], grid["beta"]) if k < min(matrix.shape))
    for k, scheme, beta in itertools.product(grid["k"], grid["weighting"], grid["beta"]):
        if k >= min(matrix.shape):
            continue
        factors = None
        for shrinkage in grid["shrinkage"]:  # one SVD serves every shrinkage
            model = fit_svd(validation.train, k, scheme, beta, shrinkage, factors=factors)
            factors = model.factors
            ranked = recommend_all(model.scorer(validation.train), validation.train,
                                   validation.test_users, n)
            score = ranking_metrics(ranked, validation.test_items)[metric]
            trials.append({"k": k, "weighting": scheme, "beta": beta, "shrinkage": shrinkage,
                           metric: score})
            if progress is not None:
                progress(f"trial {len(trials)}/{total}: k {k}, {scheme}, beta {beta:g}, "
                         f"shrinkage {shrinkage:g}: {metric} {score:.4f}")
    if not trials:
        raise InvalidInput(f"every k in the grid is at least min(users, items) = "
                           f"{min(matrix.shape)}")
    best = max(trials, key=lambda t: t[metric])
    model = fit_svd(split.train, best["k"], best["weighting"], best["beta"], best["shrinkage"])
    ranked = recommend_all(model.scorer(split.train), split.train, split.test_users, n)
    return {"metric": metric, "validation": sorted(trials, key=lambda t: -t[metric]),
            "best": best, "test": ranking_metrics(ranked, split.test_items),
            "flags": f"--k {best['k']} --weighting {best['weighting']} --beta {best['beta']} "
                     f"--shrinkage {best['shrinkage']:g}"}


def evaluate_for_manifest(matrix: sp.csr_matrix, k_factors: int, scheme: str, beta: float,
                          shrinkage: float, rec_index: IndexParams | None = None
                          ) -> dict[str, Any]:
    """The evaluation a build stores in its manifest: the protocol's top-N metrics of this
    configuration and the cheap baselines, or why it was skipped. Never fails a build."""
    try:
        report = evaluate_topn(matrix, k_factors, scheme, beta, shrinkage, rec_index=rec_index,
                               include_ease=False)
    except InvalidInput as exc:
        return {"skipped": str(exc)}
    keep = ("ndcg@10", "recall@10", "precision@10", "map@10", "mrr@10", "hit_rate@10",
            "coverage@10", "ndcg@20", "recall@20")
    return {"protocol": report["protocol"], "ann": report["ann"],
            "topn": {name: {m: round(v[m], 5) for m in keep}
                     for name, v in report["topn"].items()}}


# ---------------------------------------------------------------- similar items, cold items

COLD_FRACTION = 0.1
MAX_QUERIES = 3000
SIMILAR_METHODS = ("random", "popular", "popular_content", "cf", "content", "hybrid")
# With times, the relevant items of a similar-items query are the NEXT_ITEMS items the user
# turned to after the query item ("next"); without, the user's other held-out items ("held").
NEXT_ITEMS = 10
BOOTSTRAP_ROUNDS = 2000
# NDCG@10 differences reported on the same queries, with a paired bootstrap interval.
SIMILAR_COMPARISONS = (("hybrid", "popular"), ("hybrid", "cf"), ("hybrid", "content"),
                       ("popular_content", "popular"))


@dataclass(frozen=True)
class ColdSplit:
    """Training rows with a share of the items turned cold (every interaction of theirs
    hidden) and 20% of each user's other interactions held out."""

    cold: np.ndarray  # bool per item
    train: sp.csr_matrix
    held: sp.csr_matrix  # held-out interactions on warm items (ones)
    hidden: sp.csr_matrix  # the cold items' interactions (ones)


def _cold_model(matrix: sp.csr_matrix, content: np.ndarray, k_factors: int, scheme: str,
                cold_fraction: float, seed: int
                ) -> tuple[np.random.Generator, ColdSplit, SvdModel]:
    """The seeded cold split of `matrix` (content checked against it) and the builder's
    model fitted on its training rows; the generator goes on to draw queries."""
    rng = np.random.default_rng(seed)
    if content.shape[0] != matrix.shape[1]:
        raise InvalidInput(f"{content.shape[0]} content rows for {matrix.shape[1]} items")
    split = cold_split(matrix.tocsr(), cold_fraction, rng)
    model = fit_svd(split.train, min(k_factors, min(split.train.shape) - 1), scheme, 0.0)
    return rng, split, model


def cold_split(matrix: sp.csr_matrix, cold_fraction: float,
               rng: np.random.Generator) -> ColdSplit:
    """The split of the similar-items and new-items protocols (docs/evaluation.md)."""
    n_items = matrix.shape[1]
    rated = np.flatnonzero(np.bincount(matrix.indices, minlength=n_items) > 0)
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.choice(rated, max(1, int(cold_fraction * rated.size)), replace=False)] = True
    coo = matrix.tocoo()
    warm = ~cold[coo.col]
    test = warm & (rng.random(coo.nnz) < 0.2)
    keep = warm & ~test

    def part(mask: np.ndarray, values: np.ndarray | None = None) -> sp.csr_matrix:
        data = np.ones(int(mask.sum())) if values is None else values[mask]
        return sp.csr_matrix((data, (coo.row[mask], coo.col[mask])), shape=matrix.shape)

    return ColdSplit(cold, part(keep, coo.data), part(test), part(~warm))


def ndcg_per_query(ranked: Sequence[np.ndarray], relevant: Sequence[np.ndarray],
                   k: int) -> np.ndarray:
    """NDCG@k of each list (as in ranking_metrics), for paired comparisons."""
    out = np.zeros(len(ranked))
    for row, (recs, rel) in enumerate(zip(ranked, relevant, strict=True)):
        hits = np.isin(np.asarray(recs, dtype=np.int64)[:k], rel)
        ideal = np.sum(1.0 / np.log2(np.arange(2, min(k, len(rel)) + 2)))
        out[row] = np.sum(hits / np.log2(np.arange(2, hits.size + 2))) / ideal
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0,
                      rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, float]:
    """Mean of a - b over the same queries, with a 95% paired bootstrap interval: a
    difference whose interval holds 0 is not measurable on this sample."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, diff.size, (rounds, diff.size))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


def category_share(queries: Sequence[int], ranked: Sequence[np.ndarray],
                   categories: Sequence[set[str]], k: int = 10) -> float:
    """Mean share of each list's first k items sharing a category with its query item
    (queries without a category are left out)."""
    shares = [np.mean([bool(categories[query] & categories[int(j)]) for j in row[:k]])
              for query, row in zip(queries, ranked, strict=True) if categories[query]]
    return float(np.mean(shares)) if shares else 0.0


def timelines(times: sp.csr_matrix) -> list[np.ndarray]:
    """Each user's items in the order of their (latest) interaction times."""
    times = times.tocsr()
    out = []
    for user in range(times.shape[0]):
        start, end = times.indptr[user], times.indptr[user + 1]
        items = times.indices[start:end]
        out.append(items[np.lexsort((items, times.data[start:end]))])
    return out


def evaluate_similar_items(matrix: sp.csr_matrix, content: np.ndarray, k_factors: int,
                           scheme: str, hybrid_interactions: float,
                           cold_fraction: float = COLD_FRACTION, seed: int = 42,
                           cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
                           times: sp.csr_matrix | None = None,
                           next_items: int = NEXT_ITEMS,
                           categories: Sequence[set[str]] | None = None,
                           new_item_cf_share: float | None = None,
                           new_item_prior: float | None = None) -> dict[str, Any]:
    """Similar items for warm and cold query items against popularity (docs/evaluation.md).

    A random `cold_fraction` of the items with interactions turns cold: every interaction
    of theirs leaves training. Each user then gives 20% of their other interactions to the
    test set. A query is a (user, item) pair, the item one of the user's test items (warm)
    or cold items (cold). Without `times`, the relevant items are the user's test items
    other than the query, the items an item page should lead that user to; with `times`
    (the latest time of each interaction of `matrix`), they are the `next_items` items the
    user turned to right after the query item, whatever part they are in. Each method ranks
    every other item: random order (the floor), popularity (training interactions),
    popular_content (log-popularity plus content cosine: popularity as the collaborative
    prior of an item nobody has seen, nudged by content), cf (cosine of the SVD item
    vectors), content (cosine of `content`, one row per item) and hybrid (content.fuse with
    the builder's weights). Up to MAX_QUERIES pairs of each kind are drawn, with the seed;
    the NDCG@10 of the SIMILAR_COMPARISONS pairs is compared on the same queries. With
    `categories` (a set per item), each method also reports the share of its top 10 that
    shares a category with the query item: how similar its similar items are. A cold
    item's hybrid is the service's for a catalog-only item: its predicted CF vector weighed
    by `new_item_cf_share`, a popularity prior of weight `new_item_prior` (defaults:
    content.NEW_ITEM_CF_SHARE and NEW_ITEM_POPULARITY_PRIOR), over the union of each part's
    content.HYBRID_POOL nearest.
    """
    from svdfaiss.content import (
        HYBRID_POOL,
        NEW_ITEM_CF_SHARE,
        NEW_ITEM_POPULARITY_PRIOR,
        cf_share,
        fuse,
        popularity_prior,
        predicted_item_vectors,
    )
    from svdfaiss.index import normalize_rows

    rng, split, model = _cold_model(matrix, content, k_factors, scheme, cold_fraction, seed)
    matrix = matrix.tocsr()
    n_items = matrix.shape[1]
    cold, train, held, hidden = split.cold, split.train, split.held, split.hidden
    raw = model.factors.item_factors * model.factors.singular_values
    cf = normalize_rows(raw)
    # What the builder stores for catalog-only items: the CF vector content predicts.
    warm_rows, cold_rows = np.flatnonzero(~cold), np.flatnonzero(cold)
    predicted, map_r2 = predicted_item_vectors(content[np.concatenate([warm_rows, cold_rows])],
                                               raw[warm_rows])
    cf_of_cold = np.zeros_like(cf)
    cf_of_cold[cold_rows] = predicted
    cold_share = NEW_ITEM_CF_SHARE if new_item_cf_share is None else new_item_cf_share
    cold_prior = NEW_ITEM_POPULARITY_PRIOR if new_item_prior is None else new_item_prior
    counts = np.bincount(train.indices, minlength=n_items)
    log_popularity = np.log1p(counts).astype(np.float32)
    prior_of_cold = popularity_prior(counts, cold_prior)
    share = cf_share(counts, hybrid_interactions)
    has_content = np.abs(content).sum(axis=1) > 0
    if times is not None and times.shape != matrix.shape:
        raise InvalidInput(f"times of shape {times.shape} for a matrix of {matrix.shape}")
    order = None if times is None else timelines(times)

    def relevant_for(user: int, item: int) -> np.ndarray:
        if order is None:
            relevant = np.asarray(held.indices[held.indptr[user] : held.indptr[user + 1]])
            others: np.ndarray = relevant[relevant != item]
            return others
        line = order[user]
        at = int(np.flatnonzero(line == item)[0])
        return line[at + 1 : at + 1 + next_items]

    def queries(source: sp.csr_matrix) -> list[tuple[int, np.ndarray]]:
        pairs = []
        for user in range(matrix.shape[0]):
            for item in source.indices[source.indptr[user] : source.indptr[user + 1]]:
                others = relevant_for(user, int(item))
                if others.size:
                    pairs.append((int(item), others))
        if len(pairs) > MAX_QUERIES:
            pairs = [pairs[i] for i in rng.choice(len(pairs), MAX_QUERIES, replace=False)]
        return pairs

    def scores(method: str, item: int) -> np.ndarray:
        if method == "random":  # the floor: a seeded order of its own per query item
            return np.random.default_rng((seed, item)).random(n_items, dtype=np.float32)
        if method == "popular":
            return np.asarray(counts, dtype=np.float32)
        if method == "popular_content":
            return np.asarray(log_popularity + content @ content[item])
        if method == "cf":
            return np.asarray(cf @ cf[item])
        if method == "content":
            return np.asarray(content @ content[item])
        if cold[item]:  # as the service: the pools of both searches, fused, plus the prior
            by_cf, by_content = cf @ cf_of_cold[item], content @ content[item]
            by_content[item] = -np.inf  # the searches leave the item out
            pool = np.union1d(np.argpartition(-by_cf, HYBRID_POOL)[:HYBRID_POOL],
                              np.argpartition(-by_content, HYBRID_POOL)[:HYBRID_POOL])
            fused = np.full(n_items, -np.inf, dtype=np.float32)
            fused[pool] = (fuse(by_cf[pool], by_content[pool], cold_share)
                           + prior_of_cold[pool])
            return fused
        weight = share[item] if has_content[item] else 1.0
        return fuse(cf @ cf[item], content @ content[item], weight)

    top = max(cutoffs)
    out: dict[str, Any] = {"protocol": {
        "cold_fraction": cold_fraction, "seed": seed, "cold_items": int(cold.sum()),
        "k": model.factors.k, "hybrid_interactions": hybrid_interactions,
        "new_item_cf_share": cold_share, "new_item_prior": cold_prior, "map_r2": round(map_r2, 4),
        "relevance": "held" if times is None else "next",
        **({} if times is None else {"next_items": next_items})}}
    for kind, source in (("warm", held), ("cold", hidden)):
        pairs = queries(source)
        relevant = [r for _, r in pairs]
        out[kind] = {"queries": len(pairs)}
        per_query = {}
        for method in SIMILAR_METHODS:
            if kind == "cold" and method == "cf":
                continue  # a cold item has no CF vector
            ranked = []
            for item, _ in pairs:
                s = np.asarray(scores(method, item), dtype=np.float32).copy()
                s[item] = -np.inf
                best = np.argpartition(-s, top)[:top]
                ranked.append(best[np.argsort(-s[best], kind="stable")])
            out[kind][method] = ranking_metrics(ranked, relevant, cutoffs)
            per_query[method] = ndcg_per_query(ranked, relevant, 10)
            if categories is not None:
                out[kind][method]["category_share@10"] = category_share(
                    [item for item, _ in pairs], ranked, categories)
        out[kind]["differences"] = {
            f"{a} - {b}": paired_difference(per_query[a], per_query[b], seed)
            for a, b in SIMILAR_COMPARISONS if a in per_query and b in per_query}
    return out


NEW_ITEM_METHODS = ("random", "popular_category", "popular_predicted", "hybrid")


def evaluate_new_items(matrix: sp.csr_matrix, content: np.ndarray,
                       categories: Sequence[set[str]] | None, k_factors: int, scheme: str,
                       new_item_weight: float, cold_fraction: float = COLD_FRACTION,
                       seed: int = 42, cutoffs: Sequence[int] = DEFAULT_CUTOFFS
                       ) -> dict[str, Any]:
    """Recommendations that reach items nobody has interacted with (docs/evaluation.md).

    The split is the similar-items one (`cold_split`). The cold items get the vectors the
    builder predicts from content (content.map_content on the warm items, times
    `new_item_weight`). Two questions:
    - cold: for each user with hidden interactions, rank the cold items only: random,
      popular_category (the training interactions of the item's categories, averaged over
      them: an item's own popularity is unknown while it is cold), popular_predicted (the
      log-popularity a ridge map from content predicts: content without the user) and
      hybrid (q . v of the predicted vectors); relevant are the user's hidden cold items;
    - catalog: rank every item not in the user's training rows, cf (the model's items only,
      as mode=cf serves) against hybrid (the cold items too); relevant are the user's held
      and hidden items, reported together and apart, with the share of the top 10 that
      cold items take.
    """
    from svdfaiss.content import map_content

    _, split, model = _cold_model(matrix, content, k_factors, scheme, cold_fraction, seed)
    n_items = matrix.shape[1]
    vectors = np.asarray(model.embedding.items, dtype=np.float32)
    counts = np.bincount(split.train.indices, minlength=n_items)
    fitted = counts > 0
    weights, r2 = map_content(content[fitted], vectors[fitted])
    cold_items = np.flatnonzero(split.cold)
    predicted = (np.float32(new_item_weight) * (content[cold_items] @ weights)).astype(
        np.float32)
    users = range(matrix.shape[0])
    queries = np.asarray(model.queries(split.train), dtype=np.float32)
    top = max(cutoffs)

    def ranked_by(scores: np.ndarray, candidates: np.ndarray, user: int) -> np.ndarray:
        # Ties in a seeded random order: category popularity ties every item of a category.
        tiebreak = np.random.default_rng((seed, user)).random(scores.size)
        order = np.lexsort((tiebreak, -scores))
        return candidates[order[: min(top, int(np.isfinite(scores).sum()))]]

    def rows(part: sp.csr_matrix, user: int) -> np.ndarray:
        return np.asarray(part.indices[part.indptr[user] : part.indptr[user + 1]])

    out: dict[str, Any] = {"protocol": {"cold_fraction": cold_fraction, "seed": seed,
                                        "cold_items": int(cold_items.size),
                                        "k": model.factors.k,
                                        "new_item_weight": new_item_weight, "map_r2": r2}}
    cold_users = [u for u in users if split.hidden.indptr[u + 1] > split.hidden.indptr[u]]
    relevant = [rows(split.hidden, u) for u in cold_users]
    by_method: dict[str, Callable[[int], np.ndarray]] = {
        "random": lambda u: np.zeros(cold_items.size),  # all ties: the seeded order
        "hybrid": lambda u: predicted @ queries[u]}
    popularity_map, _ = map_content(content[fitted], np.log1p(counts[fitted])[:, None])
    predicted_popularity = (content[cold_items] @ popularity_map)[:, 0]
    by_method["popular_predicted"] = lambda u: predicted_popularity
    if categories is not None:
        totals: dict[str, int] = {}
        for item in np.flatnonzero(fitted).tolist():
            for name in categories[item]:
                totals[name] = totals.get(name, 0) + int(counts[item])
        prior = np.array([np.mean([totals.get(c, 0) for c in categories[i]])
                          if categories[i] else 0.0 for i in cold_items.tolist()],
                         dtype=np.float64)
        by_method["popular_category"] = lambda u: prior
    out["cold"] = {"users": len(cold_users)}
    for method in NEW_ITEM_METHODS:
        if method in by_method:
            ranked = [ranked_by(np.asarray(by_method[method](u), dtype=np.float64),
                                cold_items, u) for u in cold_users]
            out["cold"][method] = ranking_metrics(ranked, relevant, cutoffs)

    all_users = [u for u in users if rows(split.held, u).size or rows(split.hidden, u).size]
    out["catalog"] = {"users": len(all_users)}
    catalog = np.arange(n_items)
    for method in ("cf", "hybrid"):
        ranked = []
        for u in all_users:
            scores = (vectors @ queries[u]).astype(np.float64)
            scores[cold_items] = -np.inf
            if method == "hybrid":
                scores[cold_items] = predicted @ queries[u]
            scores[rows(split.train, u)] = -np.inf
            ranked.append(ranked_by(scores, catalog, u))
        both = [np.concatenate([rows(split.held, u), rows(split.hidden, u)])
                for u in all_users]
        metrics = ranking_metrics(ranked, both, cutoffs)
        warm_only = ranking_metrics(ranked, [r[~split.cold[r]] for r in both], cutoffs)
        cold_only = ranking_metrics(ranked, [r[split.cold[r]] for r in both], cutoffs)
        out["catalog"][method] = {
            **metrics, "ndcg@10_warm_relevant": warm_only["ndcg@10"],
            "ndcg@10_cold_relevant": cold_only["ndcg@10"],
            "cold_share@10": float(np.mean([split.cold[r[:10]].mean() for r in ranked]))}
    return out


# ------------------------------------------------ similar items on a sparse purchase log
# The next-purchase protocol (docs/evaluation.md, "Similar items on a sparse purchase
# log"): each repeat buyer's latest item is held out, and the similar items of the item
# they bought just before it should name it.


@dataclass(frozen=True)
class NextItemQueries:
    """The leave-last-out split, and per test user the query (second-to-last) item and the
    held-out next item."""

    split: Split
    queries: np.ndarray
    targets: np.ndarray


def next_item_queries(matrix: sp.csr_matrix, times: sp.csr_matrix,
                      min_interactions: int = 2) -> NextItemQueries:
    """Hold out each user's latest item (leave_last_out_split); their query is the item of
    the latest time before it (ties broken as timelines does, by item index)."""
    split = leave_last_out_split(matrix, times, min_interactions)
    lines = timelines(times)
    queries = np.empty(split.test_users.size, dtype=np.int64)
    for row, user in enumerate(split.test_users.tolist()):
        line = lines[user]
        if int(line[-1]) != int(split.test_items[row][0]):
            raise InvalidInput(f"user {user}: held-out item is not the last of the timeline")
        queries[row] = line[-2]
    targets = np.array([int(t[0]) for t in split.test_items], dtype=np.int64)
    return NextItemQueries(split, queries, targets)


def cooccurrence_similarity(train: sp.csr_matrix, items: np.ndarray,
                            exponent: float = 0.5) -> np.ndarray:
    """Item-kNN rows: for each query i of `items` and every item j,
    |B_i & B_j| / (|B_i|^(1 - a) |B_j|^a) with B the binary buyer sets and a = `exponent`:
    the cosine at a = 0.5, P(j | i) (the share of i's buyers who bought j) at a = 0; an
    item's own entry 0. Within a query, a only sets how much a candidate's popularity
    divides its co-buyer count."""
    binary = (train > 0).astype(np.float64).tocsc()
    counts = np.asarray(binary.sum(axis=0)).ravel()
    counts[counts == 0] = 1
    co = np.asarray((binary[:, items].T @ binary).toarray(), dtype=np.float64)
    sim = co / (counts[items, None] ** (1 - exponent) * counts[None, :] ** exponent)
    sim[np.arange(items.size), items] = 0.0
    return sim


def rank_rows(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None,
              allowed: np.ndarray | None = None) -> list[np.ndarray]:
    """Top k columns of each row by score, then `tiebreak` (higher first), then the lower
    index; -inf scores and columns outside `allowed` (a bool per column) never rank."""
    scores = np.array(scores, dtype=np.float64)
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    second = np.zeros(scores.shape[1]) if tiebreak is None else np.asarray(tiebreak, float)
    out = []
    for row in scores:
        finite = np.flatnonzero(np.isfinite(row))
        order = np.lexsort((finite, -second[finite], -row[finite]))
        out.append(finite[order[:k]].astype(np.int64))
    return out


def fill_lists(first: Sequence[np.ndarray], then: Sequence[np.ndarray],
               k: int) -> list[np.ndarray]:
    """Each list of `first`, topped up to k with the items of `then` not already in it."""
    out = []
    for a, b in zip(first, then, strict=True):
        a = np.asarray(a, dtype=np.int64)[:k]
        rest = np.asarray(b, dtype=np.int64)
        rest = rest[~np.isin(rest, a)]
        out.append(np.concatenate([a, rest[: k - a.size]]))
    return out


def hits_per_query(ranked: Sequence[np.ndarray], targets: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hit@k (the target in the first k) and NDCG@k (1 / log2(1 + rank) of the single
    target) of each list."""
    hit = np.zeros(len(ranked))
    ndcg = np.zeros(len(ranked))
    for row, (recs, target) in enumerate(zip(ranked, targets, strict=True)):
        found = np.flatnonzero(np.asarray(recs)[:k] == target)
        if found.size:
            hit[row] = 1.0
            ndcg[row] = 1.0 / np.log2(found[0] + 2)
    return hit, ndcg


def other_component_share(queries: np.ndarray, ranked: Sequence[np.ndarray],
                          labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each list's first k items that lie in another connected component of
    the co-purchase graph than its query item (lists left empty are skipped)."""
    shares = [float(np.mean(labels[np.asarray(r[:k])] != labels[q]))
              for q, r in zip(queries, ranked, strict=True) if len(r)]
    return float(np.mean(shares)) if shares else 0.0
