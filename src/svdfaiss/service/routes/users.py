"""The user routes: recommendations, similar users, and one item's score for a user."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from svdfaiss.recommender import CatalogFilter
from svdfaiss.service import params, schemas
from svdfaiss.service.deps import models_of
from svdfaiss.service.responses import items_response, json_response

router = APIRouter()


@router.get("/users/{user_id:path}/recommendations", response_model=schemas.ItemsResponse,
            responses=params.NOT_FOUND, tags=["users"])
def recommendations(request: Request, user_id: params.UserId, k: params.KQuery = 10,
                    exclude_seen: bool = True, items: params.AllowQuery = None,
                    filter_items: params.DenyQuery = None,
                    category: params.CategoryQuery = None, min_price: params.PriceQuery = None,
                    max_price: params.PriceQuery = None, in_stock: params.StockQuery = None,
                    fallback: Annotated[Literal["popular", "none"], Query(
                        description="an unknown user gets the most popular items "
                                    "(popular) or a 404 (none)")] = "popular",
                    explain: Annotated[bool, Query(
                        description="name the history items behind each result")] = False,
                    mode: params.RecommendModeQuery = "hybrid",
                    model: params.ModelQuery = None) -> Response:
    """Recommendations for a user (items they interacted with excluded by default); an
    unknown user gets popular items with reason "popular" unless fallback=none. Events
    posted since the bundle (POST /events) are folded in. With content vectors, catalog
    items nobody has interacted with yet compete through a vector predicted from their
    content (reason "content") unless mode=cf."""
    models = models_of(request)
    rec, variant = models.pick(user_id, model)
    live = None if models.live is None else models.live.get(user_id)
    return items_response(rec, rec.recommend(user_id, k, exclude_seen, items, filter_items,
                                             CatalogFilter(category, min_price, max_price,
                                                           in_stock), fallback, explain,
                                             live, mode), variant=variant.name,
                          recommendation_id=models.answer_id(variant, user_id,
                                                             model is not None))


@router.get("/users/{user_id:path}/similar", response_model=schemas.UsersResponse,
            responses=params.NOT_FOUND, tags=["users"])
def similar_users(request: Request, user_id: params.UserId, k: params.KQuery = 10,
                  users: params.UsersQuery = None, filter_users: params.UsersQuery = None,
                  model: params.ModelQuery = None) -> Response:
    """Users most similar to a user (cosine of embeddings; never the user itself)."""
    models = models_of(request)
    rec, variant = models.pick(user_id, model)
    result = rec.similar_users(user_id, k, users, filter_users)
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                          "users": result.records("user_id"),
                          "recommendation_id": models.answer_id(variant, user_id,
                                                                model is not None)},
                         rec.version)


@router.get("/users/{user_id:path}/items/{item_id:path}/score",
            response_model=schemas.ScoreResponse, responses=params.NOT_FOUND, tags=["users"])
def score(request: Request, user_id: params.UserId, item_id: params.ItemId,
          model: params.ModelQuery = None) -> Response:
    """The model's score of one item for one user (the ranking score of recommendations)."""
    models = models_of(request)
    rec, variant = models.pick(user_id, model)
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                          "user_id": user_id, "item_id": item_id,
                          "score": rec.score(user_id, item_id),
                          "recommendation_id": models.answer_id(variant, user_id,
                                                                model is not None)},
                         rec.version)
