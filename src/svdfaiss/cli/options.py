"""The options several commands share, as `Annotated` aliases, and `read_options`, the one
helper that turns the input flags into the reader's ReadOptions. Each input flag is declared
once, so a command that reads a log (build, evaluate, tune) takes one more of them by adding
a parameter and passing it on. INPUT_FLAGS names them: build, evaluate and tune take every
one (tests/test_inputs.py checks it), and CHOICES validates the choice values of all three."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svdfaiss.errors import InvalidInput

if TYPE_CHECKING:
    from svdfaiss.catalog import CatalogOptions
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
DelimiterOpt = Annotated[str | None, typer.Option(
    help="Default: detected (',', tab, ';' or '|').")]
UserColOpt = Annotated[str | None, typer.Option(help="Name or 0-based number.")]
ItemColOpt = Annotated[str | None, typer.Option(help="Name or 0-based number.")]
ValueColOpt = Annotated[str | None, typer.Option(
    help="Rating or count column; a name like a quantity (qty, count, Menge, ...) is counts "
         "unless --feedback says otherwise.")]
TimestampColOpt = Annotated[str | None, typer.Option(
    help="Epoch seconds or ISO 8601; default: a column named like one (timestamp, date, "
         "order_date, datum, ...).")]
NoValueOpt = Annotated[bool, typer.Option("--no-value",
                                          help="Ignore any value column: one row, one event.")]
FeedbackOpt = Annotated[str, typer.Option(help="auto|explicit|implicit")]
DuplicatesOpt = Annotated[str, typer.Option(
    help="Explicit ratings given twice: last (by timestamp, then file order) or mean. "
         "Implicit counts always sum.")]
StrictOpt = Annotated[bool, typer.Option(help="Any unusable row is an error.")]
MinRatingOpt = Annotated[float | None, typer.Option(
    help="Explicit ratings below this are no positive signal: dropped before the model is "
         "built or scored (an error on implicit counts).")]

# Every input flag; build, evaluate and tune take them all.
INPUT_FLAGS = ("--format", "--header", "--delimiter", "--user-col", "--item-col",
               "--value-col", "--timestamp-col", "--no-value", "--feedback", "--duplicates",
               "--strict", "--min-rating")

# The catalog (build's --items, echoed by tune) and how to read it.
ItemsOpt = Annotated[Path | None, typer.Option(
    "--items", help="Catalog CSV/TSV/Parquet: an item id column (item_id, sku, ...) and "
    "fields such as title, category, price, in_stock; 'none': no catalog (for a compose "
    "file or script that always passes the flag; ./none names a file so called).")]
ItemsDelimiterOpt = Annotated[str | None, typer.Option(
    help="The catalog's delimiter (default: detected like the log's).")]
ItemsIdColOpt = Annotated[str | None, typer.Option(
    help="The catalog's item id column (default: item_id, sku, product_id, artikel, ...).")]
ItemsPriceColOpt = Annotated[str | None, typer.Option(
    help="The catalog's price column (default: price, preis, prix, ...).")]
ItemsStockColOpt = Annotated[str | None, typer.Option(
    help="The catalog's stock column (default: in_stock, stock, available, ...).")]

CHOICES = {"--format": ("auto", "csv", "tsv", "parquet"),
           "--feedback": ("auto", "explicit", "implicit"),
           "--duplicates": ("last", "mean"),
           "--weighting": ("auto", "none", "binary", "log", "bm25")}


def check_choice(flag: str, value: str, allow_auto: bool = True) -> None:
    """The one check of a choice flag's value (build, evaluate and tune)."""
    allowed = tuple(c for c in CHOICES[flag] if allow_auto or c != "auto")
    if value not in allowed:
        raise InvalidInput(f"{flag} {value!r}: choose one of {', '.join(allowed)}")

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
                 strict: bool = False, min_rating: float | None = None) -> ReadOptions:
    """The reader's options from the input flags; a flag a command does not take keeps
    ReadOptions' default. The choice values are checked here, before anything is read."""
    from svdfaiss.data import ReadOptions

    check_choice("--format", fmt)
    check_choice("--feedback", feedback)
    check_choice("--duplicates", duplicates)
    return ReadOptions(format=fmt, header=header, delimiter=delimiter,  # type: ignore[arg-type]
                       user_col=user_col, item_col=item_col, value_col=value_col,
                       timestamp_col=timestamp_col, no_value=no_value,
                       feedback=feedback, duplicates=duplicates,  # type: ignore[arg-type]
                       strict=strict, min_rating=min_rating)


def input_flags_text(read: ReadOptions) -> str:
    """The input flags of `read` that differ from the defaults, as shell words (tune's
    "build with:" line)."""
    from svdfaiss.data import ReadOptions

    default = ReadOptions()
    words: list[str] = []
    if read.format != default.format:
        words += ["--format", read.format]
    if read.header is not None:
        words.append("--header" if read.header else "--no-header")
    for flag, value in (("--delimiter", read.delimiter), ("--user-col", read.user_col),
                        ("--item-col", read.item_col), ("--value-col", read.value_col),
                        ("--timestamp-col", read.timestamp_col)):
        if value is not None:
            words += [flag, value]
    if read.no_value:
        words.append("--no-value")
    if read.feedback != default.feedback:
        words += ["--feedback", read.feedback]
    if read.duplicates != default.duplicates:
        words += ["--duplicates", read.duplicates]
    if read.strict:
        words.append("--strict")
    if read.min_rating is not None:
        words += ["--min-rating", f"{read.min_rating:g}"]
    return " ".join(shlex.quote(w) for w in words)


def catalog_options(delimiter: str | None = None, id_col: str | None = None,
                    price_col: str | None = None,
                    stock_col: str | None = None) -> CatalogOptions:
    """The catalog reader's options from the --items-* flags."""
    from svdfaiss.catalog import CatalogOptions

    return CatalogOptions(delimiter=delimiter, id_col=id_col, price_col=price_col,
                          stock_col=stock_col)


def catalog_flags_text(catalog: Path | None, options: CatalogOptions) -> str:
    """--items and the --items-* flags given, as shell words."""
    if catalog is None:
        return ""
    words = ["--items", str(catalog)]
    for flag, value in (("--items-delimiter", options.delimiter),
                        ("--items-id-col", options.id_col),
                        ("--items-price-col", options.price_col),
                        ("--items-stock-col", options.stock_col)):
        if value is not None:
            words += [flag, value]
    return " ".join(shlex.quote(w) for w in words)
