"""The live catalog over a loaded model: items added, changed and withdrawn since the build
(svdfaiss.live_catalog), answered at once, with no rebuild.

`LiveView` is a `Recommender` sharing every array and index of the bundle's, plus:
- new items at positions after the catalog's (from `n_catalog` on), like the catalog-only
  items a build stores: the content vector the bundle's fitted encoder gives their record,
  and the CF and recommendation vectors the builder's content maps predict from it. They
  are scored exactly beside the FAISS indexes and merged (retrieval.LiveRows), so they get
  content and hybrid neighbours, are neighbours of others (stored neighbours included), and
  compete in hybrid recommendations with reason "content";
- changed fields (price, stock, category, title, ...) of bundle items, in results and in
  the business filters;
- withdrawn items left out of every answer: a deny-list on every search, the stored
  neighbours and the popular fallback; asking for one is an unknown item.

The FAISS indexes are never written to: a change builds a new view (copy-on-write), and a
request keeps the view it started with, so concurrent searches are safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.content import CATEGORY_COLUMNS, cf_share
from svdfaiss.data import lookup
from svdfaiss.errors import InvalidInput, UnknownItem
from svdfaiss.index import normalize_rows
from svdfaiss.live_catalog import CatalogChange
from svdfaiss.query.banded import merge
from svdfaiss.query.filters import NO_FILTER, STOCK_COLUMNS, CatalogFilter, combine
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.results import Results
from svdfaiss.query.retrieval import LiveRows, live_top_k
from svdfaiss.recommender import Recommender

FILTER_CACHE = 64


class Stacked:
    """Rows of a bundle array followed by live rows, indexed like one array (an int, or an
    int array of any shape), without copying the bundle's."""

    def __init__(self, base: np.ndarray, extra: np.ndarray) -> None:
        self.base = base
        self.extra = extra
        self.split = int(base.shape[0])
        self.shape = (self.split + int(extra.shape[0]), *base.shape[1:])
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, int | np.integer):
            i = int(index)
            return np.asarray(self.base[i] if i < self.split else self.extra[i - self.split])
        idx = np.asarray(index, dtype=np.int64)
        out = np.empty(idx.shape + self.shape[1:], dtype=np.float32)
        low = idx < self.split
        out[low] = self.base[idx[low]]
        out[~low] = self.extra[idx[~low] - self.split]
        return out

    def __len__(self) -> int:
        return int(self.shape[0])


@dataclass(frozen=True)
class LiveItems:
    """The live catalog as one model sees it: new items (with their vectors), changed
    fields of bundle items by position, and withdrawn bundle positions (sorted)."""

    new_ids: list[str]
    new_fields: list[Mapping[str, Any]]
    content: np.ndarray | None  # (new, content dim): None without a content encoder
    cf: np.ndarray | None  # unit CF vectors the content predicts (hybrid neighbours)
    rec: np.ndarray | None  # recommendation vectors the content predicts
    changed: dict[int, Mapping[str, Any]]
    withdrawn: np.ndarray

    @property
    def empty(self) -> bool:
        return not self.new_ids and not self.changed and not self.withdrawn.size


class Encodings:
    """Each new item's vectors for one model, kept across views so that a change encodes
    only the items it touches (a TF-IDF transform per record) and a view gathers the rows
    with one indexing per array (no per-item copies)."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[float, int]] = {}  # item -> (its put's time, its row)
        self._free: list[int] = []
        self._rows: list[np.ndarray] = []  # content, CF, recommendation rows by slot

    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        used = len(self._slots) + len(self._free)
        if not self._rows or used >= self._rows[0].shape[0]:
            grown = max(64, 2 * (self._rows[0].shape[0] if self._rows else 0))
            self._rows = [np.concatenate([r, np.zeros((grown - r.shape[0], r.shape[1]),
                                                      dtype=np.float32)])
                          for r in self._rows]
        return used

    def vectors(self, model: LoadedModel, changes: Sequence[CatalogChange],
                ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Content, CF and recommendation vectors of the new items' puts, in order."""
        encoder = model.content_encoder
        if encoder is None or model.content_to_cf is None:
            return None, None, None
        dims = [encoder.dim, model.content_to_cf.shape[1]]
        if model.content_to_rec is not None:
            dims.append(model.content_to_rec.shape[1])
        if not self._rows:
            self._rows = [np.zeros((0, d), dtype=np.float32) for d in dims]
        keep = {c.item_id for c in changes}
        for item in [i for i in self._slots if i not in keep]:
            self._free.append(self._slots.pop(item)[1])
        missing = [c for c in changes if self._slots.get(c.item_id, (None, 0))[0] != c.time]
        if missing:
            content = encoder.encode([dict(c.fields or {}) for c in missing])
            parts = [content, normalize_rows(np.ascontiguousarray(
                content @ model.content_to_cf, dtype=np.float32))]
            if model.content_to_rec is not None:
                parts.append(np.ascontiguousarray(content @ model.content_to_rec,
                                                  dtype=np.float32))
            for n, change in enumerate(missing):
                known = self._slots.get(change.item_id)
                slot = known[1] if known is not None else self._slot()
                self._slots[change.item_id] = (change.time, slot)
                for rows, part in zip(self._rows, parts, strict=True):
                    rows[slot] = part[n]
        slots = np.array([self._slots[c.item_id][1] for c in changes], dtype=np.int64)
        gathered = [rows[slots] for rows in self._rows]
        return gathered[0], gathered[1], gathered[2] if len(gathered) > 2 else None


def live_items(model: LoadedModel, changes: Sequence[CatalogChange],
               encodings: Encodings) -> LiveItems:
    """What the live changes mean for a model: new items (encoded), changed bundle items,
    withdrawn bundle items. A delete of an item the bundle lacks withdraws nothing."""
    new: list[CatalogChange] = []
    changed: dict[int, Mapping[str, Any]] = {}
    withdrawn: list[int] = []
    ids = [c.item_id for c in changes]
    positions = lookup(model.item_ids, ids)  # one vectorised search, not one per change
    if model.new_item_ids.size:
        unfound = positions < 0
        catalog_only = lookup(model.new_item_ids, ids)
        positions = np.where(unfound & (catalog_only >= 0), catalog_only + model.n_items,
                             positions)
    for change, position in zip(changes, positions.tolist(), strict=True):
        if change.op == "delete":
            if position >= 0:
                withdrawn.append(position)
        elif position >= 0:
            changed[position] = change.fields or {}
        else:
            new.append(change)
    content, cf, rec = encodings.vectors(model, new)
    if content is None:  # no encoder (a bundle built before it was stored, or no content):
        new = []  # new items wait for the build that folds the log in
    return LiveItems([c.item_id for c in new], [c.fields or {} for c in new], content,
                     cf, rec, changed, np.unique(np.asarray(withdrawn, dtype=np.int64)))


def view(model: Recommender, live: LiveItems) -> Recommender:
    """The model with the live catalog applied, or the model itself when nothing is live."""
    return model if live.empty else LiveView.over(model, live)


class LiveView(Recommender):
    """A Recommender with the live catalog over its bundle (see the module)."""

    base: Recommender
    live: LiveItems
    _new_index: dict[str, int]
    _offset: int

    @classmethod
    def over(cls, base: Recommender, live: LiveItems) -> LiveView:
        """A view sharing the base's arrays and indexes; building it copies no bundle array."""
        self = cls.__new__(cls)
        self.__dict__.update(base.__dict__)
        self.base, self.live = base, live
        # Withdrawn and new items change rankings the build stored: every answer searches.
        self.stored = None
        self._offset = base.n_catalog
        self._new_index = {item: n for n, item in enumerate(live.new_ids)}
        self.n_catalog = base.n_catalog + len(live.new_ids)
        if live.content is not None and base.content_vectors is not None:
            self.content_vectors = Stacked(base.content_vectors,  # type: ignore[assignment]
                                           live.content)
            if base._content is not None:
                self._content = replace(base._content, live=LiveRows(self._offset,
                                                                     live.content))
        if live.cf is not None:
            before = (base.new_item_vectors if base.new_item_vectors is not None
                      else np.zeros((0, live.cf.shape[1]), dtype=np.float32))
            self.new_item_vectors = Stacked(before, live.cf)  # type: ignore[assignment]
        if live.rec is not None:
            before = (base.new_item_factors if base.new_item_factors is not None
                      else np.zeros((0, live.rec.shape[1]), dtype=np.float32))
            self.new_item_factors = Stacked(before, live.rec)  # type: ignore[assignment]
            self._mips = replace(base._mips, live=LiveRows(self._offset, live.rec))
        self.filters = LiveFilters(base, live)  # type: ignore[assignment]
        return self

    # ------------------------------------------------------------------ positions and ids

    def catalog_index(self, item_id: str) -> int:
        """Bundle items, then new live items; a withdrawn item is unknown."""
        found = self._new_index.get(item_id)
        if found is not None:
            return self._offset + found
        position = LoadedModel.catalog_index(self, item_id)
        withdrawn = self.live.withdrawn
        at = int(np.searchsorted(withdrawn, position))
        if at < withdrawn.size and int(withdrawn[at]) == position:
            raise UnknownItem(item_id)
        return position

    def external_items(self, idx: np.ndarray) -> list[str]:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0 or int(idx.max()) < self._offset:
            return LoadedModel.external_items(self, idx)
        low = idx < self._offset
        names = iter(LoadedModel.external_items(self, idx[low]))
        return [next(names) if i < self._offset else self.live.new_ids[i - self._offset]
                for i in idx.tolist()]

    def items_result(self, scores: np.ndarray | list[float], idx: np.ndarray,
                     unknown: list[str] | None = None, reason: str | None = None) -> Results:
        """Results with the catalog fields as they are now: a changed item's live fields, a
        new item's record."""
        idx = np.asarray(idx, dtype=np.int64)
        low = idx < self._offset
        fields: dict[str, list[Any]] = {}
        for name, column in self.catalog.items():
            values: list[Any] = [None] * idx.size
            base_values = iter(column[idx[low]].tolist())
            for n, position in enumerate(idx.tolist()):
                if position >= self._offset:
                    values[n] = self.live.new_fields[position - self._offset].get(name)
                elif position in self.live.changed:
                    next(base_values)
                    values[n] = self.live.changed[position].get(name)
                else:
                    values[n] = next(base_values)
            fields[name] = values
        return Results(self.external_items(idx), [float(s) for s in scores], idx, fields,
                       unknown or [], reason)

    def recommendation_vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        rec = self.live.rec
        if rec is None:
            return self.base.recommendation_vectors(positions)
        if positions is None:
            return np.vstack([self.base.recommendation_vectors(None), rec])
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((positions.size, rec.shape[1]), dtype=np.float32)
        low = positions < self._offset
        out[low] = self.base.recommendation_vectors(positions[low])
        out[~low] = rec[positions[~low] - self._offset]
        return out

    def item_users(self) -> sp.csc_matrix:
        return self.base.item_users()  # built once per bundle, not once per view

    # ------------------------------------------------------------------ allow and deny lists

    def _listed(self, item_ids: Iterable[str] | None, with_new: bool) -> np.ndarray | None:
        if item_ids is None:
            return None
        ids = list(item_ids)
        found = LoadedModel._item_set(self, ids, with_new)
        if with_new and self._new_index:
            live = [self._offset + self._new_index[i] for i in ids if i in self._new_index]
            if live and found is not None:
                found = np.union1d(found, np.asarray(live, dtype=np.int64))
        return found

    def _item_set(self, item_ids: Iterable[str] | None,
                  with_new: bool = False) -> np.ndarray | None:
        """A deny-list's positions, and every withdrawn item's."""
        listed = self._listed(item_ids, with_new)
        gone = self.live.withdrawn
        if not with_new:
            gone = gone[: int(np.searchsorted(gone, self.n_items))]
        if not gone.size:
            return listed
        return gone if listed is None else np.union1d(listed, gone)

    def _allowed(self, items: Iterable[str] | None, catalog_filter: CatalogFilter = NO_FILTER,
                 with_new: bool = False) -> np.ndarray | None:
        return combine(self._listed(items, with_new), self.filters.filter_set(catalog_filter),
                       self.n_items, with_new)

    def search_catalog(self, query: str, limit: int = 10) -> Results:
        """The bundle's title matches without withdrawn items, then the new items whose
        title matches (no interactions yet: score 0). Changed titles are matched as the
        bundle has them until the next build."""
        found = Recommender.search_catalog(self, query, limit + int(self.live.withdrawn.size))
        keep = ~np.isin(found.indexes, self.live.withdrawn)
        positions = list(np.asarray(found.indexes)[keep][:limit])
        scores = list(np.asarray(found.scores, dtype=np.float32)[keep][:limit])
        needle = query.lower()
        for n, fields in enumerate(self.live.new_fields):
            if len(positions) >= limit:
                break
            title = fields.get("title")
            if title is not None and needle in str(title).lower():
                positions.append(self._offset + n)
                scores.append(np.float32(0.0))
        return self.items_result(np.asarray(scores, dtype=np.float32),
                                 np.asarray(positions, dtype=np.int64))

    # ------------------------------------------------------------------ similar items

    def batchable(self, item_id: str, mode: str = "hybrid") -> bool:
        self.catalog_index(item_id)  # an unknown or withdrawn id raises, as in the base
        return False  # the batch search knows no deny-list

    def similar_items_batch(self, item_ids: Sequence[str], ks: Sequence[int]) -> list[Results]:
        if len(item_ids) != len(ks):
            raise InvalidInput(f"{len(item_ids)} ids but {len(ks)} values of k")
        return [self.similar_items(i, k, use_cache=False, mode="cf")
                for i, k in zip(item_ids, ks, strict=True)]

    def cached_similar_items(self, item_id: str, k: int = 10,
                             items: Iterable[str] | None = None,
                             filter_items: Iterable[str] | None = None,
                             mode: str = "hybrid") -> Results | None:
        """The stored neighbours without withdrawn items, merged with the new items the
        item's content ranks among them."""
        result = Recommender.cached_similar_items(self, item_id, k, items, filter_items, mode)
        if result is None:
            return None
        return self._with_new_neighbours(result, item_id, k, filter_items)

    def similar_items(self, item_id: str, k: int = 10, items: Iterable[str] | None = None,
                      filter_items: Iterable[str] | None = None, use_cache: bool = True,
                      catalog_filter: CatalogFilter = NO_FILTER,
                      mode: str = "hybrid") -> Results:
        if use_cache and items is None and not catalog_filter.active:
            cached = self.cached_similar_items(item_id, k, None, filter_items, mode)
            if cached is not None:
                return cached
        return Recommender.similar_items(self, item_id, k, items, filter_items, False,
                                         catalog_filter, mode)

    def _with_new_neighbours(self, result: Results, item_id: str, k: int,
                             filter_items: Iterable[str] | None) -> Results:
        """Stored content or hybrid neighbours of a model item merged with the new items,
        scored as the query would score them: the content cosine, times (1 - a) in hybrid
        (a new item has no CF part; content.hybrid_scores)."""
        content = self.live.content
        if content is None or not content.shape[0] or result.reason not in ("content",
                                                                            "hybrid"):
            return result
        position = self.catalog_index(item_id)
        if position >= self.n_items or not self.has_content(position):
            return result
        query = np.asarray(self.content_vectors[position],  # type: ignore[index]
                           dtype=np.float32)
        denied = np.empty(0, dtype=np.int64)
        if filter_items is not None:
            denied = np.array([self._offset + self._new_index[i] for i in filter_items
                               if i in self._new_index], dtype=np.int64)
        scores, rows = live_top_k(LiveRows(self._offset, content), query, k, None, denied)
        if result.reason == "hybrid":
            assert self.content is not None
            share = float(cf_share(self.popularity.counts[position : position + 1],
                                   float(self.content["hybrid_interactions"]))[0])
            scores = (1 - share) * scores
        merged_scores, merged = merge([(np.asarray(result.scores, dtype=np.float32),
                                        result.indexes),
                                       (scores.astype(np.float32), rows)], k)
        if not (merged >= self._offset).any():
            return result
        return self.items_result(merged_scores, merged, reason=result.reason)


class LiveFilters:
    """The business filters over the catalog as it is now: the bundle's filter sets with
    changed items re-checked against their live fields, and the new items that pass (at
    their live positions). Withdrawn items are left out by the deny-list instead."""

    def __init__(self, base: LoadedModel, live: LiveItems) -> None:
        self.base = base.filters
        self.model = base.model
        self.live = live
        self.offset = base.n_catalog
        self.changed = np.array(sorted(live.changed), dtype=np.int64)
        self.names = {what: _column_name(base.catalog, names) for what, names in (
            ("category", CATEGORY_COLUMNS), ("price", ("price",)), ("stock", STOCK_COLUMNS))}
        self._cache: dict[CatalogFilter, np.ndarray] = {}

    def column(self, names: tuple[str, ...], what: str) -> np.ndarray:
        return self.base.column(names, what)

    def categories(self) -> dict[str, np.ndarray]:
        return self.base.categories()

    def filter_set(self, catalog_filter: CatalogFilter) -> np.ndarray | None:
        if not catalog_filter.active:
            return None
        cached = self._cache.get(catalog_filter)
        if cached is not None:
            return cached
        records = [self.live.changed[int(p)] for p in self.changed] + self.live.new_fields
        try:
            found = self.base.filter_set(catalog_filter)
            assert found is not None
        except InvalidInput:
            # A category only live items have is a category; any other error stands.
            if catalog_filter.category is None or not any(
                    _passes(r, CatalogFilter(category=catalog_filter.category), self.names)
                    for r in records):
                raise
            found = np.empty(0, dtype=np.int64)
        passing = np.array([_passes(r, catalog_filter, self.names) for r in records],
                           dtype=bool).reshape(-1)
        n_changed = self.changed.size
        result = np.union1d(
            np.setdiff1d(found, self.changed, assume_unique=True),
            np.concatenate([self.changed[passing[:n_changed]],
                            self.offset + np.flatnonzero(passing[n_changed:])]))
        result = result.astype(np.int64)
        result.flags.writeable = False
        if len(self._cache) >= FILTER_CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[catalog_filter] = result
        return result


def _column_name(catalog: Mapping[str, np.ndarray], names: tuple[str, ...]) -> str | None:
    return next((n for n in catalog if n.lower() in names), None)


def _passes(record: Mapping[str, Any], catalog_filter: CatalogFilter,
            names: Mapping[str, str | None]) -> bool:
    """Whether a live record passes the filters, as query.filters decides for the bundle's:
    a|b categories, a known price in range, in stock only when true."""
    if catalog_filter.category is not None:
        value = record.get(names["category"] or "")
        if value is None or catalog_filter.category not in [
                p.strip() for p in str(value).split("|")]:
            return False
    if catalog_filter.min_price is not None or catalog_filter.max_price is not None:
        price = record.get(names["price"] or "")
        if price is None:
            return False
        if catalog_filter.min_price is not None and price < catalog_filter.min_price:
            return False
        if catalog_filter.max_price is not None and price > catalog_filter.max_price:
            return False
    if catalog_filter.in_stock is not None:
        in_stock = record.get(names["stock"] or "") is True
        if in_stock != catalog_filter.in_stock:
            return False
    return True


__all__ = ["Encodings", "LiveFilters", "LiveItems", "LiveView", "Stacked", "live_items",
           "view"]
