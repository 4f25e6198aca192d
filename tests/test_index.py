"""FAISS indexes against brute-force numpy: exact equality for flat, recall for ANN."""

import faiss
import numpy as np
import pytest

from svdfaiss.index import (
    IndexParams,
    build_index,
    exact_top_k,
    kind_of,
    mips_augment,
    mips_query,
    normalize_rows,
    search,
    selector_for,
)


def clustered(n, d, seed, clusters=20):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def brute_top_k(vectors, queries, k):
    scores = queries @ vectors.T
    top_ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top_ids, np.sort(scores, axis=1)[:, ::-1][:, :k]


def test_flat_index_equals_brute_force():
    x = normalize_rows(clustered(3000, 32, 0))
    q = x[:50]
    index = build_index(x, IndexParams(kind="flat"))
    scores, ids = search(index, q, 10)
    _, expected_scores = brute_top_k(x, q, 10)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    # ids agree up to exact ties: the score of each returned id is the brute-force score
    np.testing.assert_allclose(np.take_along_axis(q @ x.T, ids, axis=1), expected_scores,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_reach_recall_095(kind):
    x = normalize_rows(clustered(20_000, 64, 1))
    rng = np.random.default_rng(2)
    q = normalize_rows(x[rng.choice(x.shape[0], 200, replace=False)] +
                       0.1 * rng.standard_normal((200, 64)).astype(np.float32))
    index = build_index(x, IndexParams(kind=kind))
    assert kind_of(index) == kind
    _, ids = search(index, q, 10)
    exact, _ = brute_top_k(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert recall >= 0.95


def test_mips_reduction_keeps_exact_inner_product_scores():
    rng = np.random.default_rng(3)
    items = clustered(5000, 16, 3) * rng.uniform(0.1, 3.0, (5000, 1)).astype(np.float32)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    _, expected_scores = brute_top_k(items, queries, 10)
    augmented = mips_augment(items)
    norms = np.linalg.norm(augmented, axis=1)
    np.testing.assert_allclose(norms, norms.max(), rtol=1e-5)  # every item on one sphere
    index = build_index(augmented, IndexParams(kind="flat"))
    scores, _ = search(index, mips_query(queries), 10)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_selectors_allow_and_deny():
    x = normalize_rows(clustered(500, 8, 4))
    index = build_index(x, IndexParams(kind="flat"))
    allowed = np.arange(0, 500, 2)
    excluded = np.arange(0, 100)
    _, ids = search(index, x[:1], 20, selector_for(allowed, excluded))
    assert len(ids[0]) == 20
    assert all(i % 2 == 0 and i >= 100 for i in ids[0])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_large_allow_list_becomes_a_bitmap_with_the_same_answers(kind):
    x = normalize_rows(clustered(6000, 8, 5))
    index = build_index(x, IndexParams(kind=kind, ivf_nlist=40, ivf_nprobe=40))
    allowed = np.flatnonzero(np.arange(6000) % 3 != 0)  # 4000 ids: above BITMAP_MIN_ALLOWED
    excluded = np.array([1, 2, 4, 5, 7])
    bitmap = selector_for(allowed, excluded, n_total=6000)
    assert isinstance(bitmap, faiss.IDSelectorBitmap)
    hashed = selector_for(allowed, excluded)
    assert not isinstance(hashed, faiss.IDSelectorBitmap)
    _, ids_a = search(index, x[:5], 15, bitmap)
    _, ids_b = search(index, x[:5], 15, hashed)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert np.isin(ids_a, allowed).all() and not np.isin(ids_a, excluded).any()


def test_exact_top_k_breaks_ties_by_id_and_handles_small_candidate_sets():
    vectors = np.array([[1.0], [2.0], [2.0], [0.5]], dtype=np.float32)
    scores, ids = exact_top_k(vectors, np.array([1.0]), 3)
    assert ids.tolist() == [1, 2, 0]
    scores, ids = exact_top_k(vectors[[3, 0]], np.array([1.0]), 10, np.array([3, 0]))
    assert ids.tolist() == [0, 3] and scores.tolist() == [1.0, 0.5]


def test_auto_picks_flat_small_hnsw_medium_ivf_large():
    p = IndexParams()
    assert p.resolved(1_000).kind == "flat"
    assert p.resolved(100_000).kind == "hnsw"
    assert p.resolved(500_000).kind == "ivf"
    big = p.resolved(4_200_000)
    assert big.kind == "ivf" and big.ivf_nlist == 1024  # capped: build time grows with nlist
    assert p.resolved(250_000).ivf_nlist == 500
