"""Similar items, one small strategy per mode, and the neighbours stored at build time.

- cf: cosine of the SVD item vectors (the items' audiences);
- content: cosine of the catalog's content vectors (text and categories);
- hybrid: a * cf + (1 - a) * content over the union of both modes' nearest
  (content.hybrid_pool), with a = n / (n + hybrid_interactions) for an item with n
  interactions (content.cf_share); a catalog-only item takes its CF part from the vector its
  content predicts, with a fixed share, and adds a popularity prior.

Evidence first (svdfaiss.evidence): an item the log relates to no other item has no cf
neighbours (mode cf: NoEvidence); hybrid answers it with content neighbours when it has
content, else with the popular items of its category, else the popular items. cf neighbours
stay in the item's co-interaction component (in hybrid, a candidate outside it has no CF
part), and in mode cf (and hybrid on a model without content) an item with fewer than
evidence.MIN_CO_USERS co-users ranks by co-occurrence ("co_bought", query.cooccurrence),
filled up with popular items. Hybrid keeps the SVD cosine as its CF part: the blend was
measured that way (docs/evaluation.md), a co-occurrence CF part in it was not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from svdfaiss.content import (
    CATEGORY_COLUMNS,
    cf_share,
    hybrid_pool,
    hybrid_scores,
    popularity_prior,
)
from svdfaiss.errors import InvalidInput, NoEvidence, NotInMode
from svdfaiss.index import search
from svdfaiss.query.cooccurrence import co_bought
from svdfaiss.query.filters import CatalogFilter
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.results import Results
from svdfaiss.query.retrieval import NONE, top_k

MODES = ("cf", "content", "hybrid")  # similar items: collaborative, catalog content, a blend


@dataclass(frozen=True)
class SimilarQuery:
    """One similar-items question in positions: the item, k, and the candidate lists."""

    item_id: str
    position: int
    k: int
    allowed: np.ndarray | None
    excluded: np.ndarray


def resolve_mode(model: LoadedModel, mode: str) -> str:
    """The similar-items mode a request gets: hybrid is cf for a model without content."""
    if mode not in MODES:
        raise InvalidInput(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "hybrid" and model._content is None:
        return "cf"
    return mode


def mode_for_item(model: LoadedModel, item_id: str, position: int, requested: str) -> str:
    """The strategy that answers `requested` for this item: a catalog-only item has no cf
    vector (and answers content where no predicted vector was stored); an item without
    evidence answers content, else popular (mode cf refuses it); an item without content,
    or a model without content, answers hybrid as cf."""
    mode = resolve_mode(model, requested)
    if position >= model.n_items:  # in the catalog, never in the log
        if mode == "cf":
            raise NotInMode(item_id, "cf")
        if model.new_item_vectors is None:
            return "content"
    elif not model.evidence.has_evidence(position):
        if mode == "cf" and requested == "cf":
            raise NoEvidence(item_id)
        if mode != "content":
            return "content" if model.has_content(position) else "popular"
    elif mode == "hybrid" and not model.has_content(position):
        return "cf"
    return mode


def batchable(model: LoadedModel, item_id: str, requested: str) -> bool:
    """Whether `similar_items_batch` answers this unfiltered query as `similar_items` would:
    a model item ranked by its factors in mode cf."""
    position = model.catalog_index(item_id)
    return (position < model.n_items and resolve_mode(model, requested) == "cf"
            and model.evidence.has_evidence(position) and model.evidence.factors_speak(position))


def by_cf(model: LoadedModel, query: SimilarQuery) -> Results:
    """Nearest item vectors by cosine within the item's component; co-occurrence for an
    item with too few co-users for its vector to speak."""
    position, evidence = query.position, model.evidence
    if not evidence.factors_speak(position):
        return by_co_bought(model, query)
    vector = np.asarray(model.item_vectors[position], dtype=np.float32)
    scores, idx = top_k(model._items, vector, query.k, query.allowed, query.excluded)
    if not evidence.same_component(position, idx).all():
        members = evidence.members(position)
        assert members is not None  # same_component is all True without components
        allowed = members if query.allowed is None else np.intersect1d(
            members, query.allowed, assume_unique=True)
        scores, idx = top_k(model._items, vector, query.k, allowed, query.excluded)
    return model.items_result(scores, idx, reason="cf")


def by_co_bought(model: LoadedModel, query: SimilarQuery) -> Results:
    """Items sharing the most users with the item (query.cooccurrence); when fewer than k
    share one, the most popular of the remaining items fill the list (reason popular)."""
    in_model = None if query.allowed is None else query.allowed[query.allowed < model.n_items]
    scores, idx = co_bought(model, query.position, query.k, in_model, query.excluded)
    if idx.size >= query.k:
        return model.items_result(scores, idx, reason="co_bought")
    fill = by_popular(model, SimilarQuery(query.item_id, query.position, query.k - idx.size,
                                          in_model, np.concatenate([query.excluded, idx])),
                      by_category=False)
    both = np.concatenate([idx, fill.indexes]).astype(np.int64)
    result = model.items_result(np.concatenate([scores, np.asarray(fill.scores)]), both)
    return Results(result.ids, result.scores, both, result.fields,
                   reasons=["co_bought"] * idx.size + ["popular"] * len(fill))


def by_popular(model: LoadedModel, query: SimilarQuery, by_category: bool = True) -> Results:
    """The most interacted-with items of the item's categories (reason popular_category),
    or of the whole catalog (popular): the answer for an item without evidence or content.
    Each score is the share of the model's users who interacted with the item."""
    keep = np.ones(model.n_items, dtype=bool)
    if query.allowed is not None:
        keep[:] = False
        keep[query.allowed[query.allowed < model.n_items]] = True
    keep[query.excluded[query.excluded < model.n_items]] = False
    reason = "popular"
    category = _category_members(model, query.position) if by_category else None
    if category is not None:
        in_category = np.zeros(model.n_items, dtype=bool)
        in_category[category[category < model.n_items]] = True
        if np.any(keep & in_category):
            keep &= in_category
            reason = "popular_category"
    counts, idx = model.popularity.top(query.k, keep)
    return model.items_result(counts, idx, reason=reason)


def _category_members(model: LoadedModel, position: int) -> np.ndarray | None:
    """The positions sharing a category with the item, or None (no category known)."""
    try:
        sets = model.filters.categories()
        column = model.filters.column(CATEGORY_COLUMNS, "category")
    except InvalidInput:
        return None
    value = column[position]
    if value is None:
        return None
    names = [n.strip() for n in str(value).split("|")]
    found = [sets[n] for n in names if n in sets]
    return np.unique(np.concatenate(found)) if found else None


def _content_nearest(model: LoadedModel, query: SimilarQuery, pool: int,
                     mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The `pool` nearest content vectors; NotInMode for an item without content."""
    if not model.has_content(query.position) or model._content is None:
        raise NotInMode(query.item_id, mode)
    vector = np.asarray(model.content_vectors[query.position],  # type: ignore[index]
                        dtype=np.float32)
    return top_k(model._content, vector, pool, query.allowed, query.excluded)


def by_content(model: LoadedModel, query: SimilarQuery) -> Results:
    """Nearest content vectors by cosine."""
    scores, idx = _content_nearest(model, query, query.k, "content")
    return model.items_result(scores, idx, reason="content")


def by_hybrid(model: LoadedModel, query: SimilarQuery) -> Results:
    """The cf and content blend over the union of both modes' nearest."""
    position, k = query.position, query.k
    pool = hybrid_pool(k)
    _, by_content_idx = _content_nearest(model, query, pool, "hybrid")
    allowed, excluded = query.allowed, query.excluded
    in_model = None if allowed is None else allowed[allowed < model.n_items]
    assert model.content is not None
    if position < model.n_items:
        cf_query = np.asarray(model.item_vectors[position], dtype=np.float32)
        share: np.ndarray | float = cf_share(
            model.popularity.counts[position : position + 1],
            float(model.content["hybrid_interactions"]))
    else:  # new_item_vectors is set: the mode would be content otherwise
        cf_query = np.asarray(
            model.new_item_vectors[position - model.n_items],  # type: ignore[index]
            dtype=np.float32)
        share = float(model.content["new_items_in_similar"]["cf_share"])
    _, by_cf_idx = top_k(model._items, cf_query, pool, in_model,
                         excluded[excluded < model.n_items])
    candidates = np.union1d(by_content_idx, by_cf_idx)
    linked = None
    if position < model.n_items:  # the log relates the pair: CF counts
        linked = np.zeros(candidates.size, dtype=bool)
        logged = candidates < model.n_items
        linked[logged] = model.evidence.same_component(position, candidates[logged])
    fused = hybrid_scores(np.array([position]), candidates[None, :], model.item_vectors,
                          model.content_vectors, share,  # type: ignore[arg-type]
                          cf_queries=cf_query[None, :],
                          cf_linked=None if linked is None else linked[None, :])[0]
    if position >= model.n_items:
        counts = np.zeros(candidates.size, dtype=np.float32)
        in_log = candidates < model.n_items
        counts[in_log] = model.popularity.counts[candidates[in_log]]
        fused += popularity_prior(
            counts, float(model.content["new_items_in_similar"].get("popularity_prior", 0)))
    top = np.argsort(-fused, kind="stable")[:k]
    top = top[np.isfinite(fused[top])]
    return model.items_result(fused[top], candidates[top], reason="hybrid")


STRATEGIES: dict[str, Callable[[LoadedModel, SimilarQuery], Results]] = {
    "cf": by_cf, "content": by_content, "hybrid": by_hybrid, "popular": by_popular,
}


def similar_items(
    model: LoadedModel, item_id: str, k: int, items: Iterable[str] | None,
    filter_items: Iterable[str] | None, use_cache: bool, catalog_filter: CatalogFilter,
    mode: str,
) -> Results:
    """Items closest to an item (never the item itself) by `mode` (see the module)."""
    position = model.catalog_index(item_id)
    mode = mode_for_item(model, item_id, position, mode)
    with_new = mode != "cf"
    denied = model._item_set(filter_items, with_new)
    if use_cache and not catalog_filter.active and position < model.n_items:
        cached = stored_neighbours(model, position, k, items, denied, mode)
        if cached is not None:
            return cached
    excluded = np.append(NONE if denied is None else denied, position)
    allowed = model._allowed(items, catalog_filter, with_new)
    return STRATEGIES[mode](model, SimilarQuery(item_id, position, k, allowed, excluded))


def stored_neighbours(
    model: LoadedModel, item: int, k: int, items: Iterable[str] | None,
    denied: np.ndarray | None, mode: str,
) -> Results | None:
    """The answer from neighbours stored at build time, or None when they cannot give it
    (no cache, another mode, an allow-list, k beyond the cache, or a deny-list that
    leaves too few). No FAISS call: cheap enough to run on an event loop."""
    if model.similar_ids is None or model.similar_scores is None or items is not None:
        return None
    if mode != model.similar_mode:
        return None
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    row = np.asarray(model.similar_ids[item])
    keep = row >= 0
    if denied is not None and denied.size:
        keep &= ~np.isin(row, denied)
    chosen = np.flatnonzero(keep)[:k]
    if chosen.size < min(k, model.n_items - 1):
        return None
    idx = row[chosen].astype(np.int64)
    return model.items_result(np.asarray(model.similar_scores[item])[chosen], idx, reason=mode)


def similar_items_batch(model: LoadedModel, item_ids: Sequence[str],
                        ks: Sequence[int]) -> list[Results]:
    """Unfiltered cf similar items for many ids (with a k each) in one FAISS call; a row
    the single search cannot fill (a near-empty IVF probe, neighbours outside the item's
    component, an item not ranked by its factors) falls back to the single query in mode
    cf."""
    if len(item_ids) != len(ks):
        raise InvalidInput(f"{len(item_ids)} ids but {len(ks)} values of k")
    if any(k < 1 for k in ks):
        raise InvalidInput(f"k must be at least 1, got {min(ks)}")
    rows = np.array([model.item_index(i) for i in item_ids], dtype=np.int64)
    if rows.size == 0:
        return []
    want = min(max(ks), model.n_items - 1)
    queries = np.asarray(model.item_vectors[rows], dtype=np.float32)
    scores, ids = search(model._items.index, queries, want + 1, kind=model._items.kind)
    out = []
    evidence = model.evidence
    for n, (item_id, k) in enumerate(zip(item_ids, ks, strict=True)):
        keep = (ids[n] >= 0) & (ids[n] != rows[n])
        keep &= evidence.same_component(int(rows[n]), np.where(keep, ids[n], rows[n]))
        k = min(k, model.n_items - 1)
        if int(keep.sum()) >= k and evidence.factors_speak(int(rows[n])):
            out.append(model.items_result(scores[n][keep][:k],
                                          ids[n][keep][:k].astype(np.int64), reason="cf"))
        else:
            out.append(similar_items(model, item_id, k, None, None, False, CatalogFilter(), "cf"))
    return out
