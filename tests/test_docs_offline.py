"""/docs and /redoc work with no network: their assets come from this service (they loaded
Swagger UI and ReDoc from a CDN and were blank offline). Driven in headless Chromium with
every request to another host aborted."""

from __future__ import annotations

import httpx

from .helpers import server
from .test_demo import _chromium


def test_docs_assets_are_served_by_the_service(sample_index_dir):
    with server(sample_index_dir) as url:
        for page in ("/docs", "/redoc"):
            html = httpx.get(url + page).text
            assert "cdn.jsdelivr.net" not in html and "/static-offline-docs/" in html
        js = httpx.get(url + "/static-offline-docs/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000


def test_docs_list_the_operations_in_chromium_with_the_network_blocked(sample_index_dir):
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    with server(sample_index_dir) as url, sync_playwright() as playwright:
        schema = httpx.get(url + "/openapi.json").json()
        operations = sum(len(methods) for methods in schema["paths"].values())
        blocked: list[str] = []
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox"])
        try:
            context = browser.new_context()

            def only_local(route):  # type: ignore[no-untyped-def]
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            page.goto(f"{url}/docs")
            expect(page.locator(".opblock")).to_have_count(operations, timeout=20_000)
            assert page.locator(".opblock-summary-path").first.inner_text().startswith("/")
            page.goto(f"{url}/redoc")
            expect(page.locator("h1").first).to_contain_text("svdfaiss", timeout=20_000)
        finally:
            browser.close()
    assert operations > 10
