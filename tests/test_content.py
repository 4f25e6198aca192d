"""Content vectors, the cf/content/hybrid modes of similar items and catalog-only items:
in the Recommender, over HTTP on a real server, and on MovieLens titles and genres."""

import csv

import httpx
import numpy as np
import pyarrow as pa
import pytest

from svdfaiss.builder import BuildConfig, build, read_catalog
from svdfaiss.content import ContentParams, cf_share, content_vectors
from svdfaiss.data import ReadOptions, build_interactions, decode_ids, read_log
from svdfaiss.errors import InvalidInput, NotInMode, UnknownItem
from svdfaiss.evaluation import evaluate_similar_items

from .helpers import server, shared_file


def test_content_neighbours_share_words_and_categories():
    table = pa.table({"title": ["red wool scarf", "blue wool scarf", "red cotton shirt",
                                "steel kitchen knife", "steel chef knife", None],
                      "category": ["winter", "winter", "summer", "kitchen", "kitchen", None]})
    vectors, info = content_vectors(table, ContentParams(dim=4))
    assert info["text_columns"] == ["title"] and info["category_column"] == "category"
    assert info["items_with_content"] == 5 and not vectors[5].any()
    np.testing.assert_allclose(np.linalg.norm(vectors[:5], axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 3] and similarity[3, 4] > similarity[3, 0]


def test_content_columns_are_checked_by_name():
    table = pa.table({"title": ["a b"], "price": [1.0]})
    with pytest.raises(InvalidInput, match="no column description"):
        content_vectors(table, ContentParams(text_columns=("description",)))
    with pytest.raises(InvalidInput, match="no text or category column"):
        content_vectors(pa.table({"price": [1.0]}), ContentParams())


def test_content_on_without_a_catalog_is_refused(sample, tmp_path):
    with pytest.raises(InvalidInput, match="--content on needs a catalog"):
        build(BuildConfig(input=sample.events, model="m", index_dir=tmp_path, content="on"))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_catalog_only_items_get_content_neighbours_and_cf_refuses_them(rec, sample):
    assert rec.n_catalog > rec.n_items  # the sample catalog has items nobody bought
    new_id = rec.new_item_ids[0].decode()
    result = rec.similar_items(new_id, 10)
    assert result.reason == "content" and len(result) == 10 and new_id not in result.ids
    expected = np.asarray(rec.content_vectors) @ rec.content_vectors[rec.n_items]
    expected[rec.n_items] = -np.inf
    np.testing.assert_allclose(result.scores, np.sort(expected)[::-1][:10], rtol=1e-5)
    with pytest.raises(NotInMode, match="no interactions"):
        rec.similar_items(new_id, 10, mode="cf")
    with pytest.raises(UnknownItem):
        rec.similar_items("not-in-the-catalog", 10, mode="content")


def test_hybrid_scores_are_the_documented_blend(rec):
    item = 7
    result = rec.similar_items(rec.item_ids[item].decode(), 10, use_cache=False)
    assert result.reason == "hybrid" and len(result) == 10
    a = float(cf_share(np.bincount(rec.rows.indices, minlength=rec.n_items)[item : item + 1],
                       rec.content["hybrid_interactions"])[0])
    n = rec.n_items
    content = np.asarray(rec.content_vectors) @ rec.content_vectors[item]
    cf = np.zeros(rec.n_catalog, dtype=np.float32)
    cf[:n] = np.asarray(rec.item_vectors) @ rec.item_vectors[item]
    fused = a * cf + (1 - a) * content
    fused[item] = -np.inf
    np.testing.assert_allclose(result.scores, fused[result.indexes], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, np.sort(fused)[::-1][:10], rtol=1e-5, atol=1e-6)
    # The stored neighbours give the same answer.
    cached = rec.cached_similar_items(rec.item_ids[item].decode(), 10)
    assert cached is not None and cached.ids == result.ids


def test_modes_over_http(sample_index_dir, rec):
    item = rec.item_ids[3].decode()
    new_id = rec.new_item_ids[0].decode()
    with server(sample_index_dir) as url, httpx.Client(base_url=url, timeout=10) as client:
        for mode in ("cf", "content", "hybrid"):
            body = client.get(f"/items/{item}/similar", params={"k": 5, "mode": mode}).json()
            assert [i["item_id"] for i in body["items"]] == rec.similar_items(
                item, 5, mode=mode).ids
            assert {i["reason"] for i in body["items"]} == {mode}
        default = client.get(f"/items/{item}/similar?k=5").json()  # the fast path
        assert {i["reason"] for i in default["items"]} == {"hybrid"}
        fresh = client.get(f"/items/{new_id}/similar", params={"k": 5})
        assert fresh.status_code == 200 and fresh.json()["items"][0]["reason"] == "content"
        refused = client.get(f"/items/{new_id}/similar", params={"mode": "cf"})
        assert refused.status_code == 404 and "no interactions" in refused.json()["detail"]
        assert client.get(f"/items/{item}/similar", params={"mode": "x"}).status_code == 422
        batch = client.post("/batch/similar", json={"item_ids": [item, new_id], "k": 3,
                                                    "mode": "content"}).json()
        assert [len(r["items"]) for r in batch["results"]] == [3, 3]


def test_a_build_without_content_answers_hybrid_as_cf(sample, tmp_path):
    build(BuildConfig(input=sample.events, model="plain", index_dir=tmp_path,
                      catalog=sample.catalog, content="off"))
    from svdfaiss.recommender import Recommender

    plain = Recommender.load(tmp_path, "plain")
    assert plain.manifest["content"] is None and plain.n_catalog == plain.n_items
    item = plain.item_ids[0].decode()
    assert plain.similar_items(item, 5).reason == "cf"
    with pytest.raises(NotInMode, match="mode=cf"):
        plain.similar_items(item, 5, mode="content")


@pytest.mark.shared_data
def test_movielens_content_neighbours_share_genres_and_hybrid_keeps_cf_quality(tmp_path):
    ratings = shared_file("ml-latest-small", "ratings.csv")
    movies = shared_file("ml-latest-small", "movies.csv")
    inter = build_interactions(read_log(ratings, ReadOptions()), 1, 1, "last")
    table, _, _ = read_catalog(movies, inter.item_ids)
    vectors, info = content_vectors(table, ContentParams())
    assert info["text_columns"] == ["title"] and info["category_column"] == "genres"
    genres = [set(g.split("|")) for g in table["genres"].to_pylist()]
    rng = np.random.default_rng(0)
    sample = rng.choice(inter.n_items, 300, replace=False)
    scores = vectors[sample] @ vectors.T
    scores[np.arange(sample.size), sample] = -np.inf
    nearest = np.argsort(-scores, axis=1)[:, :10]
    shared = np.mean([[bool(genres[i] & genres[j]) for j in row]
                      for i, row in zip(sample, nearest, strict=True)])
    random_share = np.mean([bool(genres[i] & genres[j])
                            for i, j in rng.integers(0, inter.n_items, (3000, 2))])
    assert shared >= 0.95 and random_share < 0.6, (shared, random_share)  # measured 1.00, 0.45

    result = evaluate_similar_items(inter.matrix, vectors, 128, "none", 5.0)
    warm, cold = result["warm"], result["cold"]
    # Measured 0.0748 against 0.0703 (docs/evaluation.md): hybrid loses nothing on warm items.
    assert warm["hybrid"]["ndcg@10"] >= 0.97 * warm["cf"]["ndcg@10"], warm
    # Cold items: content beats random neighbours (measured 0.023 against 0.011) but not
    # popularity, which wins on MovieLens (0.150; docs/evaluation.md says why).
    assert cold["content"]["ndcg@10"] > 1.5 * cold["random"]["ndcg@10"], cold


def test_catalog_rows_of_new_items_follow_the_model_items(tmp_path):
    catalog = tmp_path / "items.csv"
    with catalog.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title"])
        writer.writerows([["b", "bee"], ["z", "zed"], ["a", "ay"], ["y", "why"], ["z", "dup"]])
    ids = np.array([b"a", b"b"], dtype="S1")
    table, info, new_ids = read_catalog(catalog, ids, keep_new=True)
    assert decode_ids(new_ids) == ["y", "z"] and info["new_items"] == 2
    assert table["title"].to_pylist() == ["ay", "bee", "why", "zed"]
    assert info["duplicate_ids"] == 1
    table, info, new_ids = read_catalog(catalog, ids)
    assert new_ids.size == 0 and table.num_rows == 2
