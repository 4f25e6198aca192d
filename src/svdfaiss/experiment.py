"""A/B tests: several models served at once, each user assigned a variant by a stable hash,
and the attribution of what users did afterwards to the variant that served them.

The hash is SHA-256 of "<experiment>:<user id>", read as a fraction in [0, 1) and placed on
the cumulative weights: stable across restarts, processes and machines (no Python `hash`),
and independent between experiments of different names.

Attribution: every answer carries a recommendation id that names its variant
(`RecommendationIds`), so an event that quotes it is attributed with no state kept per id;
each answer is also logged as an exposure (`ExposureLog`, buffered and appended once a
second) for `svdfaiss.outcomes` to count who saw which variant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import threading
from bisect import bisect_right
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from svdfaiss import bundle
from svdfaiss.errors import InvalidInput
from svdfaiss.events import append_lines

RID_SEPARATOR = ":"  # never in a variant name (Variant.name's pattern)


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
    mixing_sd: float = Field(
        0.05, gt=0, le=1, allow_inf_nan=False,
        description="the always-valid interval's mixing standard deviation (tau of the "
        "mixture SPRT), on the difference in conversion rate; fixed before the experiment")

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


class RecommendationIds:
    """Issues recommendation ids `<variant>:<tag><counter>` and reads the variant back.

    The tag is 48 random bits per process, so ids are unique across workers and restarts
    without coordination; the counter makes them unique within a process. An id costs a
    counter step and an f-string, and names its variant, so attributing an event to the
    variant that served it needs no table of issued ids.
    """

    def __init__(self) -> None:
        self._tag = secrets.token_hex(6)
        self._count = itertools.count(1)  # next() is atomic under the GIL

    def issue(self, variant: str) -> str:
        return f"{variant}{RID_SEPARATOR}{self._tag}{next(self._count):x}"


def variant_of(recommendation_id: str, experiment: Experiment) -> Variant:
    """The variant a recommendation id names; InvalidInput when no variant of this
    experiment issued it (a malformed id, or one from another experiment)."""
    name, separator, rest = recommendation_id.partition(RID_SEPARATOR)
    if separator and rest:
        for variant in experiment.variants:
            if variant.name == name:
                return variant
    raise InvalidInput(f"recommendation_id {recommendation_id!r} was not issued by "
                       f"experiment {experiment.name!r} (its ids start with one of "
                       f"{', '.join(v.name + RID_SEPARATOR for v in experiment.variants)})")


def exposure_line(time: float, experiment: str, variant: str, user_id: str | None,
                  recommendation_id: str, forced: bool) -> bytes:
    """One exposure as the log holds it: who was shown which variant's answer, when.
    `forced` marks an answer a request chose by `model=` rather than by assignment."""
    record: dict[str, object] = {"time": time, "experiment": experiment, "variant": variant,
                                 "user_id": user_id, "recommendation_id": recommendation_id}
    if forced:
        record["forced"] = True
    return orjson.dumps(record) + b"\n"


Exposure = tuple[float, str, str, "str | None", str, bool]  # exposure_line's arguments


class ExposureLog:
    """Exposures buffered in memory and appended to a JSON-lines file by `flush`: one
    write and one fsync for everything buffered, called about once a second by the
    service (and at shutdown). An answer pays a tuple and a list append; the lines are
    formatted at flush time, off the request.

    Several workers append to one file (O_APPEND keeps each write whole). A SIGKILL loses
    what was buffered since the last flush; events keep their own attribution (their line
    names the variant), so a lost exposure undercounts users, never moves an event.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: list[Exposure] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def record(self, time: float, experiment: str, variant: str, user_id: str | None,
               recommendation_id: str, forced: bool) -> None:
        """Buffer one exposure (see exposure_line)."""
        with self._lock:
            self._pending.append((time, experiment, variant, user_id, recommendation_id,
                                  forced))

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Append what is buffered (one write, then fsync); the lines written."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            append_lines(self.path, [exposure_line(*one) for one in batch])
            return len(batch)
