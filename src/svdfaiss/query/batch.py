"""Answers for many users or items at once (`svdfaiss export`): a few FAISS calls a chunk.

Every row equals what the single query gives for that id with the service's defaults
(query.recommend.recommend: exclude seen, hybrid mode; query.similar.similar_items: hybrid,
stored neighbours first). The batch asks FAISS the single path's own question (k plus the ids
to skip, the same index and search parameters) for many queries in one call; a row it cannot
answer that way (a filter the over-fetch does not cover, an approximate index that returned
too few, a strategy with no batched form) goes through the single query, and is counted.

- Flat and IVF searches are prefix-consistent: the best k + e of a larger fetch are the
  best k + e, so rows are grouped by fetch size rounded up.
- HNSW searches with efSearch = max(efSearch, fetch): rows are grouped by their exact fetch,
  and a row the single path would search with an IDSelector (more than OVERFETCH_MAX ids
  to skip) goes through the single query.
- The banded recommendation index scores its head exactly as one matrix product per chunk,
  and searches the IVF tail only for the rows whose head cannot prove the answer
  (query.banded).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from svdfaiss.errors import NoEvidence, NotInMode
from svdfaiss.index import faiss, search
from svdfaiss.query.banded import merge
from svdfaiss.query.filters import NO_FILTER
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.recommend import ranks_new_items
from svdfaiss.query.recommend import recommend as recommend_one
from svdfaiss.query.results import Results
from svdfaiss.query.retrieval import OVERFETCH_MAX, Space
from svdfaiss.query.similar import mode_for_item
from svdfaiss.query.similar import similar_items as similar_one
from svdfaiss.query.vectors import fold_rows

Hit = tuple[np.ndarray, np.ndarray] | None  # (scores, positions) of one row, or "ask alone"


@dataclass(frozen=True)
class Batch:
    """Top-k answers of many queries as arrays: row r is query r's answer, best first.

    Past the end of a shorter answer, positions are -1, scores NaN and reasons "". `status`
    is "ok", or why the query has no answer (the single query's error message); `singles`
    counts the rows answered by the single query.
    """

    positions: np.ndarray  # (n, k) int64 catalog positions
    scores: np.ndarray  # (n, k) float32
    reasons: np.ndarray  # (n, k) reason names
    status: list[str]
    singles: int


class _Rows:
    """Collects per-row answers into a Batch."""

    def __init__(self, n: int, k: int) -> None:
        self.positions = np.full((n, k), -1, dtype=np.int64)
        self.scores = np.full((n, k), np.nan, dtype=np.float32)
        self.reasons = np.full((n, k), "", dtype=object)
        self.status = ["ok"] * n
        self.singles = 0

    def put(self, row: int, scores: np.ndarray, positions: np.ndarray,
            reasons: str | list[str]) -> None:
        n = positions.size
        self.positions[row, :n] = positions
        self.scores[row, :n] = scores
        self.reasons[row, :n] = reasons

    def put_results(self, row: int, result: Results) -> None:
        self.put(row, np.asarray(result.scores, dtype=np.float32),
                 np.asarray(result.indexes, dtype=np.int64),
                 result.reasons if result.reasons is not None else (result.reason or ""))

    def done(self) -> Batch:
        return Batch(self.positions, self.scores, self.reasons.astype(str), self.status,
                     self.singles)


def _keep_first(scores: np.ndarray, ids: np.ndarray, excluded: list[np.ndarray],
                size: int, ks: np.ndarray, partial: bool = False) -> list[Hit]:
    """Per row, the first ks[j] returned ids that are real, below `size` and not in
    excluded[j]; for a row with fewer left, None (the single path would search again with
    a selector or more effort), or with `partial` those left. One membership test for the
    whole group."""
    keep = (ids >= 0) & (ids < size)
    lengths = np.array([e.size for e in excluded], dtype=np.int64)
    if lengths.sum():
        stride = np.int64(max(size, int(ids.max()) + 1, 1))
        rows = np.arange(ids.shape[0], dtype=np.int64)
        keys = rows[:, None] * stride + np.maximum(ids, 0)
        denied = np.repeat(rows, lengths) * stride + np.concatenate(excluded)
        keep &= ~np.isin(keys, denied)
    rank = np.cumsum(keep, axis=1)
    out: list[Hit] = []
    for j, k in enumerate(ks.tolist()):
        if rank[j, -1] < k and not partial:
            out.append(None)
            continue
        take = keep[j] & (rank[j] <= k)
        out.append((scores[j][take], ids[j][take].astype(np.int64)))
    return out


def approximate_many(space: Space, queries: np.ndarray, ks: np.ndarray,
                     excluded: list[np.ndarray], size: int) -> list[Hit]:
    """Per query the best ks[r] ids of `space.index` below `size` minus excluded[r], as
    retrieval._approximate finds them, from batched searches (None: ask alone)."""
    q = space.query_transform(queries)
    hits: list[Hit] = [None] * len(excluded)
    extra = np.array([e.size for e in excluded], dtype=np.int64)
    # The single path's own fetch: with another k, FAISS may order the items tied at the
    # cut differently (and HNSW's efSearch follows k). More ids to skip than the
    # over-fetch takes means an IDSelector search, which has no batched form.
    eligible = extra <= OVERFETCH_MAX
    group = ks + extra
    for size_fetch in np.unique(group[eligible]):
        rows = np.flatnonzero(eligible & (group == size_fetch))
        n_fetch = int(min(size_fetch, space.index.ntotal))
        scores, ids = search(space.index, q[rows], n_fetch, kind=space.kind)
        found = _keep_first(scores, ids, [excluded[r] for r in rows.tolist()], size, ks[rows])
        for r, hit in zip(rows.tolist(), found, strict=True):
            hits[r] = hit
    return hits


def top_k_many(space: Space, queries: np.ndarray, k: int, excluded: list[np.ndarray],
               limit: int | None = None) -> list[Hit]:
    """retrieval.top_k without an allow-list for many queries: per row (scores, positions)
    or None where the single call must answer. Each excluded[r] is sorted and unique (a
    CSR row's items, one item)."""
    size = space.size if limit is None else min(limit, space.size)
    n_candidates = np.array([size - int(np.count_nonzero(e < size)) for e in excluded])
    ks = np.minimum(k, n_candidates)
    hits: list[Hit] = [None] * len(excluded)
    empty = (np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64))
    live = np.flatnonzero(ks > 0)
    for r in np.flatnonzero(ks <= 0).tolist():
        hits[r] = empty
    if live.size == 0:
        return hits
    if space.head is None:
        found = approximate_many(space, queries[live], ks[live],
                                 [excluded[r] for r in live.tolist()], size)
        for r, hit in zip(live.tolist(), found, strict=True):
            hits[r] = hit
        return hits
    head = space.head
    q = np.ascontiguousarray(queries[live], dtype=np.float32)
    # Head.top_k for every row: the head rows in an exact FAISS index (BLAS and a heap,
    # far faster than numpy's argpartition over chunk x head scores), over-fetched by the
    # row's excluded head rows and the head rows at or above `size`.
    flat = faiss.IndexFlatIP(head.vectors.shape[1])
    flat.add(np.ascontiguousarray(head.vectors, dtype=np.float32))
    live_excluded = [excluded[r] for r in live.tolist()]
    is_head = np.zeros(max(space.size, int(head.ids.max(initial=0)) + 1), dtype=bool)
    is_head[head.ids] = True
    lengths = np.array([e.size for e in live_excluded], dtype=np.int64)
    in_head = np.zeros(live.size, dtype=np.int64)
    if lengths.sum():
        every = np.concatenate(live_excluded)
        in_head = np.bincount(np.repeat(np.arange(live.size), lengths),
                              weights=is_head[every], minlength=live.size).astype(np.int64)
    # One row more than k: Head.top_k breaks ties by the lower position over the whole
    # head, so a tie across the cut is left to the single query.
    fetch = np.minimum(ks[live] + in_head + int(np.count_nonzero(head.ids >= size)) + 1,
                       head.ids.size)
    group = 1 << np.ceil(np.log2(np.maximum(fetch, 1))).astype(np.int64)
    heads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    tied: set[int] = set()
    for size_fetch in np.unique(group):
        rows = np.flatnonzero(group == size_fetch)
        n_fetch = int(min(size_fetch, head.ids.size))
        scores, at = flat.search(q[rows], n_fetch)
        ids = np.where(at >= 0, head.ids[np.maximum(at, 0)], -1)
        found = _keep_first(scores, ids, [live_excluded[j] for j in rows.tolist()], size,
                            ks[live[rows]] + 1, partial=True)
        for r, hit in zip(live[rows].tolist(), found, strict=True):
            assert hit is not None
            got_scores, got = hit
            order = np.lexsort((got, -got_scores))
            got_scores, got = got_scores[order], got[order]
            kk = int(ks[r])
            if got.size > kk and got_scores[kk] == got_scores[kk - 1]:
                tied.add(r)
            elif got.size <= kk and n_fetch < head.ids.size:
                tied.add(r)  # fewer than the fetch promised: let the single query see
            heads[r] = (got_scores[:kk], got[:kk])
    bounds = np.linalg.norm(q, axis=1) * head.tail_max_norm
    need_tail: list[int] = []
    for j, r in enumerate(live.tolist()):
        chosen_scores, chosen = heads[r]
        if r in tied:
            continue
        if chosen.size < ks[r] or float(chosen_scores[-1]) < bounds[j]:
            need_tail.append(r)
        else:
            hits[r] = heads[r]
    if need_tail:
        tails = approximate_many(space, queries[need_tail], ks[need_tail],
                                 [excluded[r] for r in need_tail], size)
        for r, tail in zip(need_tail, tails, strict=True):
            if tail is None:
                continue
            merged = merge([heads[r], tail], int(ks[r]))
            hits[r] = merged if merged[0].size >= ks[r] else None
    return hits


def recommend_many(model: LoadedModel, users: np.ndarray, k: int,
                   mode: str = "hybrid") -> Batch:
    """Recommendations for many known users (positions), as `recommend(user_id, k)` gives
    each: seen items excluded, `mode` as there; a history without evidence gets the popular
    items (reason popular)."""
    with_new = ranks_new_items(model, mode)
    out = _Rows(users.size, k)
    indptr, indices = model.rows.indptr, model.rows.indices
    seen = [np.asarray(indices[indptr[u]:indptr[u + 1]], dtype=np.int64)
            for u in users.tolist()]
    if model.rating_model is None:
        evidence = model.evidence.rows_with_evidence(model.rows[users])
    else:
        evidence = np.ones(users.size, dtype=bool)
    _popular_rows(model, np.flatnonzero(~evidence), seen, k, out)
    cf = np.flatnonzero(evidence)
    if cf.size:
        if model.rating_users is not None:
            queries = np.asarray(model.rating_users[users[cf]], dtype=np.float32)
        else:
            queries = np.asarray(fold_rows(model, model.rows[users[cf]]), dtype=np.float32)
        hits = top_k_many(model._mips, np.ascontiguousarray(queries), k,
                          [seen[r] for r in cf.tolist()],
                          limit=None if with_new else model.n_items)
        reason = "cf" if model.rating_model is None else "rating"
        for r, hit in zip(cf.tolist(), hits, strict=True):
            if hit is None:
                out.singles += 1
                user_id = model.user_ids[users[r]].decode("utf-8")
                out.put_results(r, recommend_one(model, user_id, k, True, None, None,
                                                 NO_FILTER, "none", False, None, mode))
                continue
            scores, idx = hit
            new = idx >= model.n_items
            out.put(r, scores, idx,
                    ["content" if n else reason for n in new.tolist()] if new.any() else reason)
    return out.done()


def _popular_rows(model: LoadedModel, rows: np.ndarray, seen: list[np.ndarray], k: int,
                  out: _Rows) -> None:
    """query.recommend.popular with the user's seen items excluded, for many rows: the
    first k of the popularity order that the user has not seen."""
    if rows.size == 0:
        return
    counts, order = model.popularity.counts_and_order()
    users = np.float32(max(model.rows.shape[0], 1))
    for r in rows.tolist():
        first = order[: k + seen[r].size]
        idx = first[~np.isin(first, seen[r])][:k]
        out.put(r, (counts[idx] / users).astype(np.float32), idx, "popular")


def similar_many(model: LoadedModel, positions: np.ndarray, k: int,
                 mode: str = "hybrid") -> Batch:
    """Similar items for many catalog positions, as `similar_items(item_id, k, mode=mode)`
    gives each. An item the single query refuses (no collaborative evidence in mode cf, no
    content in mode content) gets no items and the refusal as its status."""
    out = _Rows(positions.size, k)
    ids = model.external_items(positions)
    modes: list[str | None] = []
    for r, (item_id, p) in enumerate(zip(ids, positions.tolist(), strict=True)):
        try:
            modes.append(mode_for_item(model, item_id, p, mode))
        except (NoEvidence, NotInMode) as exc:
            modes.append(None)
            out.status[r] = str(exc)
    stored = _stored_rows(model, positions, modes, k, out)
    space = model._content
    content = [r for r, m in enumerate(modes)
               if m == "content" and not stored[r] and model.has_content(int(positions[r]))]
    if content and space is not None and model.content_vectors is not None:
        vectors = np.asarray(model.content_vectors[positions[content]], dtype=np.float32)
        _batched(space, vectors, content, positions, k, out, "content")
    answered = set(content)
    for r, (item_id, m) in enumerate(zip(ids, modes, strict=True)):
        if m is None or stored[r] or r in answered:
            continue
        out.singles += 1
        try:
            out.put_results(r, similar_one(model, item_id, k, None, None, True, NO_FILTER,
                                           mode))
        except (NoEvidence, NotInMode) as exc:
            out.status[r] = str(exc)
    return out.done()


def _batched(space: Space, vectors: np.ndarray, rows: list[int], positions: np.ndarray,
             k: int, out: _Rows, reason: str) -> None:
    """top_k over `space` for the rows' vectors, the item itself excluded; a row the batch
    cannot answer stays for the single query (rows is trimmed in place)."""
    hits = top_k_many(space, np.ascontiguousarray(vectors), k,
                      [positions[r : r + 1].astype(np.int64) for r in rows])
    left = []
    for r, hit in zip(list(rows), hits, strict=True):
        if hit is None:
            left.append(r)
            continue
        out.put(r, hit[0], hit[1], reason)
    for r in left:
        rows.remove(r)


def _stored_rows(model: LoadedModel, positions: np.ndarray, modes: list[str | None], k: int,
                 out: _Rows) -> np.ndarray:
    """Rows answered from the neighbours stored at build time, as
    query.similar.stored_neighbours answers them; returns which rows were."""
    done = np.zeros(positions.size, dtype=bool)
    if model.similar_ids is None or model.similar_scores is None:
        return done
    rows = np.array([r for r, m in enumerate(modes)
                     if m == model.similar_mode and positions[r] < model.n_items],
                    dtype=np.int64)
    if rows.size == 0:
        return done
    stored = np.asarray(model.similar_ids[positions[rows]])
    stored_scores = np.asarray(model.similar_scores[positions[rows]])
    valid = stored >= 0
    rank = np.cumsum(valid, axis=1) - 1
    take = valid & (rank < k)
    enough = take.sum(axis=1) >= min(k, model.n_items - 1)
    for j in np.flatnonzero(enough).tolist():
        chosen = np.flatnonzero(take[j])
        out.put(int(rows[j]), stored_scores[j][chosen], stored[j][chosen].astype(np.int64),
                model.similar_mode)
        done[rows[j]] = True
    return done


def stored_rows(model: LoadedModel, k: int, users: np.ndarray | None = None,
                threads: int = 2, mode: str = "hybrid"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each known user's `recommend(user_id, k, fallback="popular")` (`users`: positions,
    None: all) as the arrays of query.model.StoredRecommendations: positions int32, -1 past
    a row's end; scores float32; a popular-fallback flag per row.

    Each row is the single query itself, not the batched search: a stored row must be
    what the service would have computed, and a one-query FAISS search does not round
    scores like a batched (BLAS) one. FAISS releases the GIL while it searches, so
    `threads` threads each answer a share of the users.
    """
    chosen = np.arange(model.n_users) if users is None else np.asarray(users, dtype=np.int64)
    ids = np.full((chosen.size, k), -1, dtype=np.int32)
    scores = np.zeros((chosen.size, k), dtype=np.float32)
    popular = np.zeros(chosen.size, dtype=np.uint8)

    def answer(rows: range) -> None:
        for row in rows:
            user_id = model.user_ids[chosen[row]].decode("utf-8")
            result = recommend_one(model, user_id, k, True, None, None, NO_FILTER, "popular",
                                   False, None, mode, use_stored=False)
            n = len(result.ids)
            ids[row, :n] = result.indexes
            scores[row, :n] = result.scores
            popular[row] = result.reason == "popular"

    step = 4096
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(answer, [range(b, min(b + step, chosen.size))
                               for b in range(0, chosen.size, step)]))
    return ids, scores, popular
