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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from svdfaiss.factorize import Factors, _fix_signs, check_rank

DEFAULT_PASSES = 8  # distributed passes over the matrix (the first one plus 7 power steps)
DEFAULT_OVERSAMPLE = 32


GRAM_SLICE = 65_536  # rows of Y converted to float64 at a time for its Gramian


def _add(a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float]
         ) -> tuple[np.ndarray, np.ndarray, float]:
    """Two blocks' partial (Y^T Y, X^T Y, ||X||_F^2) summed."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _gram(y: np.ndarray) -> np.ndarray:
    """Y^T Y in float64, a slice of rows at a time (no float64 copy of the whole block)."""
    g = np.zeros((y.shape[1], y.shape[1]))
    for lo in range(0, y.shape[0], GRAM_SLICE):
        part = y[lo : lo + GRAM_SLICE].astype(np.float64)
        g += part.T @ part
    return g


def _project(xty: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Z = X^T Q for the orthonormal Q = Y R^-1 with R^T R = Y^T Y; R = L^1/2 W^T from the
    Gramian's eigendecomposition, directions of Y below float64 rounding dropped (as a
    pseudo-inverse drops them: their columns of Z are 0)."""
    lam, w = np.linalg.eigh(gram)
    keep = lam > lam.max(initial=0.0) * gram.shape[0] * np.finfo(np.float64).eps
    inverse = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    return np.asarray(xty.astype(np.float64) @ (w * inverse))


def randomized_svd(blocks: Any, n_users: int, n_items: int, k: int,
                   weighted: Callable[[Any], Any],
                   passes: int = DEFAULT_PASSES, oversample: int = DEFAULT_OVERSAMPLE,
                   seed: int = 0, spark_context: Any = None) -> Factors:
    """The k largest singular values and right vectors of the weighted blocks; the
    Factors' user_factors are empty (0 x k): users are folded in per block (X V / s).

    `weighted(block)` gives a block's weighted CSR rows. The weighted blocks are computed
    once and cached for the passes.
    """
    from pyspark import StorageLevel

    check_rank(k, (n_users, n_items))
    width = min(k + oversample, n_users, n_items)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n_items, width))
    matrices = blocks.map(weighted).persist(StorageLevel.MEMORY_AND_DISK)
    total_energy = float(matrices.map(lambda x: float(np.dot(x.data.astype(np.float64),
                                                            x.data.astype(np.float64)))
                                      ).sum())
    passes = max(1, passes)
    z = np.zeros((n_items, width))
    for step in range(passes):
        # float32 products (the matrix is float32, as in the native solver); the small
        # factorizations on the driver in float64. A power step only needs the span of
        # X^T Y (any basis of Y gives the same one), so only the last pass, whose Z must be
        # X^T Q exactly, also sums the blocks' Gramians Y^T Y: no per-block QR of the tall
        # Y (that QR was most of a pass).
        last = step == passes - 1
        basis = spark_context.broadcast(np.ascontiguousarray(omega, dtype=np.float32))

        def product(x: Any, basis: Any = basis, last: bool = last
                    ) -> tuple[np.ndarray, np.ndarray, float]:
            y = np.asarray(x @ basis.value, dtype=np.float32)
            gram = _gram(y) if last else np.zeros((0, 0))
            return gram, np.asarray(x.T @ y, dtype=np.float32), 0.0

        gram, xty, _ = matrices.map(product).treeReduce(_add, depth=2)
        basis.unpersist()
        if last:
            z = _project(xty, gram)
        else:
            omega = np.linalg.qr(xty.astype(np.float64))[0]
    matrices.unpersist()
    v, s, _ = np.linalg.svd(z, full_matrices=False)
    v, s = np.ascontiguousarray(v[:, :k]), s[:k]
    vt = np.ascontiguousarray(v.T)
    _fix_signs(np.zeros((0, k)), vt)
    energy = float(np.sum(s**2) / total_energy) if total_energy > 0 else 0.0
    return Factors(user_factors=np.zeros((0, k), dtype=np.float32),
                   singular_values=s.astype(np.float32),
                   item_factors=np.ascontiguousarray(vt.T, dtype=np.float32),
                   explained_energy=energy, total_energy=float(total_energy))
