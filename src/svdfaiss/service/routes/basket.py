"""POST /recommendations: recommendations for an anonymous basket or session."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from svdfaiss.errors import UnknownItem, UnknownItems
from svdfaiss.recommender import CatalogFilter
from svdfaiss.service import schemas
from svdfaiss.service.deps import models_of
from svdfaiss.service.params import NOT_FOUND, TOO_LARGE, BasketBody
from svdfaiss.service.responses import items_response, json_response

router = APIRouter()


@router.post("/recommendations", response_model=schemas.BasketResponse,
             responses={**NOT_FOUND, **TOO_LARGE}, tags=["items"])
def basket(request: Request, body: BasketBody) -> Response:
    """Recommendations for an anonymous basket or session (fold-in); unknown ids are
    reported in `unknown_item_ids` and ignored while at least one id is known."""
    models = models_of(request)
    rec, variant = models.pick(body.user_id, body.model)
    try:
        result = rec.recommend_for_items(
            body.item_ids, body.k, body.exclude_given, body.items, body.filter_items,
            CatalogFilter(body.category, body.min_price, body.max_price, body.in_stock),
            body.explain, body.mode)
    except (UnknownItem, UnknownItems):
        return json_response({"detail": "none of the item ids is known",
                              "unknown_item_ids": body.item_ids}, rec.version, 404)
    return items_response(rec, result, variant=variant.name, unknown_item_ids=result.unknown,
                          recommendation_id=models.answer_id(variant, body.user_id,
                                                             body.model is not None))
