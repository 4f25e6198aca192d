"""Recommendations for users and baskets, similar users, and single scores.

Recommendations rank q . v over the recommendation index: the model's items, and in hybrid
mode also the catalog-only items through vectors predicted from their content. A history
(a user's row, live events, a basket) with no item of collaborative evidence
(svdfaiss.evidence) folds in to a vector of rounding noise: under the SVD model it gets the
popular items instead, with reason "popular" (the rating model ranks by item biases, which
carry evidence of their own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np
import scipy.sparse as sp

from svdfaiss.data import decode_ids, lookup
from svdfaiss.errors import (
    InvalidInput,
    NoUserEvidence,
    UnknownItem,
    UnknownItems,
    UnknownUser,
)
from svdfaiss.index import normalize_rows
from svdfaiss.query.explain import explain
from svdfaiss.query.filters import NO_FILTER, CatalogFilter
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.results import Results
from svdfaiss.query.retrieval import NONE, top_k
from svdfaiss.query.vectors import (
    basket_row,
    basket_vector,
    live_row,
    row_vector,
    seen_items,
    similarity_vector,
    user_vector,
)

# Recommendations: cf ranks the model's items; hybrid adds catalog-only items scored through
# their content-predicted vectors (content.map_content).
RECOMMEND_MODES = ("cf", "hybrid")


def ranks_new_items(model: LoadedModel, mode: str) -> bool:
    """Whether recommendations in `mode` rank catalog-only items too."""
    if mode not in RECOMMEND_MODES:
        raise InvalidInput(f"mode {mode!r}: recommendations take "
                           f"{' or '.join(RECOMMEND_MODES)}")
    return mode == "hybrid" and model.new_item_factors is not None


def popular(model: LoadedModel, k: int, items: Iterable[str] | None,
            filter_items: Iterable[str] | None, catalog_filter: CatalogFilter,
            exclude: np.ndarray | None) -> Results:
    """The most popular items passing the filters: the fallback for a cold user."""
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    allowed = model._allowed(items, catalog_filter)
    excluded = [e for e in (model._item_set(filter_items), exclude) if e is not None]
    if allowed is None:
        counts, idx = model.popularity.top_without(
            k, np.concatenate(excluded) if excluded else np.empty(0, dtype=np.int64))
    else:
        keep = np.zeros(model.n_items, dtype=bool)
        keep[allowed] = True
        for positions in excluded:
            keep[positions] = False
        counts, idx = model.popularity.top(k, keep)
    result = model.items_result(counts, idx)
    return Results(result.ids, result.scores, idx, result.fields, reason="popular")


def _item_reasons(model: LoadedModel, idx: np.ndarray, reason: str) -> list[str] | None:
    """Per-item reasons when catalog-only items (ranked by content) are among `idx`."""
    new = idx >= model.n_items
    if not new.any():
        return None
    return ["content" if is_new else reason for is_new in new.tolist()]


def _without_evidence(model: LoadedModel, history: np.ndarray) -> bool:
    """Whether an SVD-model history holds no item with collaborative evidence."""
    return model.rating_model is None and not model.evidence.any_evidence(
        np.asarray(history, dtype=np.int64))


def rank_for_vector(
    model: LoadedModel, query: np.ndarray, seen: np.ndarray | None, k: int,
    items: Iterable[str] | None, filter_items: Iterable[str] | None,
    catalog_filter: CatalogFilter = NO_FILTER, with_new: bool = False,
) -> Results:
    """The k items of the highest q . v passing the lists and filters, minus `seen`."""
    parts = [p for p in (seen, model._item_set(filter_items, with_new)) if p is not None]
    excluded = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    scores, idx = top_k(model._mips, query, k,
                        model._allowed(items, catalog_filter, with_new), excluded,
                        limit=None if with_new else model.n_items)
    return model.items_result(scores, idx)


def recommend(
    model: LoadedModel, user_id: str, k: int, exclude_seen: bool,
    items: Iterable[str] | None, filter_items: Iterable[str] | None,
    catalog_filter: CatalogFilter, fallback: str, explain_items: bool,
    live: Mapping[str, float] | None, mode: str, use_stored: bool = True,
) -> Results:
    """Recommendations for a known user or a user known by live events (Recommender.recommend);
    with `use_stored`, a plain request of a stored user is answered from the stored rows."""
    with_new = ranks_new_items(model, mode)
    try:
        user = model.user_index(user_id)
    except UnknownUser:
        user = -1
    row = live_row(model, user, live) if live else None
    if (use_stored and row is None and user >= 0 and exclude_seen and items is None
            and filter_items is None and not catalog_filter.active and not explain_items):
        stored = stored_recommendations(model, user, k, with_new)
        if stored is not None:
            return stored
    if user < 0 and (row is None or row.nnz == 0):
        if fallback == "popular":
            return popular(model, k, items, filter_items, catalog_filter, None)
        raise UnknownUser(user_id)
    # The stored row is read from the arrays: no sparse slice per request.
    history = (seen_items(model, user) if row is None
               else np.asarray(row.indices, dtype=np.int64))
    seen = history if exclude_seen else None
    if _without_evidence(model, history):
        return popular(model, k, items, filter_items, catalog_filter, seen)
    query = user_vector(model, user) if row is None else row_vector(model, row)
    result = rank_for_vector(model, query, seen, k, items, filter_items, catalog_filter,
                             with_new)
    if row is None and explain_items:
        row = model.rows[user : user + 1]
    return _with_reasons(model, result, row, "cf" if model.rating_model is None else "rating",
                         explain_items)


def stored_recommendations(model: LoadedModel, user: int, k: int,
                           with_new: bool) -> Results | None:
    """A known user's answer from the rows stored at build time (query.model.
    StoredRecommendations), or None where they cannot give the computed answer: none stored,
    k beyond them, another mode, an empty row, or equal scores among the first k + 1 (the
    search may order tied items otherwise; the popular order breaks ties by position)."""
    stored = model.stored
    if stored is None or k > stored.k or with_new != stored.ranks_new_items:
        return None
    ids = stored.ids[user]
    # -1 pads a row past its end: a full first k needs no count
    take = k if ids[k - 1] >= 0 else int(np.count_nonzero(ids >= 0))
    if take == 0:
        return None
    scores = stored.scores[user, : take + 1].tolist()  # one past the cut, for its tie
    popular_row = bool(stored.popular[user])
    if not popular_row and any(a == b for a, b in pairwise(scores)):
        return None
    idx = np.asarray(ids[:take], dtype=np.int64)
    reason = "popular" if popular_row else "cf" if model.rating_model is None else "rating"
    result = model.items_result(scores[:take], idx, reason=reason)
    if popular_row or not stored.ranks_new_items:
        return result
    return Results(result.ids, result.scores, idx, result.fields, reason=reason,
                   reasons=_item_reasons(model, idx, reason))


def _with_reasons(model: LoadedModel, result: Results, row: sp.csr_matrix | None, reason: str,
                  explain_items: bool, unknown: list[str] | None = None) -> Results:
    """The result with its reason, per-item reasons and, when asked, explanations of `row`."""
    because = (explain(model, row, result.indexes)
               if explain_items and row is not None and model.rating_model is None else None)
    return Results(result.ids, result.scores, result.indexes, result.fields, unknown or [],
                   reason=reason, because=because,
                   reasons=_item_reasons(model, result.indexes, reason))


def recommend_for_items(
    model: LoadedModel, item_ids: Sequence[str], k: int, exclude_given: bool,
    items: Iterable[str] | None, filter_items: Iterable[str] | None,
    catalog_filter: CatalogFilter, explain_items: bool, mode: str,
) -> Results:
    """Recommendations for an anonymous basket by fold-in; unknown ids are reported."""
    with_new = ranks_new_items(model, mode)
    found = lookup(model.item_ids, list(item_ids))
    unknown = [i for i, f in zip(item_ids, found, strict=True) if f < 0]
    known = found[found >= 0]
    if known.size == 0:
        if not item_ids:
            raise InvalidInput("item_ids is empty; give at least one item id")
        raise UnknownItem(unknown[0]) if len(unknown) == 1 else UnknownItems(unknown)
    if _without_evidence(model, known):
        result = popular(model, k, items, filter_items, catalog_filter,
                         known if exclude_given else None)
        return Results(result.ids, result.scores, result.indexes, result.fields, unknown,
                       reason="popular")
    result = rank_for_vector(model, basket_vector(model, known),
                             known if exclude_given else None, k, items, filter_items,
                             catalog_filter, with_new)
    row = basket_row(model, known) if explain_items else None
    return _with_reasons(model, result, row, "basket", explain_items, unknown)


def similar_users(model: LoadedModel, user_id: str, k: int, users: Iterable[str] | None,
                  filter_users: Iterable[str] | None) -> Results:
    """Users closest by cosine of their embeddings (never the user itself)."""
    if model._users is None:
        raise InvalidInput(f"model {model.model!r} was built without a users index "
                           "(--user-index none, or --objective rating with --rating-k 0)")
    user = model.user_index(user_id)
    if _without_evidence(model, model.rows.indices[model.rows.indptr[user]:
                                                   model.rows.indptr[user + 1]]):
        raise NoUserEvidence(user_id)
    denied = model._user_set(filter_users)
    excluded = np.append(NONE if denied is None else denied, user)
    query = normalize_rows(similarity_vector(model, user)[None, :].astype(np.float32))[0]
    scores, idx = top_k(model._users, query, k, model._user_set(users), excluded)
    return Results(decode_ids(model.user_ids[idx]), [float(s) for s in scores], idx)


def score(model: LoadedModel, user_id: str, item_id: str) -> float:
    """The ranking score q . v (rating model: the clipped predicted rating)."""
    user = model.user_index(user_id)
    item = model.catalog_index(item_id)
    if item >= model.n_items and model.new_item_factors is None:
        raise UnknownItem(item_id)
    vector = model.recommendation_vectors(np.array([item]))[0]
    value = float(np.dot(user_vector(model, user), vector))
    if model.rating_model is None or model.rating_user_bias is None:
        return value
    predicted = model.rating_model["mu"] + float(model.rating_user_bias[user]) + value
    return float(min(max(predicted, model.rating_model["low"]), model.rating_model["high"]))
