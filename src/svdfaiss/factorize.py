"""Truncated SVD of the weighted matrix, and folding rows into the learnt space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from svdfaiss.errors import InvalidInput

Solver = Literal["arpack", "randomized"]


@dataclass(frozen=True)
class Factors:
    """X ~ U diag(s) V^T with s descending; U is (users x k), V is (items x k)."""

    user_factors: np.ndarray  # U
    singular_values: np.ndarray  # s
    item_factors: np.ndarray  # V
    explained_energy: float  # sum(s^2) / ||X||_F^2

    @property
    def k(self) -> int:
        return int(self.singular_values.size)


def check_rank(k: int, shape: tuple[int, int]) -> None:
    limit = min(shape)
    if k < 1:
        raise InvalidInput(f"--k must be at least 1, got {k}")
    if k >= limit:
        raise InvalidInput(
            f"--k {k} must be smaller than min(users, items) = min{shape} = {limit} after "
            f"filtering; use --k {max(1, limit - 1)} or less"
        )


def _fix_signs(u: np.ndarray, vt: np.ndarray) -> None:
    """Make each component's largest item loading positive, so results are deterministic."""
    flip = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    flip[flip == 0] = 1
    u *= flip
    vt *= flip[:, None]


def _randomized(
    x: sp.csr_matrix, k: int, seed: int, oversample: int = 16, iterations: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Halko-Martinsson-Tropp randomized SVD with QR-stabilised power iterations."""
    rng = np.random.default_rng(seed)
    xt = x.T.tocsr()
    q = np.linalg.qr(x @ rng.standard_normal((x.shape[1], k + oversample)).astype(x.dtype))[0]
    for _ in range(iterations):
        q = np.linalg.qr(xt @ q)[0]
        q = np.linalg.qr(x @ q)[0]
    b = (xt @ q).T
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vt[:k]


def truncated_svd(x: sp.csr_matrix, k: int, solver: Solver = "arpack", seed: int = 0) -> Factors:
    """The k largest singular triplets of x, in x's floating dtype."""
    check_rank(k, x.shape)
    if solver == "arpack":
        v0 = np.random.default_rng(seed).standard_normal(min(x.shape)).astype(x.dtype)
        u, s, vt = svds(x, k=k, solver="arpack", v0=v0)
        order = np.argsort(s)[::-1]
        u, s, vt = u[:, order], s[order], vt[order]
    elif solver == "randomized":
        u, s, vt = _randomized(x, k, seed)
    else:
        raise InvalidInput(f"unknown solver {solver!r}; choose arpack or randomized")
    u = np.ascontiguousarray(u)
    vt = np.ascontiguousarray(vt)
    _fix_signs(u, vt)
    total = float(np.dot(x.data.astype(np.float64), x.data.astype(np.float64)))
    energy = float(np.sum(s.astype(np.float64) ** 2) / total) if total > 0 else 0.0
    return Factors(
        user_factors=u,
        singular_values=s,
        item_factors=np.ascontiguousarray(vt.T),
        explained_energy=energy,
    )


def fold_in(weighted_rows: sp.csr_matrix, item_factors: np.ndarray) -> np.ndarray:
    """Query vectors q = x V of weighted rows x.

    For a training row this equals its U diag(s) exactly (since X V = U S V^T V = U S), and
    the same formula places a row the model never saw (an anonymous basket) in that space.
    Its scores against all items are q V^T, the rank-k reconstruction of the row.
    """
    return np.asarray(weighted_rows @ item_factors, dtype=np.float32)
