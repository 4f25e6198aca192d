"""`svdfaiss experiment report`: an A/B experiment's outcomes, read offline from the logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from svdfaiss import outcomes
from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import DEFAULT_INDEX_DIR, IndexDirOpt, JsonOpt
from svdfaiss.cli.printing import err, out, show
from svdfaiss.config import Settings
from svdfaiss.errors import InvalidInput

experiment_app = typer.Typer(help="Outcomes of the A/B experiment `serve` runs.",
                             no_args_is_help=True)


def _interval(interval: Any, signed: bool = True) -> str:
    """An interval of shares as percentages: `+1.2..+3.4%` (signed) or `1.2..3.4%`."""
    if interval is None:
        return "-"
    low, high = interval
    return (f"{100 * low:+.1f}..{100 * high:+.1f}%" if signed
            else f"{100 * low:.1f}..{100 * high:.1f}%")


@experiment_app.command("report")
@clean_errors
def report(
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="The models served, as given to `serve` (the first names the "
        "default logs; env SVDFAISS_MODEL for one).")] = None,
    weight: Annotated[list[float] | None, typer.Option(
        "--weight", help="Each --model's share of users, as given to `serve`.")] = None,
    experiment: Annotated[str | None, typer.Option(
        envvar="SVDFAISS_EXPERIMENT", help="The experiment's name, as given to "
        "`serve`.")] = None,
    experiment_file: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EXPERIMENT_FILE", help="The experiment file `serve` was given.")]
    = None,
    events_log: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EVENTS_LOG", help="Default: INDEX_DIR/events/MODEL.jsonl.")] = None,
    exposures_log: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EXPOSURES_LOG", help="Default: MODEL.exposures.jsonl beside the "
        "events log.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw the conversion rates as a PNG (needs matplotlib: the report "
        "extra).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Per variant: exposed users and answers, events by type, conversion rates with 95%
    intervals, lift against the control, an always-valid interval, and a sample-ratio
    check. Reads the same settings as `serve`."""
    given: dict[str, Any] = {"index_dir": index_dir}
    if model:
        given.update(model=model[0], models=model)
    elif os.environ.get("SVDFAISS_MODEL"):
        given["model"] = os.environ["SVDFAISS_MODEL"]
    for key, value in (("weights", weight), ("experiment", experiment),
                       ("experiment_file", experiment_file), ("events_log", events_log),
                       ("exposures_log", exposures_log)):
        if value:
            given[key] = value
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise InvalidInput(f"bad settings: {exc}") from None
    config = settings.resolved_experiment()
    exposures, events = settings.resolved_exposures_log(), settings.resolved_events_log()
    if not exposures.is_file():
        raise InvalidInput(f"{exposures}: no exposures log (does `serve` log exposures "
                           "here? SVDFAISS_EXPOSURES, SVDFAISS_EXPOSURES_LOG)")
    data = outcomes.report(config, exposures, events, settings.event_types)
    for name, skipped in data["skipped"].items():
        if skipped["lines"]:
            err.print(f"[yellow]warning:[/] {name} log: {skipped['lines']} unusable line(s) "
                      f"skipped: {escape('; '.join(skipped['examples']))}")
    if plot is not None:
        outcomes.plot(data, plot)
    if json_out:
        out.print_json(json.dumps(data))
        return
    _print(data)
    if plot is not None:
        out.print(f"plot: {plot}")


def _print(data: dict[str, Any]) -> None:
    table = Table("variant", "model", "weight", "users", "answers", "type", "events",
                  "converted", "rate (95%)", "lift (95%)", "difference, always valid",
                  title=f"experiment {data['experiment']} (control: {data['control']})")
    for variant in data["variants"]:
        first = True
        for kind in data["event_types"]:
            entry = variant["conversion"][kind]
            rate = "-" if entry["rate"] is None else (
                f"{100 * entry['rate']:.1f}% ({_interval(entry['interval'], signed=False)})")
            lift = "" if "lift" not in entry else "-" if entry["lift"] is None else (
                f"{100 * entry['lift']:+.1f}% ({_interval(entry['lift_interval'])})")
            always = "" if "always_valid_interval" not in entry else _interval(
                entry["always_valid_interval"])
            head = ([variant["variant"], variant["model"], f"{variant['weight']:g}",
                     str(variant["users"]), str(variant["answers"])] if first
                    else ["", "", "", "", ""])
            table.add_row(*head, kind, str(variant["events"].get(kind, 0)),
                          str(entry["users"]), rate, lift, always)
            first = False
    show(table)
    for text in data["intervals"].values():
        out.print(f"- {text}")
    ratio = data["sample_ratio"]
    if ratio is not None:
        verdict = ("[bold red]SAMPLE RATIO MISMATCH[/]: the assignment or the logging is "
                   "broken; do not trust the comparison" if ratio["mismatch"] else "ok")
        out.print(f"sample ratio: users {ratio['users']} against expected "
                  f"{ratio['expected']}, chi2 {ratio['chi2']:.2f}, p {ratio['p_value']:.3g}: "
                  f"{verdict}")
    for v in data["verdicts"]:
        better = v["better_always_valid"]
        fixed = v["better_fixed"]
        out.print(f"{v['type']}: {v['variant']} against {v['control']}: "
                  + (f"{better} is better (the always-valid interval excludes zero)"
                     if better else "no winner yet by the always-valid interval"
                     + (f" ({fixed} leads by the fixed-horizon interval)" if fixed else "")))
