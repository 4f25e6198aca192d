"""Prometheus metrics of the service: requests, latency, bundles, reloads, events, variants."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("svdfaiss_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("svdfaiss_request_duration_seconds",
                                 "HTTP request latency by route", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bundle = Gauge("svdfaiss_bundle_info", "The loaded bundle (value 1)",
                            ["model", "version"], registry=self.registry)
        self.load_seconds = Gauge("svdfaiss_bundle_load_seconds",
                                  "Seconds the last successful load of each model took",
                                  ["model"], registry=self.registry)
        self.loaded_at = Gauge("svdfaiss_bundle_loaded_timestamp_seconds",
                               "Unix time of each model's last successful load", ["model"],
                               registry=self.registry)
        self.reloads = Counter("svdfaiss_reloads", "Bundle loads by result (loaded, unchanged, "
                               "refused)", ["result"], registry=self.registry)
        self.events = Counter("svdfaiss_events", "POST /events by result (applied, "
                              "unknown_item: logged only, refused: not logged)", ["result"],
                              registry=self.registry)
        self.variants = Counter("svdfaiss_variant_requests", "Requests routed to each "
                                "experiment variant", ["experiment", "variant", "model"],
                                registry=self.registry)
        self.live_users = Gauge("svdfaiss_live_users", "Users with live events in memory",
                                registry=self.registry)

