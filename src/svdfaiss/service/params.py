"""Request parameters, and how routes declare the ones whose limits are settings.

A bound parameter (k up to max_k, ids up to max_id_length characters, lists up to max_ids,
bodies built from them) is declared `Annotated[<type>, ..., Bound(name)]`. The routers of
`service.routes` are templates: `include` adds each route to an app with an endpoint whose
signature declares what `declarations(settings)` gives each name, so the route functions live
at module level while FastAPI still validates and documents the limits the app was given.
"""

import inspect
import types
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from fastapi import Body, FastAPI, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter

from svdfaiss.config import Settings
from svdfaiss.service import schemas


@dataclass(frozen=True)
class Bound:
    """Marks a parameter whose declaration comes from `declarations(settings)[name]`."""

    name: str


ItemId = Annotated[str, Path(), Bound("item_id")]
UserId = Annotated[str, Path(), Bound("user_id")]
KQuery = Annotated[int, Query(), Bound("k")]
AllowQuery = Annotated[list[str] | None, Query(), Bound("allow")]
DenyQuery = Annotated[list[str] | None, Query(), Bound("deny")]
UsersQuery = Annotated[list[str] | None, Query(), Bound("users")]
CategoryQuery = Annotated[str | None, Query(), Bound("category")]
ViewerQuery = Annotated[str | None, Query(), Bound("viewer")]
SearchText = Annotated[str, Query(), Bound("search_text")]
SearchKQuery = Annotated[int | None, Query(), Bound("search_k")]
LimitQuery = Annotated[int | None, Query(), Bound("limit")]
# Bodies bounded by the settings are built at run time: pydantic enforces their shape, so
# handlers read them as Any.
BasketBody = Annotated[Any, Body(), Bound("basket")]
SimilarBatchBody = Annotated[Any, Body(), Bound("similar_batch")]
RecommendationsBatchBody = Annotated[Any, Body(), Bound("recommendations_batch")]
EventBody = Annotated[Any, Body(), Bound("event")]

PriceQuery = Annotated[float | None, Query(
    ge=0, allow_inf_nan=False, description="catalog price bound")]
StockQuery = Annotated[bool | None, Query(
    description="only items in stock (true) or out of stock (false)")]
ModeQuery = Annotated[Literal["cf", "content", "hybrid"], Query(
    description="similar items by cf, content or hybrid (the default)")]
RecommendModeQuery = Annotated[Literal["cf", "hybrid"], Query(
    description="hybrid (the default) also ranks catalog items nobody has interacted "
                "with, through vectors predicted from their content; cf only the "
                "model's items")]
ModelQuery = Annotated[str | None, Query(
    min_length=1, max_length=128, description="serve this model (one of the experiment's "
    "variants) instead of the user's assigned variant")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.Problem, "description": "unknown id"}}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": schemas.Problem, "description": "body over SVDFAISS_MAX_BODY_BYTES"}}


def declarations(settings: Settings) -> dict[str, Any]:
    """What each `Bound` name declares under these settings."""
    max_k, max_ids, max_len = settings.max_k, settings.max_ids, settings.max_id_length
    one_id: Any = schemas.id_type(max_len)
    return {
        "item_id": Annotated[str, Path(min_length=1, max_length=max_len)],
        "user_id": Annotated[str, Path(min_length=1, max_length=max_len)],
        "k": Annotated[int, Query(ge=1, le=max_k, description="number of results")],
        "allow": Annotated[list[one_id] | None, Query(
            max_length=max_ids, description="allow-list: only these items (repeatable)")],
        "deny": Annotated[list[one_id] | None, Query(
            max_length=max_ids, description="deny-list: never these items (repeatable)")],
        "users": Annotated[list[one_id] | None, Query(max_length=max_ids)],
        "category": Annotated[str | None, Query(
            min_length=1, max_length=max_len,
            description="only items of this catalog category (a|b values match each part)")],
        "viewer": Annotated[str | None, Query(
            min_length=1, max_length=max_len,
            description="the viewer, for the A/B assignment (without it: the control "
                        "variant)")],
        "search_text": Annotated[str, Query(min_length=1, max_length=max_len,
                                            description="text the title contains")],
        "search_k": Annotated[int | None, Query(
            ge=1, le=max_k, description="number of results (default 10)")],
        "limit": Annotated[int | None, Query(ge=1, le=max_k,
                                             description="an alias of k, kept for old clients")],
        "basket": Annotated[schemas.basket_request(max_ids, max_k, max_len), Body()],
        "similar_batch": Annotated[schemas.batch_request(
            "item_ids", settings.max_batch, max_ids, max_k, max_len, False), Body()],
        "recommendations_batch": Annotated[schemas.batch_request(
            "user_ids", settings.max_batch, max_ids, max_k, max_len, True), Body()],
        "event": Annotated[schemas.event_request(max_len, settings.event_types), Body()],
    }


class StrictQueryRoute(APIRoute):
    """A route that answers 422 for a query parameter it does not declare, naming it: a
    misspelt filter (`in_stok=true`) would otherwise be ignored in silence, while the same
    typo in a JSON body is already a 422. One set lookup per parameter a request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = _query_names(self.dependant)

        async def strict(request: Request) -> Response:
            unknown = [name for name in request.query_params if name not in known]
            if unknown:
                raise RequestValidationError([
                    {"type": "extra_forbidden", "loc": ("query", name),
                     "msg": f"unknown query parameter {name!r}; this route takes "
                            f"{', '.join(sorted(known)) or 'none'}",
                     "input": request.query_params[name]} for name in dict.fromkeys(unknown)])
            return await handler(request)

        return strict


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route and its dependencies declare."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


def include(app: FastAPI, router: APIRouter, declared: dict[str, Any]) -> None:
    """Add the router's routes to the app as its own routes, bound to `declared`.

    Not `app.include_router`: that would keep the template's declarations, and nest the
    routes in the router, where the fast path and the metrics labels look for them flat.
    """
    for route in router.routes:
        assert isinstance(route, APIRoute)
        app.router.add_api_route(
            route.path, bind(route.endpoint, declared), methods=sorted(route.methods or ()),
            response_model=route.response_model, status_code=route.status_code,
            tags=route.tags, summary=route.summary, description=route.description,
            response_description=route.response_description, responses=route.responses,
            deprecated=route.deprecated, operation_id=route.operation_id,
            include_in_schema=route.include_in_schema, response_class=route.response_class,
            name=route.name, openapi_extra=route.openapi_extra,
            route_class_override=StrictQueryRoute)


def bind(endpoint: Callable[..., Any], declared: dict[str, Any]) -> Callable[..., Any]:
    """A copy of the endpoint (same code, no wrapper call) whose signature declares each
    `Bound` parameter as `declared` says."""
    signature = inspect.signature(endpoint)
    parameters = [p.replace(annotation=declared[bound.name])
                  if (bound := _bound(p.annotation)) is not None else p
                  for p in signature.parameters.values()]
    assert isinstance(endpoint, types.FunctionType)
    copy = types.FunctionType(endpoint.__code__, endpoint.__globals__, endpoint.__name__,
                              endpoint.__defaults__, endpoint.__closure__)
    copy.__kwdefaults__ = endpoint.__kwdefaults__
    copy.__doc__, copy.__qualname__ = endpoint.__doc__, endpoint.__qualname__
    copy.__module__ = endpoint.__module__
    copy.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters)
    return copy


def _bound(annotation: Any) -> Bound | None:
    if get_origin(annotation) is not Annotated:
        return None
    return next((m for m in get_args(annotation)[1:] if isinstance(m, Bound)), None)
