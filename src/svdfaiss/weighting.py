"""Turn raw aggregated values into the matrix that is factorized.

The same function weights the training matrix at build time and a user's (or an anonymous
basket's) row at query time, so folding in a row reproduces exactly what the model saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput

Weighting = Literal["none", "binary", "log", "bm25"]
WEIGHTINGS: tuple[str, ...] = ("none", "binary", "log", "bm25")


@dataclass(frozen=True)
class WeightingParams:
    """Parameters of the row weighting; stored in the manifest."""

    scheme: Weighting = "log"
    beta: float = 0.0
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    mean_row_length: float = 1.0  # average row total of the training matrix (BM25)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_scheme(scheme: str, beta: float) -> None:
    if scheme not in WEIGHTINGS:
        raise InvalidInput(f"unknown weighting {scheme!r}; choose one of {', '.join(WEIGHTINGS)}")
    if not 0.0 <= beta <= 1.0:
        raise InvalidInput(f"--beta must be in [0, 1], got {beta}")


def item_column_scale(
    matrix: sp.csr_matrix, scheme: str, beta: float
) -> tuple[np.ndarray, float]:
    """Per-item column multipliers and the mean row total, learnt from the training matrix.

    scale_j = idf_j ** [scheme == bm25] * n_j ** -beta, with n_j the item's number of users
    and idf_j = log(N / n_j) (floored at a small positive value, so no column vanishes).
    """
    n_users = matrix.shape[0]
    item_users = np.bincount(matrix.indices, minlength=matrix.shape[1])
    row_totals = np.asarray(matrix.sum(axis=1)).ravel()
    mean_row = float(row_totals.mean()) if row_totals.size else 1.0
    return column_scale(item_users, n_users, scheme, beta), mean_row


def column_scale(item_users: np.ndarray, n_users: int, scheme: str, beta: float
                 ) -> np.ndarray:
    """item_column_scale from each item's number of users (n_j) and the number of users N;
    the Spark builder counts them in Spark and calls this."""
    check_scheme(scheme, beta)
    counts = np.asarray(item_users, dtype=np.float64)
    scale = np.ones(counts.size, dtype=np.float64)
    if scheme == "bm25":
        scale *= np.maximum(np.log(n_users / np.maximum(counts, 1.0)), 1e-3)
    if beta > 0:
        scale *= np.maximum(counts, 1.0) ** -beta
    return scale.astype(np.float32)


def weight_rows(
    rows: sp.csr_matrix, params: WeightingParams, column_scale: np.ndarray
) -> sp.csr_matrix:
    """Weighted copy of raw rows (float32).

    none: x; binary: 1; log: log(1 + x); bm25: x (k1 + 1) / (x + k1 (1 - b + b L_u / L)),
    L_u the row total and L the training mean; every scheme then times column_scale.
    """
    out = rows.astype(np.float32, copy=True)
    out.sort_indices()

    def entry_totals() -> np.ndarray:
        totals = np.asarray(out.sum(axis=1)).ravel()
        return np.repeat(totals, np.diff(out.indptr))

    _weigh(out.data, out.indices, entry_totals, params, column_scale)
    return out


def weight_row(values: np.ndarray, items: np.ndarray, params: WeightingParams,
               column_scale: np.ndarray) -> np.ndarray:
    """The weighted values (float32) of one raw row given as its values and item positions
    in ascending order: bit for bit the row `weight_rows` gives, without building a sparse
    matrix (the per-request path)."""
    data = np.array(values, dtype=np.float32)

    def entry_totals() -> np.ndarray:
        # The row total as scipy's csr sum computes it (np.add.reduceat), so BM25 matches.
        total = np.add.reduceat(data, np.zeros(1, dtype=np.intp)) if data.size else data
        return np.repeat(total, data.size)

    _weigh(data, items, entry_totals, params, column_scale)
    return data


def _weigh(data: np.ndarray, items: np.ndarray, entry_totals: Callable[[], np.ndarray],
           params: WeightingParams, column_scale: np.ndarray) -> None:
    """Weights raw float32 values in place; `entry_totals()` gives each entry's row total."""
    if params.scheme == "binary":
        data[:] = 1.0
    elif params.scheme == "log":
        np.log1p(np.maximum(data, 0), out=data)
    elif params.scheme == "bm25":
        norm = params.bm25_k1 * (
            1.0 - params.bm25_b
            + params.bm25_b * entry_totals() / max(params.mean_row_length, 1e-12)
        )
        data[:] = data * (params.bm25_k1 + 1.0) / (data + norm.astype(np.float32))
    data *= column_scale[items]
