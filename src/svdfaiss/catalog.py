"""Read an item catalog with the interaction log's machinery (svdfaiss.data): the same
detection of the delimiter, a UTF-8 BOM, line endings and quoted fields, decimal commas in a
file not separated by commas, column synonyms, and unusable rows counted by reason with
example lines instead of one bad row failing the build.

The stock column is normalised to booleans here (STOCK_TRUE, STOCK_FALSE), so the stored
catalog.parquet holds true/false/null and the query's stock filter needs no guessing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from svdfaiss import bundle
from svdfaiss.data import (
    EXAMPLES_PER_REASON,
    ITEM_NAMES,
    MAX_ID_BYTES,
    REASON_BLANK,
    REASON_LONG,
    REASON_MALFORMED,
    REASON_NO_ITEM,
    REASON_NUL,
    ReadOptions,
    RejectedRows,
    _first_line,
    _norm,
    detect_format,
    header_names,
    locations,
    lookup,
    parse_numbers,
    read_text_table,
)
from svdfaiss.errors import InvalidInput

# Stock values accepted, compared case-insensitively after trimming; an empty cell is
# unknown (null, never "in stock"), a whole number is a count (above 0: in stock).
STOCK_TRUE = frozenset({"true", "t", "yes", "y", "1", "ja", "j", "wahr", "oui", "vrai", "si",
                        "sí", "sì", "verdadero", "vero", "in stock", "instock", "available",
                        "x", "on"})
STOCK_FALSE = frozenset({"false", "f", "no", "n", "0", "nein", "falsch", "non", "faux",
                         "falso", "out of stock", "outofstock", "unavailable", "off"})
STOCK_ACCEPTED = ("true/false, yes/no, 1/0, y/n, t/f, ja/nein, wahr/falsch, oui/non, "
                  "vrai/faux, si/no, verdadero/falso, in stock/out of stock, a whole number "
                  "(a count: above 0 is in stock); case-insensitive, empty for unknown")

CATALOG_ID_NAMES = ITEM_NAMES | {"id"}
PRICE_NAMES = {"price", "preis", "prix", "precio", "prezzo", "unitprice", "saleprice",
               "verkaufspreis", "cost"}
STOCK_NAMES = {"instock", "stock", "available", "availability", "auflager", "lagernd", "lager",
               "lagerbestand", "bestand", "vorrat",
               "verfugbar", "lieferbar", "enstock", "disponible", "disponibile"}
# The names the query's filters look for (query.filters): a recognised column under another
# name is stored under the first of these.
PRICE_STORED = ("price",)
STOCK_STORED = ("in_stock", "instock", "stock")

REASON_PRICE = "non-numeric price"
REASON_PRICE_NON_FINITE = "non-finite price (NaN or infinity)"
REASON_PRICE_NEGATIVE = "negative price"
REASON_STOCK = "unknown stock value"


@dataclass(frozen=True)
class CatalogOptions:
    """How to read the catalog (--items-*); None means detect."""

    delimiter: str | None = None
    id_col: str | None = None
    price_col: str | None = None
    stock_col: str | None = None


def normalise_stock(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(booleans with null for empty, mask of values that are none of the accepted ones)."""
    if pa.types.is_boolean(column.type):
        combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return combined, np.zeros(len(column), dtype=bool)
    texts = pc.cast(column, pa.string()).to_pylist()
    out: list[bool | None] = []
    unknown = np.zeros(len(texts), dtype=bool)
    for i, raw in enumerate(texts):
        text = "" if raw is None else " ".join(raw.split()).lower()
        if not text:
            out.append(None)
        elif text in STOCK_TRUE:
            out.append(True)
        elif text in STOCK_FALSE:
            out.append(False)
        elif text.isdigit():
            out.append(int(text) > 0)
        else:
            out.append(None)
            unknown[i] = True
    return pa.array(out, type=pa.bool_()), unknown


def _find(names: list[str], given: str | None, vocab: set[str], flag: str,
          path: Path) -> str | None:
    if given is not None:
        if given in names:
            return given
        raise InvalidInput(f"{path}: no catalog column named {given!r} for {flag} (columns: "
                           f"{', '.join(names)})")
    return next((n for n in names if _norm(n) in vocab), None)


def _load(path: Path, options: CatalogOptions
          ) -> tuple[pa.Table, list[tuple[int, str]], int, int, str, bool]:
    """(table of text or typed columns, malformed rows, their count, the line of data row 0
    (0 for Parquet), the delimiter, whether numbers may use a decimal comma)."""
    fmt = detect_format(path, ReadOptions())
    if fmt == "parquet":
        try:
            return pq.read_table(path), [], 0, 0, "", False
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"{path}: cannot read the catalog as Parquet: {exc}") from None
    line = _first_line(path)
    if options.delimiter:
        delimiter = "\t" if options.delimiter in {"\\t", "tab"} else options.delimiter
    elif fmt == "tsv":
        delimiter = "\t"
    else:
        counts = {d: line.count(d) for d in (",", "\t", ";", "|")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    try:
        fields = next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:
        raise InvalidInput(f"{path}: line 1 of the catalog is not valid {fmt.upper()} "
                           f"({exc})") from None
    names = header_names(fields)
    table, malformed, count = read_text_table(path, fmt, names, True, delimiter, names,
                                              newlines_in_values=True)
    return table, malformed, count, 2, delimiter, delimiter != ","


def _typed(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column as integers or floats when every non-empty cell is one; empty: null."""
    nulled = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    for kind in (pa.int64(), pa.float64()):
        try:
            return pc.cast(nulled, kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return column


def read_catalog(path: Path, item_ids: np.ndarray, keep_new: bool = False,
                 options: CatalogOptions | None = None,
                 strict: bool = False) -> tuple[pa.Table, dict[str, Any], np.ndarray]:
    """Catalog rows aligned to the model's items (nulls where the catalog lacks an item).

    With `keep_new`, the rows of catalog items the log never mentions follow, in the order of
    the returned sorted id array (they get content neighbours); otherwise they are dropped.
    Unusable rows are left out and counted by reason (with `strict`, the first is an error).
    """
    options = options or CatalogOptions()
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: catalog file not found")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path}: the catalog file is empty")
    table, malformed, malformed_count, first_line, delimiter, decimal_comma = _load(path,
                                                                                     options)
    names = table.column_names
    id_col = _find(names, options.id_col, CATALOG_ID_NAMES, "--items-id-col", path)
    if id_col is None:
        raise InvalidInput(f"{path}: catalog needs an item id column: none of its columns "
                           f"({', '.join(names)}) is named like one (item_id, sku, product_id, "
                           "artikel, ...); name it with --items-id-col")
    price_col = _find(names, options.price_col, PRICE_NAMES, "--items-price-col", path)
    stock_col = _find(names, options.stock_col, STOCK_NAMES, "--items-stock-col", path)
    if price_col == id_col or stock_col == id_col or (price_col and price_col == stock_col):
        raise InvalidInput(f"{path}: the catalog's id, price and stock columns must differ "
                           f"(id {id_col!r}, price {price_col!r}, stock {stock_col!r})")
    text = first_line > 0
    ids = pc.fill_null(pc.cast(table[id_col], pa.string()), "")
    n = table.num_rows
    checks: list[tuple[str, np.ndarray, str | None]] = []
    if text:
        blank = np.ones(n, dtype=bool)
        for name in names:
            blank &= np.asarray(pc.equal(table[name], "").to_numpy(zero_copy_only=False),
                                dtype=bool)
        checks.append((REASON_BLANK, blank, None))

    def mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False),
                          dtype=bool)

    checks += [(REASON_NO_ITEM, mask(pc.equal(ids, "")), id_col),
               (REASON_NUL, mask(pc.match_substring(ids, "\x00")), id_col),
               (REASON_LONG, mask(pc.greater(pc.binary_length(ids), MAX_ID_BYTES)), id_col)]
    columns: dict[str, pa.ChunkedArray | pa.Array] = {n: table[n] for n in names}
    if price_col is not None:
        prices, missing, non_numeric = parse_numbers(table[price_col], decimal_comma)
        with np.errstate(invalid="ignore"):
            checks += [(REASON_PRICE, non_numeric, price_col),
                       (REASON_PRICE_NON_FINITE, ~missing & ~non_numeric & ~np.isfinite(prices),
                        price_col),
                       (REASON_PRICE_NEGATIVE, prices < 0, price_col)]
        columns[price_col] = pa.array(prices, mask=missing | np.isnan(prices))
    stock_unknown = np.zeros(n, dtype=bool)
    if stock_col is not None:
        columns[stock_col], stock_unknown = normalise_stock(table[stock_col])
        checks.append((REASON_STOCK, stock_unknown, stock_col))

    rejected = RejectedRows()
    if malformed_count:
        rejected.add(REASON_MALFORMED, malformed_count, malformed[:EXAMPLES_PER_REASON])
    # A quoted field may span lines: then rows are counted as records, not lines.
    multiline = text and any(
        pa.types.is_string(table[c].type)
        and bool(pc.any(pc.match_substring(table[c], "\n")).as_py()) for c in names)
    unit = "row" if not text else ("record" if multiline else "line")
    ok = np.ones(n, dtype=bool)
    first_error: str | None = None
    for reason, failed, field in checks:
        hit = failed & ok
        count = int(hit.sum())
        if not count:
            continue
        rows = np.flatnonzero(hit)[:EXAMPLES_PER_REASON]
        where = (locations(first_line, malformed, rows) if unit == "line"
                 else [int(r) + (2 if text else 1) for r in rows])
        texts = [(delimiter or ",").join(str(table[c][int(r)].as_py()) for c in names)
                 for r in rows]
        rejected.add(reason, count, zip(where, texts, strict=True))
        if first_error is None and field is not None:
            value = table[field][int(rows[0])].as_py()
            hint = f" (accepted: {STOCK_ACCEPTED})" if reason == REASON_STOCK else ""
            first_error = (f"{path}: {unit} {where[0]}: {field} {value!r}: {reason}{hint}")
        ok &= ~failed
    if strict and rejected.total:
        detail = first_error or rejected.describe(str(path), unit)
        raise InvalidInput(f"{detail}\n{rejected.describe(str(path), unit)}\n(--strict: no "
                           "catalog row may be unusable; drop --strict to skip them)")

    stored: dict[str, str] = {}  # column in the file -> its name in catalog.parquet
    for name in names:
        if name == id_col:
            continue
        target = name
        if name == price_col and name.lower() not in PRICE_STORED:
            target = PRICE_STORED[0]
        if name == stock_col and name.lower() not in STOCK_STORED:
            target = STOCK_STORED[0]
        if target != name and target in {n.lower() for n in names if n != name}:
            target = name  # the file has another column of that name: leave both alone
        stored[name] = target
        if text and name not in (price_col, stock_col):
            columns[name] = _typed(table[name])
    keep = pa.array(ok)
    kept_ids = ids.filter(keep).to_pylist()
    kept = {name: columns[name].filter(keep) for name in stored}

    positions = lookup(item_ids, kept_ids)
    seen = np.zeros(item_ids.size, dtype=bool)
    take = np.full(item_ids.size, -1, dtype=np.int64)
    duplicates = 0
    new_rows: dict[str, int] = {}
    for row, pos in enumerate(positions):
        if pos < 0:
            if keep_new:
                item = kept_ids[row]
                if item in new_rows:
                    duplicates += 1
                else:
                    new_rows[item] = row
            continue
        if seen[pos]:
            duplicates += 1
            continue
        seen[pos] = True
        take[pos] = row
    new_ids = sorted(new_rows, key=lambda i: i.encode("utf-8"))
    take = np.concatenate([take, np.array([new_rows[i] for i in new_ids], dtype=np.int64)])
    indices = pa.array(take, mask=take < 0)
    aligned = pa.table({stored[n]: kept[n].take(indices) for n in stored})

    def role(name: str) -> str:
        if name == id_col:
            return "item id"
        if name == price_col:
            return f"price (filters; stored as {stored[name]})"
        if name == stock_col:
            return f"in stock, normalised to true/false (filters; stored as {stored[name]})"
        return "stored (returned with results; content text or category when named so)"

    info = {
        "path": str(path),
        "sha256": bundle.sha256_file(path),
        "rows": n + malformed_count,
        "matched_items": int(seen.sum()),
        "duplicate_ids": duplicates,
        "columns": list(stored.values()),
        "columns_report": [{"column": name, "used_as": role(name)} for name in names],
        "delimiter": delimiter or None,
        "decimal_comma": decimal_comma,
        "stock_values": STOCK_ACCEPTED if stock_col is not None else None,
        "new_items": len(new_ids),
        "rejected": rejected.total,
        "rejected_by_reason": rejected.counts,
        "rejected_examples": rejected.examples,
        "rejected_unit": unit,
    }
    width = max([1, *(len(i.encode("utf-8")) for i in new_ids)])
    return aligned, info, np.array([i.encode("utf-8") for i in new_ids], dtype=f"S{width}")
