"""FAISS indexes over embedding rows: build, persist, and filtered k-NN search.

Every index uses inner product. Similarity indexes hold L2-normalised rows (so inner
product is cosine). The recommendation index solves maximum inner product search (MIPS)
with the standard reduction: each item vector v gets an extra coordinate
sqrt(M^2 - |v|^2), M the largest norm, and queries get 0, so all stored vectors have norm
M and graph or cluster indexes see a cosine problem, where their recall is high, while the
scores stay exactly q . v.

A row's position in an index is its internal id (the rank of its external id), so no
IndexIDMap is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss
import numpy as np

from svdfaiss.errors import InvalidBundle, InvalidInput

# SWIG bindings whose partial stubs lack most classes: treat them as untyped.
faiss: Any = _faiss

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexParams:
    """How to index one set of vectors; `auto` picks by size (thresholds from benchmarks)."""

    kind: IndexKind = "auto"
    flat_max: int = 10_000  # auto: exact search up to this many rows (~0.2 ms, 1 thread)
    hnsw_max: int = 150_000  # auto: HNSW up to here (build 12 s on 2 cores), IVF above
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: sqrt(n), at most 1024 (build time grows with n * nlist)
    ivf_nprobe: int = 32
    ivf_train_per_list: int = 50  # k-means sample: this many points per list (FAISS wants 39)
    ivf_train_iterations: int = 10
    # Recommendations (build_rec_index): with IVF, the rows of the largest norms searched
    # exactly, the IVF over the rest only when the norm bound says it could beat them.
    mips_head: int = 0

    def resolved(self, n: int) -> IndexParams:
        """These parameters with `auto` (and nlist 0) replaced by concrete choices for n rows."""
        if self.kind not in INDEX_KINDS:
            raise InvalidInput(
                f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}"
            )
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n <= self.flat_max else "hnsw" if n <= self.hnsw_max else "ivf"
        nlist = self.ivf_nlist or max(1, min(1024, int(math.sqrt(n))))
        nlist = min(nlist, max(1, n // 39))  # FAISS wants about 39 training points per list
        return replace(self, kind=kind, ivf_nlist=nlist)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_rows(vectors: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 and contiguous.

    in_place reuses a float32 contiguous input instead of copying it.
    """
    if in_place and vectors.dtype == np.float32 and vectors.flags.c_contiguous:
        out = vectors
    else:
        out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def mips_augment(item_vectors: np.ndarray) -> np.ndarray:
    """Items with the extra coordinate sqrt(M^2 - |v|^2) that turns MIPS into cosine search."""
    v = np.ascontiguousarray(item_vectors, dtype=np.float32)
    sq = np.einsum("ij,ij->i", v, v, dtype=np.float64)
    extra = np.sqrt(np.maximum(sq.max() - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([v, extra[:, None]]))


def mips_query(queries: np.ndarray) -> np.ndarray:
    """Queries with the zero coordinate that matches `mips_augment`."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    out = np.zeros((q.shape[0], q.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = q
    return out


def build_index(vectors: np.ndarray, params: IndexParams, seed: int = 0) -> faiss.Index:
    """An inner-product index over vectors with the (resolved) parameters."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    p = params.resolved(n)
    index: faiss.Index
    if p.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif p.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.hnsw_ef_construction
        index.hnsw.efSearch = p.hnsw_ef_search
    else:
        index = _build_ivf(x, p, seed)
        index.nprobe = p.ivf_nprobe
        return index
    index.add(x)
    return index


# Recommendations' exact head: on three large generated shapes (docs/benchmarks.md) 4,096
# rows gave recall@10 0.994-0.996 with the tail at nprobe 16, p50 0.12-0.18 ms; 16,384 rows
# 0.996-0.997 at 0.36-0.55 ms.
MIPS_HEAD = 4096


@dataclass
class BandedIndex:
    """Two norm bands for maximum inner product (query/banded.py searches them).

    `head` holds the positions of the rows of the largest norms, ascending; `tail` is an
    IVF over every other row (its stored ids are the rows' positions) under a MIPS
    reduction of its own, whose largest norm is `tail_max_norm`: no tail row can score more
    than |q| * tail_max_norm, so a query whose k-th head score reaches that bound needs no
    tail search at all.
    """

    head: np.ndarray
    tail: Any
    tail_max_norm: float


def build_rec_index(item_vectors: np.ndarray, params: IndexParams, seed: int = 0
                    ) -> faiss.Index | BandedIndex:
    """The recommendation index over raw item vectors: with kind IVF (auto above flat_max)
    and `mips_head`, a BandedIndex; otherwise `build_index` over the MIPS reduction."""
    v = np.ascontiguousarray(item_vectors, dtype=np.float32)
    n = v.shape[0]
    p = params.resolved(n)
    head_rows = min(p.mips_head, n // 2)
    if p.kind != "ivf" or head_rows < 1:
        return build_index(mips_augment(v), params, seed)
    sq = np.einsum("ij,ij->i", v, v, dtype=np.float64)
    order = np.argsort(-sq, kind="stable")
    head = np.sort(order[:head_rows]).astype(np.int64)
    tail_ids = np.sort(order[head_rows:]).astype(np.int64)
    tail_vectors = mips_augment(v[tail_ids])
    tail_p = replace(params, mips_head=0).resolved(tail_ids.size)
    tail = _build_ivf(tail_vectors, tail_p, seed, ids=tail_ids)
    tail.nprobe = tail_p.ivf_nprobe
    return BandedIndex(head, tail, float(np.sqrt(sq[tail_ids].max())))


def _build_ivf(x: np.ndarray, p: IndexParams, seed: int,
               ids: np.ndarray | None = None) -> faiss.IndexIVFFlat:
    """IVF-Flat trained on a sample; rows assigned to lists by blocked BLAS, then added
    (with `ids` as their stored ids, else their positions).

    Measured at 4.2M x 64 with 1024 lists on 2 cores: FAISS's own assignment inside `add`
    took 38 s, numpy matrix products over 64k-row blocks 10 s; `add_core` with the
    precomputed lists then stores the vectors in 3 s.
    """
    n = x.shape[0]
    index = _trained_ivf(x[ivf_training_rows(n, p, seed)], p, seed)
    _add_to_ivf(index, x, ids)
    return index


def ivf_training_rows(n: int, p: IndexParams, seed: int) -> np.ndarray:
    """Positions of the rows an IVF over n rows trains on (sorted, reproducible)."""
    sample_size = min(n, p.ivf_train_per_list * p.ivf_nlist)
    return np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))


def _trained_ivf(sample: np.ndarray, p: IndexParams, seed: int) -> faiss.IndexIVFFlat:
    d = sample.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, p.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = p.ivf_train_iterations
    # Unit-norm centroids: with plain means, centroids of crowded low-norm items (the MIPS
    # reduction's extra axis) are long and capture, under inner product, the high-norm items
    # that queries need (recall@10 0.93 with 32 of 44 lists probed on the sample).
    index.cp.spherical = True
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def _add_to_ivf(index: faiss.IndexIVFFlat, x: np.ndarray, ids: np.ndarray | None) -> None:
    n = x.shape[0]
    centroids = index.quantizer.reconstruct_n(0, index.nlist).T.copy()
    lists = np.empty(n, dtype=np.int64)
    block = 65_536
    for start in range(0, n, block):
        lists[start : start + block] = np.argmax(x[start : start + block] @ centroids, axis=1)
    stored = None if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    index.add_core(n, faiss.swig_ptr(x), None if stored is None else faiss.swig_ptr(stored),
                   faiss.swig_ptr(lists))


def build_index_streamed(n: int, d: int, params: IndexParams,
                         chunks: Iterable[tuple[int, np.ndarray]],
                         training: np.ndarray | None = None, seed: int = 0) -> faiss.Index:
    """`build_index` over n rows that arrive as (first row position, rows) chunks in order,
    so the rows never sit in one array; an IVF is first trained on `training`, the rows at
    `ivf_training_rows(n, resolved params, seed)` (the sample build_index trains on)."""
    p = params.resolved(n)
    index: faiss.Index
    if p.kind == "ivf":
        if training is None:
            raise ValueError("an IVF needs its training rows (ivf_training_rows)")
        index = _trained_ivf(training, p, seed)
    elif p.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.hnsw_ef_construction
        index.hnsw.efSearch = p.hnsw_ef_search
    else:
        index = faiss.IndexFlatIP(d)
    added = 0
    for start, rows in chunks:
        if start != added:
            raise ValueError(f"chunk at row {start} arrived after {added} rows")
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if p.kind == "ivf":
            _add_to_ivf(index, x, np.arange(start, start + x.shape[0], dtype=np.int64))
        else:
            index.add(x)
        added += x.shape[0]
    if added != n:
        raise ValueError(f"expected {n} rows, got {added}")
    if p.kind == "ivf":
        index.nprobe = p.ivf_nprobe
    return index


def kind_of(index: faiss.Index) -> str:
    """The index family of a loaded FAISS index."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def write_index(index: faiss.Index, path: Path) -> None:
    """Write an index; a failed write (full disk, file size limit) is an OSError naming it."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "write failed"
        raise OSError(f"{path}: could not write the FAISS index (disk full?): {first}") from None


def read_index(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index; FAISS errors become InvalidBundle naming the file.

    With `mmap` the rows stay in the file, mapped read-only (FAISS IO_FLAG_MMAP_IFC: the
    codes of flat indexes and of HNSW's storage, and IVF's inverted lists): loading reads
    only the headers, IVF centroids and the HNSW graph, pages come in as searches touch
    them, and every process mapping the file shares them through the page cache. Such an
    index is read-only (the bundle's always are). IO_FLAG_MMAP proper maps IVF lists only.
    """
    try:
        # already the concrete class
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise InvalidBundle(f"{path}: not a readable FAISS index ({first})") from None


BITMAP_MIN_ALLOWED = 1024  # above this many allowed ids, one bitmap beats a hash set


def selector_for(
    allowed: np.ndarray | None, excluded: np.ndarray | None, n_total: int | None = None,
    below: int | None = None,
) -> faiss.IDSelector | None:
    """An IDSelector keeping `allowed` (all when None) minus `excluded`, and only ids under
    `below` when given; None when no filter.

    A large allow-list over an index of `n_total` rows becomes one bitmap with the excluded
    ids cleared (n/8 bytes, built in well under a millisecond), where a hash set of 80k ids
    took about 5 ms a query. Python objects FAISS only references are attached to the
    returned selector (`referenced_objects`) so they live as long as it does.
    """
    if allowed is not None and n_total is not None and allowed.size >= BITMAP_MIN_ALLOWED:
        mask = np.zeros(n_total, dtype=bool)
        mask[allowed] = True
        if excluded is not None and excluded.size:
            mask[excluded] = False
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(n_total, faiss.swig_ptr(bits))
        selector.referenced_objects = [bits]
        return selector
    parts: list[faiss.IDSelector] = []
    keep: list[object] = []
    if allowed is not None:
        ids = np.ascontiguousarray(allowed, dtype=np.int64)
        parts.append(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids)))
        keep.append(ids)
    if excluded is not None and excluded.size:
        ids = np.ascontiguousarray(excluded, dtype=np.int64)
        inner = faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))
        parts.append(faiss.IDSelectorNot(inner))
        keep += [ids, inner]
    if below is not None:
        parts.append(faiss.IDSelectorRange(0, below))
    if not parts:
        return None
    selector = parts[0]
    for part in parts[1:]:
        keep.append(selector)  # an inner And must outlive the outer one that points to it
        selector = faiss.IDSelectorAnd(selector, part)
    selector.referenced_objects = keep + parts
    return selector


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    selector: faiss.IDSelector | None = None,
    effort: int = 1,
    kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k best rows per query; ids -1 where fewer were found.

    Parameters travel per call in SearchParameters and never mutate the shared index, so
    concurrent searches with different settings are safe (faiss #2204). `effort` multiplies
    efSearch or nprobe for retries when a filter leaves too few results. `kind` (from
    `kind_of`, cached by callers) saves a type probe per call.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    kind = kind or kind_of(index)
    params: Any
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(index.hnsw.efSearch, k) * effort
    elif kind == "ivf":
        params = faiss.SearchParametersIVF()
        params.nprobe = min(index.nlist, index.nprobe * effort)
    elif selector is not None:
        params = faiss.SearchParameters()
    else:
        params = None  # a flat index without a filter has nothing to set
    if selector is not None:
        params.sel = selector
    scores, ids = index.search(q, k, params=params)
    return scores, ids


def check_index(index: faiss.Index, path: Path, rows: int, dim: int) -> None:
    """Raise InvalidBundle when an index does not have the shape the manifest promises."""
    if index.ntotal != rows or index.d != dim:
        raise InvalidBundle(
            f"{path}: index has {index.ntotal} rows of dimension {index.d}, manifest says "
            f"{rows} x {dim}"
        )


def exact_top_k(
    rows: np.ndarray, query: np.ndarray, k: int, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of one query over rows whose internal ids are `ids`.

    Ties are broken by the lower id, so results are deterministic.
    """
    scores = np.asarray(rows @ np.asarray(query, dtype=np.float32).ravel(), dtype=np.float32)
    ids = np.arange(scores.size) if ids is None else np.asarray(ids)
    k = min(k, scores.size)
    if k == 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    chosen = top[np.lexsort((ids[top], -scores[top]))]
    return scores[chosen], ids[chosen].astype(np.int64)
