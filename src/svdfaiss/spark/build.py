"""`svdfaiss build --engine spark`: the native pipeline with Spark doing the passes over
the log, publishing the same bundle (manifest, checksums, atomic publish, CURRENT).

Driver memory: the item side (k x items factors, per-item counts, the item indexes),
per-user flags (one byte a user) and one block of rows at a time; the rows files and
user ids stream into the bundle, and the user vectors into the users index, a block at a
time. With --objective rating the rating model is fitted by svdfaiss.spark.rating: its
user side stays on the executors and streams into rating_users.npy, rating_user_bias.npy
and the users index the same way. A catalog (--items) is item-sized: the native code reads
it, encodes its content and maps the catalog-only items on the driver (builder.catalog_side).
Not supported here (refused with a clear error): --catalog-updates, events logs, --evaluate
and tuning (the engine uses the fixed defaults, as --no-tune).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdfaiss import bundle, evidence, recall
from svdfaiss.autotune import untuned_record
from svdfaiss.builder import (
    BuildConfig,
    BuildReport,
    CatalogSide,
    StageHook,
    _index_meta,
    _manifest,
    _rec_index_meta,
    _Timer,
    _users_index_meta,
    catalog_side,
    precompute_similar,
    similar_cache_section,
    store_recommendations,
)
from svdfaiss.errors import InvalidInput
from svdfaiss.factorize import Embedding, check_rank, shrinkage_embedding
from svdfaiss.index import (
    BandedIndex,
    build_index,
    build_index_streamed,
    build_rec_index,
    faiss,
    ivf_training_rows,
    kind_of,
    normalize_rows,
    write_index,
)
from svdfaiss.rating import query_vectors
from svdfaiss.spark import spark_session
from svdfaiss.spark.linalg import randomized_svd
from svdfaiss.spark.rating import SparkRatingModel, UserState, fit_rating_spark
from svdfaiss.spark.read import Block, SparkLog, read_blocks
from svdfaiss.weighting import WeightingParams, column_scale, weight_rows

USERS_RECALL_SLICE = 16_384  # users scored at once against the sampled queries


def refuse_unsupported(config: BuildConfig) -> None:
    """What the Spark engine does not build yet is an error, never a silent difference."""
    unsupported = {"--catalog-updates": bool(config.catalog_updates),
                   "--events": bool(config.events), "--evaluate": config.evaluate}
    named = [flag for flag, used in unsupported.items() if used]
    if named:
        raise InvalidInput(f"--engine spark does not support {', '.join(named)} yet; use "
                           "--engine native for them")


def _add_stats(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sum two blocks' (users per item, co-users per item, row total), widest id."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], max(a[3], b[3])


def _block_stats(n_items: int) -> Any:
    """Per block: users per item, co-users per item, row-total sum, and the block's
    co-interaction links reduced to (item, first item of its local component)."""

    def run(block: Block) -> tuple[int, np.ndarray, np.ndarray, float, np.ndarray, int]:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        x = block.matrix(n_items)
        item_users = np.bincount(x.indices, minlength=n_items)
        nonzero = x.copy()
        nonzero.eliminate_zeros()
        lengths = np.diff(nonzero.indptr)
        multi = np.repeat(lengths >= 2, lengths)
        co_users = np.bincount(nonzero.indices[multi], minlength=n_items)
        # Links of each row: its first item to every other (a star joins the row).
        rows_len = np.diff(x.indptr)
        first = np.repeat(x.indices[x.indptr[:-1][rows_len > 0]], rows_len[rows_len > 0])
        keep = first != x.indices
        edges = np.stack([first[keep], x.indices[keep]], axis=1).astype(np.int64)
        if edges.size:
            graph = sp.csr_matrix((np.ones(len(edges), dtype=np.int8),
                                   (edges[:, 0], edges[:, 1])), shape=(n_items, n_items))
            _, labels = connected_components(graph, directed=False)
            touched = np.unique(edges)
            _, first_of = np.unique(labels[touched], return_index=True)
            root_of_label = np.full(labels.max() + 1, -1, dtype=np.int64)
            root_of_label[labels[touched][first_of]] = touched[first_of]
            roots = root_of_label[labels[touched]]
            edges = np.stack([touched, roots], axis=1)[touched != roots]
        return (block.index, item_users, co_users, float(x.data.sum(dtype=np.float64)),
                edges, int(block.user_ids.dtype.itemsize))

    return run


def build_spark(config: BuildConfig, stage_hook: StageHook | None = None,
                master: str | None = None, spark: Any = None) -> BuildReport:
    """Run the pipeline on Spark and publish a new version; nothing is published on error."""
    config.check()
    refuse_unsupported(config)
    timer = _Timer(stage_hook)
    spark = spark or spark_session(master)
    sc = spark.sparkContext
    source = str(config.input)
    with timer.stage("read"):
        log = read_blocks(spark, source, config.read, config.min_user_interactions,
                          config.min_item_interactions)
    n_users, n_items = log.n_users, int(log.item_ids.size)
    k = config.resolved_k(n_users, n_items)
    check_rank(k, (n_users, n_items))
    if config.objective == "rating" and log.feedback != "explicit":
        log.blocks.unpersist()
        raise InvalidInput(f"{source}: --objective rating needs explicit ratings; this log "
                           "holds implicit counts (see --feedback)")
    beta, shrinkage = config.resolved_beta(), config.resolved_shrinkage()
    with timer.stage("weight"):
        # Per-item sums reduce on the executors; the links stream to the driver, whose
        # labels merge them a block at a time.
        stats = log.blocks.map(_block_stats(n_items)).persist()
        item_users, co_users, row_total, id_width = stats.map(lambda t: (*t[1:4], t[5])
                                                              ).treeReduce(_add_stats, depth=2)
        labels = np.arange(n_items, dtype=np.int64)
        for edges in stats.map(lambda t: t[4]).toLocalIterator(prefetchPartitions=True):
            if edges.size:
                labels = evidence.merge_components(labels, edges)
        stats.unpersist()
        scheme = config.resolved_weighting(log.feedback)
        scale = column_scale(item_users, n_users, scheme, beta)
        weighting = WeightingParams(scheme=scheme, beta=beta,  # type: ignore[arg-type]
                                    mean_row_length=row_total / max(n_users, 1))
        scale_b = sc.broadcast(scale)

        def weighted(block: Block, n: int = n_items, w: WeightingParams = weighting) -> Any:
            return weight_rows(block.matrix(n), w, scale_b.value)

    with timer.stage("factorize"):
        factors = randomized_svd(log.blocks, n_users, n_items, k, weighted,
                                 seed=config.seed, spark_context=sc)
    with timer.stage("evidence"):
        components = evidence.relabel_by_first_item(labels)
        co_users32 = co_users.astype(np.int32)
        has_b = sc.broadcast(~evidence.isolated(components))
        flags = np.zeros(n_users, dtype=bool)
        for start, f in log.blocks.map(lambda b: (b.start, np.asarray(
                np.bincount(np.repeat(np.arange(b.n_users), np.diff(b.indptr)),
                            weights=has_b.value[b.indices], minlength=b.n_users) > 0))
                ).toLocalIterator(prefetchPartitions=True):
            flags[start : start + f.size] = f
        users_with = int(flags.sum())
    rating = None
    if config.objective == "rating":
        with timer.stage("rating model"):
            rating = fit_rating_spark(log.blocks, n_items, config.rating_k, config.rating_reg,
                                      sc, seed=config.seed)
    with timer.stage("embed"):
        s = factors.singular_values.astype(np.float32)
        similarity_basis = factors.item_factors * (s ** np.float32(config.gamma))
        item_vectors = normalize_rows(similarity_basis)
        sampled = recall.sample_users(flags, seed=config.seed)
        fold_b = None
        if rating is None:
            embedding = shrinkage_embedding(factors, shrinkage, n_items)
            fold_b = sc.broadcast(np.ascontiguousarray(factors.item_factors
                                                       * embedding.component_weights,
                                                       dtype=np.float32))
            side = UserSide(log.blocks.map(lambda b: (b, None)),
                            _user_vectors(weighted, fold_b, has_b), k, None)
        else:  # rows are not folded: every user has [p_u, 1], every item [q_i, b_i]
            augmented = rating.items.item_vectors()
            embedding = Embedding(augmented, augmented, np.ones(0, dtype=np.float32), 0.0)
            side = UserSide(log.blocks.zip(rating.users), _rating_vectors, config.rating_k,
                            rating)
    try:
        # The catalog is item-sized: read, encoded and mapped on the driver (native code).
        catalog = catalog_side(config, timer, log.item_ids, similarity_basis, embedding.items,
                               [])
        del similarity_basis
        directory = bundle.model_dir(Path(config.index_dir), config.model)
        with bundle.model_lock(directory):
            version = config.version or bundle.new_version()
            writer = bundle.BundleWriter(directory)
            try:
                path, manifest = _write_bundle(
                    config, timer, log, writer, version, side, flags, sampled, factors,
                    item_vectors, embedding, scale, weighting, components, co_users32,
                    users_with, id_width, catalog, item_users)
            except BaseException:
                writer.abort()
                raise
    finally:
        if rating is not None:
            rating.release()
    for b in (scale_b, has_b, fold_b):
        if b is not None:
            b.destroy()  # unpersist() would keep the driver's copies
    log.blocks.unpersist()
    manifest["timings_seconds"] = timer.seconds
    return BuildReport(path=path, manifest=manifest, seconds=timer.seconds)


VectorsOf = Callable[[tuple[Block, Any]], tuple[np.ndarray, np.ndarray]]


@dataclass
class UserSide:
    """Where the users' vectors come from: the blocks paired with what each needs besides
    its rows (None for the SVD's x V F; the rating model's [P, b_u] of the block), and per
    pair its users' query vectors and the stored unit vectors of the users index."""

    pairs: Any  # RDD[(Block, state)] in user order
    vectors_of: VectorsOf
    dim: int  # of the stored vectors (the users index)
    rating: SparkRatingModel | None


def _rating_vectors(pair: tuple[Block, UserState]) -> tuple[np.ndarray, np.ndarray]:
    """The rating model's [p_u, 1] (queries, rating_users.npy) and p_u at unit length (the
    users index), as the native builder stores them."""
    p = pair[1][0]
    return query_vectors(p), normalize_rows(np.asarray(p, dtype=np.float32))


def _user_vectors(weighted: Any, fold_b: Any, has_b: Any) -> VectorsOf:
    """Per block: the users' query vectors q = x V F (U S F), and their unit-length copies
    with users without evidence set to 0 (as the native builder stores them)."""

    def run(pair: tuple[Block, Any]) -> tuple[np.ndarray, np.ndarray]:
        block = pair[0]
        q = np.asarray(weighted(block) @ fold_b.value, dtype=np.float32)
        stored = normalize_rows(q)
        owners = np.repeat(np.arange(block.n_users), np.diff(block.indptr))
        has = np.bincount(owners, weights=has_b.value[block.indices],
                          minlength=block.n_users) > 0
        stored[~has] = 0
        return q, stored

    return run


def _write_bundle(config: BuildConfig, timer: _Timer, log: SparkLog,
                  writer: bundle.BundleWriter, version: str, side: UserSide,
                  flags: np.ndarray, sampled: np.ndarray, factors: Any,
                  item_vectors: np.ndarray, embedding: Any, scale: np.ndarray,
                  weighting: WeightingParams, components: np.ndarray, co_users: np.ndarray,
                  users_with: int, id_width: int, catalog: CatalogSide | None,
                  item_users: np.ndarray) -> tuple[Path, dict[str, Any]]:
    n_users, n_items = log.n_users, int(log.item_ids.size)
    rating = side.rating
    users_params = config.user_index
    if rating is not None and config.rating_k == 0:
        users_params = None  # biases alone say nothing about who is alike
    vectors_of = side.vectors_of
    queries: dict[int, np.ndarray] = {}
    histories: dict[int, np.ndarray] = {}
    # Users whose stored vector is not 0: the rating model's similar-users recall samples
    # them, as the native builder does (the SVD's are the users with evidence, `flags`).
    stored_nonzero = np.zeros(n_users, dtype=bool)

    def stream(with_stored: bool) -> Any:
        """(block, the sampled users' q, the stored vectors or None, the rating model's
        [p_u, 1] and b_u or None) a block at a time, in user order: only what the driver
        keeps crosses to it (a block's q and stored vectors are 90 MB each at 350k
        users)."""
        def run(pair: tuple[Block, Any], sampled: np.ndarray = sampled,
                with_rating: bool = rating is not None
                ) -> tuple[Block, np.ndarray, np.ndarray | None,
                           tuple[np.ndarray, np.ndarray] | None]:
            block = pair[0]
            q, stored = vectors_of(pair)
            lo, hi = np.searchsorted(sampled, [block.start, block.start + block.n_users])
            rows = (q, np.asarray(pair[1][1], dtype=np.float32)) if with_rating else None
            return (block, q[sampled[lo:hi] - block.start], stored if with_stored else None,
                    rows)
        yield from side.pairs.map(run).toLocalIterator(prefetchPartitions=True)

    with timer.stage("write rows"):
        rows_indptr = np.lib.format.open_memmap(writer.path("rows_indptr.npy"), mode="w+",
                                                dtype=np.int64, shape=(n_users + 1,))
        rows_indices = np.lib.format.open_memmap(writer.path("rows_indices.npy"), mode="w+",
                                                 dtype=np.int32, shape=(log.nnz,))
        rows_values = np.lib.format.open_memmap(writer.path("rows_values.npy"), mode="w+",
                                                dtype=np.float32, shape=(log.nnz,))
        user_ids = np.lib.format.open_memmap(writer.path("user_ids.npy"), mode="w+",
                                             dtype=f"S{id_width}", shape=(n_users,))
        rating_users = rating_bias = None
        if rating is not None:
            rating_users = np.lib.format.open_memmap(
                writer.path("rating_users.npy"), mode="w+", dtype=np.float32,
                shape=(n_users, config.rating_k + 1))
            rating_bias = np.lib.format.open_memmap(
                writer.path("rating_user_bias.npy"), mode="w+", dtype=np.float32,
                shape=(n_users,))
        rows_indptr[0] = 0
        users_index = None
        resolved = users_params.resolved(n_users) if users_params is not None else None
        training = None
        if resolved is not None and resolved.kind == "ivf":
            training = _gather(side, ivf_training_rows(n_users, resolved, config.seed))

        def chunks_of() -> Any:
            for block, q, stored, rating_rows in stream(with_stored=resolved is not None):
                start, end = block.start, block.start + block.n_users
                if rating_rows is not None:
                    assert rating_users is not None and rating_bias is not None
                    rating_users[start:end] = rating_rows[0]
                    rating_bias[start:end] = rating_rows[1]
                if stored is not None:
                    stored_nonzero[start:end] = np.einsum("ij,ij->i", stored, stored) > 0.5
                offset = int(rows_indptr[start])
                nnz_b = int(block.indptr[-1])
                rows_indptr[start + 1 : end + 1] = offset + block.indptr[1:]
                rows_indices[offset : offset + nnz_b] = block.indices
                rows_values[offset : offset + nnz_b] = block.values
                user_ids[start:end] = block.user_ids
                lo, hi = np.searchsorted(sampled, [start, end])
                for row, u in enumerate(sampled[lo:hi].tolist()):
                    queries[u] = q[row]
                    histories[u] = block.indices[block.indptr[u - start]:
                                                 block.indptr[u - start + 1]].astype(np.int64)
                yield start, stored

        if resolved is None:
            for _ in chunks_of():
                pass
        else:
            users_index = build_index_streamed(n_users, side.dim, resolved, chunks_of(),
                                               training, config.seed)
        for array in (rows_indptr, rows_indices, rows_values, user_ids, rating_users,
                      rating_bias):
            if array is not None:
                array.flush()
    users_recall = None
    if users_index is not None and users_params is not None:
        queried = flags if rating is None else stored_nonzero
        with timer.stage("measure users recall"):
            users_recall = _measure_users(side, users_index, queried, config.seed)
            if (users_params.kind == "auto" and kind_of(users_index) == "hnsw"
                    and users_recall["meets_target"] is False):
                ivf_params = replace(users_params, kind="ivf")
                p = ivf_params.resolved(n_users)
                train = _gather(side, ivf_training_rows(n_users, p, config.seed))
                ivf_index = build_index_streamed(
                    n_users, side.dim, ivf_params,
                    ((b.start, stored) for b, _, stored, _ in stream(with_stored=True)),
                    train, config.seed)
                ivf_recall = _measure_users(side, ivf_index, queried, config.seed)
                if ivf_recall["recall_at_10"] > users_recall["recall_at_10"]:
                    ivf_recall["instead_of"] = {
                        "type": "hnsw", "recall_at_10": users_recall["recall_at_10"],
                        "ef_search": users_recall["ef_search"]}
                    users_index, users_recall, users_params = ivf_index, ivf_recall, ivf_params
    with timer.stage("index items"):
        items_index = build_index(item_vectors, config.item_index, config.seed)
        rec_vectors = embedding.items if catalog is None else catalog.rec_vectors(
            embedding.items)
        mips_index = build_rec_index(rec_vectors, config.rec_index, config.seed)
    with timer.stage("measure recall"):
        rec_kind = "banded" if isinstance(mips_index, BandedIndex) else kind_of(mips_index)
        if rec_kind == "flat":
            rec_recall: dict[str, Any] = {"recall_at_10": 1.0, "meets_target": True,
                                          "target": recall.RECALL_TARGET,
                                          "against": "the index is exact (flat)"}
        else:
            order = sorted(queries)
            rec_recall = recall.measure(
                mips_index, rec_vectors,
                np.asarray([queries[u] for u in order], dtype=np.float32).reshape(
                    -1, embedding.items.shape[1]),
                [histories[u] for u in order])
        del rec_vectors
    similar = None
    cache_k = config.resolved_similar_cache(n_items)
    if cache_k > 0:
        with timer.stage("precompute similar"):
            similar = precompute_similar(config, items_index, item_vectors, cache_k,
                                         components, co_users, catalog, lambda: item_users)
    with timer.stage("write"):
        writer.save_array("item_ids.npy", log.item_ids)
        writer.save_array("item_vectors.npy", item_vectors)
        writer.save_array("item_factors.npy", embedding.items)
        if not embedding.shared:
            writer.save_array("fold_factors.npy", embedding.fold)
        writer.save_array("singular_values.npy", factors.singular_values.astype(np.float32))
        writer.save_array("item_scale.npy", scale)
        if catalog is not None:
            catalog.write_table(writer)
        write_index(items_index, writer.path("items.faiss"))
        if isinstance(mips_index, BandedIndex):
            write_index(mips_index.tail, writer.path("items_mips.faiss"))
            writer.save_array("items_mips_head.npy", mips_index.head)
        else:
            write_index(mips_index, writer.path("items_mips.faiss"))
        if users_index is not None:
            write_index(users_index, writer.path("users.faiss"))
        if catalog is not None:
            catalog.write_content(writer)
        writer.save_array("item_component.npy", components)
        writer.save_array("item_co_users.npy", co_users)
        if similar is not None:
            writer.save_array("similar_ids.npy", similar[0])
            writer.save_array("similar_scores.npy", similar[1])
    indexes = {
        "items": _index_meta("items.faiss", items_index, config.item_index, "cosine",
                             "similar items"),
        "items_mips": _rec_index_meta(mips_index, config.rec_index, rec_recall),
    }
    if catalog is not None:
        indexes.update(catalog.index_entries(config))
    if users_index is not None and users_params is not None:
        indexes["users"] = _users_index_meta(users_index, users_params, users_recall)
    manifest = _manifest(config, version, _input_info(config, log), _rows(log, config),
                         _counts(log), weighting, factors, embedding, indexes,
                         catalog.info if catalog else None, timer.seconds)
    manifest["parameters"]["solver"] = "randomized (spark)"
    manifest["parameters"]["engine"] = "spark"
    manifest["tuning"] = untuned_record(
        config, "off", "the Spark engine builds with the fixed defaults (as --no-tune)",
        {"k": int(factors.singular_values.size), "weighting": weighting.scheme,
         "beta": weighting.beta, "shrinkage": config.resolved_shrinkage()}, 0.0)
    manifest["parameters"]["k_requested"] = config.k if config.k is not None else "auto"
    manifest["evidence"] = evidence.summary_counts(components, co_users, n_users, users_with)
    manifest["input"]["events"] = []
    manifest["input"]["catalog_updates"] = []
    manifest["rating_model"] = None if rating is None else {
        "mu": rating.items.mu, "k": config.rating_k, "reg": config.rating_reg,
        "low": rating.items.low, "high": rating.items.high,
        "prediction": "mu + b_u + [p_u, 1] . [q_i, b_i], clipped to [low, high]"}
    manifest["content"] = None if catalog is None else catalog.content_section(config)
    manifest["similar_cache"] = similar_cache_section(similar, indexes, catalog)
    store_recommendations(config, writer, manifest, timer, rec_kind)  # on the driver
    with timer.stage("publish"):
        path = writer.publish(manifest, version)
    return path, manifest


def _gather(side: UserSide, rows: np.ndarray) -> np.ndarray:
    """The stored (unit) vectors of the users at positions `rows` (sorted), from the
    blocks holding them: an IVF's training sample."""
    wanted = np.asarray(rows, dtype=np.int64)
    vectors_of = side.vectors_of

    def pick(pair: tuple[Block, Any]) -> tuple[np.ndarray, np.ndarray]:
        block = pair[0]
        lo, hi = np.searchsorted(wanted, [block.start, block.start + block.n_users])
        if hi == lo:
            return wanted[lo:hi], np.zeros((0, 0), dtype=np.float32)
        _, stored = vectors_of(pair)
        return wanted[lo:hi], stored[wanted[lo:hi] - block.start]

    parts = sorted((p for p in side.pairs.map(pick).collect() if p[0].size),
                   key=lambda p: int(p[0][0]))
    return np.ascontiguousarray(np.vstack([p[1] for p in parts]), dtype=np.float32)


def best_scores(stored: np.ndarray, start: int, queries: np.ndarray, sampled: np.ndarray,
                kk: int) -> np.ndarray:
    """The kk best scores (kk x queries, descending; -inf where fewer) of each query over a
    block's stored user vectors (positions start..), the query's own user excluded.

    The users are scored a slice at a time (a slice x queries matrix of a few MB, not the
    block's users x queries) and each slice's best kk kept by partial sort: a full sort of
    the block's scores dominated the users-recall stage."""
    top = np.full((kk, queries.shape[0]), -np.inf, dtype=np.float32)
    n = stored.shape[0]
    for lo in range(0, n, USERS_RECALL_SLICE):
        hi = min(lo + USERS_RECALL_SLICE, n)
        scores = np.vstack([top, stored[lo:hi] @ queries.T])
        own = (sampled >= start + lo) & (sampled < start + hi)
        scores[kk + sampled[own] - start - lo, np.flatnonzero(own)] = -np.inf
        top = np.partition(scores, scores.shape[0] - kk, axis=0)[-kk:]
    return np.asarray(-np.sort(-top, axis=0), dtype=np.float32)


def _measure_users(side: UserSide, index: Any, flags: np.ndarray, seed: int
                   ) -> dict[str, Any]:
    """recall.measure_users with its exact truth computed per block: each block scores its
    users against the sampled users' vectors and keeps the best ten per query."""
    if kind_of(index) == "flat":
        return recall.measure_users(index, None, np.zeros(0, dtype=np.int64))
    sampled = recall.sample_users(flags, seed=seed)
    queries = _gather(side, sampled)
    nonzero = np.einsum("ij,ij->i", queries, queries) > 0.5
    sampled, queries = sampled[nonzero], queries[nonzero]
    kk = recall.RECALL_K

    vectors_of = side.vectors_of

    def best(pair: tuple[Block, Any], queries: np.ndarray = queries,
             sampled: np.ndarray = sampled) -> np.ndarray:
        _, stored = vectors_of(pair)
        return best_scores(stored, pair[0].start, queries, sampled, kk)

    merged = side.pairs.map(best).treeReduce(
        lambda a, b: -np.sort(-np.vstack([a, b]), axis=0)[:kk], depth=2)
    kth = np.asarray(merged[kk - 1], dtype=np.float32)

    def exact(candidates: np.ndarray | None) -> np.ndarray:
        inner = faiss.downcast_index(index)
        rows = np.arange(index.ntotal) if candidates is None else candidates
        if isinstance(inner, faiss.IndexIVF):
            inner.make_direct_map()
            try:
                return np.vstack([inner.reconstruct(int(r)) for r in rows])
            finally:
                inner.set_direct_map_type(faiss.DirectMap.NoMap)
        return np.vstack([inner.reconstruct(int(r)) for r in rows])

    return recall.measure_users(index, None, sampled, truth=(queries, kth, exact))


def _input_info(config: BuildConfig, log: SparkLog) -> dict[str, Any]:
    """The manifest's `input`: a local file gets its size and sha256, a Spark path (a
    folder of parts, HDFS, an object store) its path only."""
    path = str(config.input)
    local = Path(path)
    is_file = "://" not in path and local.is_file()
    return {
        "path": path,
        "size": local.stat().st_size if is_file else None,
        "sha256": bundle.sha256_file(local) if is_file else None,
        "columns": log.columns.chosen(),
        "columns_report": log.columns.report(),
        "feedback": log.feedback,
        "feedback_reason": log.columns.feedback_reason,
        "duplicates": config.read.duplicates,
        "engine": "spark",
        "spark_path": os.fspath(path),
    }


def _rows(log: SparkLog, config: BuildConfig) -> dict[str, Any]:
    return {
        "read": log.rows_read, "used": log.rows_used, "rejected": log.rejected.total,
        "rejected_by_reason": log.rejected.counts,
        "rejected_examples": log.rejected.examples,
        "duplicates_merged": log.duplicates_merged, "removed_by_filters": log.filtered_rows,
        "removed_by_min_rating": log.removed_by_min_rating,
        "min_rating": config.read.min_rating,
    }


def _counts(log: SparkLog) -> dict[str, Any]:
    n_items = int(log.item_ids.size)
    return {
        "users": log.n_users, "items": n_items, "interactions": log.nnz,
        "density": log.nnz / max(1, log.n_users * n_items),
        "users_removed_by_filters": log.filtered_users,
        "items_removed_by_filters": log.filtered_items,
    }
