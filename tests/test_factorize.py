"""The SVD and fold-in against numpy's dense SVD: known answers to tight tolerances."""

import numpy as np
import pytest
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput
from svdfaiss.factorize import fold_in, truncated_svd


def random_sparse(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    return sp.random(rows, cols, density=density, random_state=rng, format="csr",
                     data_rvs=lambda n: rng.uniform(0.5, 5.0, n))


@pytest.mark.parametrize(("rows", "cols", "k", "seed"),
                         [(40, 30, 5, 0), (80, 50, 12, 1), (30, 60, 8, 2)])
def test_arpack_matches_dense_svd(rows, cols, k, seed):
    x = random_sparse(rows, cols, 0.3, seed)
    dense = x.toarray()
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    f = truncated_svd(x, k, "arpack", seed=seed)
    np.testing.assert_allclose(f.singular_values, s[:k], rtol=1e-5)
    reconstruction = f.user_factors @ np.diag(f.singular_values) @ f.item_factors.T
    expected = u[:, :k] @ np.diag(s[:k]) @ vt[:k]
    assert np.abs(reconstruction - expected).max() <= 1e-5 * np.abs(expected).max()
    assert f.explained_energy == pytest.approx((s[:k] ** 2).sum() / (s**2).sum(), rel=1e-9)


def test_randomized_solver_is_close_to_dense_svd():
    x = random_sparse(300, 200, 0.1, 3)
    s = np.linalg.svd(x.toarray(), compute_uv=False)
    f = truncated_svd(x, 10, "randomized", seed=0)
    np.testing.assert_allclose(f.singular_values, s[:10], rtol=2e-2)


def test_fold_in_of_a_training_row_is_its_user_vector():
    x = random_sparse(60, 40, 0.2, 4)
    f = truncated_svd(x, 8)
    q = fold_in(x, f.item_factors)
    np.testing.assert_allclose(q, f.user_factors * f.singular_values, atol=1e-5)


def test_signs_are_deterministic_across_seeds():
    x = random_sparse(50, 40, 0.3, 5)
    a = truncated_svd(x, 6, seed=1)
    b = truncated_svd(x, 6, seed=2)
    np.testing.assert_allclose(a.item_factors, b.item_factors, atol=1e-6)


def test_rank_limits_are_explained():
    x = random_sparse(10, 6, 0.9, 6)
    with pytest.raises(InvalidInput, match=r"--k 6 must be smaller than min\(users, items\)"):
        truncated_svd(x, 6)
    with pytest.raises(InvalidInput, match="needs at least 2 of each"):
        truncated_svd(sp.csr_matrix(np.ones((1, 5))), 1)


def test_degenerate_and_small_matrices_factorize_exactly(monkeypatch):
    """A rank-1 matrix (ARPACK's Arnoldi factorization breaks down on it) and a small one."""
    rank_one = sp.csr_matrix(np.ones((30, 12), dtype=np.float32))
    factors = truncated_svd(rank_one, 4)
    np.testing.assert_allclose(factors.singular_values[0], np.sqrt(30 * 12), rtol=1e-5)
    np.testing.assert_allclose(factors.singular_values[1:], 0, atol=1e-3)
    rng = np.random.default_rng(3)
    x = sp.random(300, 200, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    dense = truncated_svd(x, 8)  # 200 columns: the exact dense path
    monkeypatch.setattr("svdfaiss.factorize.DENSE_MAX", 0)
    lanczos = truncated_svd(x, 8)
    np.testing.assert_allclose(dense.singular_values, lanczos.singular_values, rtol=1e-4)
    np.testing.assert_allclose(dense.singular_values,
                               np.linalg.svd(x.toarray(), compute_uv=False)[:8], rtol=1e-4)
    fallback = truncated_svd(rank_one, 4)  # Lanczos first; on breakdown, the dense solve
    np.testing.assert_allclose(fallback.singular_values, factors.singular_values, atol=1e-3)
