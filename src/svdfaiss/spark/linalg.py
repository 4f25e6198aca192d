"""The truncated SVD of a matrix held as Spark row blocks: a randomized SVD.

MLlib's RowMatrix.computeSVD gathers an items x items Gramian on the driver in its local
modes (refused above 65,535 columns) and runs ARPACK on the driver with a full pass per
iteration in its distributed mode. Here each pass is one distributed product over the blocks
(Halko, Martinsson and Tropp 2011, with power iterations): for the current item basis
Omega (items x l, l = k + oversampling), every block computes Y_b = X_b Omega, the R factor
of its QR, and X_b^T Y_b; the driver merges the R factors into the R of the tall Y (a
tall-skinny QR by a tree of small QRs) and gets Z = X^T Q = (sum_b X_b^T Y_b) R^-1 without Q
ever being formed. Omega for the next pass is the orthonormal basis of Z; after the last
pass, Z = B^T with B = Q^T X, and its small SVD gives V and s. Only items x l and l x l
matrices reach the driver; user vectors X V F are computed per block afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from svdfaiss.factorize import Factors, _fix_signs, check_rank

DEFAULT_PASSES = 8  # distributed passes over the matrix (the first one plus 7 power steps)
DEFAULT_OVERSAMPLE = 32


def _merge(a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float]
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Two partial (R, X^T Y, ||X||_F^2): the R of the stacked R factors, and the sums."""
    r: np.ndarray = np.asarray(np.linalg.qr(np.vstack([a[0], b[0]]), mode="r"))
    return r, a[1] + b[1], a[2] + b[2]


def randomized_svd(blocks: Any, n_users: int, n_items: int, k: int,
                   weighted: Callable[[Any], Any],
                   passes: int = DEFAULT_PASSES, oversample: int = DEFAULT_OVERSAMPLE,
                   seed: int = 0, spark_context: Any = None) -> Factors:
    """The k largest singular values and right vectors of the weighted blocks; the
    Factors' user_factors are empty (0 x k): users are folded in per block (X V / s).

    `weighted(block)` gives a block's weighted CSR rows.
    """
    check_rank(k, (n_users, n_items))
    width = min(k + oversample, n_users, n_items)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n_items, width))
    z = np.zeros((n_items, width))
    for _ in range(max(1, passes)):
        # float32 products (the matrix is float32, as in the native solver); the small
        # QRs and the solve on the driver in float64.
        basis = spark_context.broadcast(np.ascontiguousarray(omega, dtype=np.float32))

        def product(block: Any, basis: Any = basis) -> tuple[np.ndarray, np.ndarray, float]:
            x = weighted(block)
            y = np.asarray(x @ basis.value, dtype=np.float32)
            r = (np.asarray(np.linalg.qr(y.astype(np.float64), mode="r")) if y.shape[0]
                 else np.zeros((0, y.shape[1])))
            data = x.data.astype(np.float64)
            return r, np.asarray(x.T @ y, dtype=np.float32), float(np.dot(data, data))

        r, xty, total_energy = blocks.map(product).treeReduce(_merge, depth=2)
        basis.unpersist()
        # Z = X^T Q with Q = Y R^-1: solve R^T Z^T = (X^T Y)^T.
        xty64 = xty.astype(np.float64)
        z = (np.linalg.solve(r.T, xty64.T).T if r.shape[0] == width
             else xty64 @ np.linalg.pinv(r))
        omega = np.linalg.qr(z)[0]
    v, s, _ = np.linalg.svd(z, full_matrices=False)
    v, s = np.ascontiguousarray(v[:, :k]), s[:k]
    vt = np.ascontiguousarray(v.T)
    _fix_signs(np.zeros((0, k)), vt)
    energy = float(np.sum(s**2) / total_energy) if total_energy > 0 else 0.0
    return Factors(user_factors=np.zeros((0, k), dtype=np.float32),
                   singular_values=s.astype(np.float32),
                   item_factors=np.ascontiguousarray(vt.T, dtype=np.float32),
                   explained_energy=energy, total_energy=float(total_energy))
