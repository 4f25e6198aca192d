"""The per-block numerics of the Spark engine, without Spark: the randomized SVD's last
pass (the SVD of Z = X^T Q from summed Gramians against a QR of the whole Y), the power
steps' orthonormal basis and the users-recall
truth kept a slice at a time (against a full sort)."""

from __future__ import annotations

import numpy as np

from svdfaiss.spark.linalg import _gram, orthonormal_basis, right_factors


def _reference(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of the SVD of X^T Q, Q from a QR of Y (Y's column space, rank-revealed)."""
    u, sy, _ = np.linalg.svd(y, full_matrices=False)
    q = u[:, sy > sy[0] * 1e-12]
    v, s, _ = np.linalg.svd(x.T @ q, full_matrices=False)
    return v[:, :k], s[:k]


def _assert_same_vectors(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    signs = np.sign(np.einsum("ij,ij->j", a, b))
    np.testing.assert_allclose(a * signs, b, atol=atol)


def test_right_factors_are_those_of_x_transpose_q_for_an_orthonormal_basis_of_y() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 40)) * np.logspace(0, -2, 40)  # a decaying spectrum
    y = x @ rng.standard_normal((40, 12))
    v, s = right_factors((x.T @ y).astype(np.float32), y.T @ y, 8)
    v_ref, s_ref = _reference(x, y, 8)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    assert v.dtype == np.float32 and v.shape == (40, 8)
    _assert_same_vectors(v, v_ref, atol=1e-4)


def test_right_factors_drop_directions_y_does_not_have() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 30))
    y = x @ rng.standard_normal((30, 8))
    y[:, 5] = y[:, 2]  # rank 7 of 8 columns
    v, s = right_factors((x.T @ y).astype(np.float32), y.T @ y, 8)
    assert np.isfinite(v).all() and np.isfinite(s).all()
    assert s[-1] < 1e-6 * s[0]  # the eighth direction is not there
    assert not v[:, -1].any()
    v_ref, s_ref = _reference(x, y, 7)
    np.testing.assert_allclose(s[:7], s_ref, rtol=1e-5)
    _assert_same_vectors(v[:, :7], v_ref, atol=1e-4)


def test_orthonormal_basis_spans_the_columns_even_when_ill_conditioned(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import svdfaiss.spark.linalg as linalg

    monkeypatch.setattr(linalg, "GRAM_SLICE", 37)  # several slices
    rng = np.random.default_rng(8)
    # Columns scaled over five orders of magnitude, as power steps leave them.
    a = (rng.standard_normal((300, 10)) * np.logspace(0, -5, 10)).astype(np.float32)
    q = orthonormal_basis(a)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.T.astype(np.float64) @ q, np.eye(10), atol=1e-5)
    # The same span: a projected onto q loses nothing beyond float32 rounding per column.
    a64 = a.astype(np.float64)
    residual = a64 - q @ (q.T.astype(np.float64) @ a64)
    assert (np.linalg.norm(residual, axis=0) <= 1e-3 * np.linalg.norm(a64, axis=0)).all()


def test_gram_by_slices_matches_the_whole_product(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import svdfaiss.spark.linalg as linalg

    monkeypatch.setattr(linalg, "GRAM_SLICE", 7)
    y = np.random.default_rng(5).standard_normal((50, 6)).astype(np.float32)
    y64 = y.astype(np.float64)
    np.testing.assert_allclose(_gram(y), y64.T @ y64, rtol=1e-12)


def test_best_scores_by_slices_match_a_full_sort(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import svdfaiss.spark.build as spark_build

    monkeypatch.setattr(spark_build, "USERS_RECALL_SLICE", 7)
    rng = np.random.default_rng(6)
    for n_users in (3, 7, 50):
        start = 100
        stored = rng.standard_normal((n_users, 8)).astype(np.float32)
        queries = rng.standard_normal((20, 8)).astype(np.float32)
        sampled = np.sort(rng.choice(np.arange(90, start + n_users + 10), 20, replace=False))
        scores = stored @ queries.T
        own = (sampled >= start) & (sampled < start + n_users)
        scores[sampled[own] - start, np.flatnonzero(own)] = -np.inf
        full = -np.sort(-scores, axis=0)[:10]
        full = np.vstack([full, np.full((10 - full.shape[0], 20), -np.inf)])
        got = spark_build.best_scores(stored, start, queries, sampled, 10)
        assert got.shape == (10, 20)
        # Slices of a float32 product may round differently in the last bit.
        np.testing.assert_allclose(got, full, rtol=1e-6)


def test_block_partials_summed_by_chunk_give_x_transpose_y(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The chunked, sparse partials of several blocks, summed as combineByKey sums them,
    equal the dense sum of X_b^T X_b Omega; untouched items get rows of 0."""
    import scipy.sparse as sp

    from svdfaiss.spark.linalg import GRAM_KEY, block_partials, chunk_summer, sum_partials

    rng = np.random.default_rng(7)
    n_items, width, chunk = 23, 5, 4
    blocks = [sp.random(9, n_items - 1, density=0.2, format="csr", random_state=s,
                        dtype=np.float32) for s in range(3)]
    # Item 22, the last one, is untouched by every block.
    blocks = [sp.hstack([b, sp.csr_matrix((9, 1), dtype=np.float32)], format="csr")
              for b in blocks]
    basis = rng.standard_normal((n_items, width)).astype(np.float32)
    create, merge, combine = chunk_summer(n_items, width, chunk)
    summed: dict[int, np.ndarray] = {}
    for b in blocks:
        local: dict[int, np.ndarray] = {}
        for key, part in block_partials(b, basis, with_gram=True, chunk=chunk):
            local[key] = merge(local[key], part) if key in local else create(part)
        for key, acc in local.items():
            summed[key] = combine(summed[key], acc) if key in summed else acc
    xty, gram = sum_partials(summed.items(), n_items, width, chunk)
    expected = sum(b.T @ (b @ basis) for b in blocks)
    np.testing.assert_allclose(xty, expected, rtol=1e-5, atol=1e-5)
    assert not xty[22].any()
    ys = [np.asarray(b @ basis, dtype=np.float64) for b in blocks]
    assert gram is not None and GRAM_KEY in summed
    np.testing.assert_allclose(gram, sum(y.T @ y for y in ys), rtol=1e-5)
