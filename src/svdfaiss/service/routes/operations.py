"""The operations routes: liveness, readiness, the serving bundle, Prometheus metrics."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from svdfaiss.service import schemas
from svdfaiss.service.deps import MetricsDep, ModelsDep
from svdfaiss.service.draining import DRAINING
from svdfaiss.service.errors import problem

router = APIRouter()


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """The process is up (whether or not a bundle is loaded); async, so no thread hop."""
    return {"status": "ok"}


@router.get("/readyz", response_model=schemas.Ready, tags=["operations"])
def readyz(models: ModelsDep) -> Any:
    """Every served model has a bundle loaded: the control variant's bundle (when, its
    size), and each variant's model and version; 503 before, and while draining."""
    if DRAINING.is_set():
        return problem(503, "draining: the service is shutting down")
    missing = [m for m, h in models.holders.items() if h.current is None]
    current = models.primary.current
    if missing or current is None:
        return problem(503, f"no bundle loaded for model {missing[0]!r}")
    rec = current.recommender
    counts = rec.manifest["counts"]
    variants = [{"variant": v.name, "model": v.model, "weight": v.weight,
                 "version": models.holders[v.model].version}
                for v in models.experiment.variants]
    return {"model": rec.model, "version": rec.version,
            "loaded_at": current.loaded_at.isoformat(),
            "load_seconds": round(current.load_seconds, 4),
            "counts": {"users": counts["users"], "items": counts["items"],
                       "interactions": counts["interactions"]},
            "indexes": {k: v["type"] for k, v in rec.manifest["indexes"].items()},
            "experiment": models.experiment.name, "variants": variants}


# What the build measured of an index's recall against exact scoring (svdfaiss.recall).
RECALL_FIELDS = ("recall_at_10", "recall_meets_target", "recall")


@router.get("/model", response_model=schemas.ModelInfo, tags=["operations"])
def model_info(models: ModelsDep, model: Annotated[str | None, Query(
        min_length=1, max_length=128,
        description="one of the served models (default: the control's)")] = None) -> Any:
    """The serving bundle: its parameters, factorization, indexes and the evaluation
    stored at build time (`svdfaiss build --evaluate`; null without it)."""
    rec, _ = models.pick(None, model)
    manifest = rec.manifest
    return {"model": rec.model, "version": rec.version,
            "created_at": manifest.get("created_at"),
            "builder_version": manifest.get("builder_version"),
            "counts": manifest["counts"], "parameters": manifest["parameters"],
            "explained_energy": (manifest.get("factorization") or {}).get("explained_energy"),
            "neural": _neural_summary(manifest.get("neural")),
            "indexes": {k: {"type": v["type"], "rows": v["rows"],
                            **{f: v[f] for f in RECALL_FIELDS if f in v}}
                        for k, v in manifest["indexes"].items()},
            "evidence": manifest.get("evidence"),
            "similar_cache": manifest.get("similar_cache"),
            "stored_recommendations": manifest.get("stored_recommendations"),
            "content": manifest.get("content"),
            "evaluation": manifest.get("evaluation")}


def _neural_summary(neural: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's neural record without its per-epoch history and encoder files."""
    if neural is None:
        return None
    training = {k: v for k, v in neural["training"].items() if k != "history"}
    return {"algorithm": neural["algorithm"], "architecture": neural["architecture"],
            "parameters": neural["parameters"], "training": training}


@router.get("/metrics", tags=["operations"], response_class=Response)
def prometheus(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency by route and status, bundle, reloads."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
