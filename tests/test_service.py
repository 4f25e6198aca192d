"""The HTTP service against a real uvicorn process on 127.0.0.1 (a free port per server)."""

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.config import Settings
from svdfaiss.data import decode_ids
from svdfaiss.recommender import Recommender
from svdfaiss.service.app import FastPath, Metrics, Models
from svdfaiss.service.fastpath import ENTRY_OVERHEAD, AnswerCache

from .helpers import TOKEN, server


@pytest.fixture(scope="module")
def versions(tmp_path_factory, sample) -> Path:
    """A model with versions v1..v4 built from the sample (CURRENT: v1)."""
    index_dir = tmp_path_factory.mktemp("served")
    for version, k in (("v2", 16), ("v3", 24), ("v4", 32), ("v1", 64)):
        build(BuildConfig(input=sample.events, model="sample", index_dir=index_dir,
                          catalog=sample.catalog, k=k, version=version))
    return index_dir


@pytest.fixture(scope="module")
def live(versions) -> Iterator[tuple[str, Recommender]]:
    with server(versions) as url:
        yield url, Recommender.load(versions, "sample")


@pytest.fixture
def own_copy(versions, tmp_path) -> Path:
    """A private copy of the versions, for tests that move CURRENT."""
    target = tmp_path / "indexes"
    shutil.copytree(versions, target)
    return target


def records(results):
    return [{**r, "score": pytest.approx(r["score"], rel=1e-6, abs=1e-7)}
            for r in results.records()]


def test_each_endpoint_equals_the_recommender(live):
    url, rec = live
    item, other = decode_ids(rec.item_ids[7:9])
    user = decode_ids(rec.user_ids[3:4])[0]
    deny = rec.similar_items(item, 3).ids

    body = httpx.get(f"{url}/items/{item}/similar", params={"k": 5}).json()
    assert body["model"] == "sample" and body["version"] == "v1"
    assert body["items"] == records(rec.similar_items(item, 5))
    body = httpx.get(f"{url}/items/{item}/similar",
                     params={"k": 5, "filter_items": deny}).json()
    assert body["items"] == records(rec.similar_items(item, 5, filter_items=deny))
    body = httpx.get(f"{url}/users/{user}/recommendations",
                     params={"k": 7, "exclude_seen": "false", "items": [item, other]}).json()
    assert body["items"] == records(rec.recommend(user, 7, False, items=[item, other]))
    body = httpx.get(f"{url}/users/{user}/recommendations", params={"k": 10}).json()
    assert body["items"] == records(rec.recommend(user, 10))
    body = httpx.get(f"{url}/users/{user}/similar", params={"k": 4}).json()
    assert body["users"] == records_users(rec.similar_users(user, 4))
    body = httpx.post(f"{url}/recommendations",
                      json={"item_ids": [item, "no-such-item"], "k": 6}).json()
    assert body["items"] == records(rec.recommend_for_items([item], 6))
    assert body["unknown_item_ids"] == ["no-such-item"]
    body = httpx.get(f"{url}/users/{user}/items/{other}/score").json()
    assert body["score"] == pytest.approx(rec.score(user, other), rel=1e-6)
    body = httpx.post(f"{url}/batch/similar", json={"item_ids": [item, "nope"], "k": 3}).json()
    # Each answered entry is an answer of its own, with its own recommendation id.
    assert body["results"][0].pop("recommendation_id").startswith("sample:")
    assert body["results"][0] == {"id": item, "items": records(rec.similar_items(item, 3))}
    assert body["results"][1] == {"id": "nope", "error": "unknown item id 'nope'"}
    body = httpx.post(f"{url}/batch/recommendations", json={"user_ids": [user], "k": 3}).json()
    assert body["results"][0]["items"] == records(rec.recommend(user, 3))


def records_users(results):
    return [{"user_id": u, "score": pytest.approx(s, rel=1e-6, abs=1e-7)}
            for u, s in zip(results.ids, results.scores, strict=True)]


def test_every_response_names_the_model_version(live):
    url, rec = live
    item = decode_ids(rec.item_ids[:1])[0]
    for response in (httpx.get(f"{url}/items/{item}/similar"), httpx.get(f"{url}/healthz"),
                     httpx.get(f"{url}/items/nope/similar"), httpx.get(f"{url}/metrics"),
                     httpx.get(f"{url}/items/{item}/similar", params={"k": "x"})):
        assert response.headers["x-model-version"] == "v1"


@pytest.mark.parametrize(("path", "params", "status", "needle"), [
    ("/items/nope/similar", {}, 404, "unknown item id 'nope'"),
    ("/users/nobody/recommendations", {"fallback": "none"}, 404, "unknown user id 'nobody'"),
    ("/users/nobody/similar", {}, 404, "unknown user id 'nobody'"),
    ("/users/nobody/items/nope/score", {}, 404, "unknown user id 'nobody'"),
    ("/items/ITEM/similar", {"k": 0}, 422, "greater than or equal to 1"),
    ("/items/ITEM/similar", {"k": 1001}, 422, "less than or equal to 1000"),
    ("/items/ITEM/similar", {"k": "ten"}, 422, "valid integer"),
    ("/users/USER/recommendations", {"exclude_seen": "maybe"}, 422, "valid boolean"),
])
def test_error_paths(live, path, params, status, needle):
    url, rec = live
    path = path.replace("ITEM", decode_ids(rec.item_ids[:1])[0])
    path = path.replace("USER", decode_ids(rec.user_ids[:1])[0])
    response = httpx.get(url + path, params=params)
    assert response.status_code == status
    assert needle in response.text
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/recommendations", {}, "item_ids"),
    ("/recommendations", {"item_ids": []}, "at least 1 item"),
    ("/recommendations", {"item_ids": ["a"], "k": -1}, "greater than or equal to 1"),
    ("/recommendations", {"item_ids": ["a"], "surprise": 1}, "Extra inputs"),
    ("/batch/similar", {"item_ids": ["x"] * 101}, "at most 100 items"),
    ("/batch/recommendations", {"user_ids": "U1"}, "valid list"),
])
def test_bad_bodies_are_422(live, path, body, needle):
    url, _ = live
    response = httpx.post(url + path, json=body)
    assert response.status_code == 422 and needle in response.text
    assert httpx.post(url + path, content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 422


def test_a_basket_of_only_unknown_ids_is_404(live):
    url, _ = live
    response = httpx.post(f"{url}/recommendations", json={"item_ids": ["x", "y"]})
    assert response.status_code == 404
    assert response.json()["unknown_item_ids"] == ["x", "y"]


def test_the_fast_path_answers_byte_for_byte_like_the_fastapi_route(live, versions):
    url, rec = live
    assert rec.similar_ids is not None, "the sample bundle stores neighbours"
    items = decode_ids(rec.item_ids[::97])
    queries = [f"/items/{quote(i, safe='')}/similar?{q}" for i in items
               for q in ("", "k=1", "k=10", "k=50", "k=60", "k=1000")]
    queries += [f"/items/{items[0]}/similar?{q}" for q in
                ("k=0", "k=1001", "k=010", "k=+5", "k=5&k=6", "k=", "K=5", "k=5&items=x",
                 "k=99999999999999999999")]
    queries += ["/items/nope/similar", "/items//similar", "/items/similar",
                f"/items/{items[0]}/similar/"]
    users = [*decode_ids(rec.user_ids[::61]), "a-user-nobody-knows", "a/b"]
    queries += [f"/users/{quote(u, safe='')}/recommendations?{q}" for u in users
                for q in ("", "k=1", "k=7", "k=1000", "k=0", "k=5&explain=true", "k=5&k=6")]
    queries += ["/users//recommendations", "/users/recommendations",
                f"/users/{'x' * 300}/recommendations"]
    with server(versions, settings={"SVDFAISS_FAST_PATH": "false"}) as reference, \
            httpx.Client() as client:
        for query in queries:
            fast, slow = client.get(url + query), client.get(reference + query)
            # Byte for byte but for the recommendation id, unique to each answer: the
            # same bytes once it is cut out, in the same place.
            fast_body, slow_body = _without_id(fast.content), _without_id(slow.content)
            assert (fast.status_code, fast_body) == (slow.status_code, slow_body), query
            for header in ("content-type", "x-model-version"):
                assert fast.headers.get(header) == slow.headers.get(header), (query, header)


RECOMMENDATION_ID = re.compile(rb',"recommendation_id":"sample:[0-9a-f]{13,}"')


def _without_id(body: bytes) -> bytes:
    """The body with its recommendation id cut out; a 200 must have exactly one."""
    cut, found = RECOMMENDATION_ID.subn(b"", body)
    assert found == (1 if body.startswith(b'{"model"') else 0), body[:200]
    return cut


def _fast_path(versions: Path, routes: dict[str, str]):
    """A FastPath over a loaded model, with FastAPI replaced by a recorder: the model, the
    query strings passed on, and `get(path, query)` -> the messages the fast path sent."""
    settings = Settings(index_dir=versions, model="sample")
    models = Models(settings, Metrics())
    asyncio.run(models.reload())
    passed_on: list[str] = []

    async def inner(scope, receive, send):
        passed_on.append(scope["query_string"].decode())

    fast = FastPath(inner, models, settings, routes=routes)

    def get(path: str, query: str) -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode()}
        asyncio.run(fast(scope, None, send))
        assert scope.get("route") == (next(iter(routes.values())) if sent else None)
        return sent

    return models.primary.get(), passed_on, get


def test_the_fast_path_answers_stored_neighbours_without_fastapi(versions):
    rec, passed_on, get = _fast_path(versions, {"similar_items": "the route"})
    item = decode_ids(rec.item_ids[5:6])[0]
    path = f"/items/{item}/similar"
    sent = get(path, "k=7")
    assert passed_on == [] and sent[0]["status"] == 200
    body = orjson.loads(sent[1]["body"])
    assert body["items"] == records(rec.similar_items(item, 7)) and body["variant"] == "sample"
    for query in ("k=60", "k=7&filter_items=x", "k=0", "q=1"):  # beyond the cache, or not plain
        assert get(path, query) == []
    assert passed_on == ["k=60", "k=7&filter_items=x", "k=0", "q=1"]


def test_the_fast_path_answers_plain_recommendations_without_fastapi(versions):
    rec, passed_on, get = _fast_path(versions, {"recommendations": "the route"})
    user = decode_ids(rec.user_ids[7:8])[0]
    for user_id, k in ((user, 5), ("nobody-knows-me", 3)):
        sent = get(f"/users/{user_id}/recommendations", f"k={k}")
        body = orjson.loads(sent[1]["body"])
        assert body["items"] == records(rec.recommend(user_id, k, fallback="popular"))
    beyond = "k=101"  # above INLINE_MAX_K: the route, in the thread pool
    queries = ["k=5&explain=true", "k=5&mode=cf", "k=0", "fallback=none", beyond]
    for query in queries:
        assert get(f"/users/{user}/recommendations", query) == []
    assert passed_on == queries


def test_a_cached_recommendation_is_the_fresh_answer_until_events_or_a_reload(own_copy):
    """The fast path keeps plain recommendations' bytes: a repeated request gets the same
    bytes as the FastAPI route, a user's live event is answered from their live row at
    once, and after a reload every answer is the new version's."""
    user = decode_ids(Recommender.load(own_copy, "sample").user_ids[11:12])[0]
    path = f"/users/{user}/recommendations"
    with server(own_copy) as url, httpx.Client(base_url=url, timeout=30) as client:

        def fast_and_route() -> tuple[bytes, bytes]:
            # `mode=hybrid` is the default, but any parameter takes the FastAPI route.
            return (client.get(path, params={"k": 10}).content,
                    client.get(path, params={"k": 10, "mode": "hybrid"}).content)

        first, reference = fast_and_route()
        again, _ = fast_and_route()
        # The same bytes but for the recommendation id, which every answer gets afresh (a
        # cached one too: each is an exposure of its own).
        ids = {RECOMMENDATION_ID.search(body).group(0) for body in (first, again, reference)}
        assert len(ids) == 3
        assert _without_id(first) == _without_id(again) == _without_id(reference)
        assert 'svdfaiss_recommendation_cache_total{result="hit"} 1.0' in \
            client.get("/metrics").text
        top = orjson.loads(first)["items"][0]["item_id"]
        assert client.post("/events", json={"user_id": user, "item_id": top}).status_code == 200
        live, reference = fast_and_route()
        assert _without_id(live) == _without_id(reference) != _without_id(first)
        assert top not in [i["item_id"] for i in orjson.loads(live)["items"]]  # now seen
        assert 'svdfaiss_recommendation_cache_total{result="live"} 1.0' in \
            client.get("/metrics").text  # computed from the live row, not kept

        other = decode_ids(Recommender.load(own_copy, "sample").user_ids[12:13])[0]
        before = client.get(f"/users/{other}/recommendations", params={"k": 10}).json()
        assert before["version"] == "v1"
        bundle.set_current(own_copy / "sample", "v2")
        assert reload(url).json()["result"] == "loaded"
        after = client.get(f"/users/{other}/recommendations", params={"k": 10})
        assert after.json()["version"] == "v2" and after.headers["x-model-version"] == "v2"
        assert _without_id(after.content) == _without_id(client.get(
            f"/users/{other}/recommendations", params={"k": 10, "mode": "hybrid"}).content)
        assert after.json()["items"] != before["items"]


def test_the_answer_cache_is_bounded_and_drops_an_old_versions_answers(versions):
    rec = Recommender.load(versions, "sample")
    cache = AnswerCache(10 * (100 + ENTRY_OVERHEAD))
    for n in range(25):
        cache.get(rec, "a", f"user{n}", 10)
        cache.put(rec, "a", f"user{n}", 10, bytes(100))
        assert cache.bytes_used <= 10 * (100 + ENTRY_OVERHEAD)
    assert len(cache) == 10
    assert cache.get(rec, "a", "user24", 10) == bytes(100)
    assert cache.get(rec, "a", "user0", 10) is None  # the least recently used went first
    assert cache.get(rec, "a", "user24", 5) is None  # another k is another answer
    cache.put(rec, "a", "big", 10, bytes(20 * (100 + ENTRY_OVERHEAD)))  # beyond the budget
    assert cache.get(rec, "a", "big", 10) is None and len(cache) == 10
    newer = Recommender.open(versions / "sample" / "v2")
    assert cache.get(newer, "a", "user24", 10) is None and len(cache) == 0


def test_batched_searches_equal_single_ones(versions):
    rec = Recommender.load(versions, "sample")
    items = decode_ids(rec.item_ids[::40])
    # Beyond the cache, in cf mode: the searches the batcher gathers (hybrid fuses two).
    expected = {i: rec.similar_items(i, 60, use_cache=False, mode="cf") for i in items}

    async def many(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.get(f"/items/{i}/similar",
                                                     params={"k": 60, "mode": "cf"})
                                          for i in items * 4))

    with server(versions, settings={"SVDFAISS_SEARCH_MODE": "batch"}) as url:
        responses = asyncio.run(many(url))
        for item, response in zip(items * 4, responses, strict=True):
            assert response.status_code == 200
            got = response.json()["items"]
            assert [r["item_id"] for r in got] == expected[item].ids
            assert [r["score"] for r in got] == pytest.approx(expected[item].scores, abs=1e-5)
        assert httpx.get(f"{url}/items/nope/similar", params={"k": 60}).status_code == 404
        deny = expected[items[0]].ids[:3]
        body = httpx.get(f"{url}/items/{items[0]}/similar",
                         params={"k": 60, "filter_items": deny}).json()
        assert [r["item_id"] for r in body["items"]] == rec.similar_items(
            items[0], 60, filter_items=deny).ids


def test_ids_with_any_characters(tmp_path):
    log = tmp_path / "odd.csv"
    odd_items = ["a/b", "c d", "é?&#", "%2F", "0042"]
    rows = [f"u{u},{odd_items[(u + j) % 5]}" for u in range(40) for j in range(3)]
    log.write_text("user,item\n" + "\n".join(f'{r.split(",")[0]},"{r.split(",")[1]}"'
                                             for r in rows) + "\n")
    build(BuildConfig(input=log, model="odd", index_dir=tmp_path / "ix", k=2))
    with server(tmp_path / "ix", "odd") as url:
        for item in odd_items:
            response = httpx.get(f"{url}/items/{quote(item, safe='')}/similar",
                                 params={"k": 2})
            assert response.status_code == 200, (item, response.text)
            assert item not in [r["item_id"] for r in response.json()["items"]]
        response = httpx.get(f"{url}/items/{quote('a/b/c', safe='')}/similar")
        assert response.status_code == 404 and "'a/b/c'" in response.text


def test_no_bundle_is_503_and_health_still_answers(tmp_path):
    with server(tmp_path / "empty", token=None) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "no bundle loaded" in ready.text
        assert httpx.get(f"{url}/items/x/similar").status_code == 503
        assert httpx.post(f"{url}/recommendations", json={"item_ids": ["x"]}).status_code == 503
        # admin endpoints are off without a token
        assert httpx.post(f"{url}/admin/reload").status_code == 404


def test_admin_reload_needs_the_bearer_token(live):
    url, _ = live
    assert httpx.post(f"{url}/admin/reload").status_code == 401
    wrong = httpx.post(f"{url}/admin/reload", headers={"Authorization": "Bearer wrong-token"})
    assert wrong.status_code == 403
    basic = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    ok = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["result"] == "unchanged"


def reload(url: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60)


def test_three_reloads_under_load_lose_no_request(own_copy):
    model_dir = own_copy / "sample"
    rec = Recommender.load(own_copy, "sample")
    items = decode_ids(rec.item_ids[:50])
    with server(own_copy) as url:

        async def load_loop(stop: asyncio.Event) -> tuple[int, list[str], set[str]]:
            ok, failures, seen = 0, [], set()
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:

                async def worker(n: int) -> None:
                    nonlocal ok
                    i = n
                    while not stop.is_set() and ok + len(failures) < 20_000:
                        r = await client.get(f"/items/{items[i % 50]}/similar", params={"k": 5})
                        i += 7
                        if r.status_code == 200 and len(r.json()["items"]) == 5:
                            ok += 1
                            seen.add(r.json()["version"])
                            assert r.headers["x-model-version"] == r.json()["version"]
                        else:
                            failures.append(f"{r.status_code} {r.text[:100]}")

                await asyncio.gather(*(worker(n) for n in range(8)))
            return ok, failures, seen

        async def scenario() -> tuple[int, list[str], set[str], list[str]]:
            stop = asyncio.Event()
            task = asyncio.create_task(load_loop(stop))
            served = []
            for version in ("v2", "v3", "v4"):
                await asyncio.sleep(0.5)
                bundle.set_current(model_dir, version)
                result = await asyncio.to_thread(reload, url)
                served.append(result.json()["version"])
            await asyncio.sleep(0.5)
            stop.set()
            ok, failures, seen = await asyncio.wait_for(task, timeout=60)
            return ok, failures, seen, served

        ok, failures, seen, served = asyncio.run(scenario())
    assert failures == []
    assert served == ["v2", "v3", "v4"]
    assert seen == {"v1", "v2", "v3", "v4"}
    assert ok > 100


def corrupt(version_dir: Path, how: str) -> None:
    if how == "checksum":
        path = version_dir / "items.faiss"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "missing":
        (version_dir / "item_ids.npy").unlink()
    elif how == "truncated index":
        path = version_dir / "items.faiss"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif how == "truncated ids":
        path = version_dir / "item_ids.npy"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "manifest not json":
        (version_dir / "manifest.json").write_text('{"model": "sample", "files": {')
    elif how == "manifest without files":
        manifest = bundle.read_manifest(version_dir)
        del manifest["files"]
        (version_dir / "manifest.json").write_text(json.dumps(manifest))
    elif how == "unreadable":  # bytes FAISS cannot parse, with a manifest that agrees
        path = version_dir / "items.faiss"
        path.write_bytes(b"not a faiss index at all")
        manifest = bundle.read_manifest(version_dir)
        manifest["files"]["items.faiss"] = {"sha256": bundle.sha256_file(path),
                                            "size": path.stat().st_size}
        (version_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["checksum", "missing", "unreadable", "truncated index",
                                 "truncated ids", "manifest not json",
                                 "manifest without files"])
def test_a_bad_new_bundle_is_refused_and_the_old_keeps_serving(own_copy, tmp_path, how):
    model_dir = own_copy / "sample"
    corrupt(model_dir / "v2", how)
    log = tmp_path / "server.log"
    with server(own_copy, log=log) as url:
        item = httpx.get(f"{url}/users/U0001/recommendations").json()["items"][0]["item_id"]
        bundle.set_current(model_dir, "v2")
        refused = reload(url)
        assert refused.status_code == 409
        assert refused.json()["result"] == "refused" and refused.json()["version"] == "v1"
        still = httpx.get(f"{url}/items/{item}/similar")
        assert still.status_code == 200 and still.json()["version"] == "v1"
        assert httpx.get(f"{url}/readyz").json()["version"] == "v1"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'svdfaiss_reloads_total{result="refused"} 1.0' in metrics
        assert 'svdfaiss_bundle_info{model="sample",version="v1"} 1.0' in metrics
    assert "reload of model sample refused, still serving v1" in log.read_text()


def test_poll_picks_up_a_new_current_and_a_late_first_bundle(own_copy, tmp_path, sample):
    model_dir = own_copy / "sample"
    with server(own_copy, poll=0.2) as url:
        bundle.set_current(model_dir, "v3")
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/readyz").json()["version"] != "v3":
            assert time.monotonic() < deadline, "poll did not pick up v3"
            time.sleep(0.1)
    late = tmp_path / "late"
    with server(late, poll=0.2) as url:
        assert httpx.get(f"{url}/readyz").status_code == 503
        build(BuildConfig(input=sample.events, model="sample", index_dir=late, k=8,
                          version="first"))
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "poll did not load the first bundle"
            time.sleep(0.1)
        assert httpx.get(f"{url}/readyz").json()["version"] == "first"


def test_metrics_count_what_was_served(live):
    url, rec = live
    item = decode_ids(rec.item_ids[2:3])[0]

    def count(status: str) -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if (line.startswith("svdfaiss_requests_total{") and 'route="/items/{item_id:path}'
                    '/similar"' in line and f'status="{status}"' in line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before_ok, before_404 = count("200"), count("404")
    for _ in range(7):
        httpx.get(f"{url}/items/{item}/similar")
    for _ in range(3):
        httpx.get(f"{url}/items/nope/similar")
    assert count("200") == before_ok + 7
    assert count("404") == before_404 + 3
    text = httpx.get(f"{url}/metrics").text
    assert "svdfaiss_request_duration_seconds_bucket" in text
    assert "svdfaiss_bundle_load_seconds" in text


def test_openapi_documents_every_endpoint(live):
    url, _ = live
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/items/{item_id}/similar", "/users/{user_id}/recommendations",
        "/users/{user_id}/similar", "/users/{user_id}/items/{item_id}/score",
        "/recommendations", "/batch/similar", "/batch/recommendations", "/healthz", "/readyz",
        "/metrics", "/admin/reload"}
    similar = paths["/items/{item_id}/similar"]["get"]
    assert similar["description"].startswith("Items most similar")
    assert "404" in similar["responses"]
