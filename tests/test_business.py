"""Business features on top of the model: catalog filters, the cold-user fallback and
explanations, in the Recommender and over HTTP against a real server."""

import httpx
import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.errors import InvalidInput, UnknownUser, UnsupportedFilter
from svdfaiss.recommender import CatalogFilter, Recommender

from .helpers import server, shared_file


def _passes(rec: Recommender, idx: np.ndarray, f: CatalogFilter) -> bool:
    ok = np.ones(idx.size, dtype=bool)
    if f.category is not None:
        ok &= np.array([f.category in str(c).split("|") for c in rec.catalog["category"][idx]])
    price = rec.catalog["price"][idx].astype(float)
    if f.min_price is not None:
        ok &= price >= f.min_price
    if f.max_price is not None:
        ok &= price <= f.max_price
    if f.in_stock is not None:
        ok &= rec.catalog["in_stock"][idx].astype(bool) == f.in_stock
    return bool(ok.all())


def _exact_recommendations(rec: Recommender, user: int, allowed: np.ndarray,
                           k: int) -> np.ndarray:
    scores = np.asarray(rec.item_factors) @ rec.user_vector(user)
    candidates = np.setdiff1d(allowed, rec.seen_items(user))
    return candidates[np.argsort(-scores[candidates], kind="stable")][:k]


def test_filters_return_only_matching_items_exactly_k_and_the_exact_top(rec):
    categories = rec.catalog["category"]
    name = categories[0]
    prices = rec.catalog["price"].astype(float)
    median_in_category = float(np.median(prices[categories == name]))
    filters = [CatalogFilter(category=name), CatalogFilter(min_price=50, max_price=120.0),
               CatalogFilter(in_stock=True), CatalogFilter(in_stock=False),
               CatalogFilter(category=name, max_price=median_in_category, in_stock=True)]
    for f in filters:
        in_catalog = rec.filter_set(f)  # catalog-only items too (content and hybrid modes)
        assert in_catalog is not None and in_catalog.size > 0
        allowed = in_catalog[in_catalog < rec.n_items]
        for row in (0, 11, 300):
            user = rec.user_ids[row].decode()
            got = rec.recommend(user, k=10, catalog_filter=f)
            expected = _exact_recommendations(rec, row, allowed, 10)
            assert _passes(rec, got.indexes, f)
            assert len(got) == min(10, expected.size)
            assert list(got.indexes) == list(expected)
        item = rec.item_ids[5].decode()
        similar = rec.similar_items(item, k=10, catalog_filter=f, mode="cf")
        assert _passes(rec, similar.indexes, f) and 5 not in similar.indexes
        assert len(similar) == min(10, allowed.size - (5 in allowed))
        for mode in ("content", "hybrid"):
            similar = rec.similar_items(item, k=10, catalog_filter=f, mode=mode)
            assert _passes(rec, similar.indexes, f) and 5 not in similar.indexes
            assert len(similar) == min(10, in_catalog.size - (5 in in_catalog))


def test_a_filter_keeping_one_item_in_a_thousand_still_returns_every_match(rec):
    allowed = np.sort(np.random.default_rng(0).choice(rec.n_items, 2, replace=False))
    ids = decode_ids(rec.item_ids[allowed])
    user = rec.user_ids[1].decode()
    got = rec.recommend(user, k=10, items=ids, exclude_seen=False)
    assert sorted(got.indexes) == list(allowed)
    # An unknown category is a mistake to report, not an empty answer (issue 16, item 8).
    with pytest.raises(InvalidInput, match="unknown category 'no such'"):
        rec.recommend(user, k=10, catalog_filter=CatalogFilter(category="no such"))


def test_cold_users_get_popular_items_and_fallback_none_keeps_the_error(rec):
    result = rec.recommend("nobody-ever", k=5, fallback="popular")
    counts = np.bincount(rec.rows.indices, minlength=rec.n_items)
    assert list(result.indexes) == list(np.argsort(-counts, kind="stable")[:5])
    assert all(r["reason"] == "popular" for r in result.records())
    name = rec.catalog["category"][3]
    in_category = rec.recommend("nobody-ever", k=5, fallback="popular",
                                catalog_filter=CatalogFilter(category=name))
    assert all(c == name for c in rec.catalog["category"][in_category.indexes])
    with pytest.raises(UnknownUser):
        rec.recommend("nobody-ever", k=5, fallback="none")


def test_explanations_decompose_the_score_into_history_items(rec):
    row = 42
    user = rec.user_ids[row].decode()
    result = rec.recommend(user, k=5, explain=True)
    seen = set(decode_ids(rec.item_ids[rec.seen_items(row)]))
    for record, because in zip(result.records(), result.because, strict=True):
        assert record["reason"] == "cf" and 1 <= len(because) <= 3
        assert {b["item_id"] for b in because} <= seen
        values = [b["contribution"] for b in because]
        assert values == sorted(values, reverse=True) and values[0] > 0
    # all contributions together are the score (the decomposition is exact)
    from svdfaiss.weighting import weight_rows

    weighted = weight_rows(rec.rows[row : row + 1], rec.weighting, rec.item_scale)
    item = result.indexes[0]
    total = float((np.asarray(rec.fold_factors)[weighted.indices] * weighted.data[:, None]
                   @ np.asarray(rec.item_factors)[item]).sum())
    assert total == pytest.approx(result.scores[0], rel=1e-4)


def test_a_filter_on_a_column_the_catalog_lacks_is_a_clear_error(sample, tmp_path):
    build(BuildConfig(input=sample.events, model="bare", index_dir=tmp_path, k=16))
    rec = Recommender.load(tmp_path, "bare")
    with pytest.raises(UnsupportedFilter, match="no catalog price column"):
        rec.recommend(rec.user_ids[0].decode(), catalog_filter=CatalogFilter(max_price=9))


def test_http_filters_fallback_and_explain(sample_index_dir, rec):
    name = str(rec.catalog["category"][0])
    user = rec.user_ids[9].decode()
    item = rec.item_ids[4].decode()
    with server(sample_index_dir) as url:
        body = httpx.get(f"{url}/users/{user}/recommendations",
                         params={"k": 7, "category": name, "in_stock": "true",
                                 "explain": "true"}).json()
        assert len(body["items"]) == 7
        assert all(i["category"] == name and i["in_stock"] for i in body["items"])
        assert all(i["reason"] == "cf" and i["because"] for i in body["items"])

        similar = httpx.get(f"{url}/items/{item}/similar",
                            params={"k": 5, "max_price": 100}).json()["items"]
        assert len(similar) == 5 and all(i["price"] <= 100 for i in similar)

        cold = httpx.get(f"{url}/users/nobody/recommendations", params={"k": 3}).json()
        assert [i["reason"] for i in cold["items"]] == ["popular"] * 3
        assert httpx.get(f"{url}/users/nobody/recommendations",
                         params={"fallback": "none"}).status_code == 404

        basket = httpx.post(f"{url}/recommendations", json={
            "item_ids": [item], "k": 4, "min_price": 20, "explain": True}).json()
        assert all(i["price"] >= 20 and i["reason"] == "basket" for i in basket["items"])
        assert all(b["item_id"] == item for i in basket["items"] for b in i["because"])

        users = [user, rec.user_ids[10].decode(), "nobody"]
        batch = httpx.post(f"{url}/batch/recommendations", json={
            "user_ids": users, "k": 3, "category": name, "explain": True}).json()["results"]
        assert [len(r.get("items", [])) for r in batch] == [3, 3, 0]
        assert "unknown user id 'nobody'" in batch[2]["error"]
        assert all(i["category"] == name and i["because"] for r in batch[:2] for i in r["items"])
        similar_batch = httpx.post(f"{url}/batch/similar", json={
            "item_ids": [item], "k": 4, "max_price": 100, "in_stock": True}).json()["results"]
        assert all(i["price"] <= 100 and i["in_stock"] for i in similar_batch[0]["items"])
        assert len(similar_batch[0]["items"]) == 4

        for bad in ({"min_price": -1}, {"max_price": "nan"}, {"fallback": "maybe"}):
            response = httpx.get(f"{url}/users/{user}/recommendations", params=bad)
            assert response.status_code == 422, bad


@pytest.mark.shared_data
def test_movielens_genre_filter_returns_only_that_genre_and_exactly_k(tmp_path):
    ratings = shared_file("ml-latest-small", "ratings.csv")
    movies = shared_file("ml-latest-small", "movies.csv")
    build(BuildConfig(input=ratings, model="ml", index_dir=tmp_path, catalog=movies))
    rec = Recommender.load(tmp_path, "ml")
    genres = rec.catalog["genres"]
    for genre in ("Horror", "Documentary", "Film-Noir"):
        for row in (0, 100, 500):
            got = rec.recommend(rec.user_ids[row].decode(), k=10,
                                catalog_filter=CatalogFilter(category=genre))
            assert len(got) == 10
            assert all(genre in str(genres[i]).split("|") for i in got.indexes)


def test_cli_filters_fallback_and_explain(sample_index_dir, rec):
    from .helpers import run_cli

    name = str(rec.catalog["category"][0])
    user = rec.user_ids[9].decode()
    base = ["--model", "sample", "--index-dir", str(sample_index_dir), "--json"]
    result = run_cli(["query", "recommend", user, "--k", "4", "--category", name,
                      "--in-stock", "--explain", *base])
    assert result.returncode == 0, result.stderr
    import json

    items = json.loads(result.stdout)["items"]
    assert len(items) == 4 and all(i["category"] == name and i["in_stock"] for i in items)
    assert all(i["because"] for i in items)
    cold = run_cli(["query", "recommend", "nobody", "--k", "2", *base])
    assert [i["reason"] for i in json.loads(cold.stdout)["items"]] == ["popular"] * 2
    strict = run_cli(["query", "recommend", "nobody", "--no-fallback", *base])
    assert strict.returncode == 3 and "unknown user id 'nobody'" in strict.stderr
    cheap = run_cli(["query", "similar", rec.item_ids[0].decode(), "--max-price", "60", *base])
    assert all(i["price"] <= 60 for i in json.loads(cheap.stdout)["items"])
