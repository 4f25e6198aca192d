"""The served models: each model's holder (load, verify, swap) and the experiment over them.

One immutable `Recommender` is held by `ModelHolder`. A reload builds the new one completely
(checksums verified before FAISS parses a byte) in a worker thread, then swaps a single
reference; a request takes that reference once, so in-flight requests finish on the model
they started with. A bundle that fails to load is refused and the old one keeps serving.
"""

import asyncio
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import faiss as _faiss

from svdfaiss import bundle
from svdfaiss.config import Settings
from svdfaiss.errors import InvalidBundle, NoBundle
from svdfaiss.events import LiveEvents
from svdfaiss.experiment import (
    Experiment,
    ExposureLog,
    RecommendationIds,
    Variant,
)
from svdfaiss.live_catalog import LiveCatalog
from svdfaiss.query import live as live_query
from svdfaiss.recommender import Recommender
from svdfaiss.service import schemas
from svdfaiss.service.metrics import Metrics

log = logging.getLogger("svdfaiss.service")
faiss: Any = _faiss


@dataclass(frozen=True)
class Loaded:
    """A loaded model and when and how fast it was loaded."""

    recommender: Recommender
    loaded_at: dt.datetime
    load_seconds: float


class ModelHolder:
    """Holds the serving model; `reload` swaps it only for a completely loaded, verified one."""

    def __init__(self, settings: Settings, metrics: Metrics, model: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.current: Loaded | None = None
        self._lock = asyncio.Lock()
        # The live catalog over the current model (query.live): rebuilt on each change.
        self.view: Recommender | None = None
        self.encodings = live_query.Encodings()

    @property
    def version(self) -> str | None:
        return self.current.recommender.version if self.current else None

    def _load(self) -> Loaded:
        start = time.perf_counter()
        rec = Recommender.load(self.settings.index_dir, self.model,
                               verify=self.settings.verify_checksums,
                               mmap=self.settings.mmap,
                               trust_stamp=self.settings.trust_hash_stamp)
        return Loaded(rec, dt.datetime.now(dt.UTC), time.perf_counter() - start)

    async def reload(self, force: bool = False) -> schemas.ReloadResult:
        """Load the version CURRENT names unless it is already served."""
        async with self._lock:
            directory = bundle.model_dir(self.settings.index_dir, self.model)
            try:
                target = bundle.read_current(directory)
                if not force and target == self.version:
                    self.metrics.reloads.labels("unchanged").inc()
                    return schemas.ReloadResult(result="unchanged", model=self.model,
                                                version=self.version)
                loaded = await anyio.to_thread.run_sync(self._load)
            except (InvalidBundle, NoBundle, OSError, ValueError) as exc:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload of model %s refused, still serving %s: %s",
                          self.model, self.version, exc)
                return schemas.ReloadResult(result="refused", model=self.model,
                                            version=self.version, detail=str(exc))
            previous = self.current
            self.current = loaded  # the swap: one reference assignment
            rec = loaded.recommender
            if previous is not None:
                self.metrics.bundle.remove(previous.recommender.model,
                                           previous.recommender.version)
            self.metrics.bundle.labels(rec.model, rec.version).set(1)
            self.metrics.load_seconds.labels(rec.model).set(loaded.load_seconds)
            self.metrics.loaded_at.labels(rec.model).set(loaded.loaded_at.timestamp())
            self.metrics.reloads.labels("loaded").inc()
            log.info("serving model %s version %s (loaded in %.2f s)", rec.model, rec.version,
                     loaded.load_seconds)
            return schemas.ReloadResult(result="loaded", model=rec.model, version=rec.version)

    def get(self) -> Recommender:
        """The serving model, with the live catalog over it; 503 when none is loaded."""
        _single_threaded_faiss()
        serving = self.serving()
        if serving is None:
            raise NoBundle(f"no bundle loaded for model {self.model!r} from "
                           f"{self.settings.index_dir}")
        return serving

    def serving(self) -> Recommender | None:
        """The live view over the current model (the model itself while a reload has not
        rebuilt the view yet), or None before any load."""
        current, view = self.current, self.view
        if current is None:
            return None
        if view is not None and getattr(view, "base", view) is current.recommender:
            return view
        return current.recommender

    def apply_catalog(self, catalog: LiveCatalog) -> None:
        """Rebuild the view from the live catalog's changes (copy-on-write: the view being
        searched is never changed)."""
        current = self.current
        if current is None:
            return
        _, changes = catalog.changes()
        rec = current.recommender
        self.view = live_query.view(rec, live_query.live_items(rec, changes, self.encodings))


class Models:
    """The served models (one holder each) and the experiment that routes users to them."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.experiment = Experiment(settings.resolved_experiment())
        self.holders = {m: ModelHolder(settings, metrics, m) for m in self.experiment.models}
        self.metrics = metrics
        # Live rows, kept in step with the events log (None when live events are off).
        self.live: LiveEvents | None = None
        # The live catalog, kept in step with its log (None while it is off).
        self.catalog: LiveCatalog | None = None
        self._catalog_version = -1
        self._catalog_bundle: str | None = None  # the primary version the log was replayed on
        self._catalog_lock = threading.Lock()
        # Each variant's counter child, looked up once rather than per request.
        self.counted = {v.name: metrics.variants.labels(self.experiment.name, v.name, v.model)
                        for v in self.experiment.variants}
        self.ids = RecommendationIds()
        # Each answer's exposure, buffered (None when exposures are not logged).
        self.exposures: ExposureLog | None = (
            ExposureLog(settings.resolved_exposures_log())
            if settings.logs_exposures(len(self.experiment.variants)) else None)

    @property
    def primary(self) -> ModelHolder:
        """The control variant's model: it answers requests with no user to assign."""
        return self.holders[self.experiment.control.model]

    def pick(self, user_id: str | None = None, model: str | None = None,
             ) -> tuple[Recommender, Variant]:
        """The model for a request: `model` when given, else the user's variant, else the
        control; counted by variant."""
        if model is not None:
            variant = self.experiment.for_model(model)
        elif user_id is not None:
            variant = self.experiment.assign(user_id)
        else:
            variant = self.experiment.control
        self.sync_catalog()
        rec = self.holders[variant.model].get()
        self.counted[variant.name].inc()
        return rec, variant

    def sync_catalog(self) -> None:
        """Apply what other workers (or this one) appended to the catalog log since the last
        look: two `stat` calls when nothing was; the views are rebuilt on a change."""
        catalog = self.catalog
        if catalog is None:
            return
        catalog.sync()
        if catalog.version == self._catalog_version:
            return
        with self._catalog_lock:
            version = catalog.version
            if version == self._catalog_version:
                return
            for holder in self.holders.values():
                holder.apply_catalog(catalog)
            self._catalog_version = version
            self.metrics.live_items.set(len(catalog))

    def answer_id(self, variant: Variant, user_id: str | None = None,
                  forced: bool = False) -> str:
        """A new answer's recommendation id, its exposure buffered for the log. `forced`:
        the request chose the model (`model=`) instead of being assigned."""
        rid = self.ids.issue(variant.name)
        if self.exposures is not None:
            self.exposures.record(time.time(), self.experiment.name, variant.name, user_id,
                                  rid, forced)
        return rid

    async def reload(self, force: bool = False) -> list[schemas.ReloadResult]:
        """Reload every model; live rows start over when the primary model changes."""
        before = self.primary.version
        results = [await holder.reload(force) for holder in self.holders.values()]
        current = self.primary.current
        if self.live is not None and current is not None and current.recommender.version \
                != before:
            rec = current.recommender
            applied = await anyio.to_thread.run_sync(self.live.reset, rec.manifest,
                                                     rec.feedback, rec.knows_item)
            self.metrics.live_users.set(len(self.live))
            log.info("live rows: %d events logged after model %s version %s applied from %s",
                     applied, rec.model, rec.version, self.live.follower.path)
        if self.catalog is not None and current is not None and any(
                r.result == "loaded" for r in results):
            catalog = self.catalog
            rec = current.recommender
            if rec.version != self._catalog_bundle:  # the cutoff is the primary bundle's
                self._catalog_bundle = rec.version
                changed = await anyio.to_thread.run_sync(catalog.reset, rec.manifest)
                log.info("live catalog: %d changes logged after model %s version %s applied "
                         "from %s (%d items live)", changed, rec.model, rec.version,
                         catalog.path, len(catalog))
            self._catalog_version = -1  # every reloaded holder's view is rebuilt
            await anyio.to_thread.run_sync(self.sync_catalog)
        return results


_thread_state = threading.local()


def _single_threaded_faiss() -> None:
    """Set FAISS to one OpenMP thread in the calling thread (OpenMP settings are per thread).

    `svdfaiss serve` sets OMP_NUM_THREADS=1 before FAISS loads; this covers an app created
    in a process that loaded FAISS earlier.
    """
    if not getattr(_thread_state, "faiss_single", False):
        faiss.omp_set_num_threads(1)
        _thread_state.faiss_single = True

