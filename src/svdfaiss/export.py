"""Every user's recommendations, or every item's similar items, written to Parquet or CSV.

The answers are the service's (query.batch, a chunk of ids at a time). Each chunk is written
as it finishes (a Parquet row group, or CSV lines), so memory is bounded by the chunk, not
by the number of users. The file is written beside the target under a temporary name,
fsynced and renamed over it at the end: a failed export leaves no file and no partial one.

Columns (one row per answer item, best first):
- recommendations: user_id, rank (1 = best), item_id, score, reason;
- similar: item_id, rank, similar_item_id, score, reason, status. An item the query refuses
  (mode cf for an item without collaborative evidence, mode content for one without
  content) has one row with rank, similar_item_id, score and reason empty and the refusal
  in status; every other row's status is "ok".
A score means what its reason says (README, "Answers and their evidence").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from svdfaiss.data import lookup
from svdfaiss.errors import InvalidInput
from svdfaiss.query.batch import Batch, recommend_many, similar_many
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.recommend import ranks_new_items
from svdfaiss.query.similar import resolve_mode

CHUNK = 4096  # ids per batch: 4096 x k rows in memory, and a 4096 x 4096 banded head product
FORMATS = (".parquet", ".csv")

RECOMMENDATIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
    ("score", pa.float32()), ("reason", pa.string()),
])
SIMILAR_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("rank", pa.int32()), ("similar_item_id", pa.string()),
    ("score", pa.float32()), ("reason", pa.string()), ("status", pa.string()),
])

Progress = Callable[[int, int], None]  # (ids done, ids in all)


@dataclass
class ExportSummary:
    """What an export wrote: ids asked, rows, rows per reason, single-query fallbacks."""

    path: Path
    ids: int = 0
    rows: int = 0
    singles: int = 0
    refused: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class _TableWriter(Protocol):
    def write_table(self, table: pa.Table) -> None: ...
    def close(self) -> None: ...


def check_target(out: Path) -> str:
    """The output format from the file name; InvalidInput before any work is done."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(f"--out {out}: name a .parquet or .csv file")
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a folder; name a file")
    if not out.parent.is_dir():
        raise InvalidInput(f"--out {out}: folder {out.parent} does not exist")
    return suffix


def read_ids(path: Path, known: list[np.ndarray], what: str) -> np.ndarray:
    """Positions of the ids in a file of one id a line, as the model orders them.

    `known` holds sorted `S` id arrays whose positions follow one another (the model's
    items, then the catalog-only items). Ids are taken exactly as written (only the line
    ending goes). A first line reading `user_id`/`item_id` that is no id is a header. An
    empty line, an id that is not UTF-8, an unknown id or a repeated id is an error naming
    the file, the line and the id.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"--{what}s {path}: cannot read ({exc.strerror})") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    ids: list[str] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{path} line {n}: {what} id {line!r} is not UTF-8") from None
        if not text:
            raise InvalidInput(f"{path} line {n}: empty {what} id")
        ids.append(text)
        numbers.append(n)
    if not ids:
        raise InvalidInput(f"{path}: no {what} ids (one id a line)")
    positions = np.full(len(ids), -1, dtype=np.int64)
    offset = 0
    for sorted_ids in known:
        if sorted_ids.size:
            found = lookup(sorted_ids, ids)
            hit = (found >= 0) & (positions < 0)
            positions[hit] = found[hit] + offset
        offset += int(sorted_ids.size)
    if positions[0] < 0 and ids[0] == f"{what}_id":
        positions, ids, numbers = positions[1:], ids[1:], numbers[1:]
    unknown = np.flatnonzero(positions < 0)
    if unknown.size:
        first = int(unknown[0])
        more = f" (and {unknown.size - 1} more unknown ids)" if unknown.size > 1 else ""
        raise InvalidInput(f"{path} line {numbers[first]}: unknown {what} id "
                           f"{ids[first]!r}{more}; the model has {offset:,} {what}s")
    order = np.argsort(positions, kind="stable")
    repeated = np.flatnonzero(positions[order][1:] == positions[order][:-1])
    if repeated.size:
        again, before = int(order[repeated[0] + 1]), int(order[repeated[0]])
        raise InvalidInput(f"{path} line {numbers[again]}: {what} id {ids[again]!r} "
                           f"repeats line {numbers[before]}")
    if not positions.size:
        raise InvalidInput(f"{path}: no {what} ids after the header")
    return positions


@contextlib.contextmanager
def _atomic_writer(out: Path, schema: pa.Schema) -> Iterator[_TableWriter]:
    """A Parquet or CSV writer on a temporary file beside `out`, renamed over `out` when
    the block ends without an error and removed when it does not."""
    suffix = check_target(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    writer: _TableWriter = (pq.ParquetWriter(tmp, schema) if suffix == ".parquet"
                            else pacsv.CSVWriter(tmp, schema))
    try:
        yield writer
        writer.close()
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
        directory = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _string_ids(*arrays: np.ndarray) -> pa.Array:
    """External ids of `S` arrays, concatenated, as one Arrow string array to take from."""
    parts = [pa.array(a).cast(pa.string()) for a in arrays if a.size]
    return pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())


def _rows(batch: Batch, query_ids: pa.Array, catalog_ids: pa.Array,
          summary: ExportSummary) -> dict[str, Any]:
    """The columns of one chunk: one row per answer item."""
    mask = batch.positions >= 0
    counts = mask.sum(axis=1)
    reasons = batch.reasons[mask]
    names, hits = np.unique(reasons, return_counts=True)
    for name, hit in zip(names.tolist(), hits.tolist(), strict=True):
        summary.reasons[name] = summary.reasons.get(name, 0) + hit
    summary.singles += batch.singles
    return {
        "query": query_ids.take(pa.array(np.repeat(np.arange(len(query_ids)), counts))),
        "rank": pa.array(np.cumsum(mask, axis=1)[mask].astype(np.int32)),
        "item": catalog_ids.take(pa.array(batch.positions[mask])),
        "score": pa.array(batch.scores[mask].astype(np.float32)),
        "reason": pa.array(reasons.tolist(), type=pa.string()),
    }


def _chunks(positions: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, positions.size, chunk):
        yield positions[start : start + chunk]


def export_recommendations(model: LoadedModel, out: Path, k: int = 10,
                           users: np.ndarray | None = None, mode: str = "hybrid",
                           chunk: int = CHUNK, progress: Progress | None = None
                           ) -> ExportSummary:
    """Write the recommendations of `users` (positions; None: every user) to `out`."""
    _check(k, chunk)
    ranks_new_items(model, mode)  # an unknown mode fails before the file is opened
    chosen = np.arange(model.n_users) if users is None else users
    summary = ExportSummary(out, ids=int(chosen.size))
    start = time.perf_counter()
    user_ids = _string_ids(model.user_ids)
    catalog_ids = _string_ids(model.item_ids, model.new_item_ids)
    with _atomic_writer(out, RECOMMENDATIONS_SCHEMA) as writer:
        done = 0
        for part in _chunks(chosen, chunk):
            batch = recommend_many(model, part, k, mode)
            cols = _rows(batch, user_ids.take(pa.array(part)), catalog_ids, summary)
            table = pa.Table.from_arrays(
                [cols["query"], cols["rank"], cols["item"], cols["score"], cols["reason"]],
                schema=RECOMMENDATIONS_SCHEMA)
            writer.write_table(table)
            summary.rows += table.num_rows
            done += part.size
            if progress is not None:
                progress(done, int(chosen.size))
    summary.seconds = time.perf_counter() - start
    return summary


def export_similar(model: LoadedModel, out: Path, k: int = 10,
                   items: np.ndarray | None = None, mode: str = "hybrid",
                   chunk: int = CHUNK, progress: Progress | None = None) -> ExportSummary:
    """Write the similar items of `items` (catalog positions; None: every catalog item,
    the model's and the catalog-only ones) to `out`."""
    _check(k, chunk)
    resolve_mode(model, mode)
    chosen = np.arange(model.n_catalog) if items is None else items
    summary = ExportSummary(out, ids=int(chosen.size))
    start = time.perf_counter()
    catalog_ids = _string_ids(model.item_ids, model.new_item_ids)
    with _atomic_writer(out, SIMILAR_SCHEMA) as writer:
        done = 0
        for part in _chunks(chosen, chunk):
            batch = similar_many(model, part, k, mode)
            query_ids = catalog_ids.take(pa.array(part))
            cols = _rows(batch, query_ids, catalog_ids, summary)
            refused = np.flatnonzero(np.array(batch.status) != "ok")
            summary.refused += int(refused.size)
            n = len(cols["rank"])
            tables = [pa.Table.from_arrays(
                [cols["query"], cols["rank"], cols["item"], cols["score"], cols["reason"],
                 pa.array(["ok"] * n, type=pa.string())], schema=SIMILAR_SCHEMA)]
            if refused.size:
                empty = pa.nulls(refused.size)
                tables.append(pa.Table.from_arrays(
                    [query_ids.take(pa.array(refused)), empty.cast(pa.int32()),
                     empty.cast(pa.string()), empty.cast(pa.float32()),
                     empty.cast(pa.string()),
                     pa.array([batch.status[i] for i in refused.tolist()], type=pa.string())],
                    schema=SIMILAR_SCHEMA))
            for table in tables:
                if table.num_rows:
                    writer.write_table(table)
                    summary.rows += table.num_rows
            done += part.size
            if progress is not None:
                progress(done, int(chosen.size))
    summary.seconds = time.perf_counter() - start
    return summary


def _check(k: int, chunk: int) -> None:
    if k < 1:
        raise InvalidInput(f"--k must be at least 1, got {k}")
    if chunk < 1:
        raise InvalidInput(f"chunk must be at least 1, got {chunk}")
