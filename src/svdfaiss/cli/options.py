"""The options several commands share, as `Annotated` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_INDEX_DIR = Path("indexes")

IndexDirOpt = Annotated[Path, typer.Option("--index-dir", "--out", help="Folder of bundles.",
                                           envvar="SVDFAISS_INDEX_DIR")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model name.", envvar="SVDFAISS_MODEL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
InputArg = Annotated[Path, typer.Argument(metavar="INPUT",
                                          help="Interactions: CSV, TSV or Parquet.")]
FormatOpt = Annotated[str, typer.Option("--format", help="auto|csv|tsv|parquet")]
FeedbackOpt = Annotated[str, typer.Option(help="auto|explicit|implicit")]
ComponentsOpt = Annotated[int | None, typer.Option(
    "--k", min=1, help="SVD components (default: 128 up to 100k items, 64 above).")]
ShrinkageOpt = Annotated[float, typer.Option(
    min=0.0, help="EASE-style shrinkage lambda, in mean column energies (0: plain SVD).")]
NoValueOpt = Annotated[bool, typer.Option("--no-value",
                                          help="Ignore any value column: one row, one event.")]
