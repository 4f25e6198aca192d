"""The FastAPI application: routes translate HTTP to `Recommender` calls and nothing else.

One immutable `Recommender` is held by `ModelHolder`. A reload builds the new one completely
(checksums verified before FAISS parses a byte) in a worker thread, then swaps a single
reference; a request takes that reference once, so in-flight requests finish on the model
they started with. A bundle that fails to load is refused and the old one keeps serving.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and they use aliases and body models defined inside `create_app`.
import asyncio
import contextlib
import datetime as dt
import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Generic, Literal, TypeVar

import anyio
import faiss as _faiss
import orjson
from fastapi import Body, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import SecretStr

from svdfaiss import bundle
from svdfaiss.config import Settings
from svdfaiss.errors import (
    InvalidBundle,
    InvalidInput,
    NoBundle,
    UnknownItem,
    UnknownItems,
    UnknownUser,
    UnsupportedFilter,
)
from svdfaiss.events import Event, EventLog, LiveEvents, LiveUsers
from svdfaiss.experiment import Experiment, Variant
from svdfaiss.recommender import CatalogFilter, Recommender, Results
from svdfaiss.service import schemas

P = TypeVar("P")
R = TypeVar("R")
log = logging.getLogger("svdfaiss.service")
faiss: Any = _faiss

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("svdfaiss_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("svdfaiss_request_duration_seconds",
                                 "HTTP request latency by route", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bundle = Gauge("svdfaiss_bundle_info", "The loaded bundle (value 1)",
                            ["model", "version"], registry=self.registry)
        self.load_seconds = Gauge("svdfaiss_bundle_load_seconds",
                                  "Seconds the last successful load of each model took",
                                  ["model"], registry=self.registry)
        self.loaded_at = Gauge("svdfaiss_bundle_loaded_timestamp_seconds",
                               "Unix time of each model's last successful load", ["model"],
                               registry=self.registry)
        self.reloads = Counter("svdfaiss_reloads", "Bundle loads by result (loaded, unchanged, "
                               "refused)", ["result"], registry=self.registry)
        self.events = Counter("svdfaiss_events", "POST /events by result (applied, "
                              "unknown_item: logged only, refused: not logged)", ["result"],
                              registry=self.registry)
        self.variants = Counter("svdfaiss_variant_requests", "Requests routed to each "
                                "experiment variant", ["experiment", "variant", "model"],
                                registry=self.registry)
        self.live_users = Gauge("svdfaiss_live_users", "Users with live events in memory",
                                registry=self.registry)


@dataclass(frozen=True)
class Loaded:
    """A loaded model and when and how fast it was loaded."""

    recommender: Recommender
    loaded_at: dt.datetime
    load_seconds: float


class ModelHolder:
    """Holds the serving model; `reload` swaps it only for a completely loaded, verified one."""

    def __init__(self, settings: Settings, metrics: Metrics, model: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.current: Loaded | None = None
        self._lock = asyncio.Lock()

    @property
    def version(self) -> str | None:
        return self.current.recommender.version if self.current else None

    def _load(self) -> Loaded:
        start = time.perf_counter()
        rec = Recommender.load(self.settings.index_dir, self.model,
                               verify=self.settings.verify_checksums)
        return Loaded(rec, dt.datetime.now(dt.UTC), time.perf_counter() - start)

    async def reload(self, force: bool = False) -> schemas.ReloadResult:
        """Load the version CURRENT names unless it is already served."""
        async with self._lock:
            directory = bundle.model_dir(self.settings.index_dir, self.model)
            try:
                target = bundle.read_current(directory)
                if not force and target == self.version:
                    self.metrics.reloads.labels("unchanged").inc()
                    return schemas.ReloadResult(result="unchanged", model=self.model,
                                                version=self.version)
                loaded = await anyio.to_thread.run_sync(self._load)
            except (InvalidBundle, NoBundle, OSError, ValueError) as exc:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload of model %s refused, still serving %s: %s",
                          self.model, self.version, exc)
                return schemas.ReloadResult(result="refused", model=self.model,
                                            version=self.version, detail=str(exc))
            previous = self.current
            self.current = loaded  # the swap: one reference assignment
            rec = loaded.recommender
            if previous is not None:
                self.metrics.bundle.remove(previous.recommender.model,
                                           previous.recommender.version)
            self.metrics.bundle.labels(rec.model, rec.version).set(1)
            self.metrics.load_seconds.labels(rec.model).set(loaded.load_seconds)
            self.metrics.loaded_at.labels(rec.model).set(loaded.loaded_at.timestamp())
            self.metrics.reloads.labels("loaded").inc()
            log.info("serving model %s version %s (loaded in %.2f s)", rec.model, rec.version,
                     loaded.load_seconds)
            return schemas.ReloadResult(result="loaded", model=rec.model, version=rec.version)

    def get(self) -> Recommender:
        """The serving model; 503 when none is loaded."""
        _single_threaded_faiss()
        current = self.current
        if current is None:
            raise NoBundle(f"no bundle loaded for model {self.model!r} from "
                           f"{self.settings.index_dir}")
        return current.recommender


class Models:
    """The served models (one holder each) and the experiment that routes users to them."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.experiment = Experiment(settings.resolved_experiment())
        self.holders = {m: ModelHolder(settings, metrics, m) for m in self.experiment.models}
        self.metrics = metrics
        # Live rows, kept in step with the events log (None when live events are off).
        self.live: LiveEvents | None = None
        # Each variant's counter child, looked up once rather than per request.
        self.counted = {v.name: metrics.variants.labels(self.experiment.name, v.name, v.model)
                        for v in self.experiment.variants}

    @property
    def primary(self) -> ModelHolder:
        """The control variant's model: it answers requests with no user to assign."""
        return self.holders[self.experiment.control.model]

    def pick(self, user_id: str | None = None, model: str | None = None,
             ) -> tuple[Recommender, Variant]:
        """The model for a request: `model` when given, else the user's variant, else the
        control; counted by variant."""
        if model is not None:
            variant = self.experiment.for_model(model)
        elif user_id is not None:
            variant = self.experiment.assign(user_id)
        else:
            variant = self.experiment.control
        rec = self.holders[variant.model].get()
        self.counted[variant.name].inc()
        return rec, variant


    async def reload(self, force: bool = False) -> list[schemas.ReloadResult]:
        """Reload every model; live rows start over when the primary model changes."""
        before = self.primary.version
        results = [await holder.reload(force) for holder in self.holders.values()]
        current = self.primary.current
        if self.live is not None and current is not None and current.recommender.version \
                != before:
            rec = current.recommender
            applied = await anyio.to_thread.run_sync(self.live.reset, rec.manifest,
                                                     rec.feedback, rec.knows_item)
            self.metrics.live_users.set(len(self.live))
            log.info("live rows: %d events logged after model %s version %s applied from %s",
                     applied, rec.model, rec.version, self.live.follower.path)
        return results


class Gatherer(Generic[P, R]):
    """Gathers the requests that arrive while one batch runs into the next batch (natural
    batching: no timer, so a lone request never waits). Subclasses run a batch."""

    def __init__(self) -> None:
        self._pending: list[tuple[P, asyncio.Future[R]]] = []
        self._running = False

    async def submit(self, payload: P) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run([payload for payload, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = False

    async def _run(self, payloads: list[P]) -> list[R | BaseException]:
        """One result (or the exception to raise) per payload, in order."""
        raise NotImplementedError


class SearchBatcher(Gatherer[tuple[Recommender, str, int], Results]):
    """Unfiltered similar-items searches gathered into one FAISS call per model."""

    async def similar_items(self, rec: Recommender, item_id: str, k: int) -> Results:
        return await self.submit((rec, item_id, k))

    async def _run(self, payloads: list[tuple[Recommender, str, int]],
                   ) -> list[Results | BaseException]:
        results: list[Results | BaseException] = [RuntimeError("not searched")] * len(payloads)
        # A reload may swap the model mid-stream: one FAISS call per model.
        for rec in {id(r): r for r, _, _ in payloads}.values():
            rows = [n for n, (r, _, _) in enumerate(payloads) if r is rec]
            ids, ks = [payloads[n][1] for n in rows], [payloads[n][2] for n in rows]
            try:
                found: list[Results | BaseException] = list(
                    await run_in_threadpool(rec.similar_items_batch, ids, ks))
            except UnknownItem:
                # Ids were checked before queueing, so this is a model swap race: answer
                # each on its own.
                found = [_outcome(functools.partial(rec.similar_items, i, k, use_cache=False))
                         for i, k in zip(ids, ks, strict=True)]
            for n, result in zip(rows, found, strict=True):
                results[n] = result
        return results


class EventSink(Gatherer[bytes, None]):
    """Group commit of the events log: the events that arrive while one write and fsync runs
    go into the next, and each request returns once its own line is on disk."""

    def __init__(self, event_log: EventLog) -> None:
        super().__init__()
        self.log = event_log

    async def write(self, line: bytes) -> None:
        await self.submit(line)

    async def _run(self, payloads: list[bytes]) -> list[BaseException | None]:
        await run_in_threadpool(self.log.append, payloads)
        return [None] * len(payloads)


def _outcome(compute: Callable[[], Results]) -> Results | BaseException:
    try:
        return compute()
    except Exception as exc:
        return exc


_thread_state = threading.local()


def _single_threaded_faiss() -> None:
    """Set FAISS to one OpenMP thread in the calling thread (OpenMP settings are per thread).

    `svdfaiss serve` sets OMP_NUM_THREADS=1 before FAISS loads; this covers an app created
    in a process that loaded FAISS earlier.
    """
    if not getattr(_thread_state, "faiss_single", False):
        faiss.omp_set_num_threads(1)
        _thread_state.faiss_single = True


class ServiceMiddleware:
    """Counts and times every request by route template, and sets X-Model-Version."""

    def __init__(self, app: ASGIApp, models: Models, metrics: Metrics) -> None:
        self.app = app
        self.models = models
        self.metrics = metrics

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
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)


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


class FastPath:
    """Answers the two hot queries without FastAPI's per-request parameter machinery, when
    they carry nothing but `k`:
    - `GET /items/{id}/similar` from neighbours stored at build time, on the event loop (an
      array slice);
    - `GET /users/{id}/recommendations` with the route's defaults (seen items excluded,
      popular fallback, hybrid mode, the user's live row and A/B variant) and k up to
      INLINE_MAX_K, called directly on the event loop: one index search and a fold-in take
      well under a millisecond, and the hop to a worker thread cost more than the call
      (in process, 1.7 ms a request through the thread pool against 0.8 ms direct).

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
        current = self.models.primary.current  # no user_id: the control variant
        if item_id is None or current is None:
            return None
        rec = current.recommender
        try:
            result = rec.cached_similar_items(item_id, k)
        except UnknownItem:
            return None
        if result is None:
            return None
        control = self.models.experiment.control
        self.models.counted[control.name].inc()
        return (_items_body(rec, result, variant=control.name), rec.version,
                self.routes.get("similar_items"))

    def _recommendations(self, scope: Scope, k: int) -> tuple[bytes, str, Any] | None:
        user_id = _path_id(scope["path"], _RECOMMENDATIONS, self.max_id_length)
        if user_id is None or k > INLINE_MAX_K:
            return None
        try:
            rec, variant = self.models.pick(user_id)
        except NoBundle:
            return None  # the route answers the 503
        row = None if self.models.live is None else self.models.live.get(user_id)
        result = rec.recommend(user_id, k, fallback="popular", live=row)
        return (_items_body(rec, result, variant=variant.name), rec.version,
                self.routes.get("recommendations"))


def _items_body(rec: Recommender, results: Results, **extra: Any) -> bytes:
    return orjson.dumps({"model": rec.model, "version": rec.version, "items": results.records(),
                         **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(payload: Any, version: str, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status, media_type="application/json",
                    headers={"X-Model-Version": version})


def _items(rec: Recommender, results: Results, **extra: Any) -> Response:
    return Response(_items_body(rec, results, **extra), media_type="application/json",
                    headers={"X-Model-Version": rec.version})


def _problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    async def unknown(_: Request, exc: Exception) -> JSONResponse:
        return _problem(404, str(exc))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        # The shape of FastAPI's own 422s (the OpenAPI schema of every route declares it),
        # for a value only the model can judge: a weight, a model name.
        return JSONResponse({"detail": [{"type": "value_error", "loc": [], "msg": str(exc)}]},
                            status_code=422)

    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        return _problem(400, str(exc))

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return _problem(503, str(exc))

    async def unprocessable(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a body holding NaN or Infinity (which
        # Python's JSON parser accepts) cannot be written back as JSON: that was a 500.
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _problem(500, "internal error")

    app.add_exception_handler(UnknownItem, unknown)
    app.add_exception_handler(UnknownUser, unknown)
    app.add_exception_handler(InvalidInput, invalid)
    app.add_exception_handler(UnsupportedFilter, bad_request)
    app.add_exception_handler(NoBundle, unavailable)
    app.add_exception_handler(RequestValidationError, unprocessable)
    app.add_exception_handler(Exception, crashed)


def _json_safe(value: Any) -> Any:
    """The value with non-finite floats written as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    """A configured app; the bundle loads at start-up and on reload."""
    settings = settings or Settings()
    metrics = Metrics()
    models = Models(settings, metrics)

    if settings.live_users > 0:
        models.live = LiveEvents(LiveUsers(settings.live_users, settings.max_ids),
                                 settings.resolved_events_log())
    live = models.live

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await models.reload()  # and the live rows from the events log's tail
        poller = asyncio.create_task(_poll(models)) if settings.poll_seconds > 0 else None
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if live is not None:
            live.follower.close()

    app = FastAPI(
        title="svdfaiss",
        summary="Similar items and recommendations from SVD embeddings in FAISS indexes.",
        lifespan=lifespan,
        responses={
            400: {"description": "a malformed request: a body that is not UTF-8 (JSON), or "
                  "a URL longer than the HTTP server accepts (plain text, from uvicorn)",
                  "content": {"application/json": {"schema": {
                      "$ref": "#/components/schemas/Problem"}},
                      "text/plain": {"schema": {"type": "string"}}}},
            503: {"model": schemas.Problem, "description": "no bundle loaded"}},
        max_body_size=settings.max_body_bytes,
    )
    app.state.models = models
    app.state.settings = settings
    _install_error_handlers(app)
    _add_query_routes(app, models, settings, live)
    if live is not None:
        _add_event_route(app, models, settings, metrics, live)
    if settings.fast_path:
        routes = {getattr(r, "name", ""): r for r in app.routes
                  if getattr(r, "name", "") in ("similar_items", "recommendations")}
        app.add_middleware(FastPath, models=models, settings=settings, routes=routes)
    if settings.cors_origins:  # off unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(ServiceMiddleware, models=models, metrics=metrics)
    _add_operational_routes(app, models, settings, metrics)
    _add_demo_routes(app, models, settings)
    return app


async def _poll(models: Models) -> None:
    """Pick up a newly published CURRENT without an admin call."""
    while True:
        await asyncio.sleep(models.primary.settings.poll_seconds)
        try:
            await models.reload()
        except Exception:  # the poller must survive anything a bad bundle does
            log.exception("poll reload failed")


def _add_event_route(app: FastAPI, models: Models, settings: Settings, metrics: Metrics,
                     live: LiveEvents) -> None:
    sink = EventSink(EventLog(settings.resolved_events_log()))
    event_model: Any = schemas.event_request(settings.max_id_length)

    @app.post("/events", response_model=schemas.EventResult, tags=["events"],
              responses={401: {"model": schemas.Problem}, 403: {"model": schemas.Problem},
                         503: {"model": schemas.Problem,
                               "description": "no bundle, or the events log cannot be written"}})
    async def post_event(body: Annotated[event_model, Body()],
                         authorization: Annotated[str | None, Header()] = None) -> Response:
        """Record that a user bought, viewed or rated an item. The event is appended to the
        events log (fsynced before this returns) and, when the model knows the item, joins
        the user's live row: their next recommendations fold it in at once, and a user the
        bundle never saw becomes known. Events for unknown items are logged for the next
        build (`svdfaiss build --events LOG`) and reported with applied=false. With
        SVDFAISS_EVENTS_TOKEN set, a bearer token is required."""
        if settings.events_token is not None:
            _check_bearer(settings.events_token, authorization)
        rec, variant = models.pick(body.user_id)
        explicit = rec.feedback == "explicit"
        if body.weight is None and explicit:
            metrics.events.labels("refused").inc()
            raise InvalidInput("this model holds explicit ratings: give the rating as weight")
        weight = 1.0 if body.weight is None else float(body.weight)
        if not explicit and weight <= 0:
            metrics.events.labels("refused").inc()
            raise InvalidInput(f"weight must be above 0 for implicit counts, got {weight}")
        event = Event(body.user_id, body.item_id, weight, time.time())
        known = rec.knows_item(body.item_id)
        try:
            await sink.write(event.line(known))
        except OSError as exc:
            metrics.events.labels("refused").inc()
            log.error("events log %s: %s", sink.log.path, exc)
            return _problem(503, f"cannot append to the events log: {exc.strerror or exc}")
        detail = None
        # Applied through the log, like the events other workers accept.
        await run_in_threadpool(live.sync)
        metrics.live_users.set(len(live))
        if not known:
            detail = "unknown item: logged for the next build, not applied"
        metrics.events.labels("applied" if known else "unknown_item").inc()
        return _json({"model": rec.model, "version": rec.version, "variant": variant.name,
                      "user_id": body.user_id, "item_id": body.item_id, "weight": weight,
                      "logged": True,
                      "applied": known, "detail": detail}, rec.version)


def _add_query_routes(app: FastAPI, models: Models, settings: Settings,
                      live: LiveEvents | None) -> None:
    max_k, max_ids, max_len = settings.max_k, settings.max_ids, settings.max_id_length

    def live_row(user_id: str) -> Mapping[str, float] | None:
        return None if live is None else live.get(user_id)

    OneId: Any = schemas.id_type(max_len)  # noqa: N806
    ItemId = Annotated[str, Path(min_length=1, max_length=max_len)]  # noqa: N806
    UserId = Annotated[str, Path(min_length=1, max_length=max_len)]  # noqa: N806
    KQuery = Annotated[int, Query(ge=1, le=max_k, description="number of results")]  # noqa: N806
    AllowQuery = Annotated[list[OneId] | None, Query(  # noqa: N806
        max_length=max_ids, description="allow-list: only these items (repeatable)")]
    DenyQuery = Annotated[list[OneId] | None, Query(  # noqa: N806
        max_length=max_ids, description="deny-list: never these items (repeatable)")]
    CategoryQuery = Annotated[str | None, Query(  # noqa: N806
        min_length=1, max_length=max_len,
        description="only items of this catalog category (a|b values match each part)")]
    PriceQuery = Annotated[float | None, Query(  # noqa: N806
        ge=0, allow_inf_nan=False, description="catalog price bound")]
    StockQuery = Annotated[bool | None, Query(  # noqa: N806
        description="only items in stock (true) or out of stock (false)")]
    ModeQuery = Annotated[Literal["cf", "content", "hybrid"], Query(  # noqa: N806
        description="similar items by cf, content or hybrid (the default)")]
    RecommendModeQuery = Annotated[Literal["cf", "hybrid"], Query(  # noqa: N806
        description="hybrid (the default) also ranks catalog items nobody has interacted "
                    "with, through vectors predicted from their content; cf only the "
                    "model's items")]
    ModelQuery = Annotated[str | None, Query(  # noqa: N806
        min_length=1, max_length=128, description="serve this model (one of the experiment's "
        "variants) instead of the user's assigned variant")]
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": schemas.Problem, "description": "unknown id"}}
    batcher = SearchBatcher() if settings.search_mode == "batch" else None
    too_large: dict[int | str, dict[str, Any]] = {
        413: {"model": schemas.Problem, "description": "body over SVDFAISS_MAX_BODY_BYTES"}}

    @app.get("/items/{item_id:path}/similar", response_model=schemas.ItemsResponse,
             responses=not_found, tags=["items"])
    async def similar_items(item_id: ItemId, k: KQuery = 10,
                            items: AllowQuery = None, filter_items: DenyQuery = None,
                            category: CategoryQuery = None, min_price: PriceQuery = None,
                            max_price: PriceQuery = None,
                            in_stock: StockQuery = None,
                            mode: ModeQuery = "hybrid",
                            user_id: Annotated[str | None, Query(
                                min_length=1, max_length=max_len,
                                description="the viewer, for the A/B assignment (without "
                                            "it: the control variant)")] = None,
                            model: ModelQuery = None) -> Response:
        """Items most similar to an item (never the item itself).

        `mode`: cf (cosine of the SVD item vectors), content (cosine of the catalog's text
        and category vectors) or hybrid, the default: a * cf + (1 - a) * content with
        a = n / (n + hybrid_interactions) for an item with n interactions, so a catalog item
        nobody has bought yet gets content neighbours. A model built without content vectors
        answers hybrid as cf. Each item's `reason` names the mode that ranked it.

        Business filters (category, price, stock) run inside the index: k results whenever
        k items pass them."""
        rec, variant = models.pick(user_id, model)
        catalog_filter = CatalogFilter(category, min_price, max_price, in_stock)
        # Neighbours stored at build time answer on the event loop (an array slice); anything
        # needing FAISS goes to the thread pool so that a search never blocks the loop.
        result = (None if catalog_filter.active
                  else rec.cached_similar_items(item_id, k, items, filter_items, mode))
        plain = items is None and filter_items is None and not catalog_filter.active
        if (result is None and batcher is not None and plain and rec.resolve_mode(mode) == "cf"
                and rec.catalog_index(item_id) < rec.n_items):  # unknown: 404 before batching
            result = await batcher.similar_items(rec, item_id, k)
        elif result is None:
            result = await run_in_threadpool(rec.similar_items, item_id, k, items, filter_items,
                                             False, catalog_filter, mode)
        return _items(rec, result, variant=variant.name)

    @app.get("/users/{user_id:path}/recommendations", response_model=schemas.ItemsResponse,
             responses=not_found, tags=["users"])
    def recommendations(user_id: UserId, k: KQuery = 10,
                        exclude_seen: bool = True, items: AllowQuery = None,
                        filter_items: DenyQuery = None, category: CategoryQuery = None,
                        min_price: PriceQuery = None, max_price: PriceQuery = None,
                        in_stock: StockQuery = None,
                        fallback: Annotated[Literal["popular", "none"], Query(
                            description="an unknown user gets the most popular items "
                                        "(popular) or a 404 (none)")] = "popular",
                        explain: Annotated[bool, Query(
                            description="name the history items behind each result")] = False,
                        mode: RecommendModeQuery = "hybrid",
                        model: ModelQuery = None) -> Response:
        """Recommendations for a user (items they interacted with excluded by default); an
        unknown user gets popular items with reason "popular" unless fallback=none. Events
        posted since the bundle (POST /events) are folded in. With content vectors, catalog
        items nobody has interacted with yet compete through a vector predicted from their
        content (reason "content") unless mode=cf."""
        rec, variant = models.pick(user_id, model)
        return _items(rec, rec.recommend(user_id, k, exclude_seen, items, filter_items,
                                         CatalogFilter(category, min_price, max_price,
                                                       in_stock), fallback, explain,
                                         live_row(user_id), mode), variant=variant.name)

    @app.get("/users/{user_id:path}/similar", response_model=schemas.UsersResponse,
             responses=not_found, tags=["users"])
    def similar_users(user_id: UserId, k: KQuery = 10,
                      users: Annotated[list[OneId] | None, Query(max_length=max_ids)] = None,
                      filter_users: Annotated[list[OneId] | None,
                                              Query(max_length=max_ids)] = None,
                      model: ModelQuery = None) -> Response:
        """Users most similar to a user (cosine of embeddings; never the user itself)."""
        rec, variant = models.pick(user_id, model)
        result = rec.similar_users(user_id, k, users, filter_users)
        return _json({"model": rec.model, "version": rec.version, "variant": variant.name,
                      "users": result.records("user_id")}, rec.version)

    @app.get("/users/{user_id:path}/items/{item_id:path}/score",
             response_model=schemas.ScoreResponse, responses=not_found, tags=["users"])
    def score(user_id: UserId, item_id: ItemId, model: ModelQuery = None) -> Response:
        """The model's score of one item for one user (the ranking score of recommendations)."""
        rec, variant = models.pick(user_id, model)
        return _json({"model": rec.model, "version": rec.version, "variant": variant.name,
                      "user_id": user_id, "item_id": item_id,
                      "score": rec.score(user_id, item_id)}, rec.version)

    # Bodies bounded by the settings are built at run time: pydantic enforces their shape,
    # so handlers read them as Any.
    basket_model: Any = schemas.basket_request(max_ids, max_k, max_len)

    @app.post("/recommendations", response_model=schemas.BasketResponse,
              responses={**not_found, **too_large}, tags=["items"])
    def basket(body: Annotated[basket_model, Body()]) -> Response:
        """Recommendations for an anonymous basket or session (fold-in); unknown ids are
        reported in `unknown_item_ids` and ignored while at least one id is known."""
        rec, variant = models.pick(body.user_id, body.model)
        try:
            result = rec.recommend_for_items(
                body.item_ids, body.k, body.exclude_given, body.items, body.filter_items,
                CatalogFilter(body.category, body.min_price, body.max_price, body.in_stock),
                body.explain, body.mode)
        except (UnknownItem, UnknownItems):
            return _json({"detail": "none of the item ids is known",
                          "unknown_item_ids": body.item_ids}, rec.version, 404)
        return _items(rec, result, variant=variant.name, unknown_item_ids=result.unknown)

    similar_batch: Any = schemas.batch_request("item_ids", settings.max_batch, max_ids, max_k,
                                               max_len, False)
    recs_batch: Any = schemas.batch_request("user_ids", settings.max_batch, max_ids, max_k,
                                            max_len, True)

    @app.post("/batch/similar", response_model=schemas.BatchResponse, responses=too_large,
              tags=["batch"])
    def batch_similar(body: Annotated[similar_batch, Body()]) -> Response:
        """Similar items for many items in one call; unknown ids get an `error` entry."""
        rec, variant = models.pick(None, body.model)
        catalog_filter = CatalogFilter(body.category, body.min_price, body.max_price,
                                       body.in_stock)
        return _batch(rec, variant, body.item_ids, lambda rec, i: rec.similar_items(
            i, body.k, body.items, body.filter_items, catalog_filter=catalog_filter,
            mode=body.mode))

    @app.post("/batch/recommendations", response_model=schemas.BatchResponse,
              responses=too_large, tags=["batch"])
    def batch_recommendations(body: Annotated[recs_batch, Body()]) -> Response:
        """Recommendations for many users in one call; unknown ids get an `error` entry.
        Each user gets their own A/B variant, as one request would, and with several
        variants each result names its model, version and variant; `model` serves every
        user from that model instead."""
        catalog_filter = CatalogFilter(body.category, body.min_price, body.max_price,
                                       body.in_stock)

        def query(rec: Recommender, user_id: str) -> Results:
            return rec.recommend(user_id, body.k, body.exclude_seen, body.items,
                                 body.filter_items, catalog_filter, explain=body.explain,
                                 live=live_row(user_id), mode=body.mode)

        if body.model is not None or len(models.experiment.variants) == 1:
            rec, variant = models.pick(None, body.model)
            return _batch(rec, variant, body.user_ids, query)
        control = models.primary.get()  # the top level names the control; entries their own
        return _batch(control, models.experiment.control, body.user_ids, query, models.pick)


def _batch(rec: Recommender, variant: Variant, ids: list[str],
           query: Callable[[Recommender, str], Results],
           assign: Callable[[str], tuple[Recommender, Variant]] | None = None) -> Response:
    """A batch answer from `rec`; with `assign`, each id is answered by the model it assigns
    (and counts as a request of its variant), and its entry names that model, version and
    variant."""
    results: list[dict[str, Any]] = []
    for one in ids:
        entry: dict[str, Any] = {"id": one}
        answering = rec
        if assign is not None:
            answering, own_variant = assign(one)
            entry.update(model=answering.model, version=answering.version,
                         variant=own_variant.name)
        try:
            entry["items"] = query(answering, one).records()
        except (UnknownItem, UnknownUser) as exc:
            entry["error"] = str(exc)
        results.append(entry)
    return _json({"model": rec.model, "version": rec.version, "variant": variant.name,
                  "results": results}, rec.version)


def _add_demo_routes(app: FastAPI, models: Models, settings: Settings) -> None:
    page = resources.files("svdfaiss.service").joinpath("demo.html").read_bytes()

    @app.get("/demo", response_class=HTMLResponse, tags=["demo"])
    def demo() -> Response:
        """A page to look at the model: search the catalog, compare similar items by cf,
        content and hybrid side by side, and see a user's recommendations explained."""
        # Everything the page loads comes from this service; its script is inline.
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"})

    @app.get("/catalog/search", response_model=schemas.ItemsResponse, tags=["items"],
             responses={400: {"model": schemas.Problem, "description": "no catalog titles"}})
    def search_catalog(q: Annotated[str, Query(min_length=1, max_length=settings.max_id_length,
                                               description="text the title contains")],
                       limit: Annotated[int, Query(ge=1, le=settings.max_k)] = 10,
                       model: Annotated[str | None, Query(min_length=1, max_length=128)]
                       = None) -> Response:
        """Catalog items whose title contains q (case-insensitive), the most interacted with
        first; `score` and `interactions` are the item's training interactions (0 for a
        catalog item nobody has bought yet)."""
        rec, variant = models.pick(None, model)
        items = [{**r, "interactions": int(r["score"])}
                 for r in rec.search_catalog(q, limit).records()]
        return _json({"model": rec.model, "version": rec.version, "variant": variant.name,
                      "items": items}, rec.version)


def _add_operational_routes(app: FastAPI, models: Models, settings: Settings,
                            metrics: Metrics) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up (whether or not a bundle is loaded)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Ready, tags=["operations"])
    def readyz() -> Any:
        """Every served model has a bundle loaded: the control variant's bundle (when, its
        size), and each variant's model and version; 503 before."""
        missing = [m for m, h in models.holders.items() if h.current is None]
        current = models.primary.current
        if missing or current is None:
            return _problem(503, f"no bundle loaded for model {missing[0]!r}")
        rec = current.recommender
        counts = rec.manifest["counts"]
        variants = [{"variant": v.name, "model": v.model, "weight": v.weight,
                     "version": models.holders[v.model].version}
                    for v in models.experiment.variants]
        return {"model": rec.model, "version": rec.version,
                "loaded_at": current.loaded_at.isoformat(),
                "load_seconds": round(current.load_seconds, 4),
                "counts": {"users": counts["users"], "items": counts["items"],
                           "interactions": counts["interactions"]},
                "indexes": {k: v["type"] for k, v in rec.manifest["indexes"].items()},
                "experiment": models.experiment.name, "variants": variants}

    @app.get("/model", response_model=schemas.ModelInfo, tags=["operations"])
    def model_info(model: Annotated[str | None, Query(
            min_length=1, max_length=128,
            description="one of the served models (default: the control's)")] = None) -> Any:
        """The serving bundle: its parameters, factorization, indexes and the evaluation
        stored at build time (`svdfaiss build --evaluate`; null without it)."""
        rec, _ = models.pick(None, model)
        manifest = rec.manifest
        return {"model": rec.model, "version": rec.version,
                "created_at": manifest.get("created_at"),
                "builder_version": manifest.get("builder_version"),
                "counts": manifest["counts"], "parameters": manifest["parameters"],
                "explained_energy": manifest["factorization"]["explained_energy"],
                "indexes": {k: {"type": v["type"], "rows": v["rows"]}
                            for k, v in manifest["indexes"].items()},
                "similar_cache": manifest.get("similar_cache"),
                "content": manifest.get("content"),
                "evaluation": manifest.get("evaluation")}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics: requests and latency by route and status, bundle, reloads."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=schemas.ReloadResult, tags=["operations"],
              responses={401: {"model": schemas.Problem}, 403: {"model": schemas.Problem},
                         404: {"model": schemas.Problem},
                         409: {"model": schemas.ReloadResult,
                               "description": "the new bundle was refused; the old serves"}})
    async def admin_reload(authorization: Annotated[str | None, Header()] = None) -> Any:
        """Load the version CURRENT names now, for every served model (bearer token from
        SVDFAISS_ADMIN_TOKEN). The answer is the control's model, with every model's result
        under `models`; 409 when any was refused (those keep serving their old bundle)."""
        _authorize(settings, authorization)
        results = await models.reload()
        primary = results[list(models.holders).index(models.experiment.control.model)]
        answer = primary.model_copy(update={"models": results} if len(results) > 1 else {})
        if any(r.result == "refused" for r in results):
            return JSONResponse(answer.model_dump(), status_code=409)
        return answer


def _authorize(settings: Settings, authorization: str | None) -> None:
    """401 without a bearer token, 403 with a wrong one, 404 when admin is off."""
    if settings.admin_token is None:
        raise HTTPException(404, "admin endpoints are off (set SVDFAISS_ADMIN_TOKEN)")
    _check_bearer(settings.admin_token, authorization)


def _check_bearer(expected: SecretStr, authorization: str | None) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "a bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise HTTPException(403, "wrong token")


__all__ = ["Metrics", "ModelHolder", "create_app"]
