"""/metrics with two workers adds up every worker's counts (it read 33 or 7 of 40 requests,
whichever worker answered the scrape)."""

from __future__ import annotations

import re

import httpx

from .helpers import server

SIMILAR = re.compile(r'^svdfaiss_requests_total\{[^}]*route="/items/\{item_id:path\}/similar"'
                     r'[^}]*\} ([0-9.e+]+)$', re.MULTILINE)


def test_two_workers_scrape_the_same_totals(sample_index_dir, rec):
    item = rec.item_ids[3].decode()
    with server(sample_index_dir, extra_args=["--workers", "2"]) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(40):
            assert client.get(f"/items/{item}/similar", params={"k": 5}).status_code == 200
        seen = set()
        for _ in range(30):
            # a new connection each time, so that both workers answer some scrapes
            body = httpx.get(f"{url}/metrics", timeout=10).text
            seen.add(sum(float(v) for v in SIMILAR.findall(body)))
        assert seen == {40.0}
