"""The rating objective on Spark: svdfaiss.rating's biased matrix factorization, its passes
over the ratings distributed over the row blocks of users.

The native fit (`rating.fit_rating_model`) alternates between the two sides; here each side
runs where its state lives:
- **Users** (p_u, b_u) stay on the executors, one array pair per block in an RDD aligned with
  the blocks (zipped with them): each user-side step is the native code on the block's own
  rows (their ridge regressions are independent), given the broadcast item side. Each new
  state is persisted and the old one unpersisted; the bundle gets it a block at a time.
- **Items** (q_i, b_i, n x (k + 1)) sit on the driver. What they need from every user (the
  bias sums, the SVD start's R^T R B, and for each conjugate-gradient step the products
  sum_u z_u z_u^T x_i and the right-hand sides sum_u t_ui z_u) is a distributed pass whose
  per-item rows each block sends by item chunk, summed on the executors
  (`linalg.summed_by_item`); the small CG updates, the QRs and the l x l eigenproblem of
  the start run on the driver with the native functions.

The same seed and sketch as the native fit, so the two agree to rounding: float64 sums for
the biases and the start, float32 CG products as in the native solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput
from svdfaiss.rating import (
    BIAS_ROUNDS,
    DEFAULT_BIAS_REG,
    DEFAULT_CG_STEPS,
    DEFAULT_ITERATIONS,
    START_POWER_STEPS,
    RatingModel,
    _cg_side,
    _solve_side,
    augmented,
    cg_steps,
    check_params,
    data_product,
    ridge_diagonal,
    right_hand_side,
    shrunk_means,
    start_factors,
    start_sketch,
)
from svdfaiss.spark.linalg import (
    ITEM_CHUNK,
    Partial,
    _gram,
    block_partials,
    chunk_rows,
    reducer_count,
    summed_by_item,
)
from svdfaiss.spark.read import Block

UserState = tuple[np.ndarray, np.ndarray]  # a block's P (users x k) and b_u, float64


@dataclass
class SparkRatingModel:
    """A fitted rating model whose user side stays on the executors."""

    items: RatingModel  # mu, low, high and the item side; no user rows (0 x k)
    users: Any  # RDD[UserState], aligned with the blocks it was fitted on, persisted
    broadcasts: list[Any] = field(default_factory=list)  # what `users` was computed from

    def release(self) -> None:
        """Unpersist the user state; destroy the item-side broadcasts it came from."""
        self.users.unpersist()
        for b in self.broadcasts:
            b.destroy()


def _entries(block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row within the block, item, rating as float64) of each of the block's ratings."""
    rows = np.repeat(np.arange(block.n_users), np.diff(block.indptr))
    return rows, block.indices.astype(np.int64), block.values.astype(np.float64)


def moments(block: Block) -> tuple[float, int, float, float]:
    """The block's rating sum, count, min and max (inf and -inf when it has none)."""
    values = block.values.astype(np.float64)
    if not values.size:
        return 0.0, 0, np.inf, -np.inf
    return float(values.sum()), int(values.size), float(values.min()), float(values.max())


def _add_moments(a: tuple[float, int, float, float], b: tuple[float, int, float, float]
                 ) -> tuple[float, int, float, float]:
    return a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])


def item_bias_partials(block: Block, state: UserState, mu: float,
                       chunk: int = ITEM_CHUNK) -> list[tuple[int, Partial]]:
    """Per touched item: [sum of r_ui - mu - b_u, n_ui] over the block's users, by chunk."""
    rows, items, ratings = _entries(block)
    n_items = int(items.max()) + 1 if items.size else 0
    sums = np.bincount(items, ratings - mu - state[1][rows], n_items)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    touched = np.flatnonzero(counts)
    return chunk_rows(touched, np.column_stack([sums[touched], counts[touched]]), chunk)


def user_biases(block: Block, item_bias: np.ndarray, mu: float, bias_reg: float,
                k: int) -> UserState:
    """The block's half-round of rating._biases: b_u = sum (r - mu - b_i) / (n_u + bias_reg);
    P zeros (k wide) until the sweeps."""
    rows, items, ratings = _entries(block)
    b = shrunk_means(np.bincount(rows, ratings - mu - item_bias[items], block.n_users),
                     np.bincount(rows, minlength=block.n_users), bias_reg)
    return np.zeros((block.n_users, k)), b


def residuals(block: Block, state: UserState, item_bias: np.ndarray, mu: float,
              n_items: int) -> sp.csr_matrix:
    """The block's rows of R: r_ui - mu - b_u - b_i (float64), what the SVD start factors."""
    rows, items, ratings = _entries(block)
    return sp.csr_matrix((ratings - mu - state[1][rows] - item_bias[items], block.indices,
                          block.indptr), shape=(block.n_users, n_items))


def user_step(block: Block, state: UserState, q: np.ndarray, item_bias: np.ndarray,
              mu: float, reg: float, bias_reg: float, steps: int) -> UserState:
    """The user side of a sweep for the block's users: rating._cg_side (or the exact
    _solve_side at 0 steps) on their rows, from their previous [p_u, b_u]."""
    _, items, ratings = _entries(block)
    mask = sp.csr_matrix((np.ones(items.size), block.indices, block.indptr),
                         shape=(block.n_users, q.shape[0]))
    values = ratings - mu - item_bias[items]
    solved = (_solve_side(mask, values, q, reg, bias_reg) if steps == 0 else
              _cg_side(mask, values, q, np.column_stack([state[0], state[1]]), reg, bias_reg,
                       steps))
    k = q.shape[1]
    return np.ascontiguousarray(solved[:, :k]), np.ascontiguousarray(solved[:, k])


def item_partials(block: Block, state: UserState, x: np.ndarray, mu: float, with_rhs: bool,
                  chunk: int = ITEM_CHUNK) -> list[tuple[int, Partial]]:
    """The block's share of the item side's A x (its data part, rating.data_product) for
    the items it touches, and with `with_rhs` their right-hand sides after it
    (sum_u (r_ui - mu - b_u) z_u), z_u = [p_u, 1]; rows keyed by item chunk (float32)."""
    rows, _, ratings = _entries(block)
    nnz = ratings.size
    # The transpose carries each rating's position (1-based: a 0 would be a missing entry).
    by_item = sp.csr_matrix((np.arange(1, nnz + 1), block.indices, block.indptr),
                            shape=(block.n_users, x.shape[0])).T.tocsr()
    touched = np.flatnonzero(np.diff(by_item.indptr))
    sub = by_item[touched]
    mask = sp.csr_matrix((np.ones(sub.nnz, dtype=np.float32), sub.indices, sub.indptr),
                         shape=sub.shape)
    z = augmented(state[0])
    out = data_product(mask, z)(np.ascontiguousarray(x[touched], dtype=np.float32))
    if with_rhs:
        targets = (ratings - mu - state[1][rows])[sub.data - 1]
        out = np.hstack([out, right_hand_side(mask, targets, z)])
    return chunk_rows(touched, np.asarray(out, dtype=np.float32), chunk)


def fit_rating_spark(blocks: Any, n_items: int, k: int, reg: float, spark_context: Any,
                     bias_reg: float = DEFAULT_BIAS_REG,
                     iterations: int = DEFAULT_ITERATIONS, seed: int = 0,
                     steps: int = DEFAULT_CG_STEPS) -> SparkRatingModel:
    """rating.fit_rating_model over the blocks' ratings (an RDD of Blocks in user order);
    the users' [p_u, b_u] come back as an RDD aligned with `blocks`."""
    from pyspark import StorageLevel

    if steps < 1:
        raise InvalidInput("the Spark rating fit runs conjugate-gradient steps (>= 1); the "
                           "exact item-side solve is native only")
    total, nnz, low, high = blocks.map(moments).treeReduce(_add_moments, depth=2)
    check_params(nnz, k, reg, iterations)
    mu = total / nnz
    reducers = reducer_count(n_items, spark_context)
    broadcasts: list[Any] = []

    def share(value: np.ndarray) -> Any:
        b = spark_context.broadcast(value)
        broadcasts.append(b)
        return b

    def advance(old: Any, step: Callable[[tuple[Block, UserState]], UserState]) -> Any:
        """The next user state, persisted and computed before the old one is dropped."""
        new = blocks.zip(old).map(step).persist(StorageLevel.MEMORY_AND_DISK)
        new.count()
        old.unpersist()
        return new

    users = blocks.map(lambda b: (np.zeros((b.n_users, 0)), np.zeros(b.n_users)))
    item_count = np.zeros(n_items)
    item_bias = np.zeros(n_items)
    for _ in range(BIAS_ROUNDS):
        sums = summed_by_item(blocks.zip(users).flatMap(
            lambda pair: item_bias_partials(pair[0], pair[1], mu)),
            n_items, 2, reducers, np.float64)[0]
        item_count = sums[:, 1]
        item_bias = shrunk_means(sums[:, 0], item_count, bias_reg)
        bias_b = share(item_bias)

        def biases(pair: tuple[Block, UserState], bias_b: Any = bias_b) -> UserState:
            return user_biases(pair[0], bias_b.value, mu, bias_reg, k)

        users = advance(users, biases)
    q = _start(blocks, users, item_bias, mu, n_items, k, seed, reducers, share)
    diagonal = ridge_diagonal(item_count, k + 1, reg, bias_reg)
    for _ in range(iterations):
        q_b, bias_b = share(q), share(item_bias)

        def sweep(pair: tuple[Block, UserState], q_b: Any = q_b, bias_b: Any = bias_b
                  ) -> UserState:
            return user_step(pair[0], pair[1], q_b.value, bias_b.value, mu, reg, bias_reg,
                             steps)

        users = advance(users, sweep)

        def item_pass(x: np.ndarray, with_rhs: bool, users: Any = users) -> np.ndarray:
            x_b = spark_context.broadcast(np.ascontiguousarray(x, dtype=np.float32))
            width = (k + 1) * (2 if with_rhs else 1)
            summed = summed_by_item(blocks.zip(users).flatMap(
                lambda pair, x_b=x_b: item_partials(pair[0], pair[1], x_b.value, mu, with_rhs)),
                n_items, width, reducers)[0]
            x_b.destroy()
            return summed.astype(np.float32)

        def times_a(x: np.ndarray) -> np.ndarray:
            return np.asarray(item_pass(x, False) + diagonal * x)

        x = np.column_stack([q, item_bias]).astype(np.float32)
        first = item_pass(x, True)
        residual = first[:, k + 1:] - (first[:, : k + 1] + diagonal * x)
        solved = cg_steps(times_a, x, residual, steps).astype(np.float64)
        q, item_bias = solved[:, :k], solved[:, k]
    items = RatingModel(mu, np.zeros(0), item_bias, np.zeros((0, k)), q, low, high)
    return SparkRatingModel(items, users, broadcasts)


def _start(blocks: Any, users: Any, item_bias: np.ndarray, mu: float, n_items: int, k: int,
           seed: int, reducers: int, share: Callable[[np.ndarray], Any]) -> np.ndarray:
    """rating._svd_start with its products distributed: R^T (R B) summed by item chunk
    (float64), the last Gram (R B)^T (R B) summed as a k + 8 square."""
    from pyspark import StorageLevel

    if k == 0:
        return np.zeros((n_items, 0))
    bias_b = share(item_bias)
    resid = blocks.zip(users).map(lambda pair: residuals(
        pair[0], pair[1], bias_b.value, mu, n_items)).persist(StorageLevel.MEMORY_AND_DISK)
    basis = start_sketch(n_items, k, seed)
    try:
        for _ in range(1 + START_POWER_STEPS):
            basis_b = share(basis)
            rtrb = summed_by_item(resid.flatMap(lambda r, basis_b=basis_b: block_partials(
                r, basis_b.value, False, dtype=np.float64)), n_items, basis.shape[1], reducers,
                np.float64)[0]
            basis = np.linalg.qr(rtrb)[0]
        basis_b = share(basis)
        gram = resid.map(lambda r: _gram(np.asarray(r @ basis_b.value))).treeReduce(
            lambda a, b: a + b, depth=2)
    finally:
        resid.unpersist()
    return start_factors(basis, gram, k)
