"""Query parameters say what is wrong: an unknown one is a 422 naming it (on the fast path's
routes too), an unknown category and an empty price range are 422s, and /catalog/search
takes k like every other route (limit stays an alias)."""

from __future__ import annotations

import httpx
import pytest

from svdfaiss.errors import InvalidInput
from svdfaiss.recommender import CatalogFilter

from .helpers import server


@pytest.fixture(scope="module")
def url(sample_index_dir):  # type: ignore[no-untyped-def]
    with server(sample_index_dir) as base:
        yield base


@pytest.mark.parametrize("path", ["/items/{item}/similar", "/users/{user}/recommendations",
                                  "/users/{user}/similar", "/catalog/search", "/model",
                                  "/healthz"])
def test_a_misspelt_query_parameter_is_a_422_naming_it(url, rec, path):
    item, user = rec.item_ids[0].decode(), rec.user_ids[0].decode()
    target = url + path.format(item=item, user=user)
    params = {"q": "a"} if "search" in path else {}
    answer = httpx.get(target, params={**params, "k": 3, "in_stok": "true"})
    assert answer.status_code == 422, answer.text
    errors = {tuple(e["loc"]): e["msg"] for e in answer.json()["detail"]}
    assert "in_stok" in errors[("query", "in_stok")]
    spelt_right = {**params, "k": 3} if "{" in path or params else {}
    assert httpx.get(target, params=spelt_right).status_code == 200


def test_an_unknown_category_and_an_empty_price_range_say_what_is_wrong(url, rec):
    item = rec.item_ids[0].decode()
    unknown = httpx.get(f"{url}/items/{item}/similar", params={"category": "nonexistent"})
    assert unknown.status_code == 422 and "unknown category 'nonexistent'" in unknown.text
    empty = httpx.get(f"{url}/items/{item}/similar", params={"min_price": 50, "max_price": 10})
    assert empty.status_code == 422 and "min_price 50 is above max_price 10" in empty.text
    with pytest.raises(InvalidInput, match="unknown category"):
        rec.filter_set(CatalogFilter(category="nonexistent"))


def test_catalog_search_takes_k_and_keeps_limit_as_an_alias(url):
    by_k = httpx.get(f"{url}/catalog/search", params={"q": "a", "k": 3}).json()["items"]
    by_limit = httpx.get(f"{url}/catalog/search", params={"q": "a", "limit": 3}).json()["items"]
    default = httpx.get(f"{url}/catalog/search", params={"q": "a"}).json()["items"]
    assert len(by_k) == 3 and by_k == by_limit and len(default) == 10


def test_model_shows_the_recall_the_build_measured_and_the_evidence(url, rec):
    info = httpx.get(f"{url}/model").json()
    mips = info["indexes"]["items_mips"]
    manifest = rec.manifest["indexes"]["items_mips"]
    for field in ("recall_at_10", "recall_meets_target"):
        assert (field in mips) == (field in manifest)
        if field in manifest:
            assert mips[field] == manifest[field]
    assert info["evidence"]["items_with_cf_evidence"] == rec.manifest["evidence"][
        "items_with_cf_evidence"]
