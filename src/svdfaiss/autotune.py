"""The build's own tuning: k, weighting and shrinkage chosen per dataset on a validation
split carved from the rows the build is given (docs/evaluation.md, "Defaults that fit the
data").

A build without --k, --weighting, --shrinkage or --beta holds out 20% of the interactions of
up to `MAX_VALIDATION_USERS` users with 5 or more (seed 43 + --seed, `svdfaiss tune`'s
validation seed), scores a small grid on them by NDCG@10 and builds the published model on
ALL rows with the winner. The grid is cheap by construction: one SVD per weighting at the
largest k serves every smaller k by truncation (`Factors.leading`) and every shrinkage
(`shrinkage_embedding` only reweights the same components), so it costs as many SVDs as
weightings. A flag the user gives is never overridden: it fixes its parameter and the rest is
tuned. Above `MAX_INTERACTIONS` (the budget: about 2x a plain build's time up to there,
docs/benchmarks.md) the build keeps today's defaults and records why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput
from svdfaiss.evaluation import Split, fit_svd, holdout_split
from svdfaiss.factorize import Factors, truncated_svd
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_rows

if TYPE_CHECKING:
    from svdfaiss.builder import BuildConfig

MAX_INTERACTIONS = 1_000_000  # the budget: above, the defaults are kept (reason recorded)
MAX_VALIDATION_USERS = 2_000  # validation users scored per trial (a seeded sample above)
MIN_VALIDATION_USERS = 20  # fewer users with 5+ interactions: too noisy to choose
DENSE_SIDE = 2_500  # the tuning's SVD solves a Gram matrix this small exactly (_factors)
MIN_INTERACTIONS = 5  # a validation user needs this many (the protocol's min_interactions)
TEST_FRACTION = 0.2
VALIDATION_SEED = 43  # + the build's --seed; `svdfaiss tune` validates on seed 43 too
METRIC = "ndcg@10"
# k: half, once and twice the size default (auto_k); the default first, so a tie keeps it.
# Twice only up to LARGE_K_MAX_INTERACTIONS: the SVD at the largest k is most of the cost
# (ARPACK at k 256 took 22 s per weighting on the 1M-interaction generated log, k 128 about
# a third of that), and beyond it the budget would not hold.
K_FACTORS = (1.0, 0.5, 2.0)
LARGE_K_MAX_INTERACTIONS = 300_000
SHRINKAGES = (30.0, 10.0, 100.0)
# Weightings per feedback kind, the default first. bm25 never won where binary did not
# (docs/results/tune-*.json) and each weighting costs one SVD; raw counts ("none" on implicit
# data) were the worst scheme on the generated sample.
WEIGHTINGS = {"explicit": ("none", "binary", "log"), "implicit": ("log", "binary")}
# Beta (popularity down-weighting) never won on validation (docs/evaluation.md) and each
# value costs one more SVD per weighting, so it stays 0 unless --beta is given.
BETAS = (0.0,)


@dataclass(frozen=True)
class Tuned:
    """The configuration to build with (every tuned field filled) and its manifest record."""

    config: BuildConfig
    record: dict[str, Any]


def validation_split(matrix: sp.csr_matrix, seed: int,
                     max_users: int = MAX_VALIDATION_USERS) -> Split:
    """`holdout_split(matrix, seed=seed)` when at most `max_users` users have 5+
    interactions; otherwise the same draw restricted to a seeded sample of `max_users` of
    them (the others keep all their rows in train)."""
    matrix = matrix.tocsr()
    lengths = np.diff(matrix.indptr)
    eligible = np.flatnonzero(lengths >= MIN_INTERACTIONS)
    if eligible.size <= max_users:
        return holdout_split(matrix, TEST_FRACTION, MIN_INTERACTIONS, seed)
    sample = np.sort(np.random.default_rng((seed, 1)).choice(eligible, max_users,
                                                              replace=False))
    rng = np.random.default_rng(seed)
    keep = np.ones(matrix.nnz, dtype=bool)
    items = []
    for user in sample.tolist():
        start, n = matrix.indptr[user], lengths[user]
        held = start + rng.choice(n, max(1, round(TEST_FRACTION * n)), replace=False)
        keep[held] = False
        items.append(np.sort(matrix.indices[held]))
    coo = matrix.tocoo()
    train = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])),
                          shape=matrix.shape, dtype=matrix.dtype)
    return Split(train, sample.astype(np.int64), items)


def grid_for(config: BuildConfig, feedback: str, n_users: int, n_items: int, nnz: int
             ) -> dict[str, tuple[Any, ...]]:
    """The values tried for each parameter: one value for what a flag fixes."""
    from svdfaiss.builder import auto_k

    base = auto_k(n_users, n_items)
    limit = min(n_users, n_items) - 1
    factors = K_FACTORS if nnz <= LARGE_K_MAX_INTERACTIONS else K_FACTORS[:2]
    ks = tuple(dict.fromkeys(min(limit, max(1, int(base * f))) for f in factors))
    return {
        "k": (config.k,) if config.k is not None else ks,
        "weighting": ((config.weighting,) if config.weighting != "auto"
                      else WEIGHTINGS["explicit" if feedback == "explicit" else "implicit"]),
        "beta": (config.beta,) if config.beta is not None else BETAS,
        "shrinkage": (config.shrinkage,) if config.shrinkage is not None else SHRINKAGES,
    }


def _given(config: BuildConfig) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if config.k is not None:
        given["k"] = config.k
    if config.weighting != "auto":
        given["weighting"] = config.weighting
    if config.beta is not None:
        given["beta"] = config.beta
    if config.shrinkage is not None:
        given["shrinkage"] = config.shrinkage
    return given


def untuned_record(config: BuildConfig, status: str, reason: str, chosen: dict[str, Any],
                   seconds: float) -> dict[str, Any]:
    """The manifest's `tuning` when nothing was tuned (status "off" or "skipped"): why, what
    the flags gave, and the settings used; the one shape every engine writes and every
    reader (the build summary, GET /model) takes."""
    return {"status": status, "reason": reason, "given": _given(config), "chosen": chosen,
            "seconds": round(seconds, 3)}


def _skip_reason(config: BuildConfig, matrix: sp.csr_matrix) -> str | None:
    if not config.tune:
        return "--no-tune"
    if config.objective == "rating":
        return "--objective rating ranks by the rating model, not by the SVD's scores"
    given = _given(config)
    if {"k", "weighting", "shrinkage"} <= given.keys():
        return "--k, --weighting and --shrinkage are all given"
    if matrix.nnz > MAX_INTERACTIONS:
        return (f"{matrix.nnz:,} interactions is above the tuning budget of "
                f"{MAX_INTERACTIONS:,} (docs/benchmarks.md); tune offline with `svdfaiss "
                "tune` and pass --k, --weighting and --shrinkage")
    eligible = int(np.count_nonzero(np.diff(matrix.indptr) >= MIN_INTERACTIONS))
    if eligible < MIN_VALIDATION_USERS:
        return (f"only {eligible} users have {MIN_INTERACTIONS} or more interactions "
                f"(tuning needs {MIN_VALIDATION_USERS} to validate on)")
    return None


def tune_matrix(matrix: sp.csr_matrix, feedback: str, config: BuildConfig) -> Tuned:
    """Choose what `config` leaves open on a validation split of `matrix` (the rows the
    build is given), or keep the defaults and say why. Deterministic for a --seed."""
    start = time.perf_counter()
    matrix = matrix.tocsr()
    given = _given(config)
    reason = _skip_reason(config, matrix)

    def resolved(values: dict[str, Any]) -> BuildConfig:
        return replace(config, k=values["k"], weighting=values["weighting"],
                       beta=values["beta"], shrinkage=values["shrinkage"])

    defaults = {"k": config.resolved_k(*matrix.shape),
                "weighting": config.resolved_weighting(feedback),
                "beta": config.resolved_beta(), "shrinkage": config.resolved_shrinkage()}
    if reason is None:
        grid = grid_for(config, feedback, *matrix.shape, matrix.nnz)
        try:
            with _one_thread():
                trials, users = _trials(matrix, grid, config.seed)
        except InvalidInput as exc:
            reason = str(exc)
    if reason is not None:
        return Tuned(resolved(defaults), untuned_record(
            config, "off" if not config.tune else "skipped", reason, defaults,
            time.perf_counter() - start))
    best = max(trials, key=lambda t: t[METRIC])  # the first of equals: defaults come first
    chosen = {name: best[name] for name in ("k", "weighting", "beta", "shrinkage")}
    default_trial = next((t for t in trials if all(t[n] == defaults[n] for n in chosen)),
                         None)
    return Tuned(resolved(chosen), {
        "status": "tuned", "metric": METRIC, "given": given,
        "tuned": [name for name in ("k", "weighting", "beta", "shrinkage")
                  if name not in given],
        "grid": {name: list(values) for name, values in grid.items()},
        "validation": {"split": "random holdout per user", "test_fraction": TEST_FRACTION,
                       "min_interactions": MIN_INTERACTIONS,
                       "seed": VALIDATION_SEED + config.seed, "users": users,
                       "max_users": MAX_VALIDATION_USERS},
        "trials": trials, "chosen": chosen, f"validation_{METRIC}": best[METRIC],
        f"defaults_validation_{METRIC}": (None if default_trial is None
                                          else default_trial[METRIC]),
        "seconds": round(time.perf_counter() - start, 3)})


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """BLAS and FAISS on one thread while the grid runs: its operations are small (a 610 x
    610 eigh, top 10 of 512 x 9,724 scores), and on the 2-core VM shared with other work the
    threads' spinning made ml-latest-small's tuning take 21 s instead of 2.4 s.
    threadpoolctl comes with scikit-learn."""
    import faiss
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        faiss.omp_set_num_threads(threads)


def _top10(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's 10 largest scores and their columns, best first (FAISS's heap: 4x
    numpy's argpartition)."""
    import faiss

    scores = np.ascontiguousarray(scores, dtype=np.float32)
    n = scores.shape[0]
    values = np.empty((n, 10), dtype=np.float32)
    ids = np.empty((n, 10), dtype=np.int64)
    heap = faiss.float_minheap_array_t()
    heap.nh, heap.k = n, 10
    heap.val, heap.ids = faiss.swig_ptr(values), faiss.swig_ptr(ids)
    heap.heapify()
    heap.addn(scores.shape[1], faiss.swig_ptr(scores))
    heap.reorder()
    return values, ids


def _factors(x: sp.csr_matrix, k: int, seed: int) -> Factors:
    """The top-k SVD of x; an exact dense solve of the smaller side's Gram matrix up to
    DENSE_SIDE (ARPACK's extraction of 256 vectors of a 610-side took 2 s, eigh 0.05 s)."""
    small = min(x.shape)
    if small > DENSE_SIDE:
        return truncated_svd(x, k, seed=seed)
    xd = x.astype(np.float64)
    users_side = x.shape[0] <= x.shape[1]
    gram = (xd @ xd.T if users_side else xd.T @ xd).toarray()
    # LAPACK's divide and conquer: 0.06-0.6 s at a 610-side where numpy's eigh took 0.07-3.3 s
    # (one thread; two threads on a loaded 2-core machine)
    eigenvalues, vectors = scipy.linalg.eigh(gram, driver="evd")
    order = np.argsort(eigenvalues)[::-1][:k]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    side = vectors[:, order]
    other = np.asarray((xd.T if users_side else xd) @ side) / np.where(s > 0, s, 1.0)
    u, v = (side, other) if users_side else (other, side)
    total = float(np.dot(xd.data, xd.data))
    energy = float(np.sum(s**2) / total) if total > 0 else 0.0
    return Factors(u.astype(x.dtype), s.astype(x.dtype),
                   np.ascontiguousarray(v, dtype=x.dtype), energy, total)


class _Judge:
    """NDCG@10 of a model's scores on the validation users, fast enough for a grid: float32
    scores in blocks, the top 10 by argpartition, hits by a sorted key lookup (the
    protocol's ranking_metrics, vectorized; ties may break differently)."""

    def __init__(self, split: Split, block: int = 512) -> None:
        self.train = split.train[split.test_users].tocsr()
        n_items = split.train.shape[1]
        self.n_items = n_items
        self.keys = np.sort(np.concatenate([
            row * n_items + items.astype(np.int64)
            for row, items in enumerate(split.test_items)] or [np.empty(0, np.int64)]))
        counts = np.array([len(items) for items in split.test_items])
        discounts = 1.0 / np.log2(np.arange(2, 12))
        self.ideal = np.cumsum(discounts)[np.minimum(counts, 10) - 1]
        self.discounts = discounts
        self.block = block

    def ndcg(self, queries: np.ndarray, items: np.ndarray) -> float:
        total = 0.0
        items_t = np.ascontiguousarray(items.T, dtype=np.float32)
        n = queries.shape[0]
        for start in range(0, n, self.block):
            stop = min(start + self.block, n)
            scores = np.asarray(queries[start:stop], dtype=np.float32) @ items_t
            seen = self.train[start:stop]
            rows = np.repeat(np.arange(stop - start), np.diff(seen.indptr))
            scores[rows, seen.indices] = -np.inf
            best, top = _top10(scores)
            finite = np.isfinite(best) & (top >= 0)
            keys = (np.arange(start, stop)[:, None] * self.n_items + top).ravel()
            found = np.searchsorted(self.keys, keys)
            found = np.minimum(found, max(self.keys.size - 1, 0))
            hits = ((self.keys[found] == keys).reshape(top.shape) & finite) if \
                self.keys.size else np.zeros(top.shape, dtype=bool)
            total += float(np.sum((hits @ self.discounts) / self.ideal[start:stop]))
        return float(total / max(n, 1))


def _trials(matrix: sp.csr_matrix, grid: dict[str, tuple[Any, ...]],
            seed: int) -> tuple[list[dict[str, Any]], int]:
    """Every grid point's validation NDCG@10: one SVD per (weighting, beta) at the largest k."""
    split = validation_split(matrix, VALIDATION_SEED + seed)
    ks = [k for k in grid["k"] if k < min(split.train.shape)]
    if not ks:
        raise InvalidInput(f"every k of the grid is at least min(users, items) = "
                           f"{min(split.train.shape)}")
    judge = _Judge(split)
    trials = []
    for scheme in grid["weighting"]:
        for beta in grid["beta"]:
            scale, mean_row = item_column_scale(split.train, scheme, beta)
            weighting = WeightingParams(scheme=scheme, beta=beta,
                                        mean_row_length=mean_row)
            largest = _factors(weight_rows(split.train, weighting, scale), max(ks), seed)
            for k in ks:
                factors = largest.leading(k)
                for shrinkage in grid["shrinkage"]:
                    model = fit_svd(split.train, k, scheme, beta, shrinkage, factors=factors)
                    value = judge.ndcg(model.queries(split.train[split.test_users]),
                                       model.embedding.items)
                    trials.append({"k": k, "weighting": scheme, "beta": beta,
                                   "shrinkage": shrinkage, METRIC: round(value, 6)})
    return trials, int(split.test_users.size)

