"""The truncated SVD of a matrix held as Spark row blocks: a randomized SVD.

MLlib's RowMatrix.computeSVD gathers an items x items Gramian on the driver in its local
modes (refused above 65,535 columns) and runs ARPACK on the driver with a full pass per
iteration in its distributed mode. Here each pass is one distributed product over the blocks
(Halko, Martinsson and Tropp 2011, with power iterations): for the current item basis
Omega (items x l, l = k + oversampling), every block computes Y_b = X_b Omega and
X_b^T Y_b. Omega for the next pass is an orthonormal basis of Z = sum_b X_b^T Y_b (the
span of X^T Q for any orthonormal basis Q of Y). The last pass also sums the blocks'
Gramians Y_b^T Y_b, which give an R with R^T R = Y^T Y and Z = X^T Q = (X^T Y) R^-1 without
Q ever being formed: Z = B^T with B = Q^T X, and its small SVD gives V and s. Only
items x l and l x l matrices reach the driver; user vectors X V F are computed per block afterwards.

A block's X_b^T Y_b is sent as the rows of the items it touches, cut by item chunk, and the
chunks are summed by key on the executors (a shuffle), so the driver (and the JVM that
carries task results to it) receives each item's row once, a chunk at a time: never one
dense items x l matrix per block, which at 476k items was 183 MB a block and more than a
1 GB driver heap held. The rating model's item-side sums (svdfaiss.spark.rating) go the same
way (`chunk_rows`, `summed_by_item`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from svdfaiss.factorize import Factors, _fix_signs, check_rank

DEFAULT_PASSES = 8  # distributed passes over the matrix (the first one plus 7 power steps)
DEFAULT_OVERSAMPLE = 32


GRAM_SLICE = 65_536  # rows of Y converted to float64 at a time for its Gramian
ITEM_CHUNK = 16_384  # items per key of the summed X^T Y (a 6 MB float32 chunk at l = 96)
GRAM_KEY = -1  # the key of the summed Gramians Y^T Y

Partial = tuple[np.ndarray | None, np.ndarray]  # (rows within the chunk, their values)


def chunk_rows(touched: np.ndarray, rows: np.ndarray, chunk: int = ITEM_CHUNK
               ) -> list[tuple[int, Partial]]:
    """The rows of the (sorted) items `touched`, keyed by item chunk, each given by its
    position within the chunk: what a block sends to be summed per item."""
    keys = touched // chunk
    cuts = np.flatnonzero(np.diff(keys)) + 1
    return [(int(keys[lo]), (touched[lo:hi] - int(keys[lo]) * chunk, rows[lo:hi]))
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, touched.size], strict=True)
            if hi > lo]


def block_partials(x: Any, basis: np.ndarray, with_gram: bool, chunk: int = ITEM_CHUNK,
                   dtype: type = np.float32) -> list[tuple[int, Partial]]:
    """One block's share of a pass: the rows of X_b^T (X_b basis) of the items it touches,
    keyed by item chunk (rows given within the chunk), and its Gramian under GRAM_KEY."""
    y: np.ndarray = np.asarray(x @ basis, dtype=dtype)
    by_item = x.T.tocsr()
    touched = np.flatnonzero(np.diff(by_item.indptr))
    out = chunk_rows(touched, np.asarray(by_item[touched] @ y, dtype=dtype), chunk)
    if with_gram:
        out.append((GRAM_KEY, (None, _gram(y))))
    return out


def chunk_summer(n_items: int, width: int, chunk: int = ITEM_CHUNK, dtype: type = np.float32
                 ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """combineByKey's three functions: the partial rows of one chunk (or the Gramians)
    summed into a dense chunk of `dtype` (float64 Gramian). A key's first partial stays
    sparse, so a block's own output (one partial per key) is shuffled as sent."""

    def create(part: Partial) -> Partial | np.ndarray:
        return part

    def merge(acc: Partial | np.ndarray, part: Partial) -> np.ndarray:
        total = dense(acc, width, chunk, dtype)
        positions, values = part
        if positions is None:  # a Gramian
            total += values
        else:
            total[positions] += values
        return total

    def combine(a: Partial | np.ndarray, b: Partial | np.ndarray) -> np.ndarray:
        if isinstance(b, tuple):
            return merge(a, b)
        b += dense(a, width, chunk, dtype)
        return b

    return create, merge, combine


def dense(acc: Partial | np.ndarray, width: int, chunk: int = ITEM_CHUNK,
          dtype: type = np.float32) -> np.ndarray:
    """A summed chunk (or Gramian) as a dense array: a sparse partial spread into rows of
    0 (a fresh array: the partial may be shared with Spark's cache)."""
    if not isinstance(acc, tuple):
        return acc
    positions, values = acc
    if positions is None:
        return np.array(values, dtype=np.float64)
    out: np.ndarray = np.zeros((chunk, width), dtype=dtype)
    out[positions] = values
    return out


def summed_by_item(partials: Any, n_items: int, width: int, reducers: int,
                   dtype: type = np.float32, chunk: int = ITEM_CHUNK
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """sum_partials of an RDD of (key, Partial): the blocks' per-item rows summed by item
    chunk on the executors (combineByKey), taken to the driver a chunk at a time."""
    create, merge, combine = chunk_summer(n_items, width, chunk, dtype)
    summed = partials.combineByKey(create, merge, combine, numPartitions=reducers)
    return sum_partials(summed.toLocalIterator(), n_items, width, chunk, dtype)


def reducer_count(n_items: int, spark_context: Any, chunk: int = ITEM_CHUNK) -> int:
    """Partitions of a per-item sum: one per item chunk, at most two per core."""
    return max(1, min(-(-n_items // chunk), int(spark_context.defaultParallelism) * 2))


def sum_partials(chunks: Any, n_items: int, width: int, chunk: int = ITEM_CHUNK,
                 dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray | None]:
    """(the per-item sums as items x width of `dtype`, the summed Gramian or None) from
    (key, summed chunk) pairs, taken one at a time; items no block touched keep rows of 0."""
    xty: np.ndarray = np.zeros((n_items, width), dtype=dtype)
    gram = None
    for key, value in chunks:
        if key == GRAM_KEY:
            gram = dense(value, width)
            continue
        lo = key * chunk
        hi = min(lo + chunk, n_items)
        xty[lo:hi] = dense(value, width, chunk, dtype)[: hi - lo]
    return xty, gram


def _gram(y: np.ndarray) -> np.ndarray:
    """Y^T Y in float64, a slice of rows at a time (no float64 copy of the whole block)."""
    g = np.zeros((y.shape[1], y.shape[1]))
    for lo in range(0, y.shape[0], GRAM_SLICE):
        part = y[lo : lo + GRAM_SLICE].astype(np.float64)
        g += part.T @ part
    return g


def _whitener(gram: np.ndarray) -> np.ndarray:
    """T (l x l) with T^T (Y^T Y) T = I on Y's column space: Y T = Q is orthonormal, from
    the Gramian's eigendecomposition; directions below float64 rounding are dropped (their
    columns of T are 0, as a pseudo-inverse drops them)."""
    lam, w = np.linalg.eigh(gram)
    keep = lam > lam.max(initial=0.0) * gram.shape[0] * np.finfo(np.float64).eps
    inverse = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    return np.asarray(w * inverse)


def _times(a: np.ndarray, small: np.ndarray) -> np.ndarray:
    """a (tall, float32) @ small (float64), in float64 a slice of rows at a time, as float32:
    no float64 copy of the tall matrix."""
    out = np.empty((a.shape[0], small.shape[1]), dtype=np.float32)
    for lo in range(0, a.shape[0], GRAM_SLICE):
        out[lo : lo + GRAM_SLICE] = a[lo : lo + GRAM_SLICE].astype(np.float64) @ small
    return out


def orthonormal_basis(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of a tall float32 matrix's columns (the next pass's Omega), by
    two rounds of whitening through its l x l Gramian: the driver holds two tall float32
    matrices, where a Householder QR held four or more (1.5 GB at 476k items)."""
    for _ in range(2):  # the second round restores the orthogonality the first loses
        a = _times(a, _whitener(_gram(a)))
    return a


def right_factors(xty: np.ndarray, gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k singular values and right vectors (items x k, float32) of Z = X^T Q, Q the
    orthonormal basis of Y with Y^T Y = gram, from X^T Y without forming Z or its SVD: Z = X^T
    Y T, so Z^T Z = T^T (X^T Y)^T (X^T Y) T, whose eigenvectors W give V = X^T Y T W / s."""
    t = _whitener(gram)
    lam, w = np.linalg.eigh(t.T @ _gram(xty) @ t)
    order = np.argsort(lam)[::-1][:k]
    s = np.sqrt(np.maximum(lam[order], 0.0))
    scale = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    return _times(xty, (t @ w[:, order]) * scale), s


def randomized_svd(blocks: Any, n_users: int, n_items: int, k: int,
                   weighted: Callable[[Any], Any],
                   passes: int = DEFAULT_PASSES, oversample: int = DEFAULT_OVERSAMPLE,
                   seed: int = 0, spark_context: Any = None, chunk: int = ITEM_CHUNK
                   ) -> Factors:
    """The k largest singular values and right vectors of the weighted blocks; the
    Factors' user_factors are empty (0 x k): users are folded in per block (X V / s).

    `weighted(block)` gives a block's weighted CSR rows. The weighted blocks are computed
    once and cached for the passes.
    """
    from pyspark import StorageLevel

    check_rank(k, (n_users, n_items))
    width = min(k + oversample, n_users, n_items)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n_items, width)).astype(np.float32)
    matrices = blocks.map(weighted).persist(StorageLevel.MEMORY_AND_DISK)
    total_energy = float(matrices.map(lambda x: float(np.dot(x.data.astype(np.float64),
                                                            x.data.astype(np.float64)))
                                      ).sum())
    passes = max(1, passes)
    reducers = reducer_count(n_items, spark_context, chunk)
    v = np.zeros((n_items, 0), dtype=np.float32)
    s = np.zeros(0)
    for step in range(passes):
        # float32 products (the matrix is float32, as in the native solver); the small
        # factorizations on the driver in float64. A power step only needs the span of
        # X^T Y (any basis of Y gives the same one), so only the last pass, whose Z must be
        # X^T Q exactly, also sums the blocks' Gramians Y^T Y: no per-block QR of the tall
        # Y (that QR was most of a pass).
        last = step == passes - 1
        basis = spark_context.broadcast(np.ascontiguousarray(omega))
        omega = np.empty((0, width), dtype=np.float32)  # the broadcast holds it: freed here

        def product(x: Any, basis: Any = basis, last: bool = last
                    ) -> list[tuple[int, Partial]]:
            return block_partials(x, basis.value, last, chunk)

        xty, gram = summed_by_item(matrices.flatMap(product), n_items, width, reducers,
                                   chunk=chunk)
        basis.destroy()  # unpersist() would keep the driver's copy: 183 MB a pass at 476k items
        if last:
            assert gram is not None
            v, s = right_factors(xty, gram, k)
        else:
            omega = orthonormal_basis(xty)
        del xty
    matrices.unpersist()
    vt = np.ascontiguousarray(v.T)
    _fix_signs(np.zeros((0, k)), vt)
    energy = float(np.sum(s**2) / total_energy) if total_energy > 0 else 0.0
    return Factors(user_factors=np.zeros((0, k), dtype=np.float32),
                   singular_values=s.astype(np.float32),
                   item_factors=np.ascontiguousarray(vt.T, dtype=np.float32),
                   explained_energy=energy, total_energy=float(total_energy))
