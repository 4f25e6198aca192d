"""Top-k over one searchable set of vectors: allow/deny lists, retries, exact fallback.

Every search returns exactly k results whenever at least k candidates pass the lists: a
small allow-list is scored exactly with numpy, a short deny-list is over-fetched, and an
approximate index that returns fewer is asked again with more effort, then replaced by
exact scoring of every candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from svdfaiss.errors import InvalidInput
from svdfaiss.index import exact_top_k, search, selector_for
from svdfaiss.query.banded import Head, merge

# Allow-lists up to this many candidates are scored exactly with numpy: faster than a
# filtered ANN walk and exact by construction.
EXACT_CANDIDATES = 8192
RETRY_EFFORTS = (4, 16)
OVERFETCH_MAX = 32
NONE = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class LiveRows:
    """Rows the live catalog added after the build (query.live): positions from `offset`
    on, scored exactly beside the index and merged with its answer. The index itself is
    never changed, so searches running on it concurrently are safe (FAISS does not allow
    an add during a search); a change makes a new LiveRows (copy-on-write)."""

    offset: int
    vectors: np.ndarray


@dataclass(frozen=True)
class Space:
    """One searchable set of vectors: its index, and exact scoring over candidate rows."""

    index: Any  # faiss.Index (SWIG, untyped)
    kind: str
    size: int
    query_transform: Callable[[np.ndarray], np.ndarray]
    exact_vectors: Callable[[np.ndarray | None], np.ndarray]
    # A banded index (index.BandedIndex): `index` is the IVF over the rows outside the head.
    head: Head | None = None
    live: LiveRows | None = None


def top_k(
    space: Space,
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
    if space.live is not None:
        return _with_live(space, space.live, query, k, allowed, excluded, limit)
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
    if space.head is None:
        scores, ids = _approximate(space, query, k, allowed, excluded, size)
    else:
        scores, ids = space.head.top_k(query, k, allowed, excluded, size)
        if scores.size < k or scores[-1] < space.head.tail_bound(query):
            tail = _approximate(space, query, k, allowed, excluded, size)
            scores, ids = merge([(scores, ids), tail], k)
    if scores.size >= k:
        return scores, ids
    # The approximate index could not reach k candidates: score every candidate exactly.
    if candidates is None:
        candidates = np.setdiff1d(np.arange(size), excluded, assume_unique=True)
    return exact_top_k(space.exact_vectors(candidates), query, k, candidates)


def _with_live(
    space: Space, live: LiveRows, query: np.ndarray, k: int, allowed: np.ndarray | None,
    excluded: np.ndarray, limit: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """top_k over the index and the live rows: each part's best, merged by score."""
    base = replace(space, live=None)
    cut = live.offset
    if limit is not None and limit <= cut:
        return top_k(base, query, k, allowed, excluded, limit)
    parts = [top_k(base, query, k, None if allowed is None else allowed[allowed < cut],
                   excluded[excluded < cut], limit)]
    parts.append(live_top_k(live, query, k, None if allowed is None
                            else allowed[allowed >= cut], excluded[excluded >= cut]))
    return merge(parts, k)


def live_top_k(live: LiveRows, query: np.ndarray, k: int, rows: np.ndarray | None,
               excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k best live rows (positions `rows`, None: all) minus `excluded`, scored exactly.
    Scoring every row in place costs one matrix-vector product; no copy of the rows."""
    excluded = np.unique(excluded)
    if rows is None:
        scores = np.asarray(live.vectors @ np.asarray(query, dtype=np.float32).ravel(),
                            dtype=np.float32)
        scores[excluded - live.offset] = -np.inf
        k = min(k, int(scores.size - excluded.size))
        if k <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        top = top[np.lexsort((top, -scores[top]))]
        return scores[top], top.astype(np.int64) + live.offset
    rows = rows[~np.isin(rows, excluded)] if excluded.size else rows
    if not rows.size:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    return exact_top_k(live.vectors[rows - live.offset], query, k, rows)


def _approximate(
    space: Space, query: np.ndarray, k: int, allowed: np.ndarray | None,
    excluded: np.ndarray, size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to k rows from the approximate index, retried with more effort while a filter
    leaves fewer than k (fewer only when even the last effort found fewer)."""
    q = space.query_transform(query[None, :])
    if allowed is None and excluded.size <= OVERFETCH_MAX:
        # A few ids to skip (the query item, a short deny-list): fetch that many more and
        # drop them, cheaper than building an IDSelector per request.
        scores, ids = search(space.index, q, k + int(excluded.size), kind=space.kind)
        keep = (ids[0] >= 0) & (ids[0] < size)
        if excluded.size:  # at most OVERFETCH_MAX ids: one comparison table beats np.isin
            keep &= ~(ids[0][:, None] == excluded[None, :]).any(axis=1)
        if int(keep.sum()) >= k:
            return scores[0][keep][:k], ids[0][keep][:k].astype(np.int64)
    selector = selector_for(allowed, excluded, space.size,
                            None if allowed is not None or size == space.size else size)
    for effort in (1, *RETRY_EFFORTS):
        scores, ids = search(space.index, q, k, selector, effort, space.kind)
        keep = ids[0] >= 0
        if int(keep.sum()) >= k:
            return scores[0][keep], ids[0][keep].astype(np.int64)
    return scores[0][keep], ids[0][keep].astype(np.int64)
