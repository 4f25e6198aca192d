"""What the command line shows: its two consoles, the stage spinner, the build summary and
the query results table, shared by several commands."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


QUIET = False  # --quiet: no progress lines (errors, warnings and results still print)


@contextlib.contextmanager
def stage_status(name: str) -> Iterator[None]:
    """Progress of a long command's stages on stderr: on a terminal a spinner naming the
    running stage, then a line with its time; elsewhere (a log, CI) one line a stage."""
    if QUIET:
        yield
        return
    start = time.perf_counter()
    if err.is_terminal:
        with err.status(f"{name}..."):
            yield
    else:
        yield
    err.print(f"[dim]{escape(name)}: {time.perf_counter() - start:.2f} s[/]")


def progress_line(text: str) -> None:
    """One progress line on stderr (a tuning trial, say), unless --quiet."""
    if not QUIET:
        err.print(f"[dim]{escape(text)}[/]")


def fmt_int(n: Any) -> str:
    """A count with thousands separators."""
    return f"{int(n):,}"


def show(table: Table) -> None:
    """Print a table whose cells wrap rather than cut: an id or a flag name is never
    shortened to "…" on a narrow terminal."""
    for column in table.columns:
        column.overflow = "fold"
    out.print(table)


def print_summary(path: Path, manifest: dict[str, Any]) -> None:
    """One screen: rows, reasons, shape, factorization, indexes, stage times, path."""
    rows, counts = manifest["rows"], manifest["counts"]
    fact, params = manifest["factorization"], manifest["parameters"]
    table = Table(title=f"svdfaiss build: model {manifest['model']}, version "
                        f"{manifest['version']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("input", f"{manifest['input']['path']} ({manifest['input']['feedback']}, "
                           f"columns {', '.join(f'{k}={v}' for k, v in manifest['input']['columns'].items() if v and k != 'feedback')})")  # noqa: E501
    report = manifest["input"].get("columns_report") or []
    if report:
        table.add_row("columns", ", ".join(f"{c['column']}: {c['used_as']}" for c in report))
    if manifest["input"].get("feedback_reason"):
        table.add_row("feedback", f"{manifest['input']['feedback']}: "
                                  f"{manifest['input']['feedback_reason']}")
    table.add_row("rows read", fmt_int(rows["read"]))
    min_rating = (f", {fmt_int(rows['removed_by_min_rating'])} removed by --min-rating "
                  f"{rows['min_rating']:g}" if rows.get("min_rating") is not None else "")
    table.add_row("rows used", f"{fmt_int(rows['used'])} ({fmt_int(rows['duplicates_merged'])}"
                               f" duplicates merged, {fmt_int(rows['removed_by_filters'])} "
                               f"removed by minimum-interaction filters{min_rating})")
    table.add_row("rows rejected", fmt_int(rows["rejected"]))
    _add_reasons(table, rows["rejected_by_reason"], rows["rejected_examples"], "line",
                 with_text=False)
    table.add_row("users x items", f"{fmt_int(counts['users'])} x {fmt_int(counts['items'])},"
                                   f" {fmt_int(counts['interactions'])} interactions, density "
                                   f"{counts['density']:.2e}")
    w = params["weighting"]
    neural = manifest.get("neural")
    if fact is not None:
        table.add_row("factorization", f"k={fact['k']}, weighting {w['scheme']}, beta "
                                       f"{w['beta']}, shrinkage {params.get('shrinkage', 0):g},"
                                       f" explained energy {fact['explained_energy']:.1%}")
    if neural is not None:
        arch, trained = neural["architecture"], neural["training"]
        table.add_row("model", f"{arch['name']} {' -> '.join(map(str, arch['encoder']))}, "
                               f"{fmt_int(trained['parameters'])} parameters, "
                               f"{trained['epochs']} epochs in {trained['seconds']:.1f} s "
                               f"(best {trained['best_epoch']}: validation ndcg@10 "
                               f"{trained['best_validation_ndcg@10']:.4f}; stopped: "
                               f"{trained['stopped']})")
    tuning = manifest.get("tuning")
    if tuning:
        table.add_row("tuning", tuning_line(tuning))
    for name, meta in manifest["indexes"].items():
        measured = (f", recall@10 {meta['recall_at_10']:.3f} against exact"
                    if meta.get("recall_at_10") is not None else "")
        tuned = meta.get("recall") or {}  # the search setting the build tuned (recall.py)
        for key, label in (("ef_search", "efSearch"), ("nprobe", "nprobe")):
            if measured and key in tuned:
                measured += f" at {label} {tuned[key]}"
                break
        if measured and tuned.get("instead_of"):  # an auto users index HNSW left short
            before = tuned["instead_of"]
            measured += f" (an {before['type']} reached {before['recall_at_10']:.3f})"
        table.add_row(f"index {name}", f"{meta['type']} over {fmt_int(meta['rows'])} x "
                                       f"{meta['dim']} ({meta['metric']}){measured}")
    if manifest.get("catalog"):
        cat = manifest["catalog"]
        table.add_row("catalog", f"{cat['matched_items']:,} of {counts['items']:,} items matched"
                                 f" ({cat['path']})")
        if cat.get("columns_report"):
            table.add_row("catalog columns", ", ".join(f"{c['column']}: {c['used_as']}"
                                                       for c in cat["columns_report"]))
        if "rejected" in cat:
            table.add_row("catalog rejected", f"{fmt_int(cat['rejected'])} unusable rows left "
                                              "out")
            _add_reasons(table, cat["rejected_by_reason"], cat["rejected_examples"],
                         cat.get("rejected_unit", "line"))
    content = manifest.get("content")
    if content:
        columns = [*content["text_columns"], *filter(None, [content["category_column"]])]
        table.add_row("content", f"{content['dim']}-d from {', '.join(columns)} "
                                 f"({fmt_int(content['features'])} features); "
                                 f"{fmt_int(content['new_items'])} catalog items without "
                                 "interactions get content neighbours")
        similar = content.get("new_items_in_similar")
        if similar and similar.get("items", 1):
            table.add_row("new items", f"their hybrid neighbours use CF vectors predicted from "
                                       f"their content (map R^2 {similar['r2']:.2f}, CF share "
                                       f"{similar['cf_share']:g})")
        mapped = content.get("new_items_in_recommendations")
        if mapped and mapped.get("items", 1):
            table.add_row("new items", f"{fmt_int(mapped['items'])} join recommendations "
                                       "through vectors predicted from their content (map "
                                       f"R^2 {mapped['r2']:.2f}, weight {mapped['weight']:g})")
    evidence = manifest.get("evidence")
    if evidence:
        table.add_row("evidence", f"{fmt_int(evidence['items_with_cf_evidence'])} of "
                                  f"{fmt_int(evidence['items'])} items and "
                                  f"{fmt_int(evidence['users_with_cf_evidence'])} of "
                                  f"{fmt_int(evidence['users'])} users have cf evidence "
                                  f"({fmt_int(evidence['items_by_co_occurrence'])} items rank "
                                  "neighbours by co-occurrence)")
    stored = manifest.get("stored_recommendations")
    if stored:
        table.add_row("stored", f"{stored['k']} recommendations for each of "
                                f"{fmt_int(stored['users'])} users, in {stored['seconds']:g} s"
                                if stored["k"] else
                                f"no recommendations stored: {stored['reason']}")
    for events in manifest["input"].get("events", []):
        table.add_row("events", f"{fmt_int(events['events'])} folded in from {events['path']}"
                                f" ({fmt_int(events['rejected'])} unusable lines)")
    timings = manifest["timings_seconds"]
    table.add_row("seconds", ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
                  + f"; total {sum(timings.values()):.2f}")
    evaluation = manifest.get("evaluation") or {}
    if "topn" in evaluation:
        topn = evaluation["topn"]
        table.add_row("evaluation", "NDCG@10 " + ", ".join(
            f"{name} {m['ndcg@10']:.4f}" for name, m in topn.items()
            if name != "svdfaiss (ANN index)") + f" (20% holdout of "
            f"{evaluation['protocol']['test_users']:,} users)")
    elif "skipped" in evaluation:
        table.add_row("evaluation", f"skipped: {evaluation['skipped']}")
    table.add_row("bundle", str(path))
    show(table)
    if evidence and evidence.get("warning"):
        err.print(f"[bold yellow]warning:[/] {escape(evidence['warning'])}")
    for name, what, against, hint in RECALL_WARNINGS:
        meta = manifest["indexes"].get(name, {})
        if meta.get("recall_meets_target") is False:
            err.print(f"[bold yellow]warning:[/] {what} reach recall@10 "
                      f"{meta['recall_at_10']:.3f} against {against}, below the target "
                      f"{meta['recall']['target']:g} (measured on "
                      f"{meta['recall']['queries']} users); {hint}")


# Indexes whose measured recall the summary warns about: index, answers, truth, what helps.
RECALL_WARNINGS = (
    ("users", "similar users", "exact cosine", "--user-index flat is exact"),
    ("items_mips", "recommendations", "exact scoring", "--rec-index flat is exact, a larger "
     "--ivf-nprobe or --ivf-nlist may help"),
)


def _add_reasons(table: Table, counts: dict[str, int], examples: list[dict[str, Any]],
                 unit: str, with_text: bool = True) -> None:
    """One row per rejection reason: its count, the first lines (and the first's text)."""
    for reason, count in counts.items():
        shown = [e for e in examples if e["reason"] == reason]
        where = ", ".join(str(e["line"]) for e in shown)
        first = f": {shown[0]['text']}" if shown and with_text else ""
        table.add_row("", f"  {reason}: {fmt_int(count)} ({unit} {where}"
                          f"{', ...' if count > len(shown) else ''}{first})")


def tuning_line(tuning: dict[str, Any]) -> str:
    """What the build's tuning chose, on what, and in how long; or why it did not run."""
    c = tuning["chosen"]
    if not c:  # a neural model: nothing of the SVD's to choose
        return f"{tuning['status']} ({tuning['reason']})"
    chosen = (f"k {c['k']}, weighting {c['weighting']}, beta {c['beta']:g}, shrinkage "
              f"{c['shrinkage']:g}")
    if tuning["status"] != "tuned":
        return f"{tuning['status']} ({tuning['reason']}): {chosen}"
    given = ", ".join(f"--{name} {value}" for name, value in tuning["given"].items())
    before = tuning.get("defaults_validation_ndcg@10")
    return (f"chose {chosen} of {len(tuning['trials'])} settings by validation NDCG@10 "
            f"{tuning['validation_ndcg@10']:.4f}"
            + (f" (defaults {before:.4f})" if before is not None else "")
            + f" on {tuning['validation']['users']:,} users in {tuning['seconds']:.1f} s"
            + (f"; kept {given}" if given else ""))


def print_results(rec: Any, results: Any, json_out: bool, id_key: str = "item_id",
                  extra: dict[str, Any] | None = None) -> None:
    """Query results as a table, or with --json one JSON line (model, version, the results
    under "items" or "users", and `extra`)."""
    records = results.records(id_key)
    if json_out:
        payload: dict[str, Any] = {"model": rec.model, "version": rec.version}
        payload.update(extra or {})
        payload["users" if id_key == "user_id" else "items"] = records
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    columns = list(records[0].keys()) if records else [id_key, "score"]
    table = Table("#", *columns, title=f"model {rec.model}, version {rec.version}",
                  title_justify="left")

    def cell(key: str, value: Any) -> str:
        if key == "score":
            return f"{value:.4f}"
        if key == "because":
            return ", ".join(f"{b['item_id']} ({b['contribution']:.3f})" for b in value)
        return str(value)

    for rank, r in enumerate(records, 1):
        table.add_row(str(rank), *[cell(k, v) for k, v in r.items()])
    show(table)
