"""The ASGI layers in front of FastAPI: metrics and X-Model-Version, and the hot-query fast path."""

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from cachetools import LRUCache

from svdfaiss.config import Settings
from svdfaiss.errors import NoBundle, UnknownItem
from svdfaiss.experiment import Variant
from svdfaiss.recommender import Recommender
from svdfaiss.service.draining import DRAINING
from svdfaiss.service.holders import Models
from svdfaiss.service.metrics import Metrics
from svdfaiss.service.responses import items_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ServiceMiddleware:
    """Counts and times every request by route template, and sets X-Model-Version."""

    def __init__(self, app: ASGIApp, models: Models, metrics: Metrics) -> None:
        self.app = app
        self.models = models
        self.metrics = metrics
        # The labelled children by (route, method, status): prometheus-client's `labels`
        # (a lock, a tuple of str() calls, a dict) cost about 5% of a fast-path answer.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_version(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name == b"x-model-version" for name, _ in headers):
                    version = self.models.primary.version or ""
                    headers.append((b"x-model-version", version.encode()))
                if DRAINING.is_set():  # shutting down: no keep-alive (svdfaiss.service.draining)
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            children = self._children.get((template, method, status))
            if children is None:
                children = (self.metrics.requests.labels(template, method, str(status)),
                            self.metrics.latency.labels(template, method))
                self._children[(template, method, status)] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


_SIMILAR = ("/items/", "/similar")
_RECOMMENDATIONS = ("/users/", "/recommendations")
_DEFAULT_K = 10
INLINE_MAX_K = 100  # larger plain recommendations go through the route, in the thread pool


def _plain_k(query_string: bytes, max_k: int) -> int | None:
    """k of a query string that holds nothing but `k=<digits>` (or nothing); None otherwise."""
    if not query_string:
        return _DEFAULT_K
    if not query_string.startswith(b"k=") or not query_string[2:].isdigit():
        return None
    k = int(query_string[2:])
    return k if 1 <= k <= max_k else None


def _path_id(path: str, shape: tuple[str, str], max_length: int) -> str | None:
    """The id in `<prefix><id><suffix>`, or None when the path has another shape."""
    prefix, suffix = shape
    if (not path.startswith(prefix) or not path.endswith(suffix)
            or len(path) <= len(prefix) + len(suffix)):
        return None
    found = path[len(prefix):-len(suffix)]
    return found if len(found) <= max_length else None


# What an entry of AnswerCache holds beyond its body's bytes: the key tuple and its user id,
# the body's object header and the LRU's bookkeeping (tracemalloc: 334 bytes an entry with
# 10-character ids; 600 keeps the bound for ids up to SVDFAISS_MAX_ID_LENGTH's 256).
ENTRY_OVERHEAD = 600

AnswerKey = tuple[str, str, str, str, int]  # model, version, variant, user id, k


def _entry_size(body: bytes) -> int:
    return len(body) + ENTRY_OVERHEAD


class AnswerCache:
    """The encoded answers of plain recommendations, least recently used dropped beyond
    `max_bytes` (bodies plus ENTRY_OVERHEAD each).

    Only answers that depend on nothing but the served bundle are kept: those of users
    without live events (the fast path never asks it for the others). The key names the
    model's version, and every entry goes when a model is served by another Recommender (a
    reload, or a live catalog change, which serves a new view), so an answer never comes from
    a bundle or catalog it replaced. Bodies are kept without their recommendation id, which
    every answer gets afresh. Used on the event loop only.
    """

    def __init__(self, max_bytes: int) -> None:
        self._entries: LRUCache[AnswerKey, bytes] = LRUCache(max_bytes, getsizeof=_entry_size)
        self._served: dict[str, Recommender] = {}

    def get(self, rec: Recommender, variant: str, user_id: str, k: int) -> bytes | None:
        if self._served.get(rec.model) is not rec:
            # Another version, or a live catalog change (a new view over the same version):
            # its answers may differ.
            self._entries.clear()
            self._served[rec.model] = rec
            return None
        return self._entries.get((rec.model, rec.version, variant, user_id, k))

    def put(self, rec: Recommender, variant: str, user_id: str, k: int, body: bytes) -> None:
        if _entry_size(body) <= self._entries.maxsize and self._served.get(rec.model) is rec:
            self._entries[(rec.model, rec.version, variant, user_id, k)] = body

    @property
    def bytes_used(self) -> int:
        """The bytes the entries count (bodies plus ENTRY_OVERHEAD each)."""
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)


class FastPath:
    """Answers the two hot queries without FastAPI's per-request parameter machinery, when
    they carry nothing but `k`:
    - `GET /items/{id}/similar` from neighbours stored at build time, on the event loop (an
      array slice);
    - `GET /users/{id}/recommendations` with the route's defaults (seen items excluded,
      popular fallback, hybrid mode, the user's live row and A/B variant) and k up to
      INLINE_MAX_K, called directly on the event loop: one index search and a fold-in take
      well under a millisecond, and the hop to a worker thread cost more than the call
      (in process, 1.7 ms a request through the thread pool against 0.8 ms direct). The
      encoded answers of users without live events are kept in an AnswerCache
      (SVDFAISS_RECOMMENDATION_CACHE_MB): a repeated request costs a dictionary lookup.

    Only successes are answered here: filters, any other parameter, a bad k, an unknown item
    or one whose stored neighbours cannot answer all go on to the FastAPI route, which stays
    the reference (errors, OpenAPI). A test holds both paths to the same bytes.
    """

    def __init__(self, app: ASGIApp, models: Models, settings: Settings,
                 routes: dict[str, Any]) -> None:
        self.app = app
        self.models = models
        self.max_k = settings.max_k
        self.max_id_length = settings.max_id_length
        self.routes = routes  # route name -> the route it stands in for (metrics label)
        budget = int(settings.recommendation_cache_mb * 1024 * 1024)
        self.cache = AnswerCache(budget) if budget > 0 else None
        counted = models.metrics.recommendation_cache
        self._hit, self._miss, self._live = (counted.labels(r) for r in ("hit", "miss", "live"))

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        answer = None
        if scope["type"] == "http" and scope["method"] == "GET":
            k = _plain_k(scope["query_string"], self.max_k)
            if k is not None:
                answer = self._similar(scope, k) or self._recommendations(scope, k)
        if answer is None:
            await self.app(scope, receive, send)
            return
        payload, version, route = answer
        scope["route"] = route  # the metrics label of the route it stands in for
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-model-version", version.encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _similar(self, scope: Scope, k: int) -> tuple[bytes, str, Any] | None:
        item_id = _path_id(scope["path"], _SIMILAR, self.max_id_length)
        if item_id is None:
            return None
        self.models.sync_catalog()
        rec = self.models.primary.serving()  # no user_id: the control variant
        if rec is None:
            return None
        try:
            result = rec.cached_similar_items(item_id, k)
        except UnknownItem:
            return None
        if result is None:
            return None
        control = self.models.experiment.control
        self.models.counted[control.name].inc()
        return (items_body(rec, result, variant=control.name,
                           recommendation_id=self.models.answer_id(control)), rec.version,
                self.routes.get("similar_items"))

    def _with_answer_id(self, body: bytes, variant: Variant, user_id: str) -> bytes:
        """The answer with a new recommendation id as its last field: what items_body gives
        with `recommendation_id=` last, without encoding the answer again (so a cached body
        never repeats an id, and each answer is logged as its own exposure)."""
        rid = self.models.answer_id(variant, user_id)
        return body[:-1] + b',"recommendation_id":' + orjson.dumps(rid) + b"}"

    def _recommendations(self, scope: Scope, k: int) -> tuple[bytes, str, Any] | None:
        user_id = _path_id(scope["path"], _RECOMMENDATIONS, self.max_id_length)
        if user_id is None or k > INLINE_MAX_K:
            return None
        try:
            rec, variant = self.models.pick(user_id)
        except NoBundle:
            return None  # the route answers the 503
        row = None if self.models.live is None else self.models.live.get(user_id)
        route = self.routes.get("recommendations")
        cache = None if row else self.cache  # live events: the answer is the user's now
        if cache is not None:
            body = cache.get(rec, variant.name, user_id, k)
            if body is not None:
                self._hit.inc()
                return self._with_answer_id(body, variant, user_id), rec.version, route
        result = rec.recommend(user_id, k, fallback="popular", live=row)
        body = items_body(rec, result, variant=variant.name)
        if cache is not None:
            cache.put(rec, variant.name, user_id, k, body)
            self._miss.inc()
        elif row:
            self._live.inc()
        return self._with_answer_id(body, variant, user_id), rec.version, route

