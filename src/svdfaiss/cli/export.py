"""`svdfaiss export recommendations|similar`: every user's (or item's) top k to a Parquet or
CSV file, in batched FAISS searches, with progress on stderr (svdfaiss.export)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from svdfaiss.cli import printing
from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import DEFAULT_INDEX_DIR, ModelOpt
from svdfaiss.cli.printing import err, fmt_int, out

if TYPE_CHECKING:
    from svdfaiss.export import ExportSummary

export_app = typer.Typer(
    help="Write every user's recommendations or every item's similar items to a file.",
    no_args_is_help=True)

# --out is the file here, so the folder of bundles takes only --index-dir.
ExportIndexDirOpt = Annotated[Path, typer.Option(
    "--index-dir", help="Folder of bundles.", envvar="SVDFAISS_INDEX_DIR")]
OutOpt = Annotated[Path, typer.Option(
    "--out", help="FILE.parquet or FILE.csv (the suffix chooses); replaced only when the "
                  "export completes.")]
KOpt = Annotated[int, typer.Option("--k", min=1, max=1000, help="Results per id.")]
ChunkOpt = Annotated[int, typer.Option(
    "--chunk", min=1, max=65_536, help="Ids per batched search (memory: chunk x k rows).")]

# Help texts: one paragraph a line (rich wraps them to the terminal).
RECOMMENDATIONS_HELP = (
    "Every user's top k recommendations, as the service answers them.\n\n"
    "Seen items are excluded; a user whose history holds no item with collaborative "
    "evidence gets the popular items (reason popular), as over HTTP.\n\n"
    "Columns, one row per item, best first: user_id, rank (1 = best), item_id, score, "
    "reason (cf, rating, content, popular; a score means what its reason says, see the "
    "README).")

SIMILAR_HELP = (
    "Every catalog item's top k similar items, as the service answers them.\n\n"
    "Items without collaborative evidence get what the service gives them (content "
    "neighbours, popular items of their category, popular items).\n\n"
    "Columns, one row per similar item, best first: item_id, rank (1 = best), "
    "similar_item_id, score, reason (cf, co_bought, content, hybrid, popular, "
    "popular_category), status (\"ok\"). An item the mode refuses (--mode cf without "
    "evidence, --mode content without content) has one row with only item_id and the "
    "refusal as its status.")


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal, a line every tenth otherwise, nothing with --quiet."""
    if printing.QUIET:
        yield lambda done, total: None
        return
    if err.is_terminal:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task(what, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return
    marks = {"next": 0.1}

    def line(done: int, total: int) -> None:
        if done >= total or done / total >= marks["next"]:
            printing.progress_line(f"{what}: {fmt_int(done)} of {fmt_int(total)}")
            marks["next"] = done / total + 0.1

    yield line


def _report(summary: ExportSummary, what: str) -> None:
    reasons = ", ".join(f"{name} {fmt_int(n)}" for name, n in sorted(summary.reasons.items()))
    rate = summary.ids / summary.seconds if summary.seconds > 0 else float("inf")
    out.print(f"wrote {fmt_int(summary.rows)} rows for {fmt_int(summary.ids)} {what} to "
              f"{escape(str(summary.path))} in {summary.seconds:.1f} s "
              f"({rate:,.0f} {what}/s; reasons: {reasons or 'none'})")
    if summary.refused:
        out.print(f"{fmt_int(summary.refused)} {what} have no answer in this mode "
                  "(their status says why)")


def _which(value: str, flag: str) -> Path | None:
    """None for `all`, else the ids file (which must exist)."""
    if value == "all":
        return None
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(f"{value}: no such file (or give 'all')", param_hint=flag)
    return path


@export_app.command("recommendations", help=RECOMMENDATIONS_HELP)
@clean_errors
def export_recommendations(
    out_file: OutOpt, model: ModelOpt = "default",
    index_dir: ExportIndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
    users: Annotated[str, typer.Option(
        "--users", help="'all', or a file of user ids, one a line (a first line "
                        "'user_id' is a header).")] = "all",
    mode: Annotated[str, typer.Option(
        help="hybrid also ranks catalog items nobody has interacted with, through their "
             "content; cf only the model's items.")] = "hybrid",
    chunk: ChunkOpt = 4096,
) -> None:
    from svdfaiss import export
    from svdfaiss.recommender import Recommender

    export.check_target(out_file)
    ids_file = _which(users, "--users")
    rec = Recommender.load(index_dir, model)
    chosen = None if ids_file is None else export.read_ids(ids_file, [rec.user_ids], "user")
    with _progress("users") as progress:
        summary = export.export_recommendations(rec, out_file, k, chosen, mode, chunk,
                                                progress)
    _report(summary, "users")


@export_app.command("similar", help=SIMILAR_HELP)
@clean_errors
def export_similar(
    out_file: OutOpt, model: ModelOpt = "default",
    index_dir: ExportIndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
    items: Annotated[str, typer.Option(
        "--items", help="'all' (every catalog item), or a file of item ids, one a line (a "
                        "first line 'item_id' is a header).")] = "all",
    mode: Annotated[str, typer.Option(
        help="cf, content or hybrid (as for svdfaiss query similar).")] = "hybrid",
    chunk: ChunkOpt = 4096,
) -> None:
    from svdfaiss import export
    from svdfaiss.recommender import Recommender

    export.check_target(out_file)
    ids_file = _which(items, "--items")
    rec = Recommender.load(index_dir, model)
    chosen = (None if ids_file is None
              else export.read_ids(ids_file, [rec.item_ids, rec.new_item_ids], "item"))
    with _progress("items") as progress:
        summary = export.export_similar(rec, out_file, k, chosen, mode, chunk, progress)
    _report(summary, "items")
