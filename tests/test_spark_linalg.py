"""The per-block numerics of the Spark engine, without Spark: the randomized SVD's last
pass (Z = X^T Q from summed Gramians against a QR of the whole Y) and the users-recall
truth kept a slice at a time (against a full sort)."""

from __future__ import annotations

import numpy as np

from svdfaiss.spark.linalg import _gram, _project


def test_project_is_x_transpose_q_for_an_orthonormal_basis_of_y() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 40)) * np.logspace(0, -2, 40)  # a decaying spectrum
    y = x @ rng.standard_normal((40, 12))
    z = _project(x.T @ y, y.T @ y)
    q = np.linalg.qr(y)[0]
    # The same Z up to a rotation of Q's basis: equal singular values and Gram matrices.
    np.testing.assert_allclose(np.linalg.svd(z, compute_uv=False),
                               np.linalg.svd(x.T @ q, compute_uv=False), rtol=1e-9)
    np.testing.assert_allclose(z @ z.T, (x.T @ q) @ (x.T @ q).T, atol=1e-9)


def test_project_drops_directions_y_does_not_have() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 30))
    y = x @ rng.standard_normal((30, 8))
    y[:, 5] = y[:, 2]  # rank 7 of 8 columns
    z = _project(x.T @ y, y.T @ y)
    assert np.isfinite(z).all()
    s = np.linalg.svd(z, compute_uv=False)
    assert s[-1] < 1e-6 * s[0]  # one column of Z is 0
    basis = np.linalg.svd(y, full_matrices=False)[0][:, :7]  # Y's 7-d column space
    np.testing.assert_allclose(s[:7], np.linalg.svd(x.T @ basis, compute_uv=False),
                               rtol=1e-9)


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
