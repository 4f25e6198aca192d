"""The query-time model: one immutable object over a loaded bundle, no HTTP, no CLI.

Vocabulary follows benfred/implicit: `items` is an allow-list, `filter_items` a deny-list
(both may be given: the allowed items minus the denied ones). Every query returns exactly k
results whenever at least k candidates pass the filters, falling back to wider or exact
search when an approximate index returns fewer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from svdfaiss import bundle
from svdfaiss.content import cf_share, hybrid_pool, hybrid_scores, popularity_prior
from svdfaiss.data import decode_ids, lookup, lookup_one
from svdfaiss.errors import (
    InvalidBundle,
    InvalidInput,
    NotInMode,
    UnknownItem,
    UnknownItems,
    UnknownUser,
    UnsupportedFilter,
)
from svdfaiss.factorize import fold_in
from svdfaiss.index import (
    check_index,
    exact_top_k,
    kind_of,
    mips_query,
    normalize_rows,
    read_index,
    search,
    selector_for,
)
from svdfaiss.rating import fold_in_augmented
from svdfaiss.weighting import WeightingParams, weight_rows

# SWIG bindings whose partial stubs lack most classes: treat them as untyped.
faiss: Any = _faiss

# Allow-lists up to this many candidates are scored exactly with numpy: faster than a
# filtered ANN walk and exact by construction.
EXACT_CANDIDATES = 8192
RETRY_EFFORTS = (4, 16)
OVERFETCH_MAX = 32
_NONE = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Results:
    """Ranked results: external ids, scores, internal indexes and catalog fields."""

    ids: list[str]
    scores: list[float]
    indexes: np.ndarray = field(compare=False)
    fields: dict[str, list[Any]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    reason: str | None = None  # why these items: cf, popular, basket, rating
    because: list[list[dict[str, Any]]] | None = None  # per item: history items that count
    reasons: list[str] | None = None  # per item, where items differ (new items: content)

    def __len__(self) -> int:
        return len(self.ids)

    def records(self, id_key: str = "item_id") -> list[dict[str, Any]]:
        out = []
        for i, (ext, score) in enumerate(zip(self.ids, self.scores, strict=True)):
            rec: dict[str, Any] = {id_key: ext, "score": score}
            for name, values in self.fields.items():
                rec[name] = values[i]
            if self.reasons is not None:
                rec["reason"] = self.reasons[i]
            elif self.reason is not None:
                rec["reason"] = self.reason
            if self.because is not None:
                rec["because"] = self.because[i]
            out.append(rec)
        return out


@dataclass(frozen=True)
class CatalogFilter:
    """Business filters over catalog columns: category, price range, stock."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price,
                                           self.in_stock))


NO_FILTER = CatalogFilter()
MODES = ("cf", "content", "hybrid")  # similar items: collaborative, catalog content, a blend
# Recommendations: cf ranks the model's items; hybrid adds catalog-only items scored through
# their content-predicted vectors (content.map_content).
RECOMMEND_MODES = ("cf", "hybrid")
EXPLAIN_TOP = 3  # history items named per recommended item
FILTER_CACHE = 256  # business filters whose item sets are kept


@dataclass(frozen=True)
class _Space:
    """One searchable set of vectors: its index, and exact scoring over candidate rows."""

    index: faiss.Index
    kind: str
    size: int
    query_transform: Callable[[np.ndarray], np.ndarray]
    exact_vectors: Callable[[np.ndarray | None], np.ndarray]


def _load_array(version_dir: Path, name: str) -> np.ndarray:
    try:
        return np.asarray(np.load(version_dir / name, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise InvalidBundle(f"{version_dir / name}: not a readable .npy array ({exc})") from None


class Recommender:
    """Similar items, recommendations, similar users, basket fold-in and scores for a bundle."""

    def __init__(self, version_dir: Path, manifest: dict[str, Any]) -> None:
        self.path = version_dir
        self.manifest = manifest
        self.model: str = manifest["model"]
        self.version: str = manifest["version"]
        self.item_ids = _load_array(version_dir, "item_ids.npy")
        self.user_ids = _load_array(version_dir, "user_ids.npy")
        self.item_vectors = _load_array(version_dir, "item_vectors.npy")
        self.item_factors = _load_array(version_dir, "item_factors.npy")
        # With shrinkage, rows fold in through V F and items score as V / d (factorize.py).
        self.fold_factors = (_load_array(version_dir, "fold_factors.npy")
                             if "fold_factors.npy" in manifest["files"] else self.item_factors)
        self.item_scale = _load_array(version_dir, "item_scale.npy")
        self.n_users = int(self.user_ids.shape[0])
        self.n_items = int(self.item_ids.shape[0])
        self.rows = sp.csr_matrix(
            tuple(_load_array(version_dir, f"rows_{part}.npy")
                  for part in ("values", "indices", "indptr")),
            shape=(self.n_users, self.n_items),
        )
        self.weighting = WeightingParams(**manifest["parameters"]["weighting"])
        # --objective rating: users carry [p_u, 1] and biases; items [q_i, b_i] (rating.py)
        self.rating_model: dict[str, Any] | None = manifest.get("rating_model")
        self.rating_users: np.ndarray | None = None
        self.rating_user_bias: np.ndarray | None = None
        if self.rating_model is not None:
            self.rating_users = _load_array(version_dir, "rating_users.npy")
            self.rating_user_bias = _load_array(version_dir, "rating_user_bias.npy")
        indexes = manifest["indexes"]
        self._items = self._space(indexes["items"], self.item_vectors, lambda q: q)
        # The recommendation index may hold catalog-only items after the model's: vectors
        # predicted from their content (builder, "map new items").
        self.new_item_factors: np.ndarray | None = None
        if "new_item_factors.npy" in manifest["files"]:
            self.new_item_factors = _load_array(version_dir, "new_item_factors.npy")
        self._rec_rows = self._rec_rows_function()
        self._mips = self._space(indexes["items_mips"], self._rec_rows, mips_query)
        self._users: _Space | None = None
        if "users" in indexes:
            self._users = self._space(
                indexes["users"],
                None if self.rating_users is None
                else normalize_rows(np.ascontiguousarray(self.rating_users[:, :-1])),
                lambda q: q)
        self.similar_ids: np.ndarray | None = None
        self.similar_scores: np.ndarray | None = None
        self.similar_mode: str = (manifest.get("similar_cache") or {}).get("mode", "cf")
        if manifest.get("similar_cache"):
            self.similar_ids = _load_array(version_dir, "similar_ids.npy")
            self.similar_scores = _load_array(version_dir, "similar_scores.npy")
        self.catalog: dict[str, np.ndarray] = {}
        if "catalog.parquet" in manifest["files"]:
            table = pq.read_table(version_dir / "catalog.parquet")
            self.catalog = {n: table[n].to_numpy(zero_copy_only=False) for n in table.column_names}
        # Content vectors cover the model's items, then catalog items the log never named.
        self.content: dict[str, Any] | None = manifest.get("content")
        self.new_item_ids: np.ndarray = np.empty(0, dtype="S1")
        self.content_vectors: np.ndarray | None = None
        self._content: _Space | None = None
        if self.content is not None:
            self.new_item_ids = _load_array(version_dir, "new_item_ids.npy")
            self.content_vectors = _load_array(version_dir, "content_vectors.npy")
            self._content = self._space(indexes["content"], self.content_vectors, lambda q: q)
        # The CF vectors content predicts for catalog-only items (their hybrid neighbours).
        self.new_item_vectors: np.ndarray | None = None
        if "new_item_vectors.npy" in manifest["files"]:
            self.new_item_vectors = _load_array(version_dir, "new_item_vectors.npy")
        self.n_catalog = self.n_items + int(self.new_item_ids.shape[0])
        self._category_sets: dict[str, np.ndarray] | None = None  # built on first use
        self._filter_cache: dict[CatalogFilter, np.ndarray] = {}  # insertion order: oldest first
        self._filter_lock = threading.Lock()
        self._popular: tuple[np.ndarray, np.ndarray] | None = None  # built on first use
        self._titles: pa.Array | None = None  # built on the first catalog search

    def _rec_rows_function(self) -> Callable[[np.ndarray | None], np.ndarray]:
        """Rows of the recommendation vectors by catalog position, without stacking the
        model's and the new items' arrays into one copy."""
        factors, new, n_items = self.item_factors, self.new_item_factors, self.n_items

        def rows(candidates: np.ndarray | None) -> np.ndarray:
            if new is None:
                return factors if candidates is None else factors[candidates]
            if candidates is None:
                return np.vstack([factors, new])
            out = np.empty((candidates.size, factors.shape[1]), dtype=np.float32)
            model = candidates < n_items
            out[model] = factors[candidates[model]]
            out[~model] = new[candidates[~model] - n_items]
            return out

        return rows

    def _space(
        self,
        meta: dict[str, Any],
        vectors: np.ndarray | Callable[[np.ndarray | None], np.ndarray] | None,
        transform: Callable[[np.ndarray], np.ndarray],
    ) -> _Space:
        """An index and its exact scoring: over `vectors` (an array, or a function giving
        the rows of candidate positions), or, with None, over the users' folded-in rows."""
        path = self.path / meta["file"]
        index = read_index(path)
        check_index(index, path, meta["rows"], meta["dim"])
        exact: Callable[[np.ndarray | None], np.ndarray]
        if callable(vectors):
            exact = vectors
        elif vectors is not None:
            fixed = vectors

            def exact(candidates: np.ndarray | None) -> np.ndarray:
                return fixed if candidates is None else fixed[candidates]
        else:
            # A closure over the arrays, not a bound method: a reference back to self would
            # make a cycle, and a replaced model would wait for the cyclic GC to free its
            # indexes (measured: RSS stepping up 4 MB a reload in the soak).
            rows, weighting = self.rows, self.weighting
            scale, factors = self.item_scale, self.fold_factors

            def exact(candidates: np.ndarray | None) -> np.ndarray:
                chosen = rows if candidates is None else rows[candidates]
                return normalize_rows(fold_in(weight_rows(chosen, weighting, scale), factors))
        return _Space(index, kind_of(index), int(meta["rows"]), transform, exact)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, index_dir: Path, model: str, verify: bool = True) -> Recommender:
        """Load the version CURRENT names; with verify, every checksum is checked first."""
        version_dir, manifest = bundle.current_bundle(bundle.model_dir(Path(index_dir), model))
        return cls.open(version_dir, manifest, verify=verify)

    @classmethod
    def open(
        cls, version_dir: Path, manifest: dict[str, Any] | None = None, verify: bool = True
    ) -> Recommender:
        """Load one version folder; checksums are verified before FAISS parses any file."""
        manifest = manifest or bundle.read_manifest(version_dir)
        if not verify:
            return cls._construct(version_dir, manifest)
        # The FAISS files are verified first; the other files hash meanwhile in the
        # background, and nothing is returned before every file has verified.
        try:
            faiss_files = bundle.prefetch_bundle(version_dir, manifest)
        except (AttributeError, TypeError) as exc:
            raise InvalidBundle(f"{version_dir}: manifest lacks or mistypes {exc}") from None
        cls._verified(version_dir, manifest, faiss_files)
        recommender = cls._construct(version_dir, manifest)
        cls._verified(version_dir, manifest,
                      [n for n in manifest["files"] if n not in faiss_files])
        return recommender

    @staticmethod
    def _verified(version_dir: Path, manifest: dict[str, Any], names: list[str]) -> None:
        problems = bundle.verify(version_dir, manifest, names)
        if problems:
            raise InvalidBundle(f"{version_dir} does not verify: " + "; ".join(problems))

    @classmethod
    def _construct(cls, version_dir: Path, manifest: dict[str, Any]) -> Recommender:
        try:
            return cls(version_dir, manifest)
        except (KeyError, TypeError) as exc:
            raise InvalidBundle(f"{version_dir}: manifest lacks or mistypes {exc}") from None

    # ------------------------------------------------------------------ id mapping

    @property
    def feedback(self) -> str:
        """"explicit" (ratings) or "implicit" (counts): what an event's weight means."""
        feedback: str = self.manifest["input"]["feedback"]
        return feedback

    def knows_item(self, item_id: str) -> bool:
        """Whether the model has a vector for this item (a catalog-only item has none)."""
        return lookup_one(self.item_ids, item_id) >= 0

    def item_index(self, item_id: str) -> int:
        found = lookup_one(self.item_ids, item_id)
        if found < 0:
            raise UnknownItem(item_id)
        return found

    def user_index(self, user_id: str) -> int:
        found = lookup_one(self.user_ids, user_id)
        if found < 0:
            raise UnknownUser(user_id)
        return found

    def catalog_index(self, item_id: str) -> int:
        """Position of an item among the model's items, then the catalog-only items."""
        found = lookup_one(self.item_ids, item_id)
        if found >= 0:
            return found
        found = lookup_one(self.new_item_ids, item_id) if self.new_item_ids.size else -1
        if found < 0:
            raise UnknownItem(item_id)
        return self.n_items + found

    def _item_set(self, item_ids: Iterable[str] | None,
                  with_new: bool = False) -> np.ndarray | None:
        """Internal indexes of the known ids of a filter list (unknown ids cannot match);
        `with_new` also finds catalog-only items (positions from n_items on)."""
        if item_ids is None:
            return None
        ids = list(item_ids)
        found = lookup(self.item_ids, ids)
        if with_new and self.new_item_ids.size:
            new = lookup(self.new_item_ids, ids)
            found = np.concatenate([found, new[new >= 0] + self.n_items])
        return np.unique(found[found >= 0])

    def _user_set(self, user_ids: Iterable[str] | None) -> np.ndarray | None:
        if user_ids is None:
            return None
        found = lookup(self.user_ids, list(user_ids))
        return np.unique(found[found >= 0])

    # ------------------------------------------------------------------ vectors

    def seen_items(self, user: int) -> np.ndarray:
        """Internal indexes of the items a known user interacted with."""
        start, end = self.rows.indptr[user], self.rows.indptr[user + 1]
        seen: np.ndarray = np.asarray(self.rows.indices[start:end], dtype=np.int64)
        return seen

    def _fold_rows(self, raw_rows: sp.csr_matrix) -> np.ndarray:
        return fold_in(weight_rows(raw_rows, self.weighting, self.item_scale), self.fold_factors)

    def user_vector(self, user: int) -> np.ndarray:
        """q = x V F for a known user: that user's row of U S F (F = 1 without shrinkage);
        [p_u, 1] under a rating model."""
        if self.rating_users is not None:
            return np.asarray(self.rating_users[user])
        vector: np.ndarray = self._fold_rows(self.rows[user : user + 1])[0]
        return vector

    def _similarity_vector(self, user: int) -> np.ndarray:
        """The vector the similar-users index holds for a user, before normalization."""
        if self.rating_users is not None:
            return np.asarray(self.rating_users[user, :-1])
        return self.user_vector(user)

    def basket_vector(self, items: np.ndarray) -> np.ndarray:
        """q = x V F for an anonymous basket; repeated items count like repeated events.

        Under a rating model the basket is folded in as a user who rated each item at the top
        of the scale (a basket says "liked"): [p, 1] from the same ridge regression.
        """
        if self.rating_model is not None:
            unique = np.unique(items)
            top = np.full(unique.size, self.rating_model["high"], dtype=np.float32)
            return self._row_vector(sp.csr_matrix((top, unique, [0, unique.size]),
                                                  shape=(1, self.n_items)))
        return self._row_vector(self._basket_row(items))

    def _basket_row(self, items: np.ndarray) -> sp.csr_matrix:
        """A basket as a raw user row: each item counted as often as it is given."""
        counts = np.bincount(items, minlength=self.n_items).astype(np.float32)
        nz = np.flatnonzero(counts)
        return sp.csr_matrix((counts[nz], nz, [0, nz.size]), shape=(1, self.n_items))

    # ------------------------------------------------------------------ search core

    def _top_k(
        self,
        space: _Space,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        excluded: np.ndarray,
        limit: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows of `space` for `query` among `allowed` (None: all) minus
        `excluded`; `limit` keeps positions below it (cf recommendations skip the new items
        after the model's), with `allowed`, if given, already below it."""
        if k < 1:
            raise InvalidInput(f"k must be at least 1, got {k}")
        if excluded.size > 1:
            excluded = np.unique(excluded)
        size = space.size if limit is None else min(limit, space.size)
        if allowed is not None:
            candidates: np.ndarray | None = np.setdiff1d(allowed, excluded, assume_unique=True)
            n_candidates = int(candidates.size)  # type: ignore[union-attr]
        else:
            candidates = None
            n_candidates = size - int(np.count_nonzero(excluded < size))
        k = min(k, n_candidates)
        if k <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        if candidates is not None and n_candidates <= EXACT_CANDIDATES:
            return exact_top_k(space.exact_vectors(candidates), query, k, candidates)
        q = space.query_transform(query[None, :])
        if allowed is None and excluded.size <= OVERFETCH_MAX:
            # A few ids to skip (the query item, a short deny-list): fetch that many more and
            # drop them, cheaper than building an IDSelector per request.
            scores, ids = search(space.index, q, k + int(excluded.size), kind=space.kind)
            keep = (ids[0] >= 0) & (ids[0] < size) & ~np.isin(ids[0], excluded)
            if int(keep.sum()) >= k:
                return scores[0][keep][:k], ids[0][keep][:k].astype(np.int64)
        selector = selector_for(allowed, excluded, space.size,
                                None if allowed is not None or size == space.size else size)
        for effort in (1, *RETRY_EFFORTS):
            scores, ids = search(space.index, q, k, selector, effort, space.kind)
            keep = ids[0] >= 0
            if int(keep.sum()) >= k:
                return scores[0][keep], ids[0][keep].astype(np.int64)
        # The approximate index could not reach k candidates: score every candidate exactly.
        if candidates is None:
            candidates = np.setdiff1d(np.arange(size), excluded, assume_unique=True)
        return exact_top_k(space.exact_vectors(candidates), query, k, candidates)

    def _catalog_column(self, names: tuple[str, ...], what: str) -> np.ndarray:
        for name in self.catalog:
            if name.lower() in names:
                return self.catalog[name]
        raise UnsupportedFilter(f"model {self.model!r} has no catalog {what} column to filter "
                                f"on; build it with --items CATALOG holding one "
                                f"({' or '.join(names)})")

    def _categories(self) -> dict[str, np.ndarray]:
        """Items of each category; a value like "Comedy|Drama" puts the item in both."""
        if self._category_sets is None:
            column = self._catalog_column(("category", "categories", "genres", "genre"),
                                          "category")
            members: dict[str, list[int]] = {}
            for index, value in enumerate(column.tolist()):
                if value is None:
                    continue
                for name in str(value).split("|"):
                    members.setdefault(name.strip(), []).append(index)
            self._category_sets = {name: np.asarray(rows, dtype=np.int64)
                                   for name, rows in members.items()}
        return self._category_sets

    def filter_set(self, catalog_filter: CatalogFilter) -> np.ndarray | None:
        """Internal indexes of the items passing the business filters (None: no filter).

        The last FILTER_CACHE filters are kept: shop traffic repeats them (category pages).
        """
        if not catalog_filter.active:
            return None
        cached = self._filter_cache.get(catalog_filter)
        if cached is None:
            cached = self._compute_filter_set(catalog_filter)
            with self._filter_lock:  # queries run on several threads
                while len(self._filter_cache) >= FILTER_CACHE:
                    self._filter_cache.pop(next(iter(self._filter_cache)))
                self._filter_cache[catalog_filter] = cached
        return cached

    def _compute_filter_set(self, catalog_filter: CatalogFilter) -> np.ndarray:
        keep = np.ones(self.n_catalog, dtype=bool)
        if catalog_filter.category is not None:
            in_category = np.zeros(self.n_catalog, dtype=bool)
            in_category[self._categories().get(catalog_filter.category, _NONE)] = True
            keep &= in_category
        if catalog_filter.min_price is not None or catalog_filter.max_price is not None:
            price = np.asarray(self._catalog_column(("price",), "price"), dtype=np.float64)
            known = ~np.isnan(price)
            keep &= known
            if catalog_filter.min_price is not None:
                keep &= np.where(known, price, 0) >= catalog_filter.min_price
            if catalog_filter.max_price is not None:
                keep &= np.where(known, price, 0) <= catalog_filter.max_price
        if catalog_filter.in_stock is not None:
            stock = self._catalog_column(("in_stock", "instock", "stock"), "in_stock")
            truthy = np.array([v in (True, 1, "1", "true", "True", "yes") for v in stock.tolist()])
            keep &= truthy if catalog_filter.in_stock else ~truthy
        result = np.flatnonzero(keep)
        result.flags.writeable = False  # shared by every query with this filter
        return result

    def _allowed(self, items: Iterable[str] | None, catalog_filter: CatalogFilter,
                 with_new: bool = False) -> np.ndarray | None:
        """The allow-list and the business filters together (None: everything allowed);
        model items only unless `with_new` (the content space)."""
        listed, filtered = self._item_set(items, with_new), self.filter_set(catalog_filter)
        if filtered is not None and not with_new and self.n_catalog > self.n_items:
            filtered = filtered[: int(np.searchsorted(filtered, self.n_items))]
        if listed is None or filtered is None:
            return filtered if listed is None else listed
        return np.intersect1d(listed, filtered, assume_unique=True)

    def _popularity(self) -> tuple[np.ndarray, np.ndarray]:
        """Train users per item, and the items most popular first (ties: lower index).

        Built on the first cold user, not at load: a sort of every item would add to
        start-up (0.19 s for 6M interactions over 1M items, measured with numpy under
        load) for a fallback many deployments never use.
        """
        if self._popular is None:
            counts = np.bincount(self.rows.indices, minlength=self.n_items)
            self._popular = (counts.astype(np.float32), np.argsort(-counts, kind="stable"))
        return self._popular

    def popular(self, k: int = 10, items: Iterable[str] | None = None,
                filter_items: Iterable[str] | None = None,
                catalog_filter: CatalogFilter = NO_FILTER,
                exclude: np.ndarray | None = None) -> Results:
        """The most popular items passing the filters: the fallback for a cold user."""
        if k < 1:
            raise InvalidInput(f"k must be at least 1, got {k}")
        allowed = self._allowed(items, catalog_filter)
        keep = np.ones(self.n_items, dtype=bool)
        if allowed is not None:
            keep[:] = False
            keep[allowed] = True
        for excluded in (self._item_set(filter_items), exclude):
            if excluded is not None:
                keep[excluded] = False
        popularity, order = self._popularity()
        idx = order[keep[order]][:k]
        result = self._items_result(popularity[idx], idx)
        return Results(result.ids, result.scores, idx, result.fields, reason="popular")

    def _explain(self, row: sp.csr_matrix, idx: np.ndarray) -> list[list[dict[str, Any]]]:
        """For each recommended item, the history items that add most to its score.

        The score is q . v_i with q = sum_j w_j fold_j over the weighted history row w, so
        item j adds exactly w_j (fold_j . v_i); the largest positive shares are named.
        """
        weighted = weight_rows(row, self.weighting, self.item_scale)
        history = weighted.indices.astype(np.int64)
        if history.size == 0 or idx.size == 0:
            return [[] for _ in idx]
        shares = (np.asarray(self.fold_factors[history]) * weighted.data[:, None]) @ np.asarray(
            self._rec_rows(idx)).T
        titles = self.catalog.get("title")
        out = []
        for column in shares.T:
            top = np.argsort(-column, kind="stable")[:EXPLAIN_TOP]
            top = top[column[top] > 0]
            named = []
            for ext, j in zip(decode_ids(self.item_ids[history[top]]), top, strict=True):
                entry: dict[str, Any] = {"item_id": ext, "contribution": float(column[j])}
                if titles is not None:
                    entry["title"] = titles[history[j]]
                named.append(entry)
            out.append(named)
        return out

    def search_catalog(self, query: str, limit: int = 10) -> Results:
        """Catalog items whose title contains `query` (case-insensitive), the most
        interacted with first; each score is the item's number of training interactions."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        if self._titles is None:
            column = self.catalog.get("title")
            if column is None:
                raise UnsupportedFilter(f"model {self.model!r} has no catalog titles to "
                                        "search; build it with --items CATALOG holding a title")
            # Arrow strings, not a fixed-width numpy array: one long title would make every
            # row that wide.
            self._titles = pa.array([None if t is None else str(t) for t in column.tolist()],
                                    type=pa.string())
        matches = pc.match_substring(self._titles, query, ignore_case=True).fill_null(False)
        hits = np.flatnonzero(matches.to_numpy(zero_copy_only=False))
        in_model = hits < self.n_items  # catalog-only items have no interactions
        counts = np.where(in_model, self._popularity()[0][np.where(in_model, hits, 0)], 0.0)
        order = np.argsort(-counts, kind="stable")[:limit]
        return self._items_result(counts[order], hits[order])

    def _items_result(self, scores: np.ndarray, idx: np.ndarray,
                      unknown: list[str] | None = None, reason: str | None = None) -> Results:
        fields = {name: col[idx].tolist() for name, col in self.catalog.items()}
        return Results(self._external_items(idx), [float(s) for s in scores], idx, fields,
                       unknown or [], reason)

    def _external_items(self, idx: np.ndarray) -> list[str]:
        if self.new_item_ids.size == 0 or idx.size == 0 or int(idx.max()) < self.n_items:
            return decode_ids(self.item_ids[idx])
        return [(self.item_ids[i] if i < self.n_items else
                 self.new_item_ids[i - self.n_items]).decode("utf-8") for i in idx.tolist()]

    # ------------------------------------------------------------------ queries

    def resolve_mode(self, mode: str) -> str:
        """The similar-items mode a request gets: hybrid is cf for a model without content."""
        if mode not in MODES:
            raise InvalidInput(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode == "hybrid" and self._content is None:
            return "cf"
        return mode

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        items: Iterable[str] | None = None,
        filter_items: Iterable[str] | None = None,
        use_cache: bool = True,
        catalog_filter: CatalogFilter = NO_FILTER,
        mode: str = "hybrid",
    ) -> Results:
        """Items closest to an item (never the item itself), by one of three modes.

        - cf: cosine of the SVD item vectors (the items' audiences);
        - content: cosine of the catalog's content vectors (text and categories);
        - hybrid (the default): a * cf + (1 - a) * content over the union of both modes'
          content.hybrid_pool(k) nearest, with a = n / (n + hybrid_interactions) for an
          item with n interactions (content.cf_share). A catalog item with no interactions
          takes its CF part from the vector its content predicts, with a fixed a
          (content.NEW_ITEM_CF_SHARE), and adds a popularity prior (content.popularity_prior;
          pure content in bundles built before that vector was stored); a model built
          without content answers hybrid as cf.

        Answered from the neighbours stored at build time when they can; `use_cache=False`
        goes straight to the indexes. Business filters run inside the indexes (an
        IDSelector), so a filter keeping few items still gets k of them when k exist.
        """
        mode = self.resolve_mode(mode)
        position = self.catalog_index(item_id)
        if position >= self.n_items:  # in the catalog, never in the log
            if mode == "cf":
                raise NotInMode(item_id, "cf")
            if self.new_item_vectors is None:
                mode = "content"
        elif mode == "hybrid" and not self._has_content(position):
            mode = "cf"
        with_new = mode != "cf"
        denied = self._item_set(filter_items, with_new)
        if use_cache and not catalog_filter.active and position < self.n_items:
            cached = self._cached_similar(position, k, items, denied, mode)
            if cached is not None:
                return cached
        excluded = np.append(_NONE if denied is None else denied, position)
        allowed = self._allowed(items, catalog_filter, with_new)
        if mode == "cf":
            query = np.asarray(self.item_vectors[position], dtype=np.float32)
            scores, idx = self._top_k(self._items, query, k, allowed, excluded)
            return self._items_result(scores, idx, reason="cf")
        if not self._has_content(position) or self._content is None:
            raise NotInMode(item_id, mode)
        content_query = np.asarray(self.content_vectors[position],  # type: ignore[index]
                                   dtype=np.float32)
        pool = k if mode == "content" else hybrid_pool(k)
        scores, idx = self._top_k(self._content, content_query, pool, allowed, excluded)
        if mode == "content":
            return self._items_result(scores, idx, reason="content")
        in_model = None if allowed is None else allowed[allowed < self.n_items]
        assert self.content is not None
        if position < self.n_items:
            cf_query = np.asarray(self.item_vectors[position], dtype=np.float32)
            share: np.ndarray | float = cf_share(
                self._popularity()[0][position : position + 1],
                float(self.content["hybrid_interactions"]))
        else:  # new_item_vectors is set: the mode would be content otherwise
            cf_query = np.asarray(
                self.new_item_vectors[position - self.n_items],  # type: ignore[index]
                dtype=np.float32)
            share = float(self.content["new_items_in_similar"]["cf_share"])
        _, by_cf = self._top_k(self._items, cf_query, pool, in_model,
                               excluded[excluded < self.n_items])
        candidates = np.union1d(idx, by_cf)
        fused = hybrid_scores(np.array([position]), candidates[None, :], self.item_vectors,
                              self.content_vectors, share,  # type: ignore[arg-type]
                              cf_queries=cf_query[None, :])[0]
        if position >= self.n_items:
            counts = np.zeros(candidates.size, dtype=np.float32)
            in_log = candidates < self.n_items
            counts[in_log] = self._popularity()[0][candidates[in_log]]
            fused += popularity_prior(
                counts, float(self.content["new_items_in_similar"].get("popularity_prior", 0)))
        top = np.argsort(-fused, kind="stable")[:k]
        top = top[np.isfinite(fused[top])]
        return self._items_result(fused[top], candidates[top], reason="hybrid")

    def _has_content(self, position: int) -> bool:
        return self.content_vectors is not None and bool(
            np.any(self.content_vectors[position]))

    def similar_items_batch(self, item_ids: Sequence[str], ks: Sequence[int]) -> list[Results]:
        """Unfiltered similar items for many ids (with a k each) in one FAISS call.

        Equal to `similar_items(item_id, k, use_cache=False)` per id; a row the single
        search cannot fill (a near-empty IVF probe) falls back to that call. Raises
        UnknownItem for the first unknown id.
        """
        if len(item_ids) != len(ks):
            raise InvalidInput(f"{len(item_ids)} ids but {len(ks)} values of k")
        if any(k < 1 for k in ks):
            raise InvalidInput(f"k must be at least 1, got {min(ks)}")
        rows = np.array([self.item_index(i) for i in item_ids], dtype=np.int64)
        if rows.size == 0:
            return []
        want = min(max(ks), self.n_items - 1)
        queries = np.asarray(self.item_vectors[rows], dtype=np.float32)
        scores, ids = search(self._items.index, queries, want + 1, kind=self._items.kind)
        out = []
        for n, (item_id, k) in enumerate(zip(item_ids, ks, strict=True)):
            keep = (ids[n] >= 0) & (ids[n] != rows[n])
            k = min(k, self.n_items - 1)
            if int(keep.sum()) >= k:
                out.append(self._items_result(scores[n][keep][:k],
                                              ids[n][keep][:k].astype(np.int64), reason="cf"))
            else:
                out.append(self.similar_items(item_id, k, use_cache=False, mode="cf"))
        return out

    def cached_similar_items(
        self,
        item_id: str,
        k: int = 10,
        items: Iterable[str] | None = None,
        filter_items: Iterable[str] | None = None,
        mode: str = "hybrid",
    ) -> Results | None:
        """The answer from neighbours stored at build time, or None when they cannot give it
        (no cache, another mode, an allow-list, k beyond the cache, or a deny-list that
        leaves too few).

        Cheap enough to run on an event loop: no FAISS call. Raises UnknownItem only for
        an id neither the model nor the catalog knows.
        """
        if self.similar_ids is None or items is not None:
            return None
        position = self.catalog_index(item_id)
        if position >= self.n_items:
            return None
        mode = self.resolve_mode(mode)
        return self._cached_similar(position, k, items,
                                    self._item_set(filter_items, mode != "cf"), mode)

    def _cached_similar(
        self, item: int, k: int, items: Iterable[str] | None, denied: np.ndarray | None,
        mode: str,
    ) -> Results | None:
        if self.similar_ids is None or self.similar_scores is None or items is not None:
            return None
        if mode != self.similar_mode:
            return None
        if k < 1:
            raise InvalidInput(f"k must be at least 1, got {k}")
        row = np.asarray(self.similar_ids[item])
        keep = row >= 0
        if denied is not None and denied.size:
            keep &= ~np.isin(row, denied)
        chosen = np.flatnonzero(keep)[:k]
        if chosen.size < min(k, self.n_items - 1):
            return None
        idx = row[chosen].astype(np.int64)
        return self._items_result(np.asarray(self.similar_scores[item])[chosen], idx,
                                  reason=mode)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[str] | None = None,
        filter_items: Iterable[str] | None = None,
        catalog_filter: CatalogFilter = NO_FILTER,
        fallback: str = "none",
        explain: bool = False,
        live: Mapping[str, float] | None = None,
        mode: str = "hybrid",
    ) -> Results:
        """Items with the highest predicted score q . v for a known user.

        An unknown user gets the most popular items with `fallback="popular"` (reason
        "popular"), and an UnknownUser error with "none". `explain` names, for each item,
        the user's history items that contribute most to its score. `live` holds the user's
        events since the bundle (item id -> weight, POST /events): they join the user's row
        (counts add, a rating replaces the stored one) and the row is folded in again, so a
        user the bundle never saw is known from their first event on known items.
        `mode="hybrid"` (the default) also ranks the catalog items nobody has interacted
        with through vectors predicted from their content (reason "content"); "cf" ranks
        the model's items only. A model without such items answers both alike.
        """
        with_new = self._recommend_mode(mode)
        try:
            user = self.user_index(user_id)
        except UnknownUser:
            user = -1
        row = self._live_row(user, live) if live else None
        if user < 0 and (row is None or row.nnz == 0):
            if fallback == "popular":
                return self.popular(k, items, filter_items, catalog_filter)
            raise UnknownUser(user_id)
        if row is None:
            row = self.rows[user : user + 1]
            query = self.user_vector(user)
        else:
            query = self._row_vector(row)
        seen = np.asarray(row.indices, dtype=np.int64) if exclude_seen else None
        result = self._recommend_vector(query, seen, k, items, filter_items, catalog_filter,
                                        with_new)
        reason = "cf" if self.rating_model is None else "rating"
        because = (self._explain(row, result.indexes)
                   if explain and self.rating_model is None else None)
        return Results(result.ids, result.scores, result.indexes, result.fields,
                       reason=reason, because=because,
                       reasons=self._item_reasons(result.indexes, reason))

    def recommendation_vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The vectors recommendations score (q . v) by catalog position: the model's items,
        then the catalog-only items' content-predicted vectors when the model has them."""
        return self._rec_rows(positions)

    def _recommend_mode(self, mode: str) -> bool:
        """Whether recommendations in `mode` rank catalog-only items too."""
        if mode not in RECOMMEND_MODES:
            raise InvalidInput(f"mode {mode!r}: recommendations take "
                               f"{' or '.join(RECOMMEND_MODES)}")
        return mode == "hybrid" and self.new_item_factors is not None

    def _item_reasons(self, idx: np.ndarray, reason: str) -> list[str] | None:
        """Per-item reasons when catalog-only items (ranked by content) are among `idx`."""
        new = idx >= self.n_items
        if not new.any():
            return None
        return ["content" if is_new else reason for is_new in new.tolist()]

    def _live_row(self, user: int, live: Mapping[str, float]) -> sp.csr_matrix:
        """A user's raw row with their live events merged in (unknown items are skipped)."""
        found = lookup(self.item_ids, list(live))
        known = found >= 0
        extra_items = found[known]
        extra_values = np.asarray(list(live.values()), dtype=np.float32)[known]
        if user >= 0:
            start, end = self.rows.indptr[user], self.rows.indptr[user + 1]
            base_items = np.asarray(self.rows.indices[start:end], dtype=np.int64)
            base_values = np.asarray(self.rows.data[start:end], dtype=np.float32)
        else:
            base_items, base_values = _NONE, np.empty(0, dtype=np.float32)
        if self.feedback == "explicit":  # a new rating replaces the old
            stale = np.isin(base_items, extra_items)
            base_items, base_values = base_items[~stale], base_values[~stale]
        row = sp.csr_matrix((np.concatenate([base_values, extra_values]),
                             (np.zeros(base_items.size + extra_items.size, dtype=np.int64),
                              np.concatenate([base_items, extra_items]))),
                            shape=(1, self.n_items))
        row.sum_duplicates()
        return row

    def _row_vector(self, row: sp.csr_matrix) -> np.ndarray:
        """The query vector of a raw user row: its fold-in (rating model: its ridge fit)."""
        if self.rating_model is not None:
            solved = fold_in_augmented(self.item_factors, self.rating_model["mu"],
                                       row.indices.astype(np.int64), row.data)
            return np.append(solved[:-1], 1.0).astype(np.float32)
        vector: np.ndarray = self._fold_rows(row)[0]
        return vector

    def recommend_for_items(
        self,
        item_ids: Sequence[str],
        k: int = 10,
        exclude_given: bool = True,
        items: Iterable[str] | None = None,
        filter_items: Iterable[str] | None = None,
        catalog_filter: CatalogFilter = NO_FILTER,
        explain: bool = False,
        mode: str = "hybrid",
    ) -> Results:
        """Recommendations for an anonymous basket by fold-in; unknown ids are reported.
        `mode` as for `recommend`."""
        with_new = self._recommend_mode(mode)
        found = lookup(self.item_ids, list(item_ids))
        unknown = [i for i, f in zip(item_ids, found, strict=True) if f < 0]
        known = found[found >= 0]
        if known.size == 0:
            if not item_ids:
                raise InvalidInput("item_ids is empty; give at least one item id")
            raise UnknownItem(unknown[0]) if len(unknown) == 1 else UnknownItems(unknown)
        result = self._recommend_vector(self.basket_vector(known),
                                        known if exclude_given else None, k, items, filter_items,
                                        catalog_filter, with_new)
        because = None
        if explain and self.rating_model is None:
            because = self._explain(self._basket_row(known), result.indexes)
        return Results(result.ids, result.scores, result.indexes, result.fields, unknown,
                       reason="basket", because=because,
                       reasons=self._item_reasons(result.indexes, "basket"))

    def _recommend_vector(
        self,
        query: np.ndarray,
        seen: np.ndarray | None,
        k: int,
        items: Iterable[str] | None,
        filter_items: Iterable[str] | None,
        catalog_filter: CatalogFilter = NO_FILTER,
        with_new: bool = False,
    ) -> Results:
        parts = [p for p in (seen, self._item_set(filter_items, with_new)) if p is not None]
        excluded = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        scores, idx = self._top_k(self._mips, query, k,
                                  self._allowed(items, catalog_filter, with_new), excluded,
                                  limit=None if with_new else self.n_items)
        return self._items_result(scores, idx)

    def similar_users(
        self,
        user_id: str,
        k: int = 10,
        users: Iterable[str] | None = None,
        filter_users: Iterable[str] | None = None,
    ) -> Results:
        """Users closest by cosine of their embeddings (never the user itself)."""
        if self._users is None:
            raise InvalidInput(f"model {self.model!r} was built without a users index "
                               "(--user-index none, or --objective rating with --rating-k 0)")
        user = self.user_index(user_id)
        denied = self._user_set(filter_users)
        excluded = np.append(_NONE if denied is None else denied, user)
        query = normalize_rows(self._similarity_vector(user)[None, :].astype(np.float32))[0]
        scores, idx = self._top_k(self._users, query, k, self._user_set(users), excluded)
        return Results(decode_ids(self.user_ids[idx]), [float(s) for s in scores], idx)

    def score(self, user_id: str, item_id: str) -> float:
        """The model's score q . v of one item for one user (the ranking score); under a
        rating model, the predicted rating mu + b_u + q . v, clipped to the rating scale.
        A catalog-only item scores through its content-predicted vector when the model has
        one (see `recommend`)."""
        user = self.user_index(user_id)
        item = self.catalog_index(item_id)
        if item >= self.n_items and self.new_item_factors is None:
            raise UnknownItem(item_id)
        vector = self._rec_rows(np.array([item]))[0]
        score = float(np.dot(self.user_vector(user), vector))
        if self.rating_model is None or self.rating_user_bias is None:
            return score
        predicted = self.rating_model["mu"] + float(self.rating_user_bias[user]) + score
        return float(min(max(predicted, self.rating_model["low"]), self.rating_model["high"]))
