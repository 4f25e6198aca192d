"""The options several commands share, as `Annotated` aliases, and `read_options`, the one
helper that turns the input flags into the reader's ReadOptions. Each input flag is declared
once, so a command that reads a log (build, evaluate, tune) takes one more of them by adding
a parameter and passing it on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from svdfaiss.data import ReadOptions

DEFAULT_INDEX_DIR = Path("indexes")

# Where a model's bundles are, and the output of most commands.
IndexDirOpt = Annotated[Path, typer.Option("--index-dir", "--out", help="Folder of bundles.",
                                           envvar="SVDFAISS_INDEX_DIR")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model name.", envvar="SVDFAISS_MODEL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# The interaction log and how to read it (build, evaluate, tune); read_options below.
InputArg = Annotated[Path, typer.Argument(metavar="INPUT",
                                          help="Interactions: CSV, TSV or Parquet.")]
FormatOpt = Annotated[str, typer.Option("--format", help="auto|csv|tsv|parquet")]
HeaderOpt = Annotated[bool | None, typer.Option("--header/--no-header",
                                                help="Default: detected.")]
DelimiterOpt = Annotated[str | None, typer.Option(help="Default: detected (',' or tab).")]
UserColOpt = Annotated[str | None, typer.Option(help="Name or 0-based number.")]
ItemColOpt = Annotated[str | None, typer.Option(help="Name or 0-based number.")]
ValueColOpt = Annotated[str | None, typer.Option(help="Rating or count column.")]
TimestampColOpt = Annotated[str | None, typer.Option()]
NoValueOpt = Annotated[bool, typer.Option("--no-value",
                                          help="Ignore any value column: one row, one event.")]
FeedbackOpt = Annotated[str, typer.Option(help="auto|explicit|implicit")]
DuplicatesOpt = Annotated[str, typer.Option(
    help="Explicit ratings given twice: last (by timestamp, then file order) or mean. "
         "Implicit counts always sum.")]
StrictOpt = Annotated[bool, typer.Option(help="Any unusable row is an error.")]

# Which rows and how they are weighted and factorized.
MinUserInteractionsOpt = Annotated[int, typer.Option(min=1)]
MinItemInteractionsOpt = Annotated[int, typer.Option(min=1)]
WeightingOpt = Annotated[str, typer.Option(help="auto|none|binary|log|bm25")]
ComponentsOpt = Annotated[int | None, typer.Option(
    "--k", min=1, help="SVD components (default: 128 up to 100k items, 64 above; build "
    "tunes it unless --no-tune).")]
ShrinkageOpt = Annotated[float, typer.Option(
    min=0.0, help="EASE-style shrinkage lambda, in mean column energies (0: plain SVD).")]


def read_options(fmt: str = "auto", *, header: bool | None = None,
                 delimiter: str | None = None, user_col: str | None = None,
                 item_col: str | None = None, value_col: str | None = None,
                 timestamp_col: str | None = None, no_value: bool = False,
                 feedback: str = "auto", duplicates: str = "last",
                 strict: bool = False) -> ReadOptions:
    """The reader's options from the input flags; a flag a command does not take keeps
    ReadOptions' default. Values are checked where they are used (build checks its
    choices first)."""
    from svdfaiss.data import ReadOptions

    return ReadOptions(format=fmt, header=header, delimiter=delimiter,  # type: ignore[arg-type]
                       user_col=user_col, item_col=item_col, value_col=value_col,
                       timestamp_col=timestamp_col, no_value=no_value,
                       feedback=feedback, duplicates=duplicates,  # type: ignore[arg-type]
                       strict=strict)
