"""The offline pipeline: read, filter, weight, factorize, embed, index, publish."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from svdfaiss import __version__, autotune, bundle, evidence, recall
from svdfaiss.catalog import CatalogOptions, read_catalog
from svdfaiss.content import (
    DEFAULT_HYBRID_INTERACTIONS,
    DEFAULT_NEW_ITEM_WEIGHT,
    NEW_ITEM_CF_SHARE,
    NEW_ITEM_POPULARITY_PRIOR,
    NEW_ITEM_RIDGE,
    ContentEncoder,
    ContentParams,
    cf_share,
    fit_content,
    hybrid_pool,
    hybrid_scores,
    map_content,
)
from svdfaiss.data import (
    DuplicatePolicy,
    Interactions,
    ReadOptions,
    build_interactions,
    read_log,
)
from svdfaiss.errors import InvalidInput
from svdfaiss.evaluation import evaluate_for_manifest
from svdfaiss.events import merge_events, read_events
from svdfaiss.factorize import (
    Embedding,
    Factors,
    Solver,
    check_rank,
    shrinkage_embedding,
    truncated_svd,
)
from svdfaiss.index import (
    MIPS_HEAD,
    BandedIndex,
    IndexParams,
    build_index,
    build_rec_index,
    faiss,
    kind_of,
    normalize_rows,
    search,
    write_index,
)
from svdfaiss.live_catalog import (
    CatalogChange,
    apply_to_catalog,
    final_state,
    read_changes,
    without_items,
)
from svdfaiss.neural import ALGORITHMS, NeuralModel, NeuralParams
from svdfaiss.rating import DEFAULT_K as DEFAULT_RATING_K
from svdfaiss.rating import DEFAULT_REG, cross_validate, fit_rating_model
from svdfaiss.weighting import WeightingParams, check_scheme, item_column_scale, weight_rows

# Above flat_max, recommendations use two norm bands (index.BandedIndex): this many items of
# the largest norms scored exactly, an IVF over the rest searched only when the norm bound
# allows a better item, its nprobe raised by the builder until the measured recall@10
# reaches 0.98 (recall.py; docs/benchmarks.md, "Recommendations at catalog scale"); the
# head size is index.MIPS_HEAD.
# Item factor norms follow popularity (median 0.085 of the largest on the sample), so after the
# MIPS reduction most items crowd the extra axis and approximate indexes lose the low-norm
# items a niche user needs: recall@10 on the sample 0.56 for HNSW (ef 128), 0.93 for IVF
# (32 of 44 lists). Exact search takes 0.19 ms at 10k items and 2 ms at 50k (one thread,
# scripts/bench_index.py), so auto stays exact up to 25k items and uses the banded IVF above.
RECOMMENDATION_INDEX = IndexParams(kind="auto", flat_max=25_000, hnsw_max=0,
                                   mips_head=MIPS_HEAD)

# Similar items change only at rebuild: storing each item's neighbours turns most requests
# into an array slice. Computing them costs one batch search per item, so auto stops at a size
# where that stays a few seconds (it would break the 90 s Amazon-scale budget at 412k items).
SIMILAR_CACHE_K = 50
SIMILAR_CACHE_MAX_ITEMS = 200_000

# Recommendations change only at rebuild too: each user's top STORED_RECOMMENDATIONS_K,
# computed by the query itself, make a plain request an array slice (query.model.
# StoredRecommendations). The query costs 68 us a user on the built-in sample and 0.6 ms at
# 1M items (k 20, banded index; docs/benchmarks.md), so auto times it on a sample of users
# first and stores the rows only when all of them would take at most as long as the build
# so far (and at least STORED_BUDGET_MIN_SECONDS): at most about twice a plain build.
STORED_RECOMMENDATIONS_K = 20
STORED_PROBE_USERS = 1000
STORED_BUDGET_MIN_SECONDS = 30.0
MAX_STORED_RECOMMENDATIONS = 1000

# Defaults chosen on three datasets (docs/evaluation.md, "Defaults"): k 128 with shrinkage 30
# reaches 88-98% of the best validation NDCG@10 found on each. Above 100k items k 64 keeps
# the Amazon-scale build inside its time and memory budget (docs/benchmarks.md).
AUTO_K_SMALL, AUTO_K_LARGE, AUTO_K_MAX_ITEMS = 128, 64, 100_000
DEFAULT_SHRINKAGE = 30.0


def auto_k(n_users: int, n_items: int) -> int:
    """The default number of components for a matrix of this shape."""
    k = AUTO_K_SMALL if n_items <= AUTO_K_MAX_ITEMS else AUTO_K_LARGE
    return max(1, min(k, min(n_users, n_items) - 1))

StageHook = Callable[[str], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class BuildConfig:
    """Everything `svdfaiss build` takes; recorded in the manifest."""

    input: Path
    model: str
    index_dir: Path
    read: ReadOptions = field(default_factory=ReadOptions)
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    weighting: Literal["auto", "none", "binary", "log", "bm25"] = "auto"
    beta: float | None = None  # None: 0, or tuned
    k: int | None = None  # None: auto_k of the filtered matrix, or tuned
    # EASE-style, in mean column energies; 0: PureSVD. None: DEFAULT_SHRINKAGE, or tuned
    shrinkage: float | None = None
    # Choose what k, weighting, beta and shrinkage leave open on a validation split of the
    # rows (svdfaiss.autotune); False keeps the fixed defaults.
    tune: bool = True
    gamma: float = 1.0
    solver: Solver = "arpack"
    item_index: IndexParams = field(default_factory=IndexParams)
    rec_index: IndexParams = field(default_factory=lambda: RECOMMENDATION_INDEX)
    user_index: IndexParams | None = field(default_factory=lambda: IndexParams(kind="auto"))
    catalog: Path | None = None
    catalog_options: CatalogOptions = field(default_factory=CatalogOptions)  # --items-*
    seed: int = 0
    version: str | None = None
    similar_cache: int | None = None  # neighbours stored per item; None: auto, 0: off
    # recommendations stored per user; None: auto, 0: off
    stored_recommendations: int | None = None
    evaluate: bool = False  # hold out 20% per user, score, store it in the manifest
    # "rating": recommendations rank by the biased-MF predicted rating (explicit data only)
    objective: Literal["topn", "rating"] = "topn"
    rating_k: int = DEFAULT_RATING_K
    rating_reg: float = DEFAULT_REG
    # Content vectors from the catalog's text and categories: "auto" builds them when the
    # catalog has such columns; catalog items the log never mentions then get neighbours too.
    content: Literal["auto", "on", "off"] = "auto"
    content_params: ContentParams = field(default_factory=ContentParams)
    hybrid_interactions: float = DEFAULT_HYBRID_INTERACTIONS  # see content.cf_share
    # Catalog-only items join the recommendation index with a vector predicted from their
    # content (content.map_content), scaled by this; 0 keeps them out of recommendations.
    new_item_weight: float = DEFAULT_NEW_ITEM_WEIGHT
    events: tuple[Path, ...] = ()  # events logs the service wrote (POST /events), folded in
    # live catalog logs the service wrote (PUT/DELETE /items), folded into the catalog
    catalog_updates: tuple[Path, ...] = ()
    # "svd" (the model above) or a neural model trained with PyTorch (svdfaiss.neural), whose
    # architecture and training take `neural` (its seed is --seed).
    algorithm: Literal["svd", "multvae", "elsa"] = "svd"
    neural: NeuralParams = field(default_factory=NeuralParams)
    # Train the neural model again on every row for its best epoch count (neural.train's
    # epochs_on_all_rows) and export that one.
    neural_refit: bool = False

    @property
    def is_neural(self) -> bool:
        return self.algorithm != "svd"

    def resolved_similar_cache(self, n_items: int) -> int:
        """auto: 50 neighbours up to 200k items (seconds to compute), none above."""
        if self.similar_cache is not None:
            return min(self.similar_cache, n_items - 1)
        return min(SIMILAR_CACHE_K, n_items - 1) if n_items <= SIMILAR_CACHE_MAX_ITEMS else 0

    def resolved_stored_recommendations(self, n_users: int, n_items: int,
                                        rec_kind: str) -> tuple[int, str]:
        """How many recommendations to store per user, and why none when 0 ("auto": 20,
        if the build's time probe agrees). Never over an HNSW recommendation index, whose
        search effort follows k (a stored top 20 need not begin with the top 10 that k=10
        would find)."""
        if self.stored_recommendations == 0:
            return 0, "--stored-recommendations 0"
        if rec_kind == "hnsw":
            return 0, ("an HNSW recommendation index searches with an effort that follows k; "
                       "use --rec-index auto, ivf or flat to store recommendations")
        if self.stored_recommendations is not None:
            return min(self.stored_recommendations, n_items), "--stored-recommendations"
        return min(STORED_RECOMMENDATIONS_K, n_items), "auto"

    def resolved_k(self, n_users: int, n_items: int) -> int:
        return self.k if self.k is not None else auto_k(n_users, n_items)

    def resolved_beta(self) -> float:
        return 0.0 if self.beta is None else self.beta

    def resolved_shrinkage(self) -> float:
        return DEFAULT_SHRINKAGE if self.shrinkage is None else self.shrinkage

    def resolved_weighting(self, feedback: str) -> str:
        """`auto`: log(1 + count) for implicit counts, ratings as given for explicit data."""
        if self.weighting != "auto":
            return self.weighting
        return "log" if feedback == "implicit" else "none"

    def check(self) -> None:
        """Refuse bad parameters before reading anything."""
        bundle.check_model_name(self.model)
        if self.weighting != "auto":
            check_scheme(self.weighting, self.resolved_beta())
        elif not 0.0 <= self.resolved_beta() <= 1.0:
            raise InvalidInput(f"--beta must be in [0, 1], got {self.beta}")
        if self.k is not None and self.k < 1:
            raise InvalidInput(f"--k must be at least 1, got {self.k}")
        if not 0.0 <= self.resolved_shrinkage() <= 1e6:
            raise InvalidInput(f"--shrinkage must be in [0, 1e6], got {self.shrinkage}")
        if self.min_user_interactions < 1 or self.min_item_interactions < 1:
            raise InvalidInput("--min-user-interactions and --min-item-interactions must be >= 1")
        if not 0.0 <= self.gamma <= 2.0:
            raise InvalidInput(f"--gamma must be in [0, 2], got {self.gamma}")
        for params in (self.item_index, self.rec_index, self.user_index):
            if params is not None:
                params.resolved(1)
        if self.objective not in ("topn", "rating"):
            raise InvalidInput(f"--objective {self.objective!r}: choose topn or rating")
        if self.rating_k < 0 or self.rating_reg <= 0:
            raise InvalidInput(f"--rating-k must be >= 0 and --rating-reg > 0, got "
                               f"{self.rating_k} and {self.rating_reg}")
        if self.similar_cache is not None and self.similar_cache < 0:
            raise InvalidInput(f"--similar-cache must be >= 0, got {self.similar_cache}")
        if self.stored_recommendations is not None and not (
                0 <= self.stored_recommendations <= MAX_STORED_RECOMMENDATIONS):
            raise InvalidInput(f"--stored-recommendations must be in [0, "
                               f"{MAX_STORED_RECOMMENDATIONS}], got "
                               f"{self.stored_recommendations}")
        if self.catalog is not None and not Path(self.catalog).is_file():
            raise InvalidInput(f"{self.catalog}: catalog file not found")
        if self.content not in ("auto", "on", "off"):
            raise InvalidInput(f"--content {self.content!r}: choose auto, on or off")
        if self.catalog_updates and self.catalog is None:
            raise InvalidInput("--catalog-updates needs the catalog they change (--items "
                               "CATALOG)")
        if self.content == "on" and self.catalog is None:
            raise InvalidInput("--content on needs a catalog (--items CATALOG)")
        self.content_params.check()
        if not 0 < self.hybrid_interactions <= 1e6:
            raise InvalidInput(f"--hybrid-interactions must be in (0, 1e6], got "
                               f"{self.hybrid_interactions}")
        if not 0 <= self.new_item_weight <= 100:
            raise InvalidInput(f"--new-item-weight must be in [0, 100], got "
                               f"{self.new_item_weight}")
        if self.algorithm not in ALGORITHMS:
            raise InvalidInput(f"--algorithm {self.algorithm!r}: choose one of "
                               f"{', '.join(ALGORITHMS)}")
        if self.neural_refit and not self.is_neural:
            raise InvalidInput("--refit retrains a neural model (--algorithm multvae|elsa)")
        if self.is_neural:
            self._check_neural()

    def _check_neural(self) -> None:
        """The SVD's own flags mean nothing to a neural model: refuse them by name."""
        algorithm = f"--algorithm {self.algorithm}"
        given = [flag for flag, value in (("--k", self.k), ("--shrinkage", self.shrinkage),
                                          ("--beta", self.beta)) if value is not None]
        if self.weighting not in ("auto", "binary"):
            given.append(f"--weighting {self.weighting}")
        if given:
            raise InvalidInput(f"{algorithm} reads 0/1 interactions and sizes itself with "
                               f"--dim: {', '.join(given)} applies to --algorithm svd only")
        if self.objective != "topn":
            raise InvalidInput(f"{algorithm} ranks items (topn); --objective rating is the "
                               "SVD's rating model")
        if self.evaluate:
            raise InvalidInput(f"{algorithm}: --evaluate scores the SVD; the neural models "
                               "are compared in scripts/eval_neural.py (docs/evaluation.md)")
        self.neural.check()


@dataclass
class BuildReport:
    """What a build did: the published folder, its manifest and per-stage seconds."""

    path: Path
    manifest: dict[str, Any]
    seconds: dict[str, float]


class _Timer:
    def __init__(self, hook: StageHook | None) -> None:
        self.seconds: dict[str, float] = {}
        self.hook = hook

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with self.hook(name) if self.hook else contextlib.nullcontext():
            yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def _input_info(path: Path, inter: Interactions, options: ReadOptions) -> dict[str, Any]:
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "sha256": bundle.sha256_file(path),
        "columns": inter.columns.chosen(),
        "columns_report": inter.columns.report(),
        "feedback": inter.feedback,
        "feedback_reason": inter.columns.feedback_reason,
        "duplicates": options.duplicates,
    }


def build(config: BuildConfig, stage_hook: StageHook | None = None,
          progress: Callable[[str], None] | None = None) -> BuildReport:
    """Run the whole pipeline and publish a new version; nothing is published on error.
    `progress` hears a line per training epoch of a neural model."""
    config.check()
    timer = _Timer(stage_hook)
    input_path = Path(config.input)
    with timer.stage("read"):
        log = read_log(input_path, config.read)
        events_info = []
        for events_path in config.events:
            events, rejected, lines = read_events(Path(events_path), log.feedback,
                                                  config.read.strict)
            log = merge_events(log, events)
            events_info.append({"path": str(events_path), "sha256": bundle.sha256_file(
                Path(events_path)), "lines": lines, "events": len(events),
                "rejected": rejected.total, "rejected_by_reason": rejected.counts,
                # the service's live rows start after it (events.bundle_cutoff)
                "last_event_time": max((e.time for e in events), default=None),
                "rejected_examples": rejected.examples})
        changes, updates_info = _read_catalog_updates(config)
        log, dropped = without_items(log, {c.item_id for c in final_state(changes).values()
                                           if c.op == "delete"})
        if updates_info:
            updates_info[-1]["interactions_dropped"] = dropped
    with timer.stage("filter"):
        duplicates: DuplicatePolicy = config.read.duplicates
        inter = build_interactions(log, config.min_user_interactions,
                                   config.min_item_interactions, duplicates,
                                   config.read.min_rating)
        del log
        k = config.resolved_k(inter.n_users, inter.n_items)
        if config.is_neural:
            k = config.neural.dim
        else:
            check_rank(k, (inter.n_users, inter.n_items))
        if config.objective == "rating" and inter.feedback != "explicit":
            raise InvalidInput(f"{input_path}: --objective rating needs explicit ratings; this "
                               "log holds implicit counts (see --feedback)")
    if config.is_neural:  # its early stopping is its tuning
        tuned = autotune.Tuned(config, {
            "status": "skipped", "given": {}, "chosen": {},
            "reason": f"--algorithm {config.algorithm} chooses its epochs by early stopping "
                      "on a validation split; its size is --dim"})
        beta, shrinkage = 0.0, 0.0
    else:
        with timer.stage("tune"):  # what the flags leave open, on a split of the rows
            tuned = autotune.tune_matrix(inter.matrix, inter.feedback, config)
            config = tuned.config
            k = config.resolved_k(inter.n_users, inter.n_items)
            beta, shrinkage = config.resolved_beta(), config.resolved_shrinkage()
    with timer.stage("weight"):
        # The neural models read 0/1 interactions: the bundle's weighting says so, and the
        # service folds rows in the same way.
        scheme = "binary" if config.is_neural else config.resolved_weighting(inter.feedback)
        scale, mean_row = item_column_scale(inter.matrix, scheme, beta)
        weighting = WeightingParams(scheme=scheme, beta=beta,  # type: ignore[arg-type]
                                    mean_row_length=mean_row)
        x = weight_rows(inter.matrix, weighting, scale)
    factors: Factors | None = None
    neural: NeuralModel | None = None
    if config.is_neural:
        with timer.stage(f"train {config.algorithm}"):
            from svdfaiss.neural import train

            params = replace(config.neural, algorithm=config.algorithm,  # type: ignore[arg-type]
                             seed=config.seed)
            neural = train(x, params, progress)
            if config.neural_refit:
                stopped = neural.training
                neural = train(x, params, progress,
                               epochs_on_all_rows=max(1, int(stopped["best_epoch"])))
                neural.training["early_stopping"] = {
                    key: stopped[key] for key in ("epochs", "best_epoch",
                                                  "best_validation_ndcg@10", "stopped",
                                                  "stopped_by", "seconds", "validation")}
            del x
    else:
        with timer.stage("factorize"):
            factors = truncated_svd(x, k, config.solver, config.seed)
            del x
    with timer.stage("evidence"):
        components = evidence.item_components(inter.matrix)
        co_users = evidence.item_evidence(inter.matrix).astype(np.int32)
    rating = None
    if config.objective == "rating":
        with timer.stage("rating model"):
            rating = fit_rating_model(inter.matrix, config.rating_k, config.rating_reg,
                                      seed=config.seed)
    evaluation = None
    if config.evaluate:
        with timer.stage("evaluate"):  # on a split of its own: the model below uses all rows
            evaluation = evaluate_for_manifest(inter.matrix, k, scheme, beta,
                                               shrinkage, config.rec_index)
            if rating is not None:
                evaluation["rating"] = cross_validate(inter.matrix, k=config.rating_k,
                                                      reg=config.rating_reg)
    with timer.stage("embed"):
        if neural is not None:
            vectors = _neural_vectors(neural, inter, components, config)
        else:
            assert factors is not None
            vectors = _svd_vectors(factors, rating, inter, components, config, shrinkage)
        item_vectors, embedding, similarity_basis, sample_queries, user_vectors, sampled = (
            vectors)
    catalog = catalog_side(config, timer, inter.item_ids, similarity_basis, embedding.items,
                           changes)
    with timer.stage("index items"):
        items_index = build_index(item_vectors, config.item_index, config.seed)
        rec_vectors = embedding.items if catalog is None else catalog.rec_vectors(
            embedding.items)
        mips_index = build_rec_index(rec_vectors, config.rec_index, config.seed)
    with timer.stage("measure recall"):
        rec_kind = ("banded" if isinstance(mips_index, BandedIndex) else kind_of(mips_index))
        if rec_kind == "flat":
            rec_recall: dict[str, Any] = {"recall_at_10": 1.0, "meets_target": True,
                                          "target": recall.RECALL_TARGET,
                                          "against": "the index is exact (flat)"}
        else:
            rec_recall = recall.measure(
                mips_index, rec_vectors, sample_queries,
                [inter.matrix.indices[inter.matrix.indptr[u] : inter.matrix.indptr[u + 1]]
                 .astype(np.int64) for u in sampled.tolist()])
        del rec_vectors, sample_queries
    users_index, users_recall = None, None
    if user_vectors is not None and config.user_index is not None:
        users_params = config.user_index
        with timer.stage("index users"):
            users_index = build_index(user_vectors, users_params, config.seed)
        with timer.stage("measure users recall"):
            # Users whose stored vector is 0 (no evidence) are never queried (recall.py).
            stored = np.einsum("ij,ij->i", user_vectors, user_vectors) > 0.5
            users_sample = recall.sample_users(stored, seed=config.seed)
            users_recall = recall.measure_users(users_index, user_vectors, users_sample)
            if (users_params.kind == "auto" and kind_of(users_index) == "hnsw"
                    and users_recall["meets_target"] is False):
                # HNSW saturates below the target where many users share one history (the
                # Amazon sample: 0.945 at any efSearch); an IVF over the same vectors
                # reaches it (1.000 there, at nprobe 32) and builds faster.
                ivf_params = replace(users_params, kind="ivf")
                ivf_index = build_index(user_vectors, ivf_params, config.seed)
                ivf_recall = recall.measure_users(ivf_index, user_vectors, users_sample)
                if ivf_recall["recall_at_10"] > users_recall["recall_at_10"]:
                    ivf_recall["instead_of"] = {
                        "type": "hnsw", "recall_at_10": users_recall["recall_at_10"],
                        "ef_search": users_recall["ef_search"]}
                    users_index, users_recall, users_params = ivf_index, ivf_recall, ivf_params
            del user_vectors, stored
    similar = None
    cache_k = config.resolved_similar_cache(inter.n_items)
    if cache_k > 0:
        with timer.stage("precompute similar"):
            similar = precompute_similar(
                config, items_index, item_vectors, cache_k, components, co_users, catalog,
                lambda: np.bincount(inter.matrix.indices, minlength=inter.n_items))

    directory = bundle.model_dir(Path(config.index_dir), config.model)
    with bundle.model_lock(directory):
        version = config.version or bundle.new_version()
        writer = bundle.BundleWriter(directory)
        try:
            with timer.stage("write"):
                _write_files(writer, inter, factors, item_vectors, embedding, scale,
                             items_index, mips_index, users_index, catalog)
                if catalog is not None:
                    catalog.write_content(writer)
                if neural is not None and neural.linear_fold() is None:
                    for name, array in neural.encoder.files().items():
                        writer.save_array(name, array)
                if rating is not None:
                    writer.save_array("rating_users.npy", rating.user_vectors())
                    writer.save_array("rating_user_bias.npy",
                                      rating.user_bias.astype(np.float32))
                writer.save_array("item_component.npy", components)
                writer.save_array("item_co_users.npy", co_users)
                if similar is not None:
                    writer.save_array("similar_ids.npy", similar[0])
                    writer.save_array("similar_scores.npy", similar[1])
            indexes = {
                "items": _index_meta("items.faiss", items_index, config.item_index,
                                     "cosine", "similar items"),
                "items_mips": _rec_index_meta(mips_index, config.rec_index, rec_recall),
            }
            if catalog is not None:
                indexes.update(catalog.index_entries(config))
            if users_index is not None and config.user_index is not None:
                indexes["users"] = _users_index_meta(users_index, users_params,
                                                     users_recall)
            manifest = _manifest(config, version, _input_info(input_path, inter, config.read),
                                 _rows_section(inter, config), _counts_section(inter),
                                 weighting, factors, embedding, indexes,
                                 catalog.info if catalog else None, timer.seconds)
            manifest["evaluation"] = evaluation
            manifest["tuning"] = tuned.record
            manifest["parameters"]["k_requested"] = tuned.record["given"].get("k", "auto")
            manifest["evidence"] = evidence.summary(components, co_users, inter.matrix)
            manifest["input"]["events"] = events_info
            # the service's live catalog starts after the newest change folded in
            manifest["input"]["catalog_updates"] = updates_info
            manifest["neural"] = None if neural is None else neural.record()
            manifest["rating_model"] = None if rating is None else {
                "mu": rating.mu, "k": config.rating_k, "reg": config.rating_reg,
                "low": rating.low, "high": rating.high,
                "prediction": "mu + b_u + [p_u, 1] . [q_i, b_i], clipped to [low, high]"}
            manifest["content"] = None if catalog is None else catalog.content_section(config)
            manifest["similar_cache"] = similar_cache_section(similar, indexes, catalog)
            store_recommendations(config, writer, manifest, timer, rec_kind)
            with timer.stage("publish"):
                path = writer.publish(manifest, version)
        except BaseException:
            writer.abort()
            raise
    manifest["timings_seconds"] = timer.seconds
    return BuildReport(path=path, manifest=manifest, seconds=timer.seconds)


@dataclass
class CatalogSide:
    """What --items adds to a bundle (both engines, on the driver: it is item-sized): the
    catalog rows (the model's items, then the catalog-only ones), the content vectors of
    every row with their index and encoder, and the catalog-only items' vectors predicted
    from content (for similar items and, with a weight above 0, recommendations)."""

    table: pa.Table
    info: dict[str, Any]  # the manifest's "catalog"
    new_ids: np.ndarray  # the catalog-only items, sorted
    content: tuple[np.ndarray, dict[str, Any], ContentEncoder | None] | None = None
    content_index: Any = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # content_to_*.npy
    new_factors: np.ndarray | None = None  # recommendation vectors of catalog-only items
    new_vectors: np.ndarray | None = None  # their CF vectors for similar items
    new_map: dict[str, Any] | None = None
    new_similar: dict[str, Any] | None = None

    def rec_vectors(self, items: np.ndarray) -> np.ndarray:
        """The recommendation index's rows: the model's items, then the catalog-only ones."""
        return items if self.new_factors is None else np.vstack([items, self.new_factors])

    def write_table(self, writer: bundle.BundleWriter) -> None:
        pq.write_table(self.table, writer.path("catalog.parquet"))

    def write_content(self, writer: bundle.BundleWriter) -> None:
        """The content files: vectors, catalog-only ids, index, encoder, maps, new items."""
        if self.content is not None and self.content_index is not None:
            writer.save_array("content_vectors.npy", self.content[0])
            writer.save_array("new_item_ids.npy", self.new_ids)
            write_index(self.content_index, writer.path("content.faiss"))
            encoder = self.content[2]
            encoder_files = encoder.arrays() if encoder is not None else {}
            for name, array in {**encoder_files, **self.maps}.items():
                writer.save_array(name, array)
        if self.new_factors is not None:
            writer.save_array("new_item_factors.npy", self.new_factors)
        if self.new_vectors is not None:
            writer.save_array("new_item_vectors.npy", self.new_vectors)

    def index_entries(self, config: BuildConfig) -> dict[str, Any]:
        """The manifest's `indexes` entry of the content index (none without content)."""
        if self.content_index is None:
            return {}
        return {"content": _index_meta("content.faiss", self.content_index, config.item_index,
                                       "cosine", "content and hybrid similar items")}

    def content_section(self, config: BuildConfig) -> dict[str, Any] | None:
        """The manifest's `content` (None without content)."""
        if self.content is None:
            return None
        return {
            **self.content[1], "new_items": int(self.new_ids.size),
            "hybrid_interactions": config.hybrid_interactions,
            "hybrid": "a * cf + (1 - a) * content, a = n / (n + hybrid_interactions), n "
                      "the item's training interactions",
            "new_items_in_recommendations": self.new_map,
            "new_items_in_similar": self.new_similar}


def catalog_side(config: BuildConfig, timer: _Timer, item_ids: np.ndarray,
                 similarity_basis: np.ndarray, rec_items: np.ndarray,
                 changes: list[CatalogChange]) -> CatalogSide | None:
    """The stages "catalog", "index content" and "map new items" over the model's item side
    (its sorted ids, the basis similar items come from before normalization, the
    recommendation vectors); None without --items."""
    if config.catalog is None:
        return None
    n_model = int(item_ids.size)
    with timer.stage("catalog"):
        table, info, new_ids = read_catalog(Path(config.catalog), item_ids,
                                            keep_new=config.content != "off",
                                            options=config.catalog_options,
                                            strict=config.read.strict)
        if changes:
            table, new_ids, info = _apply_updates(table, new_ids, info, item_ids, changes)
        content = _content(config, table, info)
        if content is None:  # no content: items the log lacks cannot be served
            table = table.slice(0, n_model)
            new_ids, info["new_items"] = new_ids[:0], 0
    side = CatalogSide(table, info, new_ids, content)
    if content is None:
        return side
    with timer.stage("index content"):
        side.content_index = build_index(content[0], config.item_index, config.seed)
    with timer.stage("map new items"):
        # Catalog-only items get a CF vector for similar items (the hybrid's CF part) and,
        # unless the weight is 0, a recommendation vector: both predicted from content.
        # The maps are stored too: the live catalog (PUT /items) gives an item added
        # after the build its vectors the same way (svdfaiss.live_catalog).
        cf_weights, similar_r2 = map_content(content[0][:n_model], similarity_basis)
        side.maps["content_to_cf.npy"] = cf_weights
        side.new_vectors = normalize_rows(
            np.asarray(content[0][n_model:], dtype=np.float32) @ cf_weights)
        side.new_similar = {
            "items": int(side.new_vectors.shape[0]), "cf_share": NEW_ITEM_CF_SHARE,
            "popularity_prior": NEW_ITEM_POPULARITY_PRIOR, "ridge": NEW_ITEM_RIDGE,
            "r2": round(similar_r2, 4),
            "hybrid": "a * cf + (1 - a) * content + popularity_prior * log(1 + n), a = "
                      "cf_share, cf the cosine of the CF vector the item's content predicts, "
                      "n the candidate's training interactions"}
        if config.new_item_weight > 0:
            weights, r2 = map_content(content[0][:n_model], rec_items)
            rec_weights = (np.float32(config.new_item_weight) * weights).astype(np.float32)
            side.maps["content_to_rec.npy"] = rec_weights
            side.new_factors = (content[0][n_model:] @ rec_weights).astype(np.float32)
            side.new_map = {"items": int(side.new_factors.shape[0]),
                            "weight": config.new_item_weight, "ridge": NEW_ITEM_RIDGE,
                            "r2": round(r2, 4),
                            "map": "ridge regression from content vectors to the "
                                   "recommendation vectors of the model's items"}
        if not new_ids.size:  # no catalog-only item: the maps stay for live items
            side.new_vectors, side.new_factors = None, None
            side.new_similar = {**side.new_similar, "items": 0}
            if side.new_map is not None:
                side.new_map = {**side.new_map, "items": 0}
    return side


def precompute_similar(config: BuildConfig, items_index: Any, item_vectors: np.ndarray,
                       k: int, components: np.ndarray, co_users: np.ndarray,
                       catalog: CatalogSide | None,
                       item_counts: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The stored neighbours (both engines): cf, or hybrid when the catalog has content
    (`item_counts`: each item's training interactions, for the CF share), under the
    evidence rule."""
    content = None if catalog is None else catalog.content
    if content is None or catalog is None or catalog.content_index is None:
        similar = precompute_neighbours(items_index, item_vectors, k)
    else:
        share = cf_share(item_counts(), config.hybrid_interactions)
        similar = precompute_hybrid(items_index, item_vectors, catalog.content_index,
                                    content[0], share, k, components)
    return keep_evidence(similar, components, co_users, None if content is None else content[0])


def similar_cache_section(similar: tuple[np.ndarray, np.ndarray] | None,
                          indexes: dict[str, Any], catalog: CatalogSide | None
                          ) -> dict[str, Any] | None:
    """The manifest's `similar_cache`."""
    if similar is None:
        return None
    hybrid = catalog is not None and catalog.content is not None
    return {"k": int(similar[0].shape[1]), "source": indexes["items"]["type"],
            "mode": "hybrid" if hybrid else "cf"}


ModelVectors = tuple[np.ndarray, Embedding, np.ndarray, np.ndarray, np.ndarray | None,
                     np.ndarray]


def _svd_vectors(factors: Factors, rating: Any, inter: Interactions, components: np.ndarray,
                 config: BuildConfig, shrinkage: float) -> ModelVectors:
    """The SVD model's vectors: (similar-items vectors, recommendation embedding, the basis
    content maps catalog-only items to, sampled users' query vectors, similar-users
    vectors or None, the sampled users)."""
    s = factors.singular_values.astype(np.float32)
    similarity_basis = factors.item_factors * (s ** np.float32(config.gamma))
    item_vectors = normalize_rows(similarity_basis)
    if rating is None:
        embedding = shrinkage_embedding(factors, shrinkage, inter.n_items)
    else:  # rows are not folded: every user has [p_u, 1], every item [q_i, b_i]
        augmented = rating.item_vectors()
        embedding = Embedding(augmented, augmented, np.ones(0, dtype=np.float32), 0.0)
    # Users whose recommendations the builder checks against exact scoring (recall.py),
    # with their query vectors taken before the similar-users rows overwrite U.
    sampled = recall.sample_users(evidence.users_with_evidence(components, inter.matrix),
                                  seed=config.seed)
    if rating is None:
        sample_queries = (factors.user_factors[sampled]
                          * (s * embedding.component_weights)).astype(np.float32)
    else:
        sample_queries = rating.user_vectors()[sampled].astype(np.float32)
    user_vectors = None
    if config.user_index is not None and rating is not None:
        if config.rating_k > 0:  # biases alone say nothing about who is alike
            user_vectors = normalize_rows(rating.user_factors.astype(np.float32))
    elif config.user_index is not None:  # in place: at 4.2M users every copy is 1 GB
        user_vectors = factors.user_factors  # U S F = X V F: each user's own query
        user_vectors *= s * embedding.component_weights
        normalize_rows(user_vectors, in_place=True)
        # A user without evidence has a vector of rounding noise: 0, never a neighbour
        # with a confident score (svdfaiss.evidence).
        user_vectors[~evidence.users_with_evidence(components, inter.matrix)] = 0
    return item_vectors, embedding, similarity_basis, sample_queries, user_vectors, sampled


def _neural_vectors(neural: NeuralModel, inter: Interactions, components: np.ndarray,
                    config: BuildConfig, block: int = 65_536) -> ModelVectors:
    """The neural model's vectors, as _svd_vectors gives the SVD's: items score by their
    exported vectors, rows fold in through the encoder (ELSA's linear one is the basis
    itself, like the SVD's), similar items and users are cosines of the item embeddings
    and of the users' query vectors without the bias coordinate."""
    linear = neural.linear_fold()
    items = np.ascontiguousarray(neural.item_vectors, dtype=np.float32)
    embedding = Embedding(items if linear is None else linear, items,
                          np.ones(0, dtype=np.float32), 0.0)
    x = weight_rows(inter.matrix, WeightingParams(scheme="binary"),
                    np.ones(inter.n_items, dtype=np.float32))
    queries = np.vstack([neural.encoder.encode(x[start : start + block])
                         for start in range(0, inter.n_users, block)])
    with_evidence = evidence.users_with_evidence(components, inter.matrix)
    sampled = recall.sample_users(with_evidence, seed=config.seed)
    sample_queries = np.ascontiguousarray(queries[sampled])
    user_vectors = None
    if config.user_index is not None:
        user_vectors = normalize_rows(np.ascontiguousarray(
            queries[:, :-1] if neural.encoder.append_one else queries))
        user_vectors[~with_evidence] = 0  # no evidence: never a neighbour (evidence.py)
    basis = np.ascontiguousarray(neural.similarity_vectors, dtype=np.float32)
    return normalize_rows(basis.copy()), embedding, basis, sample_queries, user_vectors, sampled


def _read_catalog_updates(config: BuildConfig,
                          ) -> tuple[list[CatalogChange], list[dict[str, Any]]]:
    """The changes of every --catalog-updates log, in order, and what each log held."""
    changes: list[CatalogChange] = []
    infos = []
    for path in config.catalog_updates:
        read, rejected, lines = read_changes(Path(path), config.read.strict)
        changes += read
        infos.append({"path": str(path), "sha256": bundle.sha256_file(Path(path)),
                      "lines": lines, "changes": len(read), "rejected": rejected.total,
                      "rejected_by_reason": rejected.counts,
                      "rejected_examples": rejected.examples,
                      "last_change_time": max((c.time for c in read), default=None)})
    return changes, infos


def _apply_updates(table: pa.Table, new_ids: np.ndarray, info: dict[str, Any],
                   item_ids: np.ndarray, changes: list[CatalogChange],
                   ) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """The catalog rows with the live catalog's changes applied: the model's items in their
    order, then the catalog-only items sorted (read_catalog's layout)."""
    ids = [i.decode("utf-8") for i in item_ids.tolist()] + [
        i.decode("utf-8") for i in new_ids.tolist()]
    table, ids, withdrawn = apply_to_catalog(table, ids, changes)
    n = int(item_ids.size)
    new_rows = sorted(range(n, len(ids)), key=lambda r: ids[r].encode("utf-8"))
    table = table.take(pa.array([*range(n), *new_rows], type=pa.int64()))
    width = max([1, *(len(ids[r].encode("utf-8")) for r in new_rows)])
    new_ids = np.array([ids[r].encode("utf-8") for r in new_rows], dtype=f"S{width}")
    state = final_state(changes)
    info = {**info, "new_items": len(new_rows),
            "live_updates": {"items_put": sum(c.op == "put" for c in state.values()),
                             "items_withdrawn": len(withdrawn)}}
    return table, new_ids, info


def _content(config: BuildConfig, table: pa.Table, info: dict[str, Any],
             ) -> tuple[np.ndarray, dict[str, Any], ContentEncoder | None] | None:
    """Content vectors for the catalog rows, what made them and the fitted encoder, or None
    when off (or auto and nothing to use)."""
    if config.content == "off":
        return None
    try:
        return fit_content(table, config.content_params, config.seed)
    except InvalidInput as exc:
        if config.content == "on" or config.content_params.text_columns is not None or \
                config.content_params.category_column is not None:
            raise InvalidInput(f"{info['path']}: {exc}") from None
        return None


def store_recommendations(config: BuildConfig, writer: bundle.BundleWriter,
                          manifest: dict[str, Any], timer: _Timer, rec_kind: str) -> None:
    """The `store recommendations` stage of both engines, over the files written so far:
    sets the manifest's `stored_recommendations` (and its timings, this stage included)."""
    counts = manifest["counts"]
    stored_k, why = config.resolved_stored_recommendations(counts["users"], counts["items"],
                                                           rec_kind)
    manifest["stored_recommendations"] = {"k": 0, "reason": why}
    if stored_k > 0:
        so_far = sum(timer.seconds.values())
        with timer.stage("store recommendations"):
            manifest["stored_recommendations"] = _store_recommendations(
                writer, manifest, stored_k, why,
                max(so_far, STORED_BUDGET_MIN_SECONDS) if why == "auto" else None)
        manifest["timings_seconds"] = dict(timer.seconds)


def _store_recommendations(writer: bundle.BundleWriter, manifest: dict[str, Any], k: int,
                           why: str, budget: float | None) -> dict[str, Any]:
    """Each user's k recommendations, as the query computes them over the files written so
    far (query.batch.stored_rows), saved beside them; the manifest section that says so.
    With a `budget` (seconds, auto), a sample of users is timed first, and nothing is
    stored when every user would take longer."""
    from svdfaiss.query.batch import stored_rows
    from svdfaiss.query.model import LoadedModel
    from svdfaiss.query.recommend import ranks_new_items

    model = LoadedModel(writer.tmp, {**manifest, "files": {name: {} for name in writer.files}})
    threads = max(1, min(2, os.cpu_count() or 1))
    if budget is not None and model.n_users > STORED_PROBE_USERS:
        probe = np.linspace(0, model.n_users - 1, STORED_PROBE_USERS).astype(np.int64)
        start = time.perf_counter()
        stored_rows(model, k, probe, threads)
        estimate = (time.perf_counter() - start) * model.n_users / probe.size
        if estimate > budget:
            return {"k": 0, "reason": (
                f"storing {model.n_users:,} users' recommendations would take about "
                f"{estimate:.0f} s (timed on {probe.size:,} users), more than the build so far "
                f"({budget:.0f} s); --stored-recommendations {k} stores them anyway")}
    start = time.perf_counter()
    ids, scores, popular = stored_rows(model, k, threads=threads)
    seconds = time.perf_counter() - start
    writer.save_array("stored_rec_ids.npy", ids)
    writer.save_array("stored_rec_scores.npy", scores)
    writer.save_array("stored_rec_popular.npy", popular)
    return {"k": k, "reason": why, "users": model.n_users,
            "popular_rows": int(popular.sum()),
            "ranks_new_items": ranks_new_items(model, "hybrid"),
            "seconds": round(seconds, 2), "threads": threads,
            "answers": "plain recommendations (seen items excluded, popular fallback, no "
                       "filter, list, explanation or live events, k up to this) of known "
                       "users, when no scores tie among the first k + 1"}


def precompute_hybrid(cf_index: Any, cf_vectors: np.ndarray, content_index: Any,
                      content: np.ndarray, share: np.ndarray, k: int,
                      components: np.ndarray | None = None,
                      batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each model item's k hybrid neighbours (content.fuse) over the union of its
    hybrid_pool(k) nearest by CF and by content, as a query would fuse them; the ids may name
    catalog-only items (>= the model's items). A candidate outside the item's
    co-interaction component (`components`) gets no CF part: the log does not relate them."""
    n = cf_vectors.shape[0]
    pool = hybrid_pool(k) + 1  # the item itself comes back too
    ids_out = np.full((n, k), -1, dtype=np.int32)
    scores_out = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        _, by_cf = search(cf_index, cf_vectors[rows], min(pool, n))
        _, by_content = search(content_index, content[rows], min(pool, content.shape[0]))
        candidates = np.hstack([by_cf, by_content]).astype(np.int64)
        linked = None
        if components is not None:
            model_candidates = np.where((candidates >= 0) & (candidates < n), candidates, 0)
            linked = components[model_candidates] == components[rows][:, None]
        scores = hybrid_scores(rows, candidates, cf_vectors, content, share[rows],
                               cf_linked=linked)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids_out[rows] = np.take_along_axis(candidates, top, axis=1)
        scores_out[rows] = np.take_along_axis(scores, top, axis=1)
    ids_out[~np.isfinite(scores_out)] = -1
    return ids_out, scores_out


def precompute_neighbours(index: Any, vectors: np.ndarray, k: int,
                          batch: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """Each item's k nearest other items through the similar-items index: (ids, scores).

    Rows hold -1 / -inf where the index returned fewer than k.
    """
    n = vectors.shape[0]
    ids_out = np.full((n, k), -1, dtype=np.int32)
    scores_out = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        scores, ids = search(index, vectors[rows], k + 1)
        is_self = ids == rows[:, None]
        no_self = ~is_self.any(axis=1)
        is_self[no_self, -1] = True  # the item itself was not among them: drop the last
        ids_out[rows] = ids[~is_self].reshape(rows.size, k)
        scores_out[rows] = scores[~is_self].reshape(rows.size, k)
    scores_out[ids_out < 0] = -np.inf
    return ids_out, scores_out


def keep_evidence(similar: tuple[np.ndarray, np.ndarray], components: np.ndarray,
                  co_users: np.ndarray, content: np.ndarray | None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stored neighbours under the evidence rule (svdfaiss.evidence): rows of items the
    query answers otherwise (no evidence; or answered as cf with fewer than MIN_CO_USERS
    co-users) are emptied, so the query computes their answer; cf neighbours outside an
    item's component are dropped (hybrid ones stay: their CF part is already 0), and a row
    left short is answered by the query too. `content`: the content vectors of a hybrid
    cache (None: a cf cache)."""
    ids, scores = similar
    n = components.size
    hybrid = content is not None
    # Rows answered by cf at query time (no content: hybrid is cf) with few co-users rank
    # by co-occurrence there.
    by_cf = np.ones(n, dtype=bool) if content is None else ~np.any(content[:n] != 0, axis=1)
    speaks = ~evidence.isolated(components) & ~(by_cf & (co_users < evidence.MIN_CO_USERS))
    safe = np.where((ids >= 0) & (ids < n), ids, 0)
    crosses = (ids >= 0) & (ids < n) & (components[safe] != components[:, None])
    drop = ~speaks[:, None] | (np.zeros_like(crosses) if hybrid else crosses)
    ids = np.where(drop, -1, ids).astype(np.int32)
    scores = np.where(drop, -np.inf, scores).astype(np.float32)
    return ids, scores


def _write_files(
    writer: bundle.BundleWriter,
    inter: Interactions,
    factors: Factors | None,
    item_vectors: np.ndarray,
    embedding: Embedding,
    scale: np.ndarray,
    items_index: Any,
    mips_index: Any,
    users_index: Any,
    catalog: CatalogSide | None,
) -> None:
    writer.save_array("item_ids.npy", inter.item_ids)
    writer.save_array("user_ids.npy", inter.user_ids)
    writer.save_array("item_vectors.npy", item_vectors)
    writer.save_array("item_factors.npy", embedding.items)
    if not embedding.shared:
        writer.save_array("fold_factors.npy", embedding.fold)
    if factors is not None:
        writer.save_array("singular_values.npy", factors.singular_values.astype(np.float32))
    writer.save_array("item_scale.npy", scale)
    matrix = inter.matrix
    writer.save_array("rows_indptr.npy", matrix.indptr.astype(np.int64))
    writer.save_array("rows_indices.npy", matrix.indices.astype(np.int32))
    writer.save_array("rows_values.npy", matrix.data.astype(np.float32))
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


def _index_meta(file: str, index: Any, params: IndexParams, metric: str,
                purpose: str) -> dict[str, Any]:
    resolved = params.resolved(index.ntotal).to_dict()
    return {"file": file, "type": kind_of(index), "metric": metric, "purpose": purpose,
            "rows": int(index.ntotal), "dim": int(index.d), "params": resolved}


def _recall_fields(measured: dict[str, Any]) -> dict[str, Any]:
    return {"recall_at_10": measured.get("recall_at_10"),
            "recall_meets_target": measured.get("meets_target"), "recall": measured}


def _users_index_meta(index: Any, params: IndexParams, measured: dict[str, Any] | None
                      ) -> dict[str, Any]:
    """The similar-users index's manifest entry, with its measured recall and the efSearch
    or nprobe the builder tuned (recall.measure_users), which users.faiss holds."""
    meta = _index_meta("users.faiss", index, params, "cosine", "similar users")
    inner = faiss.downcast_index(index)
    if meta["type"] == "hnsw":
        meta["params"]["hnsw_ef_search"] = int(inner.hnsw.efSearch)
    elif meta["type"] == "ivf":
        meta["params"]["ivf_nprobe"] = int(inner.nprobe)
    return meta if measured is None else {**meta, **_recall_fields(measured)}


def _rec_index_meta(index: Any, params: IndexParams, measured: dict[str, Any]
                    ) -> dict[str, Any]:
    """The recommendation index's manifest entry, with its measured recall."""
    recall_fields = _recall_fields(measured)
    metric, purpose = "inner product (MIPS reduction)", "recommendations"
    if not isinstance(index, BandedIndex):
        meta = _index_meta("items_mips.faiss", index, params, metric, purpose)
        if meta["type"] == "ivf":
            meta["params"]["ivf_nprobe"] = int(index.nprobe)  # as tuned (recall.py)
        return {**meta, **recall_fields}
    tail = index.tail
    rows = int(tail.ntotal) + int(index.head.size)
    resolved = params.resolved(rows).to_dict()
    resolved.update(mips_head=int(index.head.size), ivf_nlist=int(tail.nlist),
                    ivf_nprobe=int(tail.nprobe))
    return {"file": "items_mips.faiss", "type": "banded", "metric": metric,
            "purpose": purpose, "rows": rows, "dim": int(tail.d),
            "head_rows": int(index.head.size), "head_file": "items_mips_head.npy",
            "tail_max_norm": index.tail_max_norm,
            "bands": "the head_rows items of the largest norms scored exactly; the other "
                     "rows in an IVF (the file, its own MIPS reduction) searched only when "
                     "|q| * tail_max_norm exceeds the k-th head score",
            "tail": {"type": "ivf", "rows": int(tail.ntotal), "nlist": int(tail.nlist),
                     "nprobe": int(tail.nprobe)},
            "params": resolved, **recall_fields}


def _rows_section(inter: Interactions, config: BuildConfig) -> dict[str, Any]:
    """The manifest's `rows`: read, used and rejected by reason, merged, filtered."""
    return {
        "read": inter.rows_read,
        "used": inter.rows_used,
        "rejected": inter.rejected.total,
        "rejected_by_reason": inter.rejected.counts,
        "rejected_examples": inter.rejected.examples,
        "duplicates_merged": inter.duplicates_merged,
        "removed_by_filters": inter.filtered_rows,
        "removed_by_min_rating": inter.removed_by_min_rating,
        "min_rating": config.read.min_rating,
    }


def _counts_section(inter: Interactions) -> dict[str, Any]:
    """The manifest's `counts`: the matrix's shape and what the filters removed."""
    return {
        "users": inter.n_users,
        "items": inter.n_items,
        "interactions": int(inter.matrix.nnz),
        "density": inter.density,
        "users_removed_by_filters": inter.filtered_users,
        "items_removed_by_filters": inter.filtered_items,
    }


def _manifest(
    config: BuildConfig,
    version: str,
    input_info: dict[str, Any],
    rows: dict[str, Any],
    counts: dict[str, Any],
    weighting: WeightingParams,
    factors: Factors | None,
    embedding: Embedding,
    indexes: dict[str, Any],
    catalog_info: dict[str, Any] | None,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The manifest of a new bundle (both engines; the files are added at publish)."""
    return {
        "format_version": bundle.FORMAT_VERSION,
        "model": config.model,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "builder_version": __version__,
        "input": input_info,
        "rows": rows,
        "parameters": {
            "algorithm": config.algorithm,
            "k": factors.k if factors is not None else config.neural.dim,
            "k_requested": config.k if config.k is not None else "auto",
            "objective": config.objective,
            "shrinkage": config.resolved_shrinkage(),
            "shrinkage_lambda": embedding.shrinkage_lambda,
            "gamma": config.gamma,
            "solver": config.solver,
            "seed": config.seed,
            "min_user_interactions": config.min_user_interactions,
            "min_item_interactions": config.min_item_interactions,
            "weighting": weighting.to_dict(),
        },
        "counts": counts,
        # the SVD's; a neural model has none (its record is the manifest's "neural")
        "factorization": None if factors is None else {
            "k": factors.k,
            "singular_values": [float(v) for v in factors.singular_values],
            "explained_energy": factors.explained_energy,
            "component_weights": [float(v) for v in embedding.component_weights],
            "dtype": str(factors.item_factors.dtype),
        },
        "metric": "cosine for similar items and users; inner product for recommendations",
        "indexes": indexes,
        "catalog": catalog_info,
        "timings_seconds": dict(seconds),
        "evaluation": None,
    }
