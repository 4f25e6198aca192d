"""Experiment outcomes: what users did after each variant's answers, read from the logs alone.

The report joins the exposures log (each answer: who was shown which variant's answer, and
when; `svdfaiss.experiment.ExposureLog`) with the events log (what users did, each event
attributed to a variant when it was posted), so `GET /experiments/{name}` and
`svdfaiss experiment report` give the same figures, offline, across workers and restarts.

Per variant: exposed users and answers, events by type, and per event type the conversion
rate, the share of exposed users with at least one event of that type at or after their
first exposure, with a 95% Wilson score interval. Against the control (the first variant):
- the relative lift, `p_v / p_c - 1`, with the 95% interval of the risk ratio (Katz, log
  scale): valid when the report is read once, at a sample size fixed in advance;
- the difference `p_v - p_c` with an always-valid 95% confidence sequence: the mixture
  sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and Walsh, "Peeking
  at A/B tests" (KDD 2017), with a normal mixture of standard deviation tau over the
  difference and the plug-in variance of the two rates. Every interval of the sequence
  holds at once with 95% probability, so it stays valid when read every day and an
  experiment may stop as soon as it excludes zero.
The exposed users per variant are tested against the configured weights (chi-square): a
p-value below 0.001 is a sample ratio mismatch, and the comparison is not to be trusted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from svdfaiss.experiment import ExperimentConfig

log = logging.getLogger("svdfaiss.outcomes")

CONFIDENCE = 0.95
SRM_THRESHOLD = 0.001  # the usual bar: a mismatch this unlikely is a bug, not chance
EXAMPLES = 5

FIXED = ("95% Wilson score interval of each rate; lift: 95% interval of the risk ratio "
         "(Katz, log scale), valid for one reading at a sample size fixed in advance")
SEQUENTIAL = ("always-valid 95% confidence sequence of the difference in conversion rate "
              "(mixture SPRT, Johari et al. 2017; normal mixture, tau = {tau}, plug-in "
              "variance): valid however often it is read")


@dataclass
class Skipped:
    """Lines of a log that could not be used, by reason, with the first line numbers."""

    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, path: Path, number: int, reason: str) -> None:
        self.count += 1
        self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{path.name}, line {number}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.count, "reasons": dict(self.reasons), "examples": self.examples}


@dataclass
class Tally:
    """One variant's counts as the logs are read."""

    first_exposure: dict[str, float] = field(default_factory=dict)  # user -> earliest time
    answers: int = 0
    anonymous: int = 0  # answers with no user (similar items without user_id)
    forced: int = 0  # answers a request chose with model= (not the assignment)
    events: Counter[str] = field(default_factory=Counter)
    converted: dict[str, set[str]] = field(default_factory=dict)
    unexposed_events: int = 0  # from users with no exposure of this variant in the log


def _records(path: Path, skipped: Skipped) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines log; anything else (a torn last line) is skipped,
    counted and warned about. A missing log has no records."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                skipped.add(path, number, "not valid JSON (a torn line?)")
                log.warning("%s, line %d: not valid JSON, skipped", path, number)
                continue
            if not isinstance(record, dict):
                skipped.add(path, number, "not a JSON object")
                continue
            yield record


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value):
        return None
    return float(value)


def tally(config: ExperimentConfig, exposures_log: Path, events_log: Path,
          event_types: list[str]) -> tuple[dict[str, Tally], dict[str, Skipped]]:
    """Each variant's counts from the two logs, and the lines skipped in each."""
    tallies = {v.name: Tally(converted={t: set() for t in event_types})
               for v in config.variants}
    skipped = {"exposures": Skipped(), "events": Skipped()}
    for record in _records(Path(exposures_log), skipped["exposures"]):
        if record.get("experiment") != config.name:
            continue
        one = tallies.get(str(record.get("variant")))
        time = _number(record.get("time"))
        if one is None or time is None:
            continue
        one.answers += 1
        user = record.get("user_id")
        if record.get("forced"):
            one.forced += 1
        elif not isinstance(user, str):
            one.anonymous += 1
        elif time < one.first_exposure.get(user, math.inf):
            one.first_exposure[user] = time
    wanted = set(event_types)
    for record in _records(Path(events_log), skipped["events"]):
        if record.get("experiment") != config.name:
            continue  # logged before the experiment, or under another
        one = tallies.get(str(record.get("variant")))
        time, user = _number(record.get("time")), record.get("user_id")
        if one is None or time is None or not isinstance(user, str):
            continue
        kind = record.get("type")
        one.events[kind if isinstance(kind, str) else "none"] += 1
        first = one.first_exposure.get(user)
        if first is None:
            one.unexposed_events += 1
        elif kind in wanted and time >= first:
            one.converted[kind].add(user)
    return tallies, skipped


def wilson(successes: int, trials: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (None without trials)."""
    if trials == 0:
        return None
    from scipy import stats  # imported here: 0.3 s that serving does not need at start-up

    ci = stats.binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def lift_interval(x: int, n: int, x_control: int, n_control: int,
                  ) -> tuple[float, float] | None:
    """The 95% interval of the relative lift `p / p_control - 1` from the risk ratio's
    Katz log interval; None where it is undefined (no conversions on either side)."""
    if min(x, x_control, n, n_control) == 0:
        return None
    from scipy.stats.contingency import relative_risk

    ci = relative_risk(x, n, x_control, n_control).confidence_interval(CONFIDENCE)
    return float(ci.low) - 1.0, float(ci.high) - 1.0


def always_valid_difference(x: int, n: int, x_control: int, n_control: int, tau: float,
                            alpha: float = 1 - CONFIDENCE) -> dict[str, float] | None:
    """The mSPRT confidence sequence of `d = p - p_control` and its always-valid p-value.

    With the plug-in variance `V = p(1-p)/n + p_c(1-p_c)/n_c` of the estimate `d^`, the
    mixture likelihood ratio against `d = d0` under a N(0, tau^2) mixture is
        L(d0) = sqrt(V / (V + tau^2)) * exp(tau^2 (d^ - d0)^2 / (2 V (V + tau^2))),
    and the sequence is every d0 with L(d0) < 1/alpha:
        d^ +- sqrt(V (V + tau^2) / tau^2 * log((V + tau^2) / (V alpha^2))).
    The p-value is min(1, 1 / L(0)). None while the variance is 0 (every rate 0 or 1).
    """
    if n == 0 or n_control == 0:
        return None
    p, p_control = x / n, x_control / n_control
    variance = p * (1 - p) / n + p_control * (1 - p_control) / n_control
    if variance <= 0:
        return None
    estimate = p - p_control
    spread = variance + tau * tau
    half = math.sqrt(variance * spread / (tau * tau)
                     * math.log(spread / (variance * alpha * alpha)))
    log_ratio = 0.5 * math.log(variance / spread) + tau * tau * estimate * estimate / (
        2 * variance * spread)
    return {"difference": estimate, "low": estimate - half, "high": estimate + half,
            "p_value": math.exp(min(0.0, -log_ratio))}


def sample_ratio(users: list[int], weights: list[float]) -> dict[str, Any] | None:
    """Chi-square test of the exposed users per variant against the configured weights;
    None with one variant or no users."""
    total = sum(users)
    if len(users) < 2 or total == 0:
        return None
    expected = [total * w / sum(weights) for w in weights]
    from scipy import stats

    result = stats.chisquare(users, expected)
    p_value = float(result.pvalue)
    return {"users": users, "expected": [round(e, 1) for e in expected],
            "chi2": float(result.statistic), "p_value": p_value,
            "threshold": SRM_THRESHOLD, "mismatch": p_value < SRM_THRESHOLD}


def report(config: ExperimentConfig, exposures_log: Path, events_log: Path,
           event_types: list[str]) -> dict[str, Any]:
    """The experiment's outcomes as JSON-ready data (see the module docstring)."""
    tallies, skipped = tally(config, exposures_log, events_log, event_types)
    control = config.variants[0]
    base = tallies[control.name]
    n_control = len(base.first_exposure)
    variants: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    for variant in config.variants:
        one = tallies[variant.name]
        n = len(one.first_exposure)
        conversion: dict[str, Any] = {}
        for kind in event_types:
            x = len(one.converted[kind])
            entry: dict[str, Any] = {"users": x, "rate": x / n if n else None,
                                     "interval": wilson(x, n)}
            if variant.name != control.name:
                x_control = len(base.converted[kind])
                rate_control = x_control / n_control if n_control else None
                entry["lift"] = (x / n / rate_control - 1.0
                                 if n and rate_control else None)
                entry["lift_interval"] = lift_interval(x, n, x_control, n_control)
                sequential = always_valid_difference(x, n, x_control, n_control,
                                                     config.mixing_sd)
                entry["difference"] = None if sequential is None else sequential["difference"]
                entry["always_valid_interval"] = None if sequential is None else (
                    sequential["low"], sequential["high"])
                entry["always_valid_p"] = None if sequential is None else sequential[
                    "p_value"]
                verdicts.append(_verdict(variant.name, control.name, kind, entry))
            conversion[kind] = entry
        variants.append({"variant": variant.name, "model": variant.model,
                         "weight": variant.weight, "users": n, "answers": one.answers,
                         "anonymous_answers": one.anonymous, "forced_answers": one.forced,
                         "events": dict(sorted(one.events.items())),
                         "events_without_exposure": one.unexposed_events,
                         "conversion": conversion})
    return {
        "experiment": config.name, "control": control.name, "event_types": event_types,
        "intervals": {"fixed": FIXED, "sequential": SEQUENTIAL.format(tau=config.mixing_sd)},
        "variants": variants,
        "sample_ratio": sample_ratio([v["users"] for v in variants],
                                     [v.weight for v in config.variants]),
        "verdicts": verdicts,
        "skipped": {name: s.as_dict() for name, s in skipped.items()},
    }


def _verdict(name: str, control: str, kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Which of a variant and the control converts better on one type, by each interval:
    the one the interval favours when it excludes zero, else none yet."""
    def better(interval: tuple[float, float] | None) -> str | None:
        if interval is None:
            return None
        if interval[0] > 0:
            return name
        if interval[1] < 0:
            return control
        return None

    return {"type": kind, "variant": name, "control": control,
            "better_fixed": better(entry["lift_interval"]),
            "better_always_valid": better(entry["always_valid_interval"])}


def plot(data: dict[str, Any], path: Path) -> Path:
    """A PNG of the report: each variant's conversion rate per event type with its 95%
    interval (needs matplotlib, the `report` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = data["event_types"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(kinds), 3.6))
    width = 0.8 / max(1, len(data["variants"]))
    for n, variant in enumerate(data["variants"]):
        rates, low, high = [], [], []
        for kind in kinds:
            entry = variant["conversion"][kind]
            rate = entry["rate"] or 0.0
            interval = entry["interval"] or (rate, rate)
            rates.append(rate)
            low.append(rate - interval[0])
            high.append(interval[1] - rate)
        ax.bar([k + n * width for k in range(len(kinds))], rates, width, yerr=[low, high],
               capsize=3, label=f"{variant['variant']} ({variant['users']} users)")
    ax.set_xticks([k + width * (len(data["variants"]) - 1) / 2 for k in range(len(kinds))])
    ax.set_xticklabels(kinds)
    ax.set_ylabel("users converted (95% interval)")
    ax.set_title(f"experiment {data['experiment']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
