"""A/B tests: several models served at once, each user assigned a variant by a stable hash.

The hash is SHA-256 of "<experiment>:<user id>", read as a fraction in [0, 1) and placed on
the cumulative weights: stable across restarts, processes and machines (no Python `hash`),
and independent between experiments of different names.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from svdfaiss import bundle
from svdfaiss.errors import InvalidInput


class Variant(BaseModel):
    """One arm of an experiment: a name, the model it serves and its share of users."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    model: str
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)


class ExperimentConfig(BaseModel):
    """What `--experiment-file` holds (JSON): a name and the variants with their weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("default", min_length=1, max_length=64)
    variants: list[Variant] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _distinct_names(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ, got {names}")
        for variant in self.variants:
            bundle.check_model_name(variant.model)
        return self


def read_experiment(path: Path) -> ExperimentConfig:
    """An experiment file, or InvalidInput naming the file and the problem."""
    try:
        return ExperimentConfig.model_validate(json.loads(Path(path).read_text()))
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the experiment file: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not JSON: {exc}") from None
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {describe(exc)}") from None
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None


def describe(exc: ValidationError) -> str:
    """A pydantic error in one line: each problem with where it is."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'experiment'}: "
        f"{error['msg'].removeprefix('Value error, ')}" for error in exc.errors())


class Experiment:
    """Assigns users to variants; `?model=` picks one by model name instead."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        total = sum(v.weight for v in config.variants)
        self._bounds: list[float] = []  # the cumulative shares where each next variant starts
        running = 0.0
        for variant in config.variants[:-1]:
            running += variant.weight / total
            self._bounds.append(running)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def variants(self) -> list[Variant]:
        return self.config.variants

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(v.model for v in self.config.variants))

    def position(self, user_id: str) -> float:
        """The user's stable place in [0, 1) for this experiment."""
        digest = hashlib.sha256(f"{self.name}:{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def assign(self, user_id: str) -> Variant:
        return self.config.variants[bisect_right(self._bounds, self.position(user_id))]

    def for_model(self, model: str) -> Variant:
        """The (first) variant serving a model; InvalidInput for a model not served."""
        for variant in self.config.variants:
            if variant.model == model:
                return variant
        raise InvalidInput(f"model {model!r} is not served here (models: "
                           f"{', '.join(self.models)})")

    @property
    def control(self) -> Variant:
        """The first variant: requests with no user to assign (similar items without
        user_id, batches) get it."""
        return self.config.variants[0]
