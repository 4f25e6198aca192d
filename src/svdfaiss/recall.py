"""Recall of the recommendation index, measured by the builder and kept in the manifest.

Recall@10 here is what a user sees: for a sample of training users, the ten items the
service's own search path (query.retrieval.top_k, seen items excluded) returns, against
exact inner-product scoring of the same vectors with the same items excluded. A returned
item scoring at least the exact tenth score counts as a hit (ties count, within 1e-4
relative: float32 sums in another order differ by about that). With an IVF the
builder raises nprobe, doubling, until the sample reaches RECALL_TARGET or every list is
probed; the manifest keeps the figure, the nprobe chosen and each step tried.

The similar-users index is measured the same way (`measure_users`): for a sample of users
with collaborative evidence, the ten users the service's top-k path returns for the user's
own stored vector (the user itself excluded), against exact cosine over every stored user
vector. The builder raises efSearch (HNSW) or nprobe (IVF), doubling, until the sample
reaches RECALL_TARGET or a cap; short of it, the cheapest value within PLATEAU_GAIN of the
best is kept. On the Amazon sample HNSW stays at 0.945 from efSearch 128 to 1024, its
misses clusters of users with identical histories the graph does not reach, so an `auto`
users index that stays below the target is rebuilt as an IVF (builder.py).
The index keeps the value chosen, which FAISS writes into users.faiss and `index.search`
starts from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from svdfaiss.index import BandedIndex, faiss, kind_of, mips_query
from svdfaiss.query.banded import Head
from svdfaiss.query.retrieval import Space, top_k

RECALL_K = 10
RECALL_TARGET = 0.98
RECALL_QUERIES = 500
TRUTH_BLOCK = 32  # queries scored exactly at a time (an items x 32 float32 block)
TRUTH_BLOCK_FLOATS = 1 << 25  # at most 128 MB a block when the rows are many (users)
HNSW_EF_MAX = 1024  # the users index: efSearch doubled up to here
PLATEAU_GAIN = 0.002  # short of the target: the cheapest setting this close to the best


def rec_space(index: Any, vectors: np.ndarray) -> Space:
    """The recommendation Space a loaded bundle would give this index over `vectors`."""
    def exact(candidates: np.ndarray | None) -> np.ndarray:
        return vectors if candidates is None else vectors[candidates]

    n = int(vectors.shape[0])
    if isinstance(index, BandedIndex):
        head = Head(index.head, np.ascontiguousarray(vectors[index.head]), index.tail_max_norm)
        return Space(index.tail, kind_of(index.tail), n, mips_query, exact, head)
    return Space(index, kind_of(index), n, mips_query, exact)


def exact_kth(vectors: np.ndarray, queries: np.ndarray, seen: list[np.ndarray],
              k: int = RECALL_K) -> np.ndarray:
    """The exact k-th best score of each query over `vectors`, its seen rows excluded."""
    out = np.empty(queries.shape[0], dtype=np.float32)
    step = max(1, min(TRUTH_BLOCK, TRUTH_BLOCK_FLOATS // max(1, int(vectors.shape[0]))))
    for start in range(0, queries.shape[0], step):
        block = np.asarray(vectors @ queries[start : start + step].T, np.float32)
        for j in range(block.shape[1]):
            column = block[:, j]
            column[seen[start + j]] = -np.inf
            kk = min(k, column.size) - 1
            out[start + j] = -np.partition(-column, kk)[kk]
    return out


def recall_at_k(space: Space, queries: np.ndarray, seen: list[np.ndarray],
                kth: np.ndarray, k: int = RECALL_K) -> tuple[float, float]:
    """(recall@k, median seconds a query) of the service's search path on `space`."""
    hits, seconds = 0, []
    for q, s, t in zip(queries, seen, kth, strict=True):
        start = time.perf_counter()
        scores, _ = top_k(space, q, k, None, s)
        seconds.append(time.perf_counter() - start)
        hits += int(np.count_nonzero(scores >= t - 1e-4 * abs(float(t))))
    return hits / (k * max(1, len(seen))), float(np.median(seconds)) if seconds else 0.0


def measure(index: Any, vectors: np.ndarray, queries: np.ndarray, seen: list[np.ndarray],
            target: float = RECALL_TARGET, tune: bool = True) -> dict[str, Any]:
    """Measure recall@10 of the recommendation index on the sampled queries and, for an IVF
    (banded or not) with `tune`, double nprobe until `target` is reached; the index keeps
    the nprobe chosen. Returns the manifest's `recall` record."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    space = rec_space(index, vectors)
    record: dict[str, Any] = {
        "k": RECALL_K, "target": target, "queries": int(queries.shape[0]),
        "against": "exact inner product over the same vectors, seen items excluded, "
                   "ties counted as hits",
        "sample": "random training users with collaborative evidence, searched one at a "
                  "time through the service's top-k path"}
    if queries.shape[0] == 0:
        return {**record, "recall_at_10": None, "meets_target": None}
    kth = exact_kth(vectors, queries, seen)
    ivf = space.index if space.kind == "ivf" else None
    steps: list[dict[str, Any]] = []
    while True:
        recall, p50 = recall_at_k(space, queries, seen, kth)
        step: dict[str, Any] = {"recall_at_10": round(recall, 4),
                                "p50_ms_build_machine": round(p50 * 1e3, 3)}
        if ivf is not None:
            step["nprobe"] = int(ivf.nprobe)
        steps.append(step)
        if not tune or ivf is None or recall >= target or ivf.nprobe >= ivf.nlist:
            break
        ivf.nprobe = min(int(ivf.nlist), 2 * int(ivf.nprobe))
    record.update(steps[-1])
    record["meets_target"] = bool(steps[-1]["recall_at_10"] >= target)
    if len(steps) > 1:
        record["steps"] = steps
    return record


def measure_users(index: Any, vectors: np.ndarray | None, sampled: np.ndarray,
                  target: float = RECALL_TARGET, tune: bool = True,
                  truth: tuple[np.ndarray, np.ndarray,
                               Callable[[np.ndarray | None], np.ndarray]] | None = None,
                  ) -> dict[str, Any]:
    """Measure recall@10 of the similar-users index (cosine over the normalised `vectors`
    it holds) for the `sampled` users, each the query of its own stored vector with itself
    excluded, and with `tune` double efSearch (HNSW, up to HNSW_EF_MAX) or nprobe (IVF, up
    to nlist) until `target`; the index keeps the value chosen. The manifest's record.

    `truth` replaces `vectors` where the vectors never sit in one array (the Spark
    builder): the sampled users' vectors, their exact k-th scores and exact scoring of
    candidate rows."""
    kind = kind_of(index)
    record: dict[str, Any] = {
        "k": RECALL_K, "target": target, "queries": int(sampled.size),
        "against": "exact cosine over every stored user vector, the user itself excluded, "
                   "ties counted as hits",
        "sample": "random training users with collaborative evidence, each searched with "
                  "its own stored vector through the service's top-k path"}
    if kind == "flat":
        return {**record, "recall_at_10": 1.0, "meets_target": True,
                "against": "the index is exact (flat)"}
    if sampled.size == 0:
        return {**record, "recall_at_10": None, "meets_target": None}
    n = int(index.ntotal)
    seen = [np.array([u], dtype=np.int64) for u in sampled.tolist()]
    if truth is not None:
        queries, kth, exact = truth
    else:
        if vectors is None:
            raise ValueError("measure_users needs the vectors or their truth")
        stored = np.ascontiguousarray(vectors, dtype=np.float32)

        def exact(candidates: np.ndarray | None) -> np.ndarray:
            return stored if candidates is None else stored[candidates]

        queries = np.ascontiguousarray(stored[sampled])
        kth = exact_kth(stored, queries, seen)
    space = Space(index, kind, n, lambda q: q, exact)
    inner = faiss.downcast_index(index)
    steps: list[dict[str, Any]] = []
    while True:
        recall, p50 = recall_at_k(space, queries, seen, kth)
        step: dict[str, Any] = {"recall_at_10": round(recall, 4),
                                "p50_ms_build_machine": round(p50 * 1e3, 3)}
        if kind == "hnsw":
            step["ef_search"] = int(inner.hnsw.efSearch)
        else:
            step["nprobe"] = int(inner.nprobe)
        steps.append(step)
        if not tune or recall >= target:
            break
        if kind == "hnsw":
            if inner.hnsw.efSearch >= HNSW_EF_MAX:
                break
            inner.hnsw.efSearch = min(HNSW_EF_MAX, 2 * int(inner.hnsw.efSearch))
        else:
            if inner.nprobe >= inner.nlist:
                break
            inner.nprobe = min(int(inner.nlist), 2 * int(inner.nprobe))
    chosen = steps[-1]
    if chosen["recall_at_10"] < target:
        # Short of the target at the cap: the cheapest setting within PLATEAU_GAIN of the
        # best (HNSW over duplicate vectors gains little from more efSearch; recall is not
        # concave in it, so every doubling up to the cap is tried first).
        best = max(step["recall_at_10"] for step in steps)
        chosen = next(step for step in steps if step["recall_at_10"] >= best - PLATEAU_GAIN)
        if kind == "hnsw":
            inner.hnsw.efSearch = chosen["ef_search"]
        else:
            inner.nprobe = chosen["nprobe"]
    record.update(chosen)
    record["meets_target"] = bool(chosen["recall_at_10"] >= target)
    if len(steps) > 1:
        record["steps"] = steps
    return record


def sample_users(eligible: np.ndarray, n: int = RECALL_QUERIES, seed: int = 0) -> np.ndarray:
    """Up to n positions among the True entries of `eligible`, sorted, reproducibly."""
    pool = np.flatnonzero(eligible)
    if pool.size <= n:
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))
