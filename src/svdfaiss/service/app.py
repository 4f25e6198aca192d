"""The FastAPI application: `create_app` assembles settings, state, routes, error handlers,
middleware and lifespan; routes translate HTTP to `Recommender` calls and nothing else.

The package's other modules: `holders` (the served models, loaded and swapped), `routes`
(one router per resource), `params` and `deps` (what routes declare and depend on),
`fastpath` (the ASGI layers: metrics, and the hot queries without FastAPI), `batching`,
`errors`, `responses`, `metrics` and `schemas`.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from svdfaiss.config import Settings
from svdfaiss.events import EventLog, LiveEvents, LiveUsers
from svdfaiss.experiment import ExposureLog
from svdfaiss.live_catalog import LiveCatalog
from svdfaiss.service import params, schemas
from svdfaiss.service.batching import EventSink, SearchBatcher
from svdfaiss.service.errors import install_error_handlers
from svdfaiss.service.fastpath import FastPath, ServiceMiddleware
from svdfaiss.service.holders import ModelHolder, Models
from svdfaiss.service.metrics import Metrics
from svdfaiss.service.routes import (
    admin,
    basket,
    batch,
    catalog,
    demo,
    events,
    experiments,
    items,
    operations,
    users,
)

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
    if settings.catalog_token is not None:  # off while no token guards it
        models.catalog = LiveCatalog(settings.resolved_catalog_log(), settings.live_items)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await models.reload()  # and the live rows from the events log's tail
        tasks = []
        if settings.poll_seconds > 0:
            tasks.append(asyncio.create_task(_poll(models)))
        exposures = models.exposures
        if exposures is not None:
            tasks.append(asyncio.create_task(_flush(exposures,
                                                    settings.exposure_flush_seconds)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if exposures is not None:
            await run_in_threadpool(_flush_once, exposures)
        if live is not None:
            live.follower.close()
        if models.catalog is not None:
            models.catalog.follower.close()

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from assets
    # the package ships, served here, instead of a CDN (blank pages offline).
    app = FastAPIOffline(
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
    app.state.metrics = metrics
    app.state.batcher = SearchBatcher() if settings.search_mode == "batch" else None
    install_error_handlers(app)
    declared = params.declarations(settings)
    for resource in (items, users, basket, batch):
        params.include(app, resource.router, declared)
    if live is not None:
        app.state.sink = EventSink(EventLog(settings.resolved_events_log()))
        params.include(app, events.router, declared)
    app.state.catalog_sink = EventSink(EventLog(settings.resolved_catalog_log()))
    params.include(app, catalog.router, declared)
    for resource in (experiments, operations, admin, demo):
        params.include(app, resource.router, declared)
    if settings.fast_path:
        routes = {getattr(r, "name", ""): r for r in app.routes
                  if getattr(r, "name", "") in ("similar_items", "recommendations")}
        app.add_middleware(FastPath, models=models, settings=settings, routes=routes)
    if settings.cors_origins:  # off unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(ServiceMiddleware, models=models, metrics=metrics)
    return app


async def _flush(exposures: ExposureLog, seconds: float) -> None:
    """Append the buffered exposures every `seconds` (one write and fsync each time)."""
    while True:
        await asyncio.sleep(seconds)
        await run_in_threadpool(_flush_once, exposures)


def _flush_once(exposures: ExposureLog) -> None:
    try:
        exposures.flush()
    except OSError as exc:  # a full disk must not stop the answers; say so each time
        log.error("exposures log %s: %s (exposures since the last flush are lost)",
                  exposures.path, exc)


async def _poll(models: Models) -> None:
    """Pick up a newly published CURRENT without an admin call."""
    while True:
        await asyncio.sleep(models.primary.settings.poll_seconds)
        try:
            await models.reload()
        except Exception:  # the poller must survive anything a bad bundle does
            log.exception("poll reload failed")


__all__ = ["FastPath", "Metrics", "ModelHolder", "Models", "create_app"]
