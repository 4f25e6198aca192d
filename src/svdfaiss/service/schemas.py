"""Request and response shapes; they document the OpenAPI schema.

Hot routes build their JSON with orjson straight from the results, so these models describe
responses without validating each one (no per-item pydantic object on the way out).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class Contribution(BaseModel):
    """A history item and how much it adds to a recommended item's score."""

    item_id: str
    contribution: float
    title: str | None = Field(None, description="the history item's catalog title")


class ScoredItem(BaseModel):
    """One result; catalog fields (title, category, price, ...) appear when the bundle has them."""

    model_config = ConfigDict(extra="allow")
    item_id: str
    score: float
    title: str | None = None
    category: str | None = None
    reason: str | None = Field(None, description="recommendations: cf, rating, basket, "
                               "popular (the cold-user fallback) or content (a catalog item "
                               "nobody has interacted with, ranked through its content); "
                               "similar items: cf, content or hybrid")
    because: list[Contribution] | None = Field(
        None, description="with explain=true: the history items that add most to the score")


class ScoredUser(BaseModel):
    user_id: str
    score: float


class ItemsResponse(BaseModel):
    model: str
    version: str
    variant: str | None = Field(None, description="the A/B variant that answered (the "
                                "model's name when one model is served)")
    items: list[ScoredItem]
    recommendation_id: str | None = Field(
        None, description="this answer's id: quote it in POST /events to attribute what "
        "the user did to the variant that answered")


class BasketResponse(ItemsResponse):
    unknown_item_ids: list[str] = Field(description="ids the model does not know (ignored)")


class UsersResponse(BaseModel):
    model: str
    version: str
    variant: str | None = Field(None, description="the A/B variant that answered (the "
                                "model's name when one model is served)")
    users: list[ScoredUser]
    recommendation_id: str | None = Field(
        None, description="this answer's id: quote it in POST /events to attribute what "
        "the user did to the variant that answered")


class ScoreResponse(BaseModel):
    model: str
    version: str
    variant: str | None = Field(None, description="the A/B variant that answered (the "
                                "model's name when one model is served)")
    user_id: str
    item_id: str
    score: float
    recommendation_id: str | None = Field(
        None, description="this answer's id: quote it in POST /events to attribute what "
        "the user did to the variant that answered")


class BatchEntry(BaseModel):
    id: str
    items: list[ScoredItem] | None = None
    error: str | None = Field(None, description="set instead of items when the id is unknown")
    model: str | None = Field(None, description="batch recommendations with several A/B "
                              "variants: the model that answered this user")
    version: str | None = None
    variant: str | None = Field(None, description="the user's A/B variant (as in one "
                                "request)")
    recommendation_id: str | None = Field(
        None, description="this answer's id: quote it in POST /events to attribute what "
        "the user did to the variant that answered")


class BatchResponse(BaseModel):
    model: str
    version: str
    variant: str | None = Field(None, description="the A/B variant that answered (the "
                                "model's name when one model is served)")
    results: list[BatchEntry]


class Ready(BaseModel):
    model: str
    version: str
    loaded_at: datetime
    load_seconds: float
    counts: dict[str, int | float]
    indexes: dict[str, str]
    experiment: str
    variants: list[dict[str, Any]] = Field(description="each A/B variant: its name, model, "
                                           "weight and loaded version")


class ModelInfo(BaseModel):
    model: str
    version: str
    created_at: str | None
    builder_version: str | None
    counts: dict[str, Any]
    parameters: dict[str, Any]
    explained_energy: float | None = Field(
        None, description="the SVD's explained energy; null for a neural model")
    neural: dict[str, Any] | None = Field(
        None, description="a neural model's architecture and training figures (epochs, "
        "early stopping, validation NDCG@10, seconds); null for the SVD")
    indexes: dict[str, dict[str, Any]]
    similar_cache: dict[str, Any] | None
    stored_recommendations: dict[str, Any] | None = Field(
        None, description="recommendations the build stored per user (k, users, cost), which "
        "answer plain requests with k up to that; k 0 with the reason when none were stored "
        "(null for bundles built before they existed)")
    content: dict[str, Any] | None = Field(
        None, description="the content vectors (columns, size) and the hybrid blend")
    evaluation: dict[str, Any] | None = Field(
        description="top-N metrics of a 20% holdout (docs/evaluation.md), stored by "
        "`svdfaiss build --evaluate`; null when the build did not evaluate")
    evidence: dict[str, Any] | None = Field(
        None, description="how many items and users have collaborative evidence, and the "
        "rule that answers the rest (null for bundles built before it was recorded)")


class ExperimentReport(BaseModel):
    """`svdfaiss.outcomes.report`: the outcomes of the served experiment."""

    model_config = ConfigDict(extra="allow")
    experiment: str
    control: str
    event_types: list[str]
    intervals: dict[str, str] = Field(description="which intervals are shown, and when "
                                      "each is valid")
    variants: list[dict[str, Any]] = Field(description="per variant: users, answers, "
                                           "events by type, conversion per type")
    sample_ratio: dict[str, Any] | None = Field(
        description="chi-square of exposed users against the weights; mismatch when "
        "p < 0.001 (null with one variant or no users)")
    verdicts: list[dict[str, Any]] = Field(description="per variant and type: the better "
                                           "of it and the control by each interval, or "
                                           "null while the interval includes zero")
    skipped: dict[str, Any] = Field(description="unusable log lines (a torn last line) by "
                                    "reason")
    exposures_logged: bool = Field(description="whether this service logs exposures "
                                   "(SVDFAISS_EXPOSURES)")


class Problem(BaseModel):
    detail: str


class ReloadResult(BaseModel):
    result: str = Field(description="loaded, unchanged or refused")
    model: str
    version: str | None
    detail: str | None = None
    models: list[ReloadResult] | None = Field(
        None, description="every served model's result, when several are served")


def id_type(max_length: int) -> Any:
    """An id as requests carry it: 1 to `max_length` characters."""
    return Annotated[str, StringConstraints(min_length=1, max_length=max_length)]


def basket_request(max_ids: int, max_k: int, max_id_length: int) -> type[BaseModel]:
    """The POST /recommendations body, bounded by the settings."""
    one_id = id_type(max_id_length)

    class BasketRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_ids: list[one_id] = Field(min_length=1, max_length=max_ids)  # type: ignore[valid-type]
        k: int = Field(10, ge=1, le=max_k)
        exclude_given: bool = True
        items: list[one_id] | None = Field(  # type: ignore[valid-type]
            None, max_length=max_ids, description="allow-list")
        filter_items: list[one_id] | None = Field(  # type: ignore[valid-type]
            None, max_length=max_ids, description="deny-list")
        category: str | None = Field(None, min_length=1, max_length=max_id_length)
        min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
        max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
        in_stock: bool | None = None
        explain: bool = False
        mode: Literal["cf", "hybrid"] = Field(
            "hybrid", description="hybrid also ranks catalog items nobody has interacted "
                                  "with, through their content; cf only the model's items")
        user_id: one_id | None = Field(  # type: ignore[valid-type]
            None, description="the shopper, for the A/B assignment (else the control)")
        model: str | None = Field(None, min_length=1, max_length=128,
                                  description="serve this model instead of the variant")

    return BasketRequest


def event_request(max_id_length: int, event_types: list[str]) -> type[BaseModel]:
    """The POST /events body; `type` is one of the configured event types."""
    one_id = id_type(max_id_length)
    event_type: Any = Literal[tuple(event_types)]

    class EventRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: one_id  # type: ignore[valid-type]
        item_id: one_id  # type: ignore[valid-type]
        weight: float | None = Field(
            None, allow_inf_nan=False, description="implicit data: a count, above 0 (default "
            "1); explicit ratings: the rating (required)")
        type: event_type | None = Field(
            None, description="what the user did, for the experiment report (one of "
            "SVDFAISS_EVENT_TYPES)")
        recommendation_id: one_id | None = Field(  # type: ignore[valid-type]
            None, description="the answer the event follows: the event is attributed to "
            "the variant that gave it (else to the user's assigned variant)")

    return EventRequest


class EventResult(BaseModel):
    """What happened to one event: always logged; applied to the user's live row when the
    model knows the item."""

    model: str
    version: str
    variant: str | None = None
    user_id: str
    item_id: str
    weight: float
    logged: bool
    applied: bool
    detail: str | None = None
    type: str | None = None
    recommendation_id: str | None = None
    experiment: str | None = Field(None, description="the experiment the event counts in")
    attributed_to: str | None = Field(
        None, description="the variant the event is attributed to: the one that gave "
        "recommendation_id, else the user's assigned variant")


def batch_request(field: str, max_batch: int, max_ids: int, max_k: int, max_id_length: int,
                  with_exclude_seen: bool) -> type[BaseModel]:
    """A POST /batch/... body: up to max_batch ids, one k and one set of filters for all
    (allow/deny lists and the business filters); recommendations also take `explain`,
    similar items `mode`."""
    ids: Any = list[id_type(max_id_length)]  # type: ignore[misc]
    fields = {
        field: (ids, Field(min_length=1, max_length=max_batch)),
        "k": (int, Field(10, ge=1, le=max_k)),
        "items": (ids | None, Field(None, max_length=max_ids)),
        "filter_items": (ids | None, Field(None, max_length=max_ids)),
    }
    fields.update({
        "category": (str | None, Field(None, min_length=1, max_length=max_id_length)),
        "min_price": (float | None, Field(None, ge=0, allow_inf_nan=False)),
        "max_price": (float | None, Field(None, ge=0, allow_inf_nan=False)),
        "in_stock": (bool | None, None),
    })
    if with_exclude_seen:
        fields["exclude_seen"] = (bool, True)
        fields["explain"] = (bool, False)
        fields["mode"] = (Literal["cf", "hybrid"], "hybrid")
    else:
        fields["mode"] = (Literal["cf", "content", "hybrid"], "hybrid")
    fields["model"] = (str | None, Field(None, min_length=1, max_length=128,
                                         description="the model to ask (default: the control "
                                         "variant's)"))
    from pydantic import create_model

    return create_model(  # type: ignore[call-overload, no-any-return]
        f"Batch{field.title().replace('_', '')}Request",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
