"""The demo page, and the catalog search it finds items with."""

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from svdfaiss.service import schemas
from svdfaiss.service.deps import ModelsDep
from svdfaiss.service.params import LimitQuery, SearchKQuery, SearchText
from svdfaiss.service.responses import json_response

router = APIRouter()
PAGE = resources.files("svdfaiss.service").joinpath("demo.html").read_bytes()


@router.get("/demo", response_class=HTMLResponse, tags=["demo"])
def demo() -> Response:
    """A page to look at the model: search the catalog, compare similar items by cf,
    content and hybrid side by side, and see a user's recommendations explained."""
    # Everything the page loads comes from this service; its script is inline.
    return Response(PAGE, media_type="text/html; charset=utf-8", headers={
        "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"})


@router.get("/demo/examples", tags=["demo"])
def demo_examples(models: ModelsDep) -> dict[str, Any]:
    """Ids to try on the demo page: the most popular items, and users whose history has
    collaborative evidence."""
    rec, _ = models.pick(None, None)
    items = [{"item_id": r["item_id"], "title": r.get("title")} for r in rec.popular(3).records()]
    users = []
    for user in range(min(rec.n_users, 200)):
        if rec.evidence.any_evidence(rec.seen_items(user)):
            users.append(rec.user_ids[user].decode("utf-8"))
        if len(users) == 3:
            break
    return {"items": items, "users": users}


@router.get("/catalog/search", response_model=schemas.ItemsResponse, tags=["items"],
            responses={400: {"model": schemas.Problem, "description": "no catalog titles"}})
def search_catalog(models: ModelsDep, q: SearchText, k: SearchKQuery = None,
                   limit: LimitQuery = None,
                   model: Annotated[str | None, Query(min_length=1, max_length=128)]
                   = None) -> Response:
    """Catalog items whose title contains q (case-insensitive), the most interacted with
    first, k of them (limit is an alias); `score` and `interactions` are the item's training
    interactions (0 for a catalog item nobody has bought yet)."""
    rec, variant = models.pick(None, model)
    count = k if k is not None else limit if limit is not None else 10
    items = [{**r, "interactions": int(r["score"])}
             for r in rec.search_catalog(q, count).records()]
    return json_response({"model": rec.model, "version": rec.version, "variant": variant.name,
                          "items": items}, rec.version)
