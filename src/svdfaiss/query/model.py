"""A loaded bundle: its arrays, id maps, indexes and catalog columns, and no search logic.

Arrays and FAISS indexes are memory-mapped read-only by default (`mmap`), so a load reads
headers rather than rows, memory grows with the rows queries touch, and replicas mapping the
same files share their pages; `mmap=False` reads every file into memory instead. The object
never changes after load, so one instance serves every thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from svdfaiss import bundle
from svdfaiss.content import ContentEncoder
from svdfaiss.data import decode_ids, lookup, lookup_one
from svdfaiss.encoder import Encoder
from svdfaiss.errors import InvalidBundle, UnknownItem, UnknownUser
from svdfaiss.evidence import MIN_CO_USERS, Evidence
from svdfaiss.factorize import fold_in
from svdfaiss.index import check_index, kind_of, mips_query, normalize_rows, read_index
from svdfaiss.query.banded import Head
from svdfaiss.query.filters import NO_FILTER, CatalogFilter, CatalogFilters, combine
from svdfaiss.query.popularity import Popularity
from svdfaiss.query.results import Results
from svdfaiss.query.retrieval import Space
from svdfaiss.weighting import WeightingParams, weight_rows


def _load_array(version_dir: Path, name: str, mmap: bool = True) -> np.ndarray:
    try:
        return np.asarray(np.load(version_dir / name, mmap_mode="r" if mmap else None,
                                  allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise InvalidBundle(f"{version_dir / name}: not a readable .npy array ({exc})") from None


def read_rows(path: Path, positions: np.ndarray) -> np.ndarray:
    """Rows of a 2-d .npy file read with pread, not through a memory map.

    A few thousand rows scattered over a large file, touched through a map, map most of it:
    the kernel maps the whole page-cache folio around each row (a probe: 238 MB of RSS for
    the 4,096 head rows of a 1M x 64 float32 matrix, whose own size is 1 MB).
    """
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    if mapped.ndim != 2 or not mapped.flags.c_contiguous or not isinstance(mapped, np.memmap):
        return np.array(mapped[positions])
    width = mapped.shape[1] * mapped.dtype.itemsize
    out = np.empty((positions.size, mapped.shape[1]), dtype=mapped.dtype)
    with path.open("rb") as fh:
        for i, position in enumerate(positions.tolist()):
            if os.preadv(fh.fileno(), [out[i]], mapped.offset + position * width) != width:
                raise InvalidBundle(f"{path}: row {position} lies beyond the end of the file")
    return out


@dataclass(frozen=True)
class StoredRecommendations:
    """Each known user's `k` best recommendations with the route's defaults (seen items
    excluded, popular fallback), computed at build time by the query itself
    (builder, "store recommendations"): row u is user u's answer, best first, positions -1
    past its end; `popular` marks rows that are the popular fallback (a history without
    evidence). `ranks_new_items`: whether the rows rank catalog-only items (hybrid mode of a
    model that has them)."""

    k: int
    ranks_new_items: bool
    ids: np.ndarray  # (users, k) int32 catalog positions
    scores: np.ndarray  # (users, k) float32
    popular: np.ndarray  # (users,) uint8


class LoadedModel:
    """The arrays, indexes and catalog of one bundle version, with id lookups."""

    def __init__(self, version_dir: Path, manifest: dict[str, Any], mmap: bool = True) -> None:
        self.path = version_dir
        self.mmap = mmap
        self.manifest = manifest
        self.model: str = manifest["model"]
        self.version: str = manifest["version"]
        self.item_ids = self._array("item_ids.npy")
        self.user_ids = self._array("user_ids.npy")
        self.item_vectors = self._array("item_vectors.npy")
        self.item_factors = self._array("item_factors.npy")
        # With shrinkage, rows fold in through V F and items score as V / d (factorize.py).
        self.fold_factors = (self._array("fold_factors.npy")
                             if "fold_factors.npy" in manifest["files"] else self.item_factors)
        self.item_scale = self._array("item_scale.npy")
        self.n_users = int(self.user_ids.shape[0])
        self.n_items = int(self.item_ids.shape[0])
        self.rows = sp.csr_matrix(
            tuple(self._array(f"rows_{part}.npy")
                  for part in ("values", "indices", "indptr")),
            shape=(self.n_users, self.n_items),
        )
        # Whether each row's items ascend (every bundle the builder writes): then one row
        # folds in straight from the arrays (query.vectors.fold_entries).
        self.rows_sorted = bool(self.rows.has_sorted_indices)
        self.weighting = WeightingParams(**manifest["parameters"]["weighting"])
        # A neural bundle (svdfaiss.neural) folds rows in through its numpy encoder; ELSA's
        # is linear and folds through fold_factors like the SVD.
        self.neural: dict[str, Any] | None = manifest.get("neural")
        self.encoder: Encoder | None = None
        if self.neural is not None and self.neural.get("encoder") is not None:
            self.encoder = Encoder.from_spec(
                self.neural["encoder"], lambda name: _load_array(version_dir, name),
                self.n_items)
        self.fold = fold_function(self.encoder, self.fold_factors)
        # --objective rating: users carry [p_u, 1] and biases; items [q_i, b_i] (rating.py)
        self.rating_model: dict[str, Any] | None = manifest.get("rating_model")
        self.rating_users: np.ndarray | None = None
        self.rating_user_bias: np.ndarray | None = None
        if self.rating_model is not None:
            self.rating_users = self._array("rating_users.npy")
            self.rating_user_bias = self._array("rating_user_bias.npy")
        indexes = manifest["indexes"]
        self._items = self._space(indexes["items"], self.item_vectors, lambda q: q)
        # The recommendation index may hold catalog-only items after the model's: vectors
        # predicted from their content (builder, "map new items").
        self.new_item_factors: np.ndarray | None = None
        if "new_item_factors.npy" in manifest["files"]:
            self.new_item_factors = self._array("new_item_factors.npy")
        self._rec_rows = self._rec_rows_function()
        self._mips = self._space(indexes["items_mips"], self._rec_rows, mips_query,
                                 head_rows=self._rec_rows_function(from_files=True))
        self._users: Space | None = None
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
            self.similar_ids = self._array("similar_ids.npy")
            self.similar_scores = self._array("similar_scores.npy")
        # Each user's top recommendations computed at build time (StoredRecommendations).
        self.stored: StoredRecommendations | None = None
        stored = manifest.get("stored_recommendations") or {}
        if stored.get("k"):
            self.stored = StoredRecommendations(
                int(stored["k"]), bool(stored["ranks_new_items"]),
                self._array("stored_rec_ids.npy"), self._array("stored_rec_scores.npy"),
                self._array("stored_rec_popular.npy"))
        self.catalog: dict[str, np.ndarray] = {}
        if "catalog.parquet" in manifest["files"]:
            table = pq.read_table(version_dir / "catalog.parquet")
            self.catalog = {n: table[n].to_numpy(zero_copy_only=False) for n in table.column_names}
        # Content vectors cover the model's items, then catalog items the log never named.
        self.content: dict[str, Any] | None = manifest.get("content")
        self.new_item_ids: np.ndarray = np.empty(0, dtype="S1")
        self.content_vectors: np.ndarray | None = None
        self._content: Space | None = None
        if self.content is not None:
            self.new_item_ids = self._array("new_item_ids.npy")
            self.content_vectors = self._array("content_vectors.npy")
            self._content = self._space(indexes["content"], self.content_vectors, lambda q: q)
        # The CF vectors content predicts for catalog-only items (their hybrid neighbours).
        self.new_item_vectors: np.ndarray | None = None
        if "new_item_vectors.npy" in manifest["files"]:
            self.new_item_vectors = self._array("new_item_vectors.npy")
        # The fitted content encoder and the content -> CF / recommendation-vector maps: the
        # live catalog gives items added after the build their vectors (query.live).
        self.content_encoder: ContentEncoder | None = None
        self.content_to_cf: np.ndarray | None = None
        self.content_to_rec: np.ndarray | None = None
        if self.content is not None and ContentEncoder.FILES[-1] in manifest["files"]:
            self.content_encoder = ContentEncoder.from_arrays(
                {name: self._array(name) for name in ContentEncoder.FILES},
                self.content)
            self.content_to_cf = self._array("content_to_cf.npy")
            if "content_to_rec.npy" in manifest["files"]:
                self.content_to_rec = self._array("content_to_rec.npy")
        self.n_catalog = self.n_items + int(self.new_item_ids.shape[0])
        self.filters = CatalogFilters(self.model, self.catalog, self.n_catalog)
        self.popularity = Popularity(self.rows, self.n_items)
        # Collaborative evidence per item (svdfaiss.evidence); absent in older bundles.
        files = manifest["files"]
        self.evidence = Evidence(
            self._array("item_component.npy")
            if "item_component.npy" in files else None,
            self._array("item_co_users.npy")
            if "item_co_users.npy" in files else None,
            int((manifest.get("evidence") or {}).get("min_co_users", MIN_CO_USERS)))
        self._item_users: sp.csc_matrix | None = None  # built on first use
        self._item_users_lock = threading.Lock()

    def _array(self, name: str) -> np.ndarray:
        return _load_array(self.path, name, self.mmap)

    def _rec_rows_function(self, from_files: bool = False
                           ) -> Callable[[np.ndarray | None], np.ndarray]:
        """Rows of the recommendation vectors by catalog position, without stacking the
        model's and the new items' arrays into one copy; `from_files` reads chosen rows
        with pread (read_rows) rather than through the memory maps."""
        factors, new, n_items = self.item_factors, self.new_item_factors, self.n_items
        take_model: Callable[[np.ndarray], np.ndarray] = factors.__getitem__
        take_new: Callable[[np.ndarray], np.ndarray] = (
            new.__getitem__ if new is not None else factors.__getitem__)
        if from_files and self.mmap:
            path = self.path

            def take_model(positions: np.ndarray) -> np.ndarray:
                return read_rows(path / "item_factors.npy", positions)

            def take_new(positions: np.ndarray) -> np.ndarray:
                return read_rows(path / "new_item_factors.npy", positions)

        def rows(candidates: np.ndarray | None) -> np.ndarray:
            if new is None:
                return factors if candidates is None else take_model(candidates)
            if candidates is None:
                return np.vstack([factors, new])
            out = np.empty((candidates.size, factors.shape[1]), dtype=np.float32)
            model = candidates < n_items
            out[model] = take_model(candidates[model])
            out[~model] = take_new(candidates[~model] - n_items)
            return out

        return rows

    def _space(
        self,
        meta: dict[str, Any],
        vectors: np.ndarray | Callable[[np.ndarray | None], np.ndarray] | None,
        transform: Callable[[np.ndarray], np.ndarray],
        head_rows: Callable[[np.ndarray | None], np.ndarray] | None = None,
    ) -> Space:
        """An index and its exact scoring: over `vectors` (an array, or a function giving
        the rows of candidate positions), or, with None, over the users' folded-in rows;
        a banded index's head rows come from `head_rows` when given."""
        path = self.path / meta["file"]
        index = read_index(path, self.mmap)
        head: Head | None = None
        if meta["type"] == "banded":  # the IVF file holds the rows outside the head
            check_index(index, path, meta["rows"] - meta["head_rows"], meta["dim"])
            ids = self._array(meta["head_file"])
            if ids.shape != (meta["head_rows"],) or (ids.size and int(ids.max()) >= meta["rows"]):
                raise InvalidBundle(f"{self.path / meta['head_file']}: not the "
                                    f"{meta['head_rows']} head rows the manifest promises")
            ids = np.asarray(ids, dtype=np.int64)
            rows_of = head_rows or (vectors if callable(vectors) else None)
            head_vectors = (rows_of(ids) if rows_of is not None
                            else np.asarray(vectors)[ids])
            head = Head(ids, np.ascontiguousarray(head_vectors, dtype=np.float32),
                        float(meta["tail_max_norm"]))
        else:
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
            scale, fold = self.item_scale, self.fold
            drop_bias = self.encoder is not None and self.encoder.append_one

            def exact(candidates: np.ndarray | None) -> np.ndarray:
                chosen = rows if candidates is None else rows[candidates]
                queries = fold(weight_rows(chosen, weighting, scale))
                return normalize_rows(np.ascontiguousarray(
                    queries[:, :-1] if drop_bias else queries))
        return Space(index, kind_of(index), int(meta["rows"]), transform, exact, head)

    # ------------------------------------------------------------------ loading

    @classmethod
    def open_version(
        cls, version_dir: Path, manifest: dict[str, Any] | None = None, verify: bool = True,
        mmap: bool = True, trust_stamp: bool = False,
    ) -> Self:
        """Load one version folder; checksums are verified before FAISS parses any file
        (with `trust_stamp`, not those of files unchanged since the build hashed them:
        bundle.unchanged_since_hashed)."""
        manifest = manifest or bundle.read_manifest(version_dir)
        if not verify:
            return cls._construct(version_dir, manifest, mmap)
        # The FAISS files are verified first; the other files hash meanwhile in the
        # background, and nothing is returned before every file has verified.
        try:
            faiss_files = bundle.prefetch_bundle(version_dir, manifest, trust_stamp)
        except (AttributeError, TypeError) as exc:
            raise InvalidBundle(f"{version_dir}: manifest lacks or mistypes {exc}") from None
        _verified(version_dir, manifest, faiss_files, trust_stamp)
        loaded = cls._construct(version_dir, manifest, mmap)
        _verified(version_dir, manifest, [n for n in manifest["files"] if n not in faiss_files],
                  trust_stamp)
        return loaded

    @classmethod
    def _construct(cls, version_dir: Path, manifest: dict[str, Any], mmap: bool) -> Self:
        try:
            return cls(version_dir, manifest, mmap)
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

    def _allowed(self, items: Iterable[str] | None, catalog_filter: CatalogFilter = NO_FILTER,
                 with_new: bool = False) -> np.ndarray | None:
        """The allow-list and the business filters together (None: everything allowed);
        model items only unless `with_new` (the content space)."""
        return combine(self._item_set(items, with_new), self.filters.filter_set(catalog_filter),
                       self.n_items, with_new)

    def recommendation_vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The vectors recommendations score (q . v) by catalog position: the model's items,
        then the catalog-only items' content-predicted vectors when the model has them."""
        return self._rec_rows(positions)

    def item_users(self) -> sp.csc_matrix:
        """The interaction rows by item (users of each item), built on first use: only
        co-occurrence neighbours need them."""
        if self._item_users is None:
            with self._item_users_lock:
                if self._item_users is None:
                    self._item_users = self.rows.tocsc()
        return self._item_users

    def has_content(self, position: int) -> bool:
        """Whether the catalog gave this position any content (text or categories)."""
        return self.content_vectors is not None and bool(np.any(self.content_vectors[position]))

    # ------------------------------------------------------------------ results

    def items_result(self, scores: np.ndarray | list[float], idx: np.ndarray,
                     unknown: list[str] | None = None, reason: str | None = None) -> Results:
        """Results for item positions, with their catalog fields."""
        fields = {name: col[idx].tolist() for name, col in self.catalog.items()}
        return Results(self.external_items(idx), [float(s) for s in scores], idx, fields,
                       unknown or [], reason)

    def external_items(self, idx: np.ndarray) -> list[str]:
        """External ids of item positions (model items, then catalog-only items)."""
        if self.new_item_ids.size == 0 or idx.size == 0 or int(idx.max()) < self.n_items:
            return decode_ids(self.item_ids[idx])
        return [(self.item_ids[i] if i < self.n_items else
                 self.new_item_ids[i - self.n_items]).decode("utf-8") for i in idx.tolist()]


def fold_function(encoder: Encoder | None,
                  factors: np.ndarray) -> Callable[[sp.csr_matrix], np.ndarray]:
    """Weighted rows -> query vectors: the encoder's forward pass for a neural bundle, else
    the linear fold-in q = x V F (factorize.fold_in)."""
    if encoder is not None:
        return encoder.encode

    def linear(weighted: sp.csr_matrix) -> np.ndarray:
        return fold_in(weighted, factors)

    return linear


def _verified(version_dir: Path, manifest: dict[str, Any], names: list[str],
              trust_stamp: bool) -> None:
    problems = bundle.verify(version_dir, manifest, names, trust_stamp)
    if problems:
        raise InvalidBundle(f"{version_dir} does not verify: " + "; ".join(problems))
