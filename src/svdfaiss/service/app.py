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
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Header, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from pydantic import SecretStr

from svdfaiss.config import Settings
from svdfaiss.errors import (
    InvalidInput,
    UnknownItem,
    UnknownItems,
    UnknownUser,
)
from svdfaiss.events import Event, EventLog, LiveEvents, LiveUsers
from svdfaiss.experiment import Variant
from svdfaiss.recommender import CatalogFilter, Recommender, Results
from svdfaiss.service import schemas
from svdfaiss.service.batching import EventSink, SearchBatcher
from svdfaiss.service.errors import install_error_handlers, problem
from svdfaiss.service.fastpath import FastPath, ServiceMiddleware
from svdfaiss.service.holders import ModelHolder, Models
from svdfaiss.service.metrics import Metrics
from svdfaiss.service.responses import items_response, json_response

log = logging.getLogger("svdfaiss.service")


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
    install_error_handlers(app)
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
            return problem(503, f"cannot append to the events log: {exc.strerror or exc}")
        detail = None
        # Applied through the log, like the events other workers accept.
        await run_in_threadpool(live.sync)
        metrics.live_users.set(len(live))
        if not known:
            detail = "unknown item: logged for the next build, not applied"
        metrics.events.labels("applied" if known else "unknown_item").inc()
        return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
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
        return items_response(rec, result, variant=variant.name)

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
        return items_response(rec, rec.recommend(user_id, k, exclude_seen, items, filter_items,
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
        return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                      "users": result.records("user_id")}, rec.version)

    @app.get("/users/{user_id:path}/items/{item_id:path}/score",
             response_model=schemas.ScoreResponse, responses=not_found, tags=["users"])
    def score(user_id: UserId, item_id: ItemId, model: ModelQuery = None) -> Response:
        """The model's score of one item for one user (the ranking score of recommendations)."""
        rec, variant = models.pick(user_id, model)
        return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
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
            return json_response({"detail": "none of the item ids is known",
                          "unknown_item_ids": body.item_ids}, rec.version, 404)
        return items_response(rec, result, variant=variant.name, unknown_item_ids=result.unknown)

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
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
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
        return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
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
            return problem(503, f"no bundle loaded for model {missing[0]!r}")
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


__all__ = ["FastPath", "Metrics", "ModelHolder", "Models", "create_app"]
