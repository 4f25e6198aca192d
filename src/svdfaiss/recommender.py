"""The query-time model: one immutable object over a loaded bundle, no HTTP, no CLI.

`Recommender` is the public entry point and a thin facade: the bundle's arrays live in
`query.model`, and each kind of answer in its own module of `svdfaiss.query`.

Vocabulary follows benfred/implicit: `items` is an allow-list, `filter_items` a deny-list
(both may be given: the allowed items minus the denied ones). Every query returns exactly k
results whenever at least k candidates pass the filters, falling back to wider or exact
search when an approximate index returns fewer (query.retrieval).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss import bundle
from svdfaiss.query import recommend as _recommend
from svdfaiss.query import similar as _similar
from svdfaiss.query import vectors as _vectors
from svdfaiss.query.catalog_search import CatalogSearch
from svdfaiss.query.filters import NO_FILTER, CatalogFilter
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.recommend import RECOMMEND_MODES
from svdfaiss.query.results import Results
from svdfaiss.query.similar import MODES

__all__ = ["MODES", "NO_FILTER", "RECOMMEND_MODES", "CatalogFilter", "Recommender", "Results"]


class Recommender(LoadedModel):
    """Similar items, recommendations, similar users, basket fold-in and scores for a bundle."""

    def __init__(self, version_dir: Path, manifest: dict[str, Any], mmap: bool = True) -> None:
        super().__init__(version_dir, manifest, mmap)
        self._catalog_search = CatalogSearch()

    @classmethod
    def load(cls, index_dir: Path, model: str, verify: bool = True, mmap: bool = True,
             trust_stamp: bool = False) -> Recommender:
        """Load the version CURRENT names; with verify, every checksum is checked first
        (with trust_stamp, not those of files unchanged since the build hashed them); with
        mmap, arrays and indexes are mapped from disk rather than read (query.model)."""
        version_dir, manifest = bundle.current_bundle(bundle.model_dir(Path(index_dir), model))
        return cls.open(version_dir, manifest, verify=verify, mmap=mmap,
                        trust_stamp=trust_stamp)

    @classmethod
    def open(
        cls, version_dir: Path, manifest: dict[str, Any] | None = None, verify: bool = True,
        mmap: bool = True, trust_stamp: bool = False,
    ) -> Recommender:
        """Load one version folder; checksums are verified before FAISS parses any file."""
        return cls.open_version(version_dir, manifest, verify, mmap, trust_stamp)

    # ------------------------------------------------------------------ vectors

    def seen_items(self, user: int) -> np.ndarray:
        """Internal indexes of the items a known user interacted with."""
        return _vectors.seen_items(self, user)

    def user_vector(self, user: int) -> np.ndarray:
        """q = x V F for a known user: that user's row of U S F (F = 1 without shrinkage);
        [p_u, 1] under a rating model."""
        return _vectors.user_vector(self, user)

    def basket_vector(self, items: np.ndarray) -> np.ndarray:
        """q = x V F for an anonymous basket; repeated items count like repeated events
        (rating model: a user who rated each item at the top of the scale)."""
        return _vectors.basket_vector(self, items)

    def _live_row(self, user: int, live: Mapping[str, float]) -> sp.csr_matrix:
        return _vectors.live_row(self, user, live)

    # ------------------------------------------------------------------ filters

    def filter_set(self, catalog_filter: CatalogFilter) -> np.ndarray | None:
        """Internal indexes of the items passing the business filters (None: no filter).

        The last FILTER_CACHE filters are kept: shop traffic repeats them (category pages).
        """
        return self.filters.filter_set(catalog_filter)

    def popular(self, k: int = 10, items: Iterable[str] | None = None,
                filter_items: Iterable[str] | None = None,
                catalog_filter: CatalogFilter = NO_FILTER,
                exclude: np.ndarray | None = None) -> Results:
        """The most popular items passing the filters: the fallback for a cold user."""
        return _recommend.popular(self, k, items, filter_items, catalog_filter, exclude)

    def search_catalog(self, query: str, limit: int = 10) -> Results:
        """Catalog items whose title contains `query` (case-insensitive), the most
        interacted with first; each score is the item's number of training interactions."""
        return self._catalog_search.search(self, query, limit)

    # ------------------------------------------------------------------ similar items

    def resolve_mode(self, mode: str) -> str:
        """The similar-items mode a request gets: hybrid is cf for a model without content."""
        return _similar.resolve_mode(self, mode)

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
        return _similar.similar_items(self, item_id, k, items, filter_items, use_cache,
                                      catalog_filter, mode)

    def similar_items_batch(self, item_ids: Sequence[str], ks: Sequence[int]) -> list[Results]:
        """Unfiltered similar items for many ids (with a k each) in one FAISS call.

        Equal to `similar_items(item_id, k, use_cache=False, mode="cf")` per id; a row the
        single search cannot fill (a near-empty IVF probe) falls back to that call. Raises
        UnknownItem for the first unknown id (NoEvidence, a kind of UnknownItem, for an item
        without evidence). `batchable` says which queries it answers like the default mode.
        """
        return _similar.similar_items_batch(self, item_ids, ks)

    def batchable(self, item_id: str, mode: str = "hybrid") -> bool:
        """Whether an unfiltered `similar_items(item_id, k, mode=mode)` equals the batch
        answer: a model item ranked by its factors, in a mode that resolves to cf."""
        return _similar.batchable(self, item_id, mode)

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
        return _similar.stored_neighbours(self, position, k, items,
                                          self._item_set(filter_items, mode != "cf"), mode)

    # ------------------------------------------------------------------ recommendations

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
        use_stored: bool = True,
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

        A plain request (seen items excluded, no filter, list or explanation, no live
        events) of a known user is answered from the rows the build stored, when the bundle
        has them and they hold the answer (`query.recommend.stored_recommendations`): the
        same query run at build time with k = the stored length, so an array slice instead
        of a search. `use_stored=False` always searches.
        """
        return _recommend.recommend(self, user_id, k, exclude_seen, items, filter_items,
                                    catalog_filter, fallback, explain, live, mode, use_stored)

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
        return _recommend.recommend_for_items(self, item_ids, k, exclude_given, items,
                                              filter_items, catalog_filter, explain, mode)

    def similar_users(
        self,
        user_id: str,
        k: int = 10,
        users: Iterable[str] | None = None,
        filter_users: Iterable[str] | None = None,
    ) -> Results:
        """Users closest by cosine of their embeddings (never the user itself)."""
        return _recommend.similar_users(self, user_id, k, users, filter_users)

    def score(self, user_id: str, item_id: str) -> float:
        """The model's score q . v of one item for one user (the ranking score); under a
        rating model, the predicted rating mu + b_u + q . v, clipped to the rating scale.
        A catalog-only item scores through its content-predicted vector when the model has
        one (see `recommend`)."""
        return _recommend.score(self, user_id, item_id)
