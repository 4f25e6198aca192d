"""GET /demo: the page and the catalog search it uses over HTTP, then the page itself driven
in headless Chromium (Debian's chromium through Playwright; skipped when either is absent),
with a screenshot kept in test-artifacts/ (or $SVDFAISS_TEST_ARTIFACTS)."""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from .helpers import server

ARTIFACTS = Path(os.environ.get("SVDFAISS_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))


def test_the_demo_page_and_catalog_search_over_http(sample_index_dir, rec, tmp_path):
    settings = {"SVDFAISS_EVENTS_LOG": str(tmp_path / "events.jsonl")}
    with server(sample_index_dir, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        page = client.get("/demo")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "<title>svdfaiss demo</title>" in page.text and "innerHTML" not in page.text
        found = client.get("/catalog/search", params={"q": "CAMERA", "limit": 5}).json()
        assert len(found["items"]) == 5
        assert all("camera" in i["title"].lower() for i in found["items"])
        counts = [i["interactions"] for i in found["items"]]
        assert counts == sorted(counts, reverse=True) and counts[0] > 0
        new_title = rec.catalog["title"][rec.n_items]  # a catalog item nobody bought
        fresh = client.get("/catalog/search", params={"q": new_title}).json()["items"]
        assert fresh[0]["title"] == new_title and fresh[0]["interactions"] == 0
        assert client.get("/catalog/search", params={"q": ""}).status_code == 422


def _chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on this machine (apt-get install chromium)")


def test_the_demo_page_in_headless_chromium(sample_index_dir, rec, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    user_id = rec.user_ids[11].decode()
    new_item = rec.n_items  # in the catalog, never bought: no CF neighbours of its own
    new_title = rec.catalog["title"][new_item]
    settings = {"SVDFAISS_EVENTS_LOG": str(tmp_path / "events.jsonl")}
    errors: list[str] = []
    with server(sample_index_dir, settings=settings) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A 404 the page asked for (cf neighbours of an item nobody bought) is logged by
            # the browser as a failed load: expected. Script errors are not.
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    and not msg.text.startswith("Failed to load resource") else None)
            page.goto(f"{url}/demo")
            expect(page.locator("#model")).to_contain_text("model sample")

            page.fill("#search", "camera")
            page.click("#search-form button")
            results = page.locator("#search-results li button")
            expect(results).to_have_count(10)
            first = results.nth(0)
            assert "(cameras)" in first.inner_text()
            first.click()
            for mode in ("cf", "content", "hybrid"):
                expect(page.locator(f"#similar-{mode} li button")).to_have_count(8)
            content = page.locator("#similar-content li button").all_inner_texts()
            assert all("(cameras)" in text for text in content), content

            page.fill("#search", new_title)
            page.click("#search-form button")
            expect(page.locator("#search-results li")).to_contain_text(["0 interactions"])
            page.locator("#search-results li button").nth(0).click()
            expect(page.locator("#similar-cf li.error")).to_contain_text("no interactions")
            expect(page.locator("#similar-content li button")).to_have_count(8)
            expect(page.locator("#similar-hybrid li button")).to_have_count(8)

            page.fill("#user", user_id)
            page.click("#user-form button")
            expect(page.locator("#recommendations > li")).to_have_count(8)
            expect(page.locator("#recommendations > li").nth(0)).to_contain_text("because of")
            expect(page.locator("#user-variant")).to_contain_text("variant sample")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []


def test_the_demo_page_before_a_search_by_id_with_examples_and_notices(sample_index_dir, rec,
                                                                        tmp_path):
    """Issue 16, item 16: no empty boxes before a search, an item opens by id, examples to
    click, API messages in words, and a notice when a user gets the popular fallback."""
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    new_item_id = rec.new_item_ids[0].decode()  # in the catalog, never bought
    settings = {"SVDFAISS_EVENTS_LOG": str(tmp_path / "events.jsonl")}
    with server(sample_index_dir, settings=settings) as url, sync_playwright() as playwright:
        examples = httpx.get(f"{url}/demo/examples").json()
        assert len(examples["items"]) == 3 and len(examples["users"]) == 3
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{url}/demo")
            expect(page.locator("#model")).to_contain_text("model sample")
            expect(page.locator("#similar")).to_be_hidden()  # no empty boxes yet
            expect(page.locator("#examples button")).to_have_count(6)

            page.locator("#examples button").nth(0).click()  # a popular item
            expect(page.locator("#similar")).to_be_visible()
            expect(page.locator("#similar-cf li button")).to_have_count(8)

            page.fill("#item", new_item_id)  # by id, no catalog search needed
            page.click("#item-form button")
            expect(page.locator("#item-heading")).to_contain_text(new_item_id)
            cf_error = page.locator("#similar-cf li.error")
            expect(cf_error).to_contain_text("Nobody has interacted with this item yet")
            assert "mode=" not in cf_error.inner_text()
            expect(page.locator("#similar-content li button")).to_have_count(8)

            page.fill("#user", "nobody-ever")
            page.click("#user-form button")
            expect(page.locator("#user-notice")).to_be_visible()
            expect(page.locator("#user-notice")).to_contain_text("most popular items")
            page.locator("#examples button").nth(3).click()  # an example user
            expect(page.locator("#recommendations > li")).to_have_count(8)
            expect(page.locator("#user-notice")).to_be_hidden()
        finally:
            browser.close()
