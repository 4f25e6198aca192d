"""POST /events: a user's purchase, view or rating, logged and folded into their live row."""

import logging
import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from svdfaiss.errors import InvalidInput
from svdfaiss.events import Event
from svdfaiss.experiment import variant_of
from svdfaiss.service import schemas
from svdfaiss.service.deps import (
    Authorization,
    MetricsDep,
    ModelsDep,
    SettingsDep,
    SinkDep,
    check_bearer,
)
from svdfaiss.service.errors import problem
from svdfaiss.service.params import EventBody
from svdfaiss.service.responses import json_response

log = logging.getLogger("svdfaiss.service")
router = APIRouter()


@router.post("/events", response_model=schemas.EventResult, tags=["events"],
             responses={401: {"model": schemas.Problem}, 403: {"model": schemas.Problem},
                        503: {"model": schemas.Problem,
                              "description": "no bundle, or the events log cannot be written"}})
async def post_event(models: ModelsDep, settings: SettingsDep, metrics: MetricsDep,
                     sink: SinkDep, body: EventBody,
                     authorization: Authorization = None) -> Response:
    """Record that a user bought, viewed or rated an item. The event is appended to the
    events log (fsynced before this returns) and, when the model knows the item, joins
    the user's live row: their next recommendations fold it in at once, and a user the
    bundle never saw becomes known. Events for unknown items are logged for the next
    build (`svdfaiss build --events LOG`) and reported with applied=false. With
    SVDFAISS_EVENTS_TOKEN set, a bearer token is required.

    `type` (view, click, add_to_cart, purchase by default: SVDFAISS_EVENT_TYPES) is the
    outcome the experiment report counts; the event is attributed to the variant whose
    answer `recommendation_id` names, else to the user's assigned variant."""
    if settings.events_token is not None:
        check_bearer(settings.events_token, authorization)
    live = models.live
    assert live is not None  # the app has this route only with live events
    rec, variant = models.pick(body.user_id)
    explicit = rec.feedback == "explicit"
    if body.weight is None and explicit:
        metrics.events.labels("refused").inc()
        raise InvalidInput("this model holds explicit ratings: give the rating as weight")
    weight = 1.0 if body.weight is None else float(body.weight)
    if not explicit and weight <= 0:
        metrics.events.labels("refused").inc()
        raise InvalidInput(f"weight must be above 0 for implicit counts, got {weight}")
    try:  # by the answer it follows, else by the user's assignment
        attributed = (variant if body.recommendation_id is None
                      else variant_of(body.recommendation_id, models.experiment))
    except InvalidInput:
        metrics.events.labels("refused").inc()
        raise
    event = Event(body.user_id, body.item_id, weight, time.time(), type=body.type,
                  recommendation_id=body.recommendation_id,
                  experiment=models.experiment.name, variant=attributed.name)
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
    metrics.experiment_events.labels(models.experiment.name, attributed.name,
                                     body.type or "none").inc()
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                          "user_id": body.user_id, "item_id": body.item_id, "weight": weight,
                          "logged": True,
                          "applied": known, "detail": detail, "type": body.type,
                          "recommendation_id": body.recommendation_id,
                          "experiment": models.experiment.name,
                          "attributed_to": attributed.name}, rec.version)
