"""Prometheus metrics of the service: requests, latency, bundles, reloads, events, variants
and the events attributed to each variant.

With several worker processes each counts its own requests; prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, which `svdfaiss serve --workers N` sets to a
fresh folder) keeps every process's values in files there, and a scrape of any worker adds
them up, so /metrics reads the same totals whichever worker answers.
"""

import os
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Gauges across processes: the largest value (every worker loads the same bundle and
        # follows the same events log). Ignored in a single process.
        across: Literal["max"] = "max"
        self.requests = Counter("svdfaiss_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("svdfaiss_request_duration_seconds",
                                 "HTTP request latency by route", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bundle = Gauge("svdfaiss_bundle_info", "The loaded bundle (value 1)",
                            ["model", "version"], registry=self.registry,
                            multiprocess_mode=across)
        self.load_seconds = Gauge("svdfaiss_bundle_load_seconds",
                                  "Seconds the last successful load of each model took",
                                  ["model"], registry=self.registry,
                                  multiprocess_mode=across)
        self.loaded_at = Gauge("svdfaiss_bundle_loaded_timestamp_seconds",
                               "Unix time of each model's last successful load", ["model"],
                               registry=self.registry, multiprocess_mode=across)
        self.reloads = Counter("svdfaiss_reloads", "Bundle loads by result (loaded, unchanged, "
                               "refused)", ["result"], registry=self.registry)
        self.events = Counter("svdfaiss_events", "POST /events by result (applied, "
                              "unknown_item: logged only, refused: not logged)", ["result"],
                              registry=self.registry)
        self.variants = Counter("svdfaiss_variant_requests", "Requests routed to each "
                                "experiment variant", ["experiment", "variant", "model"],
                                registry=self.registry)
        self.recommendation_cache = Counter(
            "svdfaiss_recommendation_cache", "Plain recommendations on the fast path by "
            "cache result (hit; miss: computed and kept; live: the user has live events, "
            "computed and not kept)", ["result"], registry=self.registry)
        self.experiment_events = Counter(
            "svdfaiss_experiment_events", "Events logged by the experiment variant they are "
            "attributed to and their type (none: sent without a type)",
            ["experiment", "variant", "type"], registry=self.registry)
        self.live_users = Gauge("svdfaiss_live_users", "Users with live events in memory",
                                registry=self.registry, multiprocess_mode=across)
        self.catalog_changes = Counter("svdfaiss_catalog_changes", "Live catalog changes by "
                                       "result (put, delete, refused: not logged)", ["result"],
                                       registry=self.registry)
        self.live_items = Gauge("svdfaiss_live_items", "Items the live catalog holds (new, "
                                "changed, withdrawn) over the bundle", registry=self.registry,
                                multiprocess_mode=across)

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body and its content type: every process's values in multiprocess
        mode, this app's registry otherwise."""
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

