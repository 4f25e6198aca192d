"""Service settings: environment variables `SVDFAISS_*`, with the same names as CLI flags."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from svdfaiss.errors import InvalidInput
from svdfaiss.experiment import ExperimentConfig, Variant, describe, read_experiment

MIN_TOKEN_LENGTH = 16


def load_config_file(path: Path) -> tuple[list[str], list[str]]:
    """Put the SVDFAISS_* settings of a .env-style file (KEY=value lines) into the
    environment, below what the environment already holds: flags > environment > file >
    defaults. Returns the keys applied and the keys ignored (not SVDFAISS_*)."""
    from dotenv import dotenv_values

    if not path.is_file():
        raise InvalidInput(f"{path}: no such config file")
    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the config file ({exc})") from None
    applied, ignored = [], []
    for key, value in values.items():
        if not key.startswith("SVDFAISS_") or value is None:
            ignored.append(key)
        elif key not in os.environ:
            os.environ[key] = value
            applied.append(key)
    return applied, ignored


class Settings(BaseSettings):
    """Everything `svdfaiss serve` and `create_app` take; unsafe values are refused."""

    # A .env in the working folder counts too (below the environment), for a service
    # started by uvicorn directly; `svdfaiss` itself loads it first (load_config_file).
    model_config = SettingsConfigDict(env_prefix="SVDFAISS_", extra="ignore",
                                      env_file=".env", env_file_encoding="utf-8")

    index_dir: Path = Path("indexes")
    model: str = "default"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65_535)
    workers: int = Field(1, ge=1, le=64)
    admin_token: SecretStr | None = None
    max_k: int = Field(1000, ge=1, le=100_000)
    max_batch: int = Field(100, ge=1, le=10_000)
    max_ids: int = Field(1000, ge=1, le=100_000, description="ids in a basket or a filter list")
    max_id_length: int = Field(256, ge=1, le=65_536, description="characters in one id")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size (413 above)")
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed to call from a browser (CORS); "
        "none by default. A JSON list in the environment: '[\"https://shop.example\"]'")
    poll_seconds: float = Field(0.0, ge=0.0, description="check CURRENT this often; 0 is off")
    drain_seconds: float = Field(
        0.0, ge=0.0, le=300.0, description="on SIGTERM, keep answering this long (/readyz "
        "503, Connection: close) before the shutdown; 0 is off, needs one worker")
    verify_checksums: bool = True
    trust_hash_stamp: bool = Field(
        True, description="with verify_checksums, skip hashing again the files the build "
        "hashed and that have not changed since (same device, inode, size, mtime and ctime: "
        "a copy of the bundle is hashed in full); false hashes every byte at every load")
    mmap: bool = Field(True, description="map the bundle's FAISS indexes and arrays from "
                       "disk (memory grows with the rows queries touch, replicas share the "
                       "pages); false reads every file into memory at load")
    search_mode: Literal["threadpool", "batch"] = Field(
        "batch", description="how unfiltered similar-items searches leave the event loop: "
        "concurrent requests batched into one FAISS call (1.1x to 1.8x the throughput of a "
        "thread-pool call per request at saturation, docs/benchmarks.md), or one thread-pool "
        "call per request")
    # A/B: several models at once. `models` (CLI: --model repeated) with `weights`, or an
    # experiment file; one model alone is an experiment of one variant.
    models: list[str] = Field(default_factory=list, description="models to serve as "
                              "variants (a JSON list in the environment); default: model")
    weights: list[float] = Field(default_factory=list, description="each variant's share "
                                 "of users (default: equal)")
    experiment: str = Field("default", min_length=1, max_length=64,
                            description="the experiment's name, hashed with each user id")
    experiment_file: Path | None = Field(None, description="JSON: {name, variants: [{name, "
                                         "model, weight}]}; overrides models and weights")
    events_log: Path | None = Field(
        None, description="POST /events appends here (JSON lines, fsynced per batch); "
        "default: INDEX_DIR/events/MODEL.jsonl")
    events_token: SecretStr | None = Field(
        None, description="when set, POST /events needs 'Authorization: Bearer <token>' "
        "(set it whenever clients you do not control can reach the service)")
    live_users: int = Field(100_000, ge=0, le=100_000_000, description="users whose live "
                            "events are held in memory (least recently used dropped); 0 turns "
                            "POST /events off")
    catalog_token: SecretStr | None = Field(
        None, description="bearer token of the live catalog (PUT and DELETE /items); the "
        "live catalog is off while it is unset")
    catalog_log: Path | None = Field(
        None, description="the live catalog's changes are appended here (JSON lines, "
        "fsynced before the answer); default: INDEX_DIR/catalog/MODEL.jsonl")
    live_items: int = Field(10_000, ge=1, le=10_000_000, description="items the live "
                            "catalog holds at most (new, changed and withdrawn) until a build "
                            "folds its log in; a change to a further item is refused (507)")
    event_types: list[str] = Field(
        default_factory=lambda: ["view", "click", "add_to_cart", "purchase"],
        min_length=1, max_length=32, description="the `type`s POST /events accepts, the "
        "outcomes an experiment counts (a JSON list in the environment)")
    exposures: Literal["auto", "on", "off"] = Field(
        "auto", description="log each answer as an exposure of its variant (what the "
        "experiment report counts): auto logs them when two or more variants are served")
    exposures_log: Path | None = Field(
        None, description="where exposures go (JSON lines); default: the events log's "
        "folder, MODEL.exposures.jsonl")
    exposure_flush_seconds: float = Field(
        1.0, gt=0, le=60, description="exposures are buffered and appended this often (a "
        "SIGKILL loses at most this much)")
    fast_path: bool = Field(True, description="answer similar items and recommendations "
                            "asked with nothing but k without FastAPI's parameter machinery")
    recommendation_cache_mb: float = Field(
        64.0, ge=0.0, le=1_048_576.0, description="memory for the encoded answers of plain "
        "recommendations (nothing but k) of users without live events, least recently used "
        "dropped; 0 turns the cache off. Entries of a model go when another version of it "
        "is served")

    @field_validator("admin_token", "events_token", "catalog_token")
    @classmethod
    def _token_is_strong(cls, token: SecretStr | None, info: ValidationInfo,
                         ) -> SecretStr | None:
        if token is not None and token.get_secret_value() == "":
            return None  # an empty variable means "no token"
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"SVDFAISS_{str(info.field_name).upper()} must be at least "
                             f"{MIN_TOKEN_LENGTH} characters (generate one: python -c "
                             "'import secrets; print(secrets.token_urlsafe(32))')")
        return token

    @field_validator("event_types")
    @classmethod
    def _event_type_names(cls, types: list[str]) -> list[str]:
        for name in types:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise ValueError(f"event type {name!r}: use 1 to 64 letters, digits, '.', "
                                 "'_' or '-'")
        if len(set(types)) != len(types):
            raise ValueError(f"event types must differ, got {types}")
        return types

    def resolved_exposures_log(self) -> Path:
        return self.exposures_log or self.resolved_events_log().with_name(
            f"{self.model}.exposures.jsonl")

    def logs_exposures(self, variants: int) -> bool:
        return self.exposures == "on" or (self.exposures == "auto" and variants > 1)

    def resolved_events_log(self) -> Path:
        return self.events_log or self.index_dir / "events" / f"{self.model}.jsonl"

    def resolved_catalog_log(self) -> Path:
        return self.catalog_log or self.index_dir / "catalog" / f"{self.model}.jsonl"

    def resolved_experiment(self) -> ExperimentConfig:
        """The variants served: from the experiment file, else models and weights."""
        if self.experiment_file is not None:
            return read_experiment(self.experiment_file)
        models = self.models or [self.model]
        weights = self.weights or [1.0] * len(models)
        if len(weights) != len(models):
            raise InvalidInput(f"{len(weights)} weights for {len(models)} models")
        try:
            return ExperimentConfig(name=self.experiment, variants=[
                Variant(name=m, model=m, weight=w) for m, w in zip(models, weights, strict=True)])
        except ValidationError as exc:
            raise InvalidInput(f"bad experiment: {describe(exc)}") from None
