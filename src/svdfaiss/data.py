"""Read an interaction log, validate every row, map ids to contiguous ints, build the matrix.

External ids are kept as the exact text given (leading zeros matter) and stored sorted as
UTF-8 bytes, so the internal index of an id is its rank: lookups are a binary search over a
memory-mapped array and need no hash table at load time.
"""

from __future__ import annotations

import contextlib
import csv
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput

Feedback = Literal["explicit", "implicit"]
FileFormat = Literal["auto", "csv", "tsv", "parquet"]
DuplicatePolicy = Literal["last", "mean"]

MAX_ID_BYTES = 256
EXAMPLES_PER_REASON = 5

# Column names recognised in a header, compared after _norm (lower case, accents and
# punctuation dropped: "Order-Date" and "order_date" are "orderdate", "Stück" is "stuck").
USER_NAMES = {"user", "userid", "users", "customer", "customerid", "visitorid", "reviewerid",
              "member", "memberid", "accountid", "clientid", "uid", "client", "username",
              "kunde", "kundenid", "kundennummer", "kundennr", "nutzer", "benutzer",
              "benutzerid", "utilisateur", "cliente", "usuario", "utente"}
ITEM_NAMES = {"item", "itemid", "items", "product", "productid", "movieid", "movie", "asin",
              "sku", "article", "articleid", "bookid", "isbn", "trackid", "iid",
              "artikel", "artikelid", "artikelnummer", "artikelnr", "produkt", "produktid",
              "produit", "producto", "prodotto", "articolo", "articulo", "ean", "gtin"}
EXPLICIT_NAMES = {"rating", "ratings", "score", "stars", "star", "review", "grade",
                  "bewertung", "note", "sterne", "valoracion", "voto"}
IMPLICIT_NAMES = {"quantity", "qty", "count", "counts", "clicks", "purchases", "plays",
                  "playcount", "views", "weight", "value", "amount", "events", "units",
                  "menge", "anzahl", "stuck", "stueck", "quantite", "cantidad", "quantita"}
TIME_NAMES = {"timestamp", "ts", "time", "date", "datetime", "eventtime", "unixtime",
              "created", "createdat", "orderdate", "orderedat", "purchasedate", "eventdate",
              "updatedat", "datum", "zeit", "zeitstempel", "bestelldatum", "kaufdatum",
              "heure", "fecha", "data", "dateheure"}

REASON_MALFORMED = "malformed row (wrong number of fields)"
REASON_BLANK = "blank line"
REASON_NO_USER = "missing user id"
REASON_NO_ITEM = "missing item id"
REASON_NUL = "id contains a NUL character"
REASON_LONG = f"id longer than {MAX_ID_BYTES} bytes"
REASON_NO_VALUE = "missing value"
REASON_NON_NUMERIC = "non-numeric value"
REASON_NON_FINITE = "non-finite value (NaN or infinity)"
REASON_NEGATIVE = "negative count"
REASON_ZERO = "zero count"
REASON_NO_TIME = "missing timestamp"
REASON_BAD_TIME = "unparseable timestamp"

_NON_FINITE_TEXT = re.compile(r"^\s*[+-]?(nan|inf|infinity)\s*$", re.IGNORECASE)


def _norm(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name.lower()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", plain)


@dataclass(frozen=True)
class ReadOptions:
    """How to read an interaction log; None means detect."""

    format: FileFormat = "auto"
    header: bool | None = None
    delimiter: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    value_col: str | None = None
    timestamp_col: str | None = None
    no_value: bool = False
    feedback: Literal["auto", "explicit", "implicit"] = "auto"
    duplicates: DuplicatePolicy = "last"
    strict: bool = False
    min_rating: float | None = None  # explicit ratings below it are dropped (build_interactions)


@dataclass
class RejectedRows:
    """Unusable rows counted by reason, with the first few line numbers of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, object]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, count: int, examples: Iterable[tuple[int, str]]) -> None:
        if count <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count
        for location, text in examples:
            self.examples.append({"line": location, "reason": reason, "text": text[:200]})

    def describe(self, source: str, unit: str) -> str:
        lines = [f"{source}: {self.total} unusable row(s)"]
        for reason, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            where = [str(e["line"]) for e in self.examples if e["reason"] == reason]
            shown = f" ({unit} {', '.join(where)}{', ...' if count > len(where) else ''})"
            lines.append(f"  {reason}: {count}{shown if where else ''}")
        return "\n".join(lines)


@dataclass
class Columns:
    """Resolved column names in the parsed table, and what the value column means."""

    user: str
    item: str
    value: str | None
    timestamp: str | None
    feedback: Feedback
    names: tuple[str, ...] = ()  # every column of the input, used or not
    feedback_reason: str = ""  # why the value column was taken as counts or ratings

    def chosen(self) -> dict[str, str | None]:
        """The role columns and the feedback kind (the manifest's input.columns)."""
        return {"user": self.user, "item": self.item, "value": self.value,
                "timestamp": self.timestamp, "feedback": self.feedback}

    def report(self) -> list[dict[str, str]]:
        """Every input column and what it was used as ("ignored" when nothing)."""
        roles = {self.user: "user id", self.item: "item id",
                 self.timestamp: "timestamp (validated; orders duplicate ratings)"}
        if self.value is not None:
            roles[self.value] = ("value: counts, summed" if self.feedback == "implicit"
                                 else "value: ratings")
        return [{"column": n, "used_as": roles.get(n, "ignored")} for n in self.names]


@dataclass
class InteractionLog:
    """Validated rows of a log: ids as codes into sorted id arrays, values, timestamps."""

    user_codes: np.ndarray
    item_codes: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray  # sorted UTF-8 bytes ("S" dtype)
    item_ids: np.ndarray
    feedback: Feedback
    columns: Columns
    rows_read: int
    rejected: RejectedRows


@dataclass
class Interactions:
    """The aggregated users x items matrix with its id arrays and row accounting."""

    matrix: sp.csr_matrix  # raw aggregated values: counts (implicit) or ratings (explicit)
    user_ids: np.ndarray
    item_ids: np.ndarray
    feedback: Feedback
    rows_read: int
    rows_used: int
    rejected: RejectedRows
    duplicates_merged: int
    filtered_rows: int
    filtered_users: int
    filtered_items: int
    columns: Columns
    removed_by_min_rating: int = 0  # rows whose rating was below --min-rating

    @property
    def n_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def density(self) -> float:
        return self.matrix.nnz / max(1, self.n_users * self.n_items)


# ---------------------------------------------------------------------------- file sniffing


def detect_format(path: Path, options: ReadOptions) -> Literal["csv", "tsv", "parquet"]:
    """The file's format from the option, else its suffix, else its magic bytes."""
    if options.format != "auto":
        return options.format
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix in {".tsv", ".tab"}:
        return "tsv"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if suffix in {".csv", ".txt", ".data", ""}:
        return "csv"
    raise InvalidInput(
        f"{path}: unknown format {suffix!r}; use a .csv, .tsv or .parquet file or pass --format"
    )


def _first_line(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    # Any line ending counts (\n, \r\n, or a lone \r as old exports write), as for pyarrow.
    raw = re.split(rb"\r\n|\r|\n", head, maxsplit=1)[0]
    if not raw.strip():
        with path.open("rb") as fh:
            if not fh.read(1 << 16).strip():
                raise InvalidInput(f"{path}: file is empty")
        raise InvalidInput(f"{path}: line 1 is blank; expected a header or a first data row")
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: line 1 is not UTF-8 text ({exc.reason})") from None


def _sniff_delimiter(path: Path, line: str, options: ReadOptions, fmt: str) -> str:
    if options.delimiter:
        return "\t" if options.delimiter in {"\\t", "tab"} else options.delimiter
    if fmt == "tsv":
        return "\t"
    counts = {d: line.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    if counts[best] == 0:
        raise InvalidInput(
            f"{path}: line 1 has a single column; need at least user and item columns "
            "separated by a comma or a tab (pass --delimiter for another separator)"
        )
    return best


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_header(fields: list[str]) -> bool:
    names = {_norm(f) for f in fields}
    known = USER_NAMES | ITEM_NAMES | EXPLICIT_NAMES | IMPLICIT_NAMES | TIME_NAMES
    if names & known:
        return True
    # No known name: a header when every column after the two ids is non-numeric text.
    rest = fields[2:]
    return bool(rest) and not any(_is_number(f) for f in rest)


def _match(names: list[str], vocabulary: set[str], taken: set[str]) -> str | None:
    for name in names:
        if name not in taken and _norm(name) in vocabulary:
            return name
    return None


def _pick(names: list[str], given: str | None, what: str, path: Path, header: bool) -> str | None:
    if given is None:
        return None
    if given in names:
        return given
    if given.lstrip("-").isdigit():
        index = int(given)
        if 0 <= index < len(names):
            return names[index]
        raise InvalidInput(
            f"{path}: --{what}-col {index} is out of range; the file has {len(names)} columns "
            "(0-based)"
        )
    detail = f"columns: {', '.join(names)}" if header else "the file has no header; use 0-based"
    raise InvalidInput(f"{path}: no column named {given!r} for --{what}-col ({detail})")


def resolve_columns(names: list[str], header: bool, options: ReadOptions, path: Path) -> Columns:
    """Which column is the user, the item, the value and the timestamp, and the feedback kind."""
    if len(names) < 2:
        raise InvalidInput(
            f"{path}: found {len(names)} column(s); need at least a user and an item column"
        )
    taken: set[str] = set()

    def choose(given: str | None, what: str, vocab: set[str], position: int | None) -> str | None:
        chosen = _pick(names, given, what, path, header)
        if chosen is None and header:
            chosen = _match(names, vocab, taken)
        if chosen is None and position is not None and position < len(names):
            candidate = names[position]
            chosen = candidate if candidate not in taken else None
        if chosen is not None:
            taken.add(chosen)
        return chosen

    user = choose(options.user_col, "user", USER_NAMES, 0)
    item = choose(options.item_col, "item", ITEM_NAMES, 1)
    if user is None or item is None or user == item:
        raise InvalidInput(f"{path}: cannot tell the user and item columns apart; pass "
                           "--user-col and --item-col")
    timestamp = choose(options.timestamp_col, "timestamp", TIME_NAMES, None)
    value: str | None = None
    if not options.no_value:
        value = choose(options.value_col, "value", EXPLICIT_NAMES | IMPLICIT_NAMES, None)
        if value is None and options.value_col is None and not header:
            value = choose(None, "value", set(), 2)
    if timestamp is None and options.timestamp_col is None and not header:
        timestamp = choose(None, "timestamp", set(), 3)

    feedback: Feedback
    if options.feedback != "auto":
        feedback, reason = options.feedback, f"--feedback {options.feedback}"
    elif value is None:
        feedback = "implicit"
        reason = ("--no-value: each row counts as one event" if options.no_value else
                  "no value column found: each row counts as one event")
    elif header and _norm(value) in IMPLICIT_NAMES:
        feedback = "implicit"
        reason = (f"column {value!r} is named like a count or quantity: counts are summed "
                  "(--feedback explicit to take it as ratings)")
    elif header and _norm(value) in EXPLICIT_NAMES:
        feedback, reason = "explicit", f"column {value!r} is named like a rating"
    else:
        feedback = "explicit"
        reason = (f"column {value!r} is not named like a count: taken as ratings (pass "
                  "--feedback implicit if it holds counts or quantities)")
    if feedback == "explicit" and value is None:
        raise InvalidInput(f"{path}: --feedback explicit needs a rating column; none found "
                           f"(columns: {', '.join(names)})")
    return Columns(user=user, item=item, value=value, timestamp=timestamp, feedback=feedback,
                   names=tuple(names), feedback_reason=reason)


# ---------------------------------------------------------------------------- reading


@dataclass
class _Parsed:
    table: pa.Table
    columns: Columns
    malformed: list[tuple[int, str]]
    malformed_count: int
    first_data_line: int  # 1-based physical line of data row 0 (CSV) or 0 for Parquet
    delimiter: str


def _read_csv(path: Path, options: ReadOptions, fmt: str) -> _Parsed:
    line = _first_line(path)
    delimiter = _sniff_delimiter(path, line, options, fmt)
    try:
        fields = next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:
        raise InvalidInput(f"{path}: line 1 is not valid {fmt.upper()} ({exc})") from None
    header = options.header if options.header is not None else _looks_like_header(fields)
    names = header_names(fields) if header else [f"column_{i}" for i in range(len(fields))]
    columns = resolve_columns(names, header, options, path)
    include = [c for c in (columns.user, columns.item, columns.value, columns.timestamp)
               if c is not None]
    table, malformed, malformed_count = read_text_table(path, fmt, names, header, delimiter,
                                                        include)
    return _Parsed(table, columns, malformed, malformed_count, 2 if header else 1, delimiter)


def header_names(fields: list[str]) -> list[str]:
    """A header's fields as distinct column names (a blank or repeated name gets _i)."""
    names: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(fields):
        unique = name if name and name not in seen else f"{name or 'column'}_{i}"
        seen.add(unique)
        names.append(unique)
    return names


def read_text_table(path: Path | bytes, fmt: str, names: list[str], header: bool, delimiter: str,
                    include: list[str], newlines_in_values: bool = False
                    ) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """The columns `include` of a CSV/TSV file as text, with its malformed rows (line number,
    text) and their count; any line ending, a UTF-8 BOM and quoted fields are handled. The
    one CSV reader of the log and the catalog (and, given lines as bytes, of a Spark
    partition's lines)."""

    def read(use_threads: bool, handler: object) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(path) if isinstance(path, bytes) else path,
            read_options=pacsv.ReadOptions(
                use_threads=use_threads,
                column_names=names,
                skip_rows=1 if header else 0,
                block_size=16 << 20,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=handler, ignore_empty_lines=False,
                newlines_in_values=newlines_in_values,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=include,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    with _undecodable_rows() as undecodable:
        try:
            table, malformed, malformed_count = _read_counting(read)
        except pa.ArrowInvalid as exc:
            message = str(exc).split("\n")[0]
            if undecodable:
                message = (f"{message} (a row with the wrong number of fields that is not "
                           "UTF-8 text either; save the file as UTF-8)")
            elif "UTF8" in message or "utf8" in message.lower():
                message = "not valid UTF-8 text"
            source = "lines" if isinstance(path, bytes) else path
            raise InvalidInput(f"{source}: cannot parse as {fmt.upper()}: {message}"
                               ) from None
    return table, malformed, malformed_count


@contextlib.contextmanager
def _undecodable_rows() -> Iterator[list[BaseException]]:
    """Collect what pyarrow reports when it cannot hand a malformed row to the row handler.

    A malformed row that is not UTF-8 cannot be decoded for the handler: pyarrow reports that
    through `sys.unraisablehook` (a traceback on stderr) and then fails the read. The read's
    error becomes a clear message instead; other unraisable errors pass through.
    """
    seen: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, UnicodeDecodeError):
            seen.append(unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


def _read_counting(read: Callable[[bool, object], pa.Table]
                   ) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """Read in parallel; when rows were malformed, again serially for their line numbers."""
    count = 0

    def on_malformed(row: pacsv.InvalidRow) -> str:
        nonlocal count
        count += 1
        return "skip"

    table = read(True, on_malformed)
    if not count:
        return table, [], 0
    # Threaded parsing does not know line numbers; a serial pass does. Only bad files pay.
    rows: list[tuple[int, str]] = []

    def on_malformed_numbered(row: pacsv.InvalidRow) -> str:
        rows.append((int(row.number or 0), str(row.text)))
        return "skip"

    return read(False, on_malformed_numbered), rows, len(rows)


def _read_parquet(path: Path, options: ReadOptions) -> _Parsed:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read as Parquet: {exc}") from None
    columns = resolve_columns(list(schema.names), True, options, path)
    wanted = [c for c in (columns.user, columns.item, columns.value, columns.timestamp) if c]
    table = pq.read_table(path, columns=wanted)
    converted = {}
    for name in wanted:
        col = table[name]
        if name in (columns.user, columns.item):
            col = pc.fill_null(pc.cast(col, pa.string()), "")
        elif name == columns.value:
            if not pa.types.is_floating(col.type) and not pa.types.is_integer(col.type):
                col = pc.cast(col, pa.string())
            else:
                col = pc.cast(col, pa.float64())
        elif name == columns.timestamp and pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        converted[name] = col
    return _Parsed(pa.table(converted), columns, [], 0, 0, "")


# ---------------------------------------------------------------------------- validation


def _to_numpy_bool(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def parse_numbers(column: pa.ChunkedArray, decimal_comma: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, non_numeric) for a text or numeric column; values NaN where unusable.

    With `decimal_comma` (a file not separated by commas), "10,99" reads as 10.99.
    """
    if decimal_comma and not (pa.types.is_floating(column.type)
                              or pa.types.is_integer(column.type)):
        column = pc.replace_substring_regex(pc.utf8_trim_whitespace(column),
                                            r"^([+-]?[0-9]*),([0-9]+)$", r"\1.\2")
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        missing = np.isnan(values) & _to_numpy_bool(pc.is_null(column))
        return values.astype(np.float64), missing, np.zeros(len(values), dtype=bool)
    try:  # the common case: every cell is a number, no trimming needed
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        return values, np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    trimmed = pc.utf8_trim_whitespace(column)
    missing = _to_numpy_bool(pc.equal(trimmed, ""))
    try:
        values = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
        non_numeric = np.zeros(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = trimmed.to_numpy(zero_copy_only=False)
        parsed = np.full(len(text), np.nan)
        non_numeric = np.zeros(len(text), dtype=bool)
        for i, t in enumerate(text):
            if not t:
                continue
            try:
                parsed[i] = float(t)
            except ValueError:
                non_numeric[i] = True
        values = parsed
    values = np.where(missing | non_numeric, np.nan, values)
    return values, missing, non_numeric


def _parse_timestamps(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds, missing, unparseable) accepting epoch numbers or ISO 8601 text."""
    values, missing, non_numeric = parse_numbers(column)
    if non_numeric.any():
        import pandas as pd

        text = pc.utf8_trim_whitespace(column).to_numpy(zero_copy_only=False)
        iso = pd.to_datetime(pd.Series(text[non_numeric]), errors="coerce", utc=True,
                             format="ISO8601")
        ok = iso.notna().to_numpy()
        seconds = np.full(len(iso), np.nan)
        seconds[ok] = iso[ok].astype("int64").to_numpy() / 1e9
        values[non_numeric] = seconds
        non_numeric[np.flatnonzero(non_numeric)[ok]] = False
    bad = non_numeric | (~missing & ~np.isfinite(values))
    return values, missing, bad


def _row_text(parsed: _Parsed, index: int) -> str:
    cols = parsed.columns
    parts = [str(parsed.table[c][index].as_py()) for c in (cols.user, cols.item, cols.value,
                                                             cols.timestamp) if c]
    return (parsed.delimiter or ",").join(parts)


def _locations(parsed: _Parsed, rows: np.ndarray) -> list[int]:
    """Physical line numbers (CSV) or 1-based row numbers (Parquet) of table rows."""
    return locations(parsed.first_data_line, parsed.malformed, rows)


def locations(first_data_line: int, malformed: list[tuple[int, str]],
              rows: np.ndarray) -> list[int]:
    """Line numbers of table rows when line `first_data_line` holds row 0 and the malformed
    lines were skipped; 1-based row numbers when `first_data_line` is 0 (Parquet)."""
    if first_data_line == 0:
        return [int(r) + 1 for r in rows]
    skipped = np.sort(np.array([n for n, _ in malformed], dtype=np.int64))
    out = []
    for r in rows:
        line = first_data_line + int(r)
        # Each malformed line at or before this one pushes the row one line further down.
        while True:
            shifted = first_data_line + int(r) + int(np.searchsorted(skipped, line, "right"))
            if shifted == line:
                break
            line = shifted
        out.append(line)
    return out


def row_checks(table: pa.Table, cols: Columns, decimal_comma: bool, text_lines: bool
               ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray, np.ndarray | None]:
    """Every validation check of the rows of `table` (the role columns of `cols`), in the
    order a row is counted under (its first failing reason), with the parsed values and
    timestamps. `text_lines`: rows are CSV/TSV lines (a blank line is its own reason).
    Shared by the native reader and the Spark one (svdfaiss.spark.read), so both count
    bad rows alike."""
    n = table.num_rows
    users, items = table[cols.user], table[cols.item]
    checks: list[tuple[str, np.ndarray]] = []
    no_user = _to_numpy_bool(pc.equal(users, ""))
    no_item = _to_numpy_bool(pc.equal(items, ""))
    if text_lines:
        blank = no_user & no_item
        for c in (cols.value, cols.timestamp):
            if c is not None:
                blank &= _to_numpy_bool(pc.equal(table[c], ""))
        checks.append((REASON_BLANK, blank))
    checks += [(REASON_NO_USER, no_user), (REASON_NO_ITEM, no_item)]
    for ids in (users, items):
        checks.append((REASON_NUL, _to_numpy_bool(pc.match_substring(ids, "\x00"))))
        checks.append((REASON_LONG, _to_numpy_bool(pc.greater(pc.binary_length(ids),
                                                               MAX_ID_BYTES))))

    values = np.ones(n, dtype=np.float64)
    if cols.value is not None:
        values, missing, non_numeric = parse_numbers(table[cols.value], decimal_comma)
        checks += [(REASON_NO_VALUE, missing), (REASON_NON_NUMERIC, non_numeric)]
        checks.append((REASON_NON_FINITE, ~missing & ~non_numeric & ~np.isfinite(values)))
        if cols.feedback == "implicit":
            with np.errstate(invalid="ignore"):
                checks.append((REASON_NEGATIVE, values < 0))
                checks.append((REASON_ZERO, values == 0))
    timestamps: np.ndarray | None = None
    if cols.timestamp is not None:
        timestamps, t_missing, t_bad = _parse_timestamps(table[cols.timestamp])
        checks += [(REASON_NO_TIME, t_missing), (REASON_BAD_TIME, t_bad)]
    return checks, values, timestamps


def _validate(parsed: _Parsed, path: Path, options: ReadOptions) -> tuple[np.ndarray, RejectedRows,
                                                                          np.ndarray,
                                                                          np.ndarray | None]:
    """The mask of usable rows, the rejected rows by reason, parsed values and timestamps."""
    n = parsed.table.num_rows
    rejected = RejectedRows()
    unit = "line" if parsed.first_data_line else "row"
    if parsed.malformed_count:
        rejected.add(REASON_MALFORMED, parsed.malformed_count,
                     parsed.malformed[:EXAMPLES_PER_REASON])
    checks, values, timestamps = row_checks(parsed.table, parsed.columns,
                                            parsed.delimiter not in (",", ""), unit == "line")
    ok = np.ones(n, dtype=bool)
    for reason, failed in checks:
        hit = failed & ok  # a row counts once, under the first reason it fails
        count = int(hit.sum())
        if count:
            rows = np.flatnonzero(hit)[:EXAMPLES_PER_REASON]
            rejected.add(reason, count, zip(_locations(parsed, rows),
                                            (_row_text(parsed, int(r)) for r in rows),
                                            strict=True))
            ok &= ~failed
    if options.strict and rejected.total:
        raise InvalidInput(strict_message(rejected, str(path), unit))
    return ok, rejected, values, timestamps


def strict_message(rejected: RejectedRows, source: str, unit: str) -> str:
    """The --strict refusal: every reason with its count and first locations."""
    return (rejected.describe(source, unit) + "\n(--strict: no row may be unusable; drop "
            "--strict to skip them)")


def _sorted_codes(ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of each row into the sorted distinct ids, and those ids as UTF-8 bytes."""
    column = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    fast = _sorted_codes_ascii(column)
    return fast if fast is not None else _sorted_codes_strings(column)


def _sorted_codes_strings(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The general path (any UTF-8): pyarrow hashing, then a sort of the distinct ids."""
    encoded = pc.dictionary_encode(column)
    dictionary = pc.cast(encoded.dictionary, pa.binary())
    order = np.asarray(pc.sort_indices(dictionary))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    codes = rank[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]
    return codes.astype(np.int64), ids_to_bytes_array(dictionary.take(pa.array(order)))


def _sorted_codes_ascii(column: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer-only factorization of ASCII ids, several times faster than string hashing.

    Ids padded with NUL to a common width form an (n x width) byte matrix; read as
    big-endian 64-bit words, integer order equals byte order. Rows are factorized on a hash
    of their words (checked for collisions), and only the distinct ids are sorted.
    """
    n = len(column)
    if n == 0 or not pc.all(pc.string_is_ascii(column)).as_py():
        return None
    width = int(pc.max(pc.binary_length(column)).as_py() or 1)
    padded_width = -(-width // 8) * 8
    padded = pc.ascii_rpad(column, width=padded_width, padding="\x00")
    data = padded.buffers()[2]
    start = padded.offset * padded_width
    raw = np.frombuffer(data, dtype=np.uint8, count=n * padded_width, offset=start)
    words = raw.reshape(n, padded_width).view(">u8").astype(np.uint64)
    key = words[:, 0].copy()
    for j in range(1, words.shape[1]):
        key *= np.uint64(0x9E3779B97F4A7C15)
        key ^= words[:, j] + np.uint64(j)
    import pandas as pd

    first_codes, unique_keys = pd.factorize(key)
    first_codes = np.asarray(first_codes, dtype=np.int64)
    representative = np.empty(unique_keys.size, dtype=np.int64)
    representative[first_codes[::-1]] = np.arange(n - 1, -1, -1)
    unique_words = words[representative]
    if words.shape[1] > 1 and not np.array_equal(unique_words[first_codes], words):
        return None  # a 64-bit hash collision: let the string path handle it
    order = _lexicographic_order(unique_words)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    sorted_ids = unique_words[order].astype(">u8").view(f"S{padded_width}").ravel()
    return rank[first_codes], sorted_ids.astype(f"S{width}")


def _lexicographic_order(words: np.ndarray) -> np.ndarray:
    """Row order of a (rows x words) uint64 matrix: sort by word 0, then settle ties only."""
    order = np.argsort(words[:, 0], kind="stable")
    if words.shape[1] == 1:
        return order
    first = words[order, 0]
    tied = np.zeros(order.size, dtype=bool)
    same = first[1:] == first[:-1]
    tied[1:] |= same
    tied[:-1] |= same
    positions = np.flatnonzero(tied)
    if positions.size:
        subset = order[positions]
        keys = [words[subset, j] for j in range(words.shape[1] - 1, -1, -1)]
        order[positions] = subset[np.lexsort(keys)]
    return order


def ids_to_bytes_array(ids: pa.Array) -> np.ndarray:
    """A fixed-width `S` numpy array of UTF-8 ids (NUL-free by validation)."""
    width = max(1, int(pc.max(pc.binary_length(ids)).as_py() or 1)) if len(ids) else 1
    return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=f"S{width}")


def read_log(path: Path, options: ReadOptions | None = None) -> InteractionLog:
    """Read and validate a log; raises InvalidInput naming the file and problem."""
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory, not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot open: {exc.strerror}") from None
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path}: file is empty")
    fmt = detect_format(path, options)
    parsed = _read_parquet(path, options) if fmt == "parquet" else _read_csv(path, options, fmt)
    rows_read = parsed.table.num_rows + parsed.malformed_count
    if rows_read == 0:
        raise InvalidInput(f"{path}: no data rows (a header line only?)")
    ok, rejected, values, timestamps = _validate(parsed, path, options)
    if not ok.any():
        unit = "line" if parsed.first_data_line else "row"
        raise InvalidInput(rejected.describe(str(path), unit) + "\nno usable rows")
    columns = parsed.columns
    if columns.feedback == "explicit" and columns.feedback_reason.endswith(
            "holds counts or quantities)"):
        used = values[ok]
        if used.size and np.all(used == np.round(used)) and used.max() > 10:
            columns = replace(columns, feedback_reason=(
                f"{columns.feedback_reason}; warning: its values are whole numbers up to "
                f"{used.max():g}, like counts"))
    mask = pa.array(ok)
    table = parsed.table.filter(mask)
    # pyarrow releases the GIL while hashing and sorting: encode both id columns at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        users_job = pool.submit(_sorted_codes, table[parsed.columns.user])
        item_codes, item_ids = _sorted_codes(table[parsed.columns.item])
        user_codes, user_ids = users_job.result()
    return InteractionLog(
        user_codes=user_codes,
        item_codes=item_codes,
        values=values[ok],
        timestamps=None if timestamps is None else timestamps[ok],
        user_ids=user_ids,
        item_ids=item_ids,
        feedback=columns.feedback,
        columns=columns,
        rows_read=rows_read,
        rejected=rejected,
    )


# ---------------------------------------------------------------------------- matrix


def _aggregate(log: InteractionLog, policy: DuplicatePolicy) -> tuple[sp.csr_matrix, int]:
    """The users x items matrix with duplicates merged, and how many rows were merged away."""
    shape = (log.user_ids.size, log.item_ids.size)
    n_rows = log.user_codes.size
    if log.feedback == "implicit":
        matrix = sp.csr_matrix(
            (log.values.astype(np.float32), (log.user_codes, log.item_codes)), shape=shape
        )
        matrix.sum_duplicates()
        return matrix, n_rows - matrix.nnz
    key = log.user_codes * shape[1] + log.item_codes
    if policy == "mean":
        sums = sp.csr_matrix((log.values, (log.user_codes, log.item_codes)), shape=shape)
        counts = sp.csr_matrix((np.ones(n_rows), (log.user_codes, log.item_codes)), shape=shape)
        sums.sum_duplicates()
        counts.sum_duplicates()
        mean = sums.copy()
        mean.data = (sums.data / counts.data).astype(np.float32)
        return mean.astype(np.float32), n_rows - mean.nnz
    # "last": the latest by timestamp, ties and missing timestamps by file order.
    order_keys = [np.arange(n_rows), key] if log.timestamps is None else [
        np.arange(n_rows), log.timestamps, key]
    order = np.lexsort(order_keys)
    sorted_key = key[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = sorted_key[1:] != sorted_key[:-1]
    keep = order[last]
    matrix = sp.csr_matrix(
        (log.values[keep].astype(np.float32), (log.user_codes[keep], log.item_codes[keep])),
        shape=shape,
    )
    return matrix, n_rows - keep.size


def build_interactions(
    log: InteractionLog,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
    duplicates: DuplicatePolicy = "last",
    min_rating: float | None = None,
) -> Interactions:
    """Aggregate duplicates, then drop users and items below the minimum distinct counts.

    With `min_rating` (explicit ratings only), a user's rating of an item below it (after
    duplicates are merged: the rating that stands) is no positive signal and is dropped
    first. The minimums are applied together until both hold (a k-core), since dropping
    items can push users below their minimum and the other way round.
    """
    matrix, merged = _aggregate(log, duplicates)
    below_rows = np.zeros(log.user_codes.size, dtype=bool)
    if min_rating is not None:
        if log.feedback != "explicit":
            raise InvalidInput(f"--min-rating {min_rating:g} applies to explicit ratings; this "
                               f"log holds implicit counts ({log.columns.feedback_reason})")
        low = matrix.data < min_rating
        if low.any():
            coo = matrix.tocoo()
            low_keys = coo.row[low].astype(np.int64) * matrix.shape[1] + coo.col[low]
            keys = log.user_codes.astype(np.int64) * matrix.shape[1] + log.item_codes
            below_rows = np.isin(keys, low_keys)
            matrix.data[low] = 0
            matrix.eliminate_zeros()
        if matrix.nnz == 0:
            raise InvalidInput(f"--min-rating {min_rating:g}: every rating is below it; "
                               "lower it")
    keep_users = np.ones(matrix.shape[0], dtype=bool)
    keep_items = np.ones(matrix.shape[1], dtype=bool)
    if min_user_interactions > 1 or min_item_interactions > 1:
        binary = matrix.copy()
        binary.data[:] = 1
        while True:
            sub = binary[keep_users][:, keep_items]
            user_ok = np.asarray(sub.sum(axis=1)).ravel() >= min_user_interactions
            item_ok = np.asarray(sub.sum(axis=0)).ravel() >= min_item_interactions
            if user_ok.all() and item_ok.all():
                break
            keep_users[np.flatnonzero(keep_users)[~user_ok]] = False
            keep_items[np.flatnonzero(keep_items)[~item_ok]] = False
            if not keep_users.any() or not keep_items.any():
                break
        matrix = matrix[keep_users][:, keep_items].tocsr()
    used = keep_users[log.user_codes] & keep_items[log.item_codes] & ~below_rows
    rows_used = int(used.sum())
    if matrix.nnz == 0:
        raise InvalidInput(
            f"no interactions left after filtering (min user interactions "
            f"{min_user_interactions}, min item interactions {min_item_interactions}); "
            "lower the minimums"
        )
    matrix.sort_indices()
    return Interactions(
        matrix=matrix,
        user_ids=log.user_ids[keep_users],
        item_ids=log.item_ids[keep_items],
        feedback=log.feedback,
        rows_read=log.rows_read,
        rows_used=rows_used,
        rejected=log.rejected,
        duplicates_merged=merged,
        filtered_rows=int(log.user_codes.size - rows_used - below_rows.sum()),
        filtered_users=int((~keep_users).sum()),
        filtered_items=int((~keep_items).sum()),
        columns=log.columns,
        removed_by_min_rating=int(below_rows.sum()),
    )


def lookup(sorted_ids: np.ndarray, external_ids: Iterable[str]) -> np.ndarray:
    """Internal indexes of ids in a sorted `S` array; -1 for ids it does not hold."""
    keys = [i.encode("utf-8") for i in external_ids]
    if not keys:
        return np.empty(0, dtype=np.int64)
    width = sorted_ids.dtype.itemsize
    query = np.array(keys, dtype=f"S{max(width, max(len(k) for k in keys), 1)}")
    pos = np.searchsorted(sorted_ids, query)
    pos_clipped = np.minimum(pos, sorted_ids.size - 1)
    found = (pos < sorted_ids.size) & (sorted_ids[pos_clipped] == query)
    # Fixed-width "S" arrays drop trailing NULs; ids never contain NUL (validated), and a
    # query longer than the stored width cannot match.
    found &= np.array([len(k) <= width and b"\x00" not in k for k in keys])
    return np.where(found, pos_clipped, -1).astype(np.int64)


def lookup_one(sorted_ids: np.ndarray, external_id: str) -> int:
    """Internal index of one id in a sorted `S` array, -1 when absent; the per-request path
    (a tenth of `lookup`'s cost for one id)."""
    key = external_id.encode("utf-8")
    pos = int(sorted_ids.searchsorted(key))
    # A stored id compares as bytes without trailing NULs, so a key with a NUL or longer
    # than the stored width never matches.
    return pos if pos < sorted_ids.size and sorted_ids[pos] == key else -1


def decode_ids(ids: np.ndarray) -> list[str]:
    """External ids (str) of an `S` array."""
    return [b.decode("utf-8") for b in ids.tolist()]
