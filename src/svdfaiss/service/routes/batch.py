"""POST /batch/*: similar items or recommendations for many ids in one call."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from svdfaiss.errors import UnknownItem, UnknownUser
from svdfaiss.experiment import Variant
from svdfaiss.recommender import CatalogFilter, Recommender, Results
from svdfaiss.service import schemas
from svdfaiss.service.deps import models_of
from svdfaiss.service.params import TOO_LARGE, RecommendationsBatchBody, SimilarBatchBody
from svdfaiss.service.responses import json_response

router = APIRouter()


@router.post("/batch/similar", response_model=schemas.BatchResponse, responses=TOO_LARGE,
             tags=["batch"])
def batch_similar(request: Request, body: SimilarBatchBody) -> Response:
    """Similar items for many items in one call; unknown ids get an `error` entry."""
    models = models_of(request)
    rec, variant = models.pick(None, body.model)
    catalog_filter = CatalogFilter(body.category, body.min_price, body.max_price,
                                   body.in_stock)
    forced = body.model is not None
    return _batch(rec, variant, body.item_ids, lambda rec, i: rec.similar_items(
        i, body.k, body.items, body.filter_items, catalog_filter=catalog_filter,
        mode=body.mode), lambda v, _: models.answer_id(v, None, forced))


@router.post("/batch/recommendations", response_model=schemas.BatchResponse,
             responses=TOO_LARGE, tags=["batch"])
def batch_recommendations(request: Request, body: RecommendationsBatchBody) -> Response:
    """Recommendations for many users in one call; unknown ids get an `error` entry.
    Each user gets their own A/B variant, as one request would, and with several
    variants each result names its model, version and variant; `model` serves every
    user from that model instead."""
    models = models_of(request)
    catalog_filter = CatalogFilter(body.category, body.min_price, body.max_price,
                                   body.in_stock)
    live = models.live

    def query(rec: Recommender, user_id: str) -> Results:
        return rec.recommend(user_id, body.k, body.exclude_seen, body.items,
                             body.filter_items, catalog_filter, explain=body.explain,
                             live=None if live is None else live.get(user_id),
                             mode=body.mode)

    forced = body.model is not None

    def answer_id(variant: Variant, user_id: str | None) -> str:
        return models.answer_id(variant, user_id, forced)

    if body.model is not None or len(models.experiment.variants) == 1:
        rec, variant = models.pick(None, body.model)
        return _batch(rec, variant, body.user_ids, query, answer_id, user_ids=True)
    control = models.primary.get()  # the top level names the control; entries their own
    return _batch(control, models.experiment.control, body.user_ids, query, answer_id,
                  models.pick, user_ids=True)


def _batch(rec: Recommender, variant: Variant, ids: list[str],
           query: Callable[[Recommender, str], Results],
           answer_id: Callable[[Variant, str | None], str],
           assign: Callable[[str], tuple[Recommender, Variant]] | None = None,
           user_ids: bool = False) -> Response:
    """A batch answer from `rec`; with `assign`, each id is answered by the model it assigns
    (and counts as a request of its variant), and its entry names that model, version and
    variant. Each answered entry is an answer of its own: it carries a recommendation id
    (`answer_id(variant, user)`; `user_ids`: the ids are users)."""
    results: list[dict[str, Any]] = []
    for one in ids:
        entry: dict[str, Any] = {"id": one}
        answering, own_variant = rec, variant
        if assign is not None:
            answering, own_variant = assign(one)
            entry.update(model=answering.model, version=answering.version,
                         variant=own_variant.name)
        try:
            entry["items"] = query(answering, one).records()
        except (UnknownItem, UnknownUser) as exc:
            entry["error"] = str(exc)
        else:
            entry["recommendation_id"] = answer_id(own_variant, one if user_ids else None)
        results.append(entry)
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                          "results": results}, rec.version)
