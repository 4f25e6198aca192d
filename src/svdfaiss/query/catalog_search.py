"""Title search over the catalog, most interacted-with items first."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from svdfaiss.errors import InvalidInput, UnsupportedFilter
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.results import Results


class CatalogSearch:
    """Case-insensitive literal title matches; the titles column is built on first use."""

    def __init__(self) -> None:
        self._titles: pa.Array | None = None
        self._lock = threading.Lock()

    def _title_array(self, model: LoadedModel) -> pa.Array:
        if self._titles is None:
            column = model.catalog.get("title")
            if column is None:
                raise UnsupportedFilter(f"model {model.model!r} has no catalog titles to "
                                        "search; build it with --items CATALOG holding a title")
            # Arrow strings, not a fixed-width numpy array: one long title would make every
            # row that wide.
            with self._lock:
                self._titles = pa.array([None if t is None else str(t) for t in column.tolist()],
                                        type=pa.string())
        return self._titles

    def search(self, model: LoadedModel, query: str, limit: int = 10) -> Results:
        """Catalog items whose title contains `query` (case-insensitive), the most
        interacted with first; each score is the item's number of training interactions."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        matches = pc.match_substring(self._title_array(model), query,
                                     ignore_case=True).fill_null(False)
        hits = np.flatnonzero(matches.to_numpy(zero_copy_only=False))
        in_model = hits < model.n_items  # catalog-only items have no interactions
        counts = np.where(in_model, model.popularity.counts[np.where(in_model, hits, 0)], 0.0)
        order = np.argsort(-counts, kind="stable")[:limit]
        return model.items_result(counts[order], hits[order])
