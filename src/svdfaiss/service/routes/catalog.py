"""PUT and DELETE /items: the live catalog, logged (fsynced) and in effect before the answer."""

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from svdfaiss.errors import InvalidInput, UnknownItem
from svdfaiss.events import check_event_id
from svdfaiss.live_catalog import CatalogChange, LiveCatalog, check_fields, column_kinds
from svdfaiss.recommender import Recommender
from svdfaiss.service import params, schemas
from svdfaiss.service.batching import EventSink
from svdfaiss.service.deps import Authorization, MetricsDep, ModelsDep, SettingsDep, check_bearer
from svdfaiss.service.errors import problem
from svdfaiss.service.holders import Models
from svdfaiss.service.metrics import Metrics
from svdfaiss.service.responses import json_response

log = logging.getLogger("svdfaiss.service")
router = APIRouter(tags=["catalog"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.Problem}, 403: {"model": schemas.Problem},
    404: {"model": schemas.Problem, "description": "the live catalog is off "
          "(SVDFAISS_CATALOG_TOKEN unset), or an unknown item (DELETE)"},
    409: {"model": schemas.Problem, "description": "the model was built without a catalog"},
    503: {"model": schemas.Problem, "description": "no bundle, or the catalog log cannot "
          "be written"},
    507: {"model": schemas.Problem, "description": "the live catalog holds SVDFAISS_LIVE_ITEMS "
          "items: build with --catalog-updates to fold them in"}}
FieldsBody = Annotated[Any, Body(description="the item's full record: catalog column -> "
                                 "value (a column left out is empty)")]
BulkBody = Annotated[Any, Body(description='{"items": [{"item_id": ..., column: value, ...}], '
                               '"delete": [item ids]}')]


def _catalog(request: Request, settings: SettingsDep, authorization: str | None,
             ) -> LiveCatalog:
    models: Models = request.app.state.models
    if settings.catalog_token is None or models.catalog is None:
        raise HTTPException(404, "the live catalog is off (set SVDFAISS_CATALOG_TOKEN)")
    check_bearer(settings.catalog_token, authorization)
    return models.catalog


def _primary(models: Models) -> Recommender:
    """The control model with the live catalog as it is now (not counted as a request)."""
    models.sync_catalog()
    return models.primary.get()


def _kinds(rec: Recommender) -> dict[str, Any]:
    if not rec.catalog:
        raise HTTPException(409, f"model {rec.model!r} was built without a catalog (--items): "
                            "the live catalog updates catalog columns")
    return column_kinds(rec.catalog)


async def _commit(request: Request, models: Models, metrics: Metrics, catalog: LiveCatalog,
                  changes: list[CatalogChange]) -> Response | None:
    """Refuse beyond the memory bound, append and fsync the changes, then apply them from
    the log (as the changes other workers accept); a problem response, or None."""
    if catalog.full(c.item_id for c in changes):
        metrics.catalog_changes.labels("refused").inc(len(changes))
        return problem(507, f"the live catalog holds {len(catalog)} items, its bound "
                       f"(SVDFAISS_LIVE_ITEMS {catalog.capacity}): build with "
                       "--catalog-updates to fold the log in, then reload")
    sink: EventSink = request.app.state.catalog_sink
    try:
        await sink.write(b"".join(c.line() for c in changes))
    except OSError as exc:
        metrics.catalog_changes.labels("refused").inc(len(changes))
        log.error("catalog log %s: %s", sink.log.path, exc)
        return problem(503, f"cannot append to the catalog log: {exc.strerror or exc}")
    await run_in_threadpool(models.sync_catalog)
    for change in changes:
        metrics.catalog_changes.labels(change.op).inc()
    return None


def _answer(rec: Recommender, catalog: LiveCatalog, changes: list[CatalogChange],
            ) -> list[dict[str, Any]]:
    return [{"item_id": c.item_id, "op": c.op, "logged": True,
             "in_bundle": _in_bundle(rec, c.item_id)} for c in changes]


def _in_bundle(rec: Recommender, item_id: str) -> bool:
    base: Recommender = getattr(rec, "base", rec)
    try:
        base.catalog_index(item_id)
    except UnknownItem:
        return False
    return True


def _put(item_id: Any, fields: Any, kinds: dict[str, Any], now: float, max_length: int,
         ) -> CatalogChange:
    item = check_event_id(item_id, "item_id")
    if len(item) > max_length:
        raise InvalidInput(f"item_id is longer than {max_length} characters")
    return CatalogChange("put", item, check_fields(item, fields, kinds), now)


@router.put("/items/{item_id:path}", responses=RESPONSES)
async def put_item(request: Request, models: ModelsDep, settings: SettingsDep,
                   metrics: MetricsDep, item_id: params.ItemId, fields: FieldsBody,
                   authorization: Authorization = None) -> Response:
    """Add an item to the catalog, or replace its record (title, category, price, in_stock,
    any catalog column), at once and with no rebuild: a new item gets content neighbours
    and joins recommendations through the vector its content predicts; a price or stock
    change applies to the filters. Logged (fsynced) before the answer, replayed after a
    restart, folded in by `svdfaiss build --catalog-updates LOG`. Bearer token
    SVDFAISS_CATALOG_TOKEN; off while it is unset."""
    catalog = _catalog(request, settings, authorization)
    rec = _primary(models)
    change = _put(item_id, fields, _kinds(rec), time.time(), settings.max_id_length)
    refused = await _commit(request, models, metrics, catalog, [change])
    if refused is not None:
        return refused
    rec = _primary(models)
    return json_response({"model": rec.model, "version": rec.version,
                          **_answer(rec, catalog, [change])[0],
                          "live_items": len(catalog)}, rec.version)


@router.put("/items", responses=RESPONSES)
async def put_items(request: Request, models: ModelsDep, settings: SettingsDep,
                    metrics: MetricsDep, body: BulkBody,
                    authorization: Authorization = None) -> Response:
    """Many upserts and withdrawals in one call, with one log write: `{"items": [{"item_id",
    column: value, ...}], "delete": [ids]}`. Checked first, all or nothing: a bad entry is
    a 422 naming it and nothing is logged."""
    catalog = _catalog(request, settings, authorization)
    rec = _primary(models)
    if not isinstance(body, dict) or set(body) - {"items", "delete"}:
        raise InvalidInput('the body is {"items": [...], "delete": [...]}')
    entries, deletes = body.get("items") or [], body.get("delete") or []
    if not isinstance(entries, list) or not isinstance(deletes, list):
        raise InvalidInput("items and delete must be lists")
    if len(entries) + len(deletes) > settings.max_batch * 10:
        raise InvalidInput(f"at most {settings.max_batch * 10} changes per call, got "
                           f"{len(entries) + len(deletes)}")
    kinds = _kinds(rec)
    now = time.time()
    changes = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInput(f"items[{n}] must be an object with item_id")
        fields = {k: v for k, v in entry.items() if k != "item_id"}
        try:
            changes.append(_put(entry.get("item_id"), fields, kinds, now,
                                settings.max_id_length))
        except InvalidInput as exc:
            raise InvalidInput(f"items[{n}]: {exc}") from None
    for n, item in enumerate(deletes):
        try:
            changes.append(_delete(rec, catalog, check_event_id(item, "item_id"), now))
        except InvalidInput as exc:
            raise InvalidInput(f"delete[{n}]: {exc}") from None
        except HTTPException as exc:
            raise InvalidInput(f"delete[{n}]: {exc.detail}") from None
    if not changes:
        raise InvalidInput("nothing to change: items and delete are empty")
    refused = await _commit(request, models, metrics, catalog, changes)
    if refused is not None:
        return refused
    rec = _primary(models)
    return json_response({"model": rec.model, "version": rec.version,
                          "changes": _answer(rec, catalog, changes),
                          "live_items": len(catalog)}, rec.version)


def _delete(rec: Recommender, catalog: LiveCatalog, item_id: str, now: float) -> CatalogChange:
    """A withdrawal of an item the catalog has now (the bundle's, or a live one)."""
    live = catalog.get(item_id)
    if live is not None and live.op == "delete":
        raise HTTPException(404, f"item {item_id!r} is withdrawn already")
    if live is None and not _in_bundle(rec, item_id):
        raise HTTPException(404, f"unknown item {item_id!r}: neither the bundle nor the "
                            "live catalog has it")
    return CatalogChange("delete", item_id, None, now)


@router.delete("/items/{item_id:path}", responses=RESPONSES)
async def delete_item(request: Request, models: ModelsDep, settings: SettingsDep,
                      metrics: MetricsDep, item_id: params.ItemId,
                      authorization: Authorization = None) -> Response:
    """Withdraw an item: it leaves every answer at once (similar items, stored neighbours,
    recommendations, the popular fallback), and the next `--catalog-updates` build drops it
    and its interactions. Logged (fsynced) before the answer."""
    catalog = _catalog(request, settings, authorization)
    rec = _primary(models)
    change = _delete(rec, catalog, item_id, time.time())
    refused = await _commit(request, models, metrics, catalog, [change])
    if refused is not None:
        return refused
    rec = _primary(models)
    return json_response({"model": rec.model, "version": rec.version,
                          **_answer(rec, catalog, [change])[0],
                          "live_items": len(catalog)}, rec.version)
