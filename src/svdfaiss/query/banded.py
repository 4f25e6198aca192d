"""The exact band of a banded recommendation index (index.BandedIndex).

Item norms of the recommendation vectors are very uneven (with the shrinkage embedding the
largest is thousands of times the median), and most top-k answers come from the few items of
the largest norms. Those rows are scored exactly with numpy; the IVF over the rest is
searched only when it could hold a better row: every tail row scores at most
|q| * tail_max_norm (Cauchy-Schwarz), so once k head rows score at least that, the head's
top k is the exact answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_IDS = np.empty(0, dtype=np.int64)
NO_SCORES = np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class Head:
    """The exactly scored rows: positions (ascending), their vectors, the tail's bound."""

    ids: np.ndarray
    vectors: np.ndarray
    tail_max_norm: float

    def top_k(self, query: np.ndarray, k: int, allowed: np.ndarray | None,
              excluded: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k of the head rows below `size`, in `allowed` (None: all) and not
        `excluded`, best first, ties by the lower position."""
        scores = np.asarray(self.vectors @ np.asarray(query, dtype=np.float32), np.float32)
        keep = self.ids < size
        if allowed is not None:
            keep &= np.isin(self.ids, allowed)
        if excluded.size:
            keep &= ~np.isin(self.ids, excluded)
        rows = np.flatnonzero(keep)
        if rows.size > k:
            rows = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        if rows.size == 0:
            return NO_SCORES, NO_IDS
        chosen = rows[np.lexsort((self.ids[rows], -scores[rows]))]
        return scores[chosen], self.ids[chosen]

    def tail_bound(self, query: np.ndarray) -> float:
        """The largest score any tail row can reach for this query."""
        return float(np.linalg.norm(query)) * self.tail_max_norm


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several (scores, ids) lists with distinct ids, ties by the lower id."""
    scores = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
    ids = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]
