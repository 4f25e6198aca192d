"""The Spark rating fit's per-block math, without Spark: each block's share of the item
side summed over blocks is the native item side's, the user side per block is the native
one on those rows, and the whole fit driven over an in-memory stand-in for the RDDs gives
the native model (tests/test_spark.py runs it on a real local[2] session)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from svdfaiss.rating import (
    _cg_side,
    augmented,
    data_product,
    fit_rating_model,
    right_hand_side,
)
from svdfaiss.spark.linalg import chunk_summer, sum_partials
from svdfaiss.spark.rating import (
    fit_rating_spark,
    item_bias_partials,
    item_partials,
    user_step,
)
from svdfaiss.spark.read import Block

pytest.importorskip("pyspark", reason="the fit imports pyspark's StorageLevel")


def _ratings(users: int = 120, items: int = 45, seed: int = 2) -> sp.csr_matrix:
    """Half-star ratings with user and item offsets and a rank-2 taste; user 7 has no
    ratings (an empty row, as --min-rating leaves them) and the last item none either."""
    rng = np.random.default_rng(seed)
    taste = rng.standard_normal((users, 2)) @ rng.standard_normal((2, items))
    dense = 3.2 + rng.normal(0, 0.5, (users, 1)) + rng.normal(0, 0.4, (1, items)) + taste
    dense = np.clip(np.round(dense * 2) / 2, 0.5, 5.0)
    dense[rng.random((users, items)) > 0.2] = 0
    dense[7] = 0
    dense[:, -1] = 0
    dense[np.arange(users) != 7, rng.integers(0, items - 1, users)[np.arange(users) != 7]
          ] = 4.0  # everyone else rated something
    return sp.csr_matrix(dense.astype(np.float32))


def _blocks(matrix: sp.csr_matrix, cuts: Iterable[int]) -> list[Block]:
    """The matrix's rows cut into Blocks at the given user positions."""
    edges = [0, *cuts, matrix.shape[0]]
    out = []
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        rows = matrix[lo:hi]
        out.append(Block(index=i, start=lo,
                         user_ids=np.array([f"u{u:04d}".encode() for u in range(lo, hi)]),
                         indptr=rows.indptr.astype(np.int64),
                         indices=rows.indices.astype(np.int32),
                         values=rows.data.astype(np.float32)))
    return out


class ListRDD:
    """The few RDD methods the fit calls, over a list, eagerly."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)

    def map(self, f: Callable[[Any], Any]) -> ListRDD:
        return ListRDD(f(x) for x in self.items)

    def flatMap(self, f: Callable[[Any], Iterable[Any]]) -> ListRDD:
        return ListRDD(y for x in self.items for y in f(x))

    def zip(self, other: ListRDD) -> ListRDD:
        return ListRDD(zip(self.items, other.items, strict=True))

    def persist(self, *_: Any) -> ListRDD:
        return self

    def unpersist(self) -> ListRDD:
        return self

    def count(self) -> int:
        return len(self.items)

    def treeReduce(self, f: Callable[[Any, Any], Any], depth: int = 2) -> Any:
        return functools.reduce(f, self.items)

    def combineByKey(self, create: Callable[..., Any], merge: Callable[..., Any],
                     combine: Callable[..., Any], numPartitions: int = 1) -> ListRDD:  # noqa: N803
        out: dict[int, Any] = {}
        for key, value in self.items:
            out[key] = merge(out[key], value) if key in out else create(value)
        return ListRDD(out.items())

    def toLocalIterator(self, prefetchPartitions: bool = False) -> Iterator[Any]:  # noqa: N803
        return iter(self.items)


class _Broadcast:
    def __init__(self, value: Any) -> None:
        self.value = value

    def unpersist(self) -> None:
        pass

    def destroy(self) -> None:
        pass


class _Context:
    defaultParallelism = 2  # noqa: N815

    def broadcast(self, value: Any) -> _Broadcast:
        return _Broadcast(value)


def _summed(parts: Iterable[tuple[int, Any]], n_items: int, width: int, chunk: int,
            dtype: type = np.float32) -> np.ndarray:
    create, merge, _ = chunk_summer(n_items, width, chunk, dtype)
    acc: dict[int, np.ndarray] = {}
    for key, part in parts:
        acc[key] = merge(acc[key], part) if key in acc else create(part)
    return sum_partials(acc.items(), n_items, width, chunk, dtype)[0]


def test_item_partials_summed_over_blocks_are_the_native_item_side() -> None:
    matrix = _ratings()
    n_users, n_items = matrix.shape
    blocks = _blocks(matrix, [30, 31, 77])
    rng = np.random.default_rng(4)
    p, b_u = rng.standard_normal((n_users, 3)), rng.standard_normal(n_users)
    x = rng.standard_normal((n_items, 4)).astype(np.float32)
    mu = 3.1
    parts = [part for blk in blocks for part in item_partials(
        blk, (p[blk.start : blk.start + blk.n_users], b_u[blk.start : blk.start + blk.n_users]),
        x, mu, with_rhs=True, chunk=8)]
    got = _summed(parts, n_items, 8, chunk=8)
    # The native item side: the items x users mask, z_u = [p_u, 1], t = r - mu - b_u.
    by_item = matrix.T.tocsr()
    mask = sp.csr_matrix((np.ones(by_item.nnz), by_item.indices, by_item.indptr),
                         shape=by_item.shape)
    z = augmented(p)
    targets = by_item.data - mu - b_u[by_item.indices]
    np.testing.assert_allclose(got[:, :4], data_product(mask, z)(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, 4:], right_hand_side(mask, targets, z), rtol=1e-4,
                               atol=1e-4)
    assert not got[-1].any()  # an item nobody rated


def test_item_bias_partials_sum_residuals_and_counts_per_item() -> None:
    matrix = _ratings()
    blocks = _blocks(matrix, [50])
    b_u = np.random.default_rng(5).standard_normal(matrix.shape[0])
    parts = [part for blk in blocks for part in item_bias_partials(
        blk, (np.zeros((blk.n_users, 0)), b_u[blk.start : blk.start + blk.n_users]), 3.0,
        chunk=16)]
    got = _summed(parts, matrix.shape[1], 2, chunk=16, dtype=np.float64)
    coo = matrix.tocoo()
    np.testing.assert_allclose(got[:, 0], np.bincount(coo.col, coo.data - 3.0 - b_u[coo.row],
                                                      matrix.shape[1]), rtol=1e-12)
    np.testing.assert_array_equal(got[:, 1], np.bincount(coo.col, minlength=matrix.shape[1]))


def test_user_step_per_block_is_the_native_user_side_on_those_rows() -> None:
    matrix = _ratings()
    n_users, n_items = matrix.shape
    rng = np.random.default_rng(6)
    q, item_bias = rng.standard_normal((n_items, 3)), rng.standard_normal(n_items)
    start = rng.standard_normal((n_users, 4))
    mu = 3.2
    coo = matrix.tocoo()
    mask = sp.csr_matrix((np.ones(matrix.nnz), matrix.indices, matrix.indptr),
                         shape=matrix.shape)
    native = _cg_side(mask, coo.data - mu - item_bias[coo.col], q, start, 0.2, 5.0, 2)
    for blk in _blocks(matrix, [10, 64]):
        rows = slice(blk.start, blk.start + blk.n_users)
        p, b = user_step(blk, (start[rows, :3], start[rows, 3]), q, item_bias, mu, 0.2, 5.0,
                         2)
        np.testing.assert_allclose(p, native[rows, :3], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, native[rows, 3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [0, 4])
def test_the_fit_over_blocks_is_the_native_fit(k: int) -> None:
    """Within 1e-5: both run float32 CG products, summed in another order (2e-6 seen)."""
    matrix = _ratings()
    native = fit_rating_model(matrix, k=k, reg=0.2, seed=3)
    blocks = _blocks(matrix, [17, 60, 61, 100])
    fitted = fit_rating_spark(ListRDD(blocks), matrix.shape[1], k, 0.2, _Context(), seed=3)
    model = fitted.items
    p = np.vstack([s[0] for s in fitted.users.items])
    b_u = np.concatenate([s[1] for s in fitted.users.items])
    assert model.mu == pytest.approx(native.mu, rel=1e-12)
    assert (model.low, model.high) == (native.low, native.high)
    np.testing.assert_allclose(b_u, native.user_bias, atol=1e-5)
    np.testing.assert_allclose(model.item_bias, native.item_bias, atol=1e-5)
    np.testing.assert_allclose(p, native.user_factors, atol=1e-5)
    np.testing.assert_allclose(model.item_factors, native.item_factors, atol=1e-5)
    users, items = np.nonzero(np.ones(matrix.shape))
    predicted = (model.mu + b_u[users] + model.item_bias[items]
                 + np.einsum("ij,ij->i", p[users], model.item_factors[items]))
    np.testing.assert_allclose(np.clip(predicted, model.low, model.high),
                               native.predict(users, items), atol=1e-5)
