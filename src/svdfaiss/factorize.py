"""Truncated SVD of the weighted matrix, and folding rows into the learnt space."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

Solver = Literal["arpack", "randomized"]
DENSE_MAX = 400  # a Gram matrix this small is solved exactly (eigh: milliseconds)
DENSE_K_SHARE = 4  # ... and so is one whose side is at most 4k (see _arpack)
DENSE_FALLBACK_MAX = 20_000  # where ARPACK fails, a dense solve is still affordable
D_FLOOR = 0.1  # smallest EASE diagonal d_i used to scale an item (see shrinkage_embedding)


@dataclass(frozen=True)
class Factors:
    """X ~ U diag(s) V^T with s descending; U is (users x k), V is (items x k)."""

    user_factors: np.ndarray  # U
    singular_values: np.ndarray  # s
    item_factors: np.ndarray  # V
    explained_energy: float  # sum(s^2) / ||X||_F^2
    total_energy: float = 0.0  # ||X||_F^2

    @property
    def k(self) -> int:
        return int(self.singular_values.size)

    def leading(self, k: int) -> Factors:
        """The first k components (the rank-k truncation of this factorization)."""
        s = self.singular_values[:k]
        energy = float(np.sum(s.astype(np.float64) ** 2) / self.total_energy
                       ) if self.total_energy > 0 else 0.0
        return Factors(self.user_factors[:, :k], s, self.item_factors[:, :k], energy,
                       self.total_energy)


@dataclass(frozen=True)
class Embedding:
    """How rows and items meet in the recommendation space.

    A row x is folded in as q = x @ fold and scores item i with q . items[i]. Without
    shrinkage both are V (PureSVD: the rank-k reconstruction of the row).
    """

    fold: np.ndarray  # items x k, float32
    items: np.ndarray  # items x k, float32
    component_weights: np.ndarray  # F, one per component (all 1 without shrinkage)
    shrinkage_lambda: float  # the absolute lambda (0: none)

    @property
    def shared(self) -> bool:
        return self.fold is self.items


def shrinkage_embedding(factors: Factors, shrinkage: float, n_items: int) -> Embedding:
    """EASE's closed form, restricted to the top-k components of the SVD.

    EASE (Steck 2019) scores an unseen item i for a row x as -(x P)_i / P_ii with
    P = (X'X + lambda I)^-1. Writing X'X = V S^2 V', that is (x V F V')_i / d_i with
    F = S^2 / (S^2 + lambda) and d_i = 1 - sum_j V_ij^2 F_j (exact when V holds every
    non-zero component and every d_i is above D_FLOOR): an inner product of q = x V F
    with V_i / d_i, so FAISS ranks it exactly. With k below the rank it is a low-rank
    EASE; components with s^2 << lambda barely count, so a moderate k loses little.
    `shrinkage` is lambda in units of the mean squared column norm ||X||_F^2 / items, which
    keeps it comparable across weightings.
    """
    v = np.asarray(factors.item_factors, dtype=np.float64)
    if shrinkage < 0:
        raise InvalidInput(f"--shrinkage must be >= 0, got {shrinkage}")
    if shrinkage == 0:
        same = np.ascontiguousarray(v, dtype=np.float32)
        return Embedding(same, same, np.ones(factors.k, dtype=np.float32), 0.0)
    lam = shrinkage * factors.total_energy / max(n_items, 1)
    s2 = np.asarray(factors.singular_values, dtype=np.float64) ** 2
    weights = s2 / (s2 + lam) if lam > 0 else np.ones_like(s2)
    d = 1.0 - (v * v) @ weights
    # d > 0 always (orthonormal V, F < 1), but an item that nearly owns a component gets a
    # tiny d: at 158k generated items one had d = 0.005, a vector 200x the next largest,
    # and the MIPS reduction then crowded every other item into one IVF list (5 ms a query
    # instead of 0.8). The floor caps that; on the three evaluation datasets the smallest d
    # is 0.15-0.63, so it changes no ranking there.
    d = np.maximum(d, D_FLOOR)
    return Embedding(
        fold=np.ascontiguousarray(v * weights, dtype=np.float32),
        items=np.ascontiguousarray(v / d[:, None], dtype=np.float32),
        component_weights=weights.astype(np.float32),
        shrinkage_lambda=float(lam),
    )


def check_rank(k: int, shape: tuple[int, int]) -> None:
    limit = min(shape)
    if limit < 2:
        raise InvalidInput(
            f"only {shape[0]} user(s) and {shape[1]} item(s) after filtering: a factorization "
            "needs at least 2 of each"
        )
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


def _gram_operator(x: sp.csr_matrix) -> LinearOperator:
    """v -> X^T (X v) without forming X^T X.

    The transpose is used as a CSC view (no copy), which multiplies faster than a
    materialised CSR transpose. Single-threaded on purpose: measured at Amazon scale,
    threading it made OpenBLAS's spinning threads (used by ARPACK between products) and the
    product threads fight for the two cores, and the whole solve got 3x slower.
    """
    # scipy.sparse.linalg (with scipy.linalg) imported where the build needs it: the
    # service imports this module for fold_in, and not those 0.1 s at start-up.
    from scipy.sparse.linalg import LinearOperator

    xt = x.T

    def matvec(v: np.ndarray) -> np.ndarray:
        return np.asarray(xt @ (x @ np.asarray(v, dtype=x.dtype).ravel()))

    n = x.shape[1]
    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=x.dtype)


def _parallel_product(x: sp.csr_matrix, dense: np.ndarray, threads: int = 2) -> np.ndarray:
    """x @ dense by row blocks in threads (scipy releases the GIL in sparse products)."""
    bounds = np.linspace(0, x.shape[0], threads + 1).astype(int)
    out = np.empty((x.shape[0], dense.shape[1]), dtype=np.result_type(x.dtype, dense.dtype))

    def block(i: int) -> None:
        out[bounds[i] : bounds[i + 1]] = x[bounds[i] : bounds[i + 1]] @ dense

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(block, range(threads)))
    return out


def _arpack(x: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k eigenpairs of the Gram matrix of the smaller side with ARPACK (Lanczos).

    X^T X = V S^2 V^T, so V are its eigenvectors, s = sqrt(eigenvalues) and U = X V / s.
    Against scipy's svds (50 s at Amazon scale) this takes about 25 s: it skips svds's
    final dense SVD of the tall X V and computes U on both cores.
    """
    transpose = x.shape[0] < x.shape[1]
    a = x.T.tocsr() if transpose else x
    n = a.shape[1]
    # Lanczos keeps 2k+1 vectors of length n: with k a quarter of n or more it is a slow dense
    # solve (k 256 at n 610: 3.2 s against 0.1 s for eigh), so solve it densely instead.
    if n <= max(DENSE_MAX, DENSE_K_SHARE * k):
        eigenvalues, vectors = _dense_eigh(a, k)
    else:
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

        v0 = np.random.default_rng(seed).standard_normal(n).astype(a.dtype)
        try:
            eigenvalues, vectors = eigsh(_gram_operator(a), k=k, v0=v0, which="LM")
        except (ArpackError, ArpackNoConvergence) as exc:
            if n > DENSE_FALLBACK_MAX:
                raise InvalidInput(f"the SVD did not converge ({exc}); try --solver "
                                   "randomized or a smaller --k") from None
            eigenvalues, vectors = _dense_eigh(a, k)  # degenerate spectra: exact instead
    order = np.argsort(eigenvalues)[::-1]
    s = np.sqrt(np.maximum(eigenvalues[order], 0)).astype(a.dtype)
    v = np.ascontiguousarray(vectors[:, order], dtype=a.dtype)
    u = _parallel_product(a, v)
    u /= np.where(s > 0, s, 1)
    u[:, s == 0] = 0
    return (v, s, u.T) if transpose else (u, s, v.T)


def _dense_eigh(a: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k eigenpairs of the dense Gram matrix: exact, for a small side."""
    gram = (a.T @ a).toarray().astype(np.float64)
    eigenvalues, vectors = np.linalg.eigh(gram)
    return eigenvalues[-k:], vectors[:, -k:]


def truncated_svd(x: sp.csr_matrix, k: int, solver: Solver = "arpack", seed: int = 0) -> Factors:
    """The k largest singular triplets of x, in x's floating dtype."""
    check_rank(k, x.shape)
    if solver == "arpack":
        u, s, vt = _arpack(x, k, seed)
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
        total_energy=total,
    )


def fold_in(weighted_rows: sp.csr_matrix, item_factors: np.ndarray) -> np.ndarray:
    """Query vectors q = x V of weighted rows x.

    For a training row this equals its U diag(s) exactly (since X V = U S V^T V = U S), and
    the same formula places a row the model never saw (an anonymous basket) in that space.
    Its scores against all items are q V^T, the rank-k reconstruction of the row.
    """
    return np.asarray(weighted_rows @ item_factors, dtype=np.float32)
