"""GET /items/{id}/similar: the items most similar to an item."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from svdfaiss.recommender import CatalogFilter
from svdfaiss.service import params, schemas
from svdfaiss.service.deps import batcher_of, models_of
from svdfaiss.service.responses import items_response

router = APIRouter()


@router.get("/items/{item_id:path}/similar", response_model=schemas.ItemsResponse,
            responses=params.NOT_FOUND, tags=["items"])
async def similar_items(request: Request, item_id: params.ItemId, k: params.KQuery = 10,
                        items: params.AllowQuery = None,
                        filter_items: params.DenyQuery = None,
                        category: params.CategoryQuery = None,
                        min_price: params.PriceQuery = None,
                        max_price: params.PriceQuery = None,
                        in_stock: params.StockQuery = None,
                        mode: params.ModeQuery = "hybrid",
                        user_id: params.ViewerQuery = None,
                        model: params.ModelQuery = None) -> Response:
    """Items most similar to an item (never the item itself).

    `mode`: cf (cosine of the SVD item vectors), content (cosine of the catalog's text
    and category vectors) or hybrid, the default: a * cf + (1 - a) * content with
    a = n / (n + hybrid_interactions) for an item with n interactions, so a catalog item
    nobody has bought yet gets content neighbours. A model built without content vectors
    answers hybrid as cf. Each item's `reason` names what ranked it.

    Evidence first: an item nobody interacted with together with another item has no cf
    neighbours (mode cf: 404); hybrid answers it with content neighbours (reason content),
    else the popular items of its category (popular_category) or of the catalog (popular).
    cf neighbours stay in the item's co-interaction component, and an item with fewer than
    50 co-users ranks by shared users (co_bought), filled up with popular items.

    Business filters (category, price, stock) run inside the index: k results whenever
    k items pass them."""
    models = models_of(request)
    batcher = batcher_of(request)
    rec, variant = models.pick(user_id, model)
    catalog_filter = CatalogFilter(category, min_price, max_price, in_stock)
    # Neighbours stored at build time answer on the event loop (an array slice); anything
    # needing FAISS goes to the thread pool so that a search never blocks the loop.
    result = (None if catalog_filter.active
              else rec.cached_similar_items(item_id, k, items, filter_items, mode))
    plain = items is None and filter_items is None and not catalog_filter.active
    # Unknown ids raise (404) in batchable, before batching.
    if result is None and batcher is not None and plain and rec.batchable(item_id, mode):
        result = await batcher.similar_items(rec, item_id, k)
    elif result is None:
        result = await run_in_threadpool(rec.similar_items, item_id, k, items, filter_items,
                                         False, catalog_filter, mode)
    return items_response(rec, result, variant=variant.name,
                          recommendation_id=models.answer_id(variant, user_id,
                                                             model is not None))
