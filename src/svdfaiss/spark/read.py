"""Read, validate, aggregate and filter an interaction log in Spark, into row blocks.

The same definitions as the native reader (svdfaiss.data): the column detection runs on
the file's first line or the Parquet schema; each partition's lines are parsed by the
native CSV reader and validated by `data.row_checks`, so a bad row is counted under the
same reason; duplicates, --min-rating and the minimum-interaction filters follow
`data.build_interactions`. The result is a cached RDD of `Block`s: the users of one range,
sorted by id, with their aggregated rows as CSR arrays, and the sorted item ids.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from svdfaiss.data import (
    EXAMPLES_PER_REASON,
    REASON_BAD_TIME,
    REASON_BLANK,
    REASON_LONG,
    REASON_MALFORMED,
    REASON_NEGATIVE,
    REASON_NO_ITEM,
    REASON_NO_TIME,
    REASON_NO_USER,
    REASON_NO_VALUE,
    REASON_NON_FINITE,
    REASON_NON_NUMERIC,
    REASON_NUL,
    REASON_ZERO,
    Columns,
    Feedback,
    ReadOptions,
    RejectedRows,
    _looks_like_header,
    _sniff_delimiter,
    header_names,
    ids_to_bytes_array,
    read_text_table,
    resolve_columns,
    row_checks,
    strict_message,
)
from svdfaiss.errors import InvalidInput

REASON_ORDER = (REASON_MALFORMED, REASON_BLANK, REASON_NO_USER, REASON_NO_ITEM, REASON_NUL,
                REASON_LONG, REASON_NO_VALUE, REASON_NON_NUMERIC, REASON_NON_FINITE,
                REASON_NEGATIVE, REASON_ZERO, REASON_NO_TIME, REASON_BAD_TIME)
BLOCK_INTERACTIONS = 250_000  # aggregated interactions per block (one task, a few MB)

ROW_SCHEMA = ("user string, item string, value double, ts double, reason string, "
              "text string, pid long, local long")


@dataclass
class Block:
    """The aggregated rows of a range of users: positions start..start+n_users-1."""

    index: int
    start: int
    user_ids: np.ndarray  # sorted UTF-8 bytes ("S")
    indptr: np.ndarray  # int64, n_users + 1
    indices: np.ndarray  # int32 item positions, sorted within each row
    values: np.ndarray  # float32 raw aggregated values (counts or ratings)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    def matrix(self, n_items: int) -> Any:
        """The block as a scipy CSR matrix (users of the block x every item)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, self.indices, self.indptr),
                             shape=(self.n_users, n_items))


@dataclass
class SparkLog:
    """What reading did: the blocks, the item ids, and the native builder's accounting."""

    blocks: Any  # RDD[Block], cached, in user order
    item_ids: np.ndarray
    n_users: int
    nnz: int
    feedback: Feedback
    columns: Columns
    rows_read: int
    rows_used: int
    rejected: RejectedRows
    duplicates_merged: int
    filtered_rows: int
    filtered_users: int
    filtered_items: int
    removed_by_min_rating: int
    unit: str  # "line" (CSV/TSV) or "row" (Parquet)


def detect_spark_format(path: str, options: ReadOptions) -> str:
    """csv, tsv or parquet from the option, else the path's suffix (csv by default)."""
    if options.format != "auto":
        return options.format
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    return "tsv" if suffix in {".tsv", ".tab"} else "csv"


def _parse_lines(names: list[str], header_line: str | None, fmt: str, delimiter: str,
                 cols: Columns) -> Any:
    """The mapInArrow function: a partition's lines -> one row per data line with its
    fields, its first failing reason (None when usable) and its place in the partition."""
    include = [c for c in (cols.user, cols.item, cols.value, cols.timestamp) if c]
    decimal_comma = delimiter != ","

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()  # None only outside a task
        assert context is not None
        pid = context.partitionId()
        seen = 0
        for batch in batches:
            lines = [line.lstrip("\ufeff") for line in batch.column(0).to_pylist()]
            local = np.arange(seen, seen + len(lines), dtype=np.int64)
            seen += len(lines)
            if header_line is not None:
                keep = np.array([line != header_line for line in lines], dtype=bool)
                lines = [line for line, k in zip(lines, keep, strict=True) if k]
                local = local[keep]
            if not lines:
                continue
            body = ("\n".join(lines) + "\n").encode("utf-8")
            table, malformed, _ = read_text_table(body, fmt, names, False,
                                                  delimiter, include)
            bad_lines = np.array([n - 1 for n, _ in malformed], dtype=np.int64)
            row_lines = np.delete(np.arange(len(lines)), bad_lines)
            yield _checked(table, cols, decimal_comma, True, local[row_lines], pid, delimiter)
            if bad_lines.size:
                yield pa.RecordBatch.from_pydict({
                    "user": pa.nulls(bad_lines.size, pa.string()),
                    "item": pa.nulls(bad_lines.size, pa.string()),
                    "value": pa.nulls(bad_lines.size, pa.float64()),
                    "ts": pa.nulls(bad_lines.size, pa.float64()),
                    "reason": [REASON_MALFORMED] * bad_lines.size,
                    "text": [text[:200] for _, text in malformed],
                    "pid": np.full(bad_lines.size, pid, dtype=np.int64),
                    "local": local[bad_lines]})

    return run


def _checked(table: pa.Table, cols: Columns, decimal_comma: bool, text_lines: bool,
             local: np.ndarray, pid: int, sep: str = ",") -> pa.RecordBatch:
    """Rows with their values parsed and their first failing reason (data.row_checks)."""
    n = table.num_rows
    checks, values, timestamps = row_checks(table, cols, decimal_comma, text_lines)
    reason = np.full(n, -1, dtype=np.int64)
    names = [name for name, _ in checks]
    for code, (_, failed) in enumerate(checks):
        reason[(reason < 0) & failed] = code
    bad = reason >= 0
    text = None
    if bad.any():
        parts = [table[c].to_pylist() for c in (cols.user, cols.item, cols.value,
                                                 cols.timestamp) if c]
        text = [sep.join(str(p[i]) for p in parts) if bad[i] else None for i in range(n)]
    return pa.RecordBatch.from_pydict({
        "user": table[cols.user].combine_chunks() if n else pa.array([], pa.string()),
        "item": table[cols.item].combine_chunks() if n else pa.array([], pa.string()),
        "value": np.where(bad, np.nan, values),
        "ts": (np.where(bad, np.nan, timestamps) if timestamps is not None
               else pa.nulls(n, pa.float64())),
        "reason": ([names[r] if r >= 0 else None for r in reason.tolist()] if text
                   is not None else pa.nulls(n, pa.string())),
        "text": text if text is not None else pa.nulls(n, pa.string()),
        "pid": np.full(n, pid, dtype=np.int64),
        "local": local})


def _parse_parquet(cols: Columns) -> Any:
    """The mapInArrow function for Parquet rows (already typed by Spark)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()  # None only outside a task
        assert context is not None
        pid = context.partitionId()
        seen = 0
        for batch in batches:
            table = pa.Table.from_batches([batch])
            local = np.arange(seen, seen + table.num_rows, dtype=np.int64)
            seen += table.num_rows
            yield _checked(table, cols, False, False, local, pid)

    return run


def _lines_frame(spark: Any, path: str, options: ReadOptions, fmt: str
                 ) -> tuple[Any, Columns, str, str | None]:
    """The text lines of a CSV/TSV input, its columns, delimiter and header line."""
    lines = spark.read.text(path)
    first_rows = lines.limit(1).collect()
    if not first_rows:
        raise InvalidInput(f"{path}: file is empty")
    first = str(first_rows[0][0]).lstrip("\ufeff")
    if not first.strip():
        raise InvalidInput(f"{path}: line 1 is blank; expected a header or a first data row")
    delimiter = _sniff_delimiter(Path(path), first, options, fmt)
    try:
        fields = next(csv.reader([first], delimiter=delimiter))
    except csv.Error as exc:
        raise InvalidInput(f"{path}: line 1 is not valid {fmt.upper()} ({exc})") from None
    header = options.header if options.header is not None else _looks_like_header(fields)
    names = header_names(fields) if header else [f"column_{i}" for i in range(len(fields))]
    columns = resolve_columns(names, header, options, Path(path))
    parsed = lines.mapInArrow(_parse_lines(names, first if header else None, fmt, delimiter,
                                           columns), ROW_SCHEMA)
    return parsed, columns, delimiter, first if header else None


def _parquet_frame(spark: Any, path: str, options: ReadOptions) -> tuple[Any, Columns]:
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql import types as T  # noqa: N812

    try:
        frame = spark.read.parquet(path)
    except Exception as exc:  # Spark raises its own analysis errors
        raise InvalidInput(f"{path}: cannot read as Parquet: {str(exc).splitlines()[0]}"
                           ) from None
    columns = resolve_columns(list(frame.columns), True, options, Path(path))
    selected = []
    for name in (columns.user, columns.item, columns.value, columns.timestamp):
        if not name:
            continue
        kind = frame.schema[name].dataType
        col = F.col(f"`{name}`")
        if name in (columns.user, columns.item):
            col = F.coalesce(col.cast("string"), F.lit(""))
        elif name == columns.value:
            numeric = isinstance(kind, T.NumericType)
            col = col.cast("double") if numeric else col.cast("string")
        elif name == columns.timestamp and isinstance(kind, T.TimestampType | T.DateType):
            col = F.unix_timestamp(col.cast("timestamp"))
        selected.append(col.alias(name))
    return frame.select(*selected).mapInArrow(_parse_parquet(columns), ROW_SCHEMA), columns


def _examples(spark: Any, rows: Any, source: Any, reasons: dict[str, int], unit: str,
              header: bool) -> RejectedRows:
    """Rejected rows by reason with the first few locations of each, as the native reader
    reports them (physical line numbers of a CSV file, 1-based rows of Parquet)."""
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.window import Window

    rejected = RejectedRows()
    if not reasons:
        return rejected
    # Line numbers: each partition's lines come after those of the partitions before it
    # (a file's splits are read in order), so a per-partition count places every row.
    sizes = dict(source.groupBy(F.spark_partition_id().alias("pid")).count()
                 .rdd.map(lambda r: (int(r[0]), int(r[1]))).collect())
    offsets, total = {}, 0
    for pid in sorted(sizes):
        offsets[pid] = total
        total += sizes[pid]
    found = (rows.filter(F.col("reason").isNotNull())
             .withColumn("n", F.row_number().over(
                 Window.partitionBy("reason").orderBy("pid", "local")))
             .filter(F.col("n") <= EXAMPLES_PER_REASON)
             .select("reason", "pid", "local", "text").collect())
    examples: dict[str, list[tuple[int, str]]] = {}
    for r in sorted(found, key=lambda r: (r["pid"], r["local"])):
        line = offsets.get(int(r["pid"]), 0) + int(r["local"]) + 1
        examples.setdefault(r["reason"], []).append((line, r["text"] or ""))
    # In the native order: malformed rows first, then each check in its turn.
    for reason in sorted(reasons, key=lambda r: REASON_ORDER.index(r)
                         if r in REASON_ORDER else len(REASON_ORDER)):
        rejected.add(reason, reasons[reason], examples.get(reason, []))
    return rejected


def read_blocks(spark: Any, path: str, options: ReadOptions, min_user_interactions: int = 1,
                min_item_interactions: int = 1) -> SparkLog:
    """Read and validate a log in Spark and aggregate it into cached row blocks, with the
    native reader's and build_interactions' accounting; raises InvalidInput as they do."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F  # noqa: N812

    fmt = detect_spark_format(path, options)
    if fmt == "parquet":
        rows, columns = _parquet_frame(spark, path, options)
        source, unit, header = spark.read.parquet(path), "row", False
    else:
        rows, columns, _, header_line = _lines_frame(spark, path, options, fmt)
        source, unit, header = spark.read.text(path), "line", header_line is not None
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    stats = rows.groupBy("reason").count().collect()
    reasons = {r["reason"]: int(r["count"]) for r in stats if r["reason"] is not None}
    valid_rows = sum(int(r["count"]) for r in stats if r["reason"] is None)
    rows_read = valid_rows + sum(reasons.values())
    if rows_read == 0:
        raise InvalidInput(f"{path}: no data rows (a header line only?)")
    # Native order of reasons: by first failing check; counts are what matters here.
    rejected = _examples(spark, rows, source, reasons, unit, header)
    if options.strict and rejected.total:
        raise InvalidInput(strict_message(rejected, path, unit))
    if valid_rows == 0:
        raise InvalidInput(rejected.describe(path, unit) + "\nno usable rows")
    valid = rows.filter(F.col("reason").isNull()).select("user", "item", "value", "ts",
                                                         "pid", "local")
    if columns.feedback == "explicit" and columns.feedback_reason.endswith(
            "holds counts or quantities)"):
        top, fractional = valid.agg(F.max("value"), F.sum(
            (F.col("value") != F.round("value")).cast("long"))).first()
        if top is not None and not fractional and top > 10:
            columns = Columns(**{**columns.__dict__, "feedback_reason": (
                f"{columns.feedback_reason}; warning: its values are whole numbers up to "
                f"{top:g}, like counts")})
    pairs = _aggregate(valid, columns, options)
    return _filter_and_block(spark, path, valid, pairs, valid_rows, rows_read, rejected,
                             columns, options, min_user_interactions, min_item_interactions,
                             unit, rows)


def _aggregate(valid: Any, columns: Columns, options: ReadOptions) -> Any:
    """(user, item, v, n): duplicates merged as data._aggregate merges them."""
    from pyspark.sql import functions as F  # noqa: N812

    grouped = valid.groupBy("user", "item")
    if columns.feedback == "implicit":
        return grouped.agg(F.sum("value").cast("float").alias("v"), F.count("*").alias("n"))
    if options.duplicates == "mean":
        return grouped.agg(F.avg("value").cast("float").alias("v"), F.count("*").alias("n"))
    # "last": the latest by timestamp, ties and missing timestamps by file order.
    order = (F.struct("ts", "pid", "local") if columns.timestamp is not None
             else F.struct("pid", "local"))
    return grouped.agg(F.max_by("value", order).cast("float").alias("v"),
                       F.count("*").alias("n"))


def _filter_and_block(spark: Any, path: str, valid: Any, pairs: Any, valid_rows: int,
                      rows_read: int, rejected: RejectedRows, columns: Columns,
                      options: ReadOptions, min_user: int, min_item: int, unit: str,
                      rows: Any) -> SparkLog:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F  # noqa: N812

    pairs = pairs.persist(StorageLevel.MEMORY_AND_DISK)
    cached = [pairs]  # unpersisted once the blocks hold the rows
    stats = pairs.agg(F.count("*"), F.sum("n")).first()
    merged = valid_rows - int(stats[0])
    below = 0
    all_users = valid.select("user").distinct()
    all_items = valid.select("item").distinct()
    if options.min_rating is not None:
        if columns.feedback != "explicit":
            raise InvalidInput(f"--min-rating {options.min_rating:g} applies to explicit "
                               "ratings; this log holds implicit counts "
                               f"({columns.feedback_reason})")
        low = F.col("v") < F.lit(options.min_rating)
        below = int(pairs.filter(low).agg(F.sum("n")).first()[0] or 0)
        pairs = pairs.filter(~low).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(pairs)
        if pairs.limit(1).count() == 0:
            raise InvalidInput(f"--min-rating {options.min_rating:g}: every rating is below "
                               "it; lower it")
    users, items = all_users, all_items
    if min_user > 1 or min_item > 1:
        # The k-core: both minimums applied together until they hold (data.build_interactions).
        while True:
            user_n = pairs.groupBy("user").count()
            item_n = pairs.groupBy("item").count()
            bad_u = user_n.filter(F.col("count") < min_user).limit(1).count()
            bad_i = item_n.filter(F.col("count") < min_item).limit(1).count()
            if not bad_u and not bad_i:
                break
            keep_u = user_n.filter(F.col("count") >= min_user).select("user")
            keep_i = item_n.filter(F.col("count") >= min_item).select("item")
            pairs = (pairs.join(keep_u, "user", "left_semi").join(keep_i, "item", "left_semi")
                     .localCheckpoint())
            if pairs.limit(1).count() == 0:
                break
        users = pairs.select("user").distinct()
        items = pairs.select("item").distinct()
    if options.min_rating is not None or min_user > 1 or min_item > 1:
        stats = pairs.agg(F.count("*"), F.sum("n")).first()
    nnz, rows_used = int(stats[0]), int(stats[1] or 0)
    if nnz == 0:
        raise InvalidInput(
            f"no interactions left after filtering (min user interactions {min_user}, min "
            f"item interactions {min_item}); lower the minimums")
    item_ids = ids_to_bytes_array(pa.array(
        [r[0] for r in items.orderBy("item").collect()], pa.string()))
    # Users without a row (every rating below --min-rating, no k-core) keep an empty row,
    # as in the native matrix.
    marked = pairs.select("user", "item", "v")
    if options.min_rating is not None and min_user <= 1 and min_item <= 1:
        empty = users.join(pairs.select("user"), "user", "left_anti")
        marked = marked.unionByName(empty.select("user", F.lit(None).cast("string")
                                                 .alias("item"),
                                                 F.lit(None).cast("float").alias("v")))
    n_blocks = max(spark.sparkContext.defaultParallelism, -(-nnz // BLOCK_INTERACTIONS))
    blocks, n_users = _blocks(spark, marked, item_ids, n_blocks)
    filtered = min_user > 1 or min_item > 1
    # Without the k-core every user and item of the usable rows stays (as in the native
    # matrix, also those whose every rating fell below --min-rating).
    n_all_users = all_users.count() if filtered else n_users
    n_all_items = all_items.count() if filtered else int(item_ids.size)
    for frame in (rows, *cached):
        frame.unpersist()
    return SparkLog(
        blocks=blocks, item_ids=item_ids, n_users=n_users, nnz=nnz,
        feedback=columns.feedback, columns=columns, rows_read=rows_read, rows_used=rows_used,
        rejected=rejected, duplicates_merged=merged,
        filtered_rows=valid_rows - rows_used - below,
        filtered_users=n_all_users - n_users,
        filtered_items=n_all_items - int(item_ids.size),
        removed_by_min_rating=below, unit=unit)


def _pack(item_ids: Any) -> Any:
    """The mapInArrow function: a partition's (user, item, v), users in one id range ->
    one row holding the block's arrays (np.savez bytes)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        table = pa.Table.from_batches(list(batches))
        context = TaskContext.get()  # None only outside a task
        assert context is not None
        pid = context.partitionId()
        if table.num_rows == 0:
            return
        items = item_ids.value
        users = ids_to_bytes_array(table["user"].combine_chunks())
        user_ids, user_codes = np.unique(users, return_inverse=True)
        present = np.asarray(table["item"].is_valid(), dtype=bool)
        item_text = table["item"].combine_chunks().filter(pa.array(present))
        codes = np.searchsorted(items, ids_to_bytes_array(item_text).astype(items.dtype))
        rows = user_codes.ravel()[present]
        values = np.asarray(table["v"].combine_chunks().filter(pa.array(present)),
                            dtype=np.float32)
        order = np.lexsort((codes, rows))
        indptr = np.zeros(user_ids.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=user_ids.size), out=indptr[1:])
        out = io.BytesIO()
        np.savez(out, user_ids=user_ids, indptr=indptr,
                 indices=codes[order].astype(np.int32), values=values[order])
        yield pa.RecordBatch.from_pydict({"pid": [pid], "payload": [out.getvalue()]})

    return run


def _blocks(spark: Any, marked: Any, item_ids: np.ndarray, n_blocks: int) -> tuple[Any, int]:
    """The RDD of Blocks (over cached arrays), in user order, each knowing its first user
    position; and the number of users."""
    from pyspark import StorageLevel

    broadcast = spark.sparkContext.broadcast(item_ids)
    packed = (marked.repartitionByRange(n_blocks, "user")
              .mapInArrow(_pack(broadcast), "pid long, payload binary"))

    def decode(row: Any) -> tuple[int, dict[str, np.ndarray]]:
        with np.load(io.BytesIO(row["payload"]), allow_pickle=False) as data:
            return int(row["pid"]), {k: data[k] for k in data.files}

    decoded = packed.rdd.map(decode).persist(StorageLevel.MEMORY_AND_DISK)
    sizes = sorted(decoded.map(lambda b: (b[0], int(b[1]["user_ids"].size))).collect())
    starts, total = {}, 0
    for pid, size in sizes:
        starts[pid] = total
        total += size
    starts_b = spark.sparkContext.broadcast(starts)

    def to_block(item: tuple[int, dict[str, np.ndarray]]) -> Block:
        pid, arrays = item
        return Block(index=pid, start=starts_b.value[pid], user_ids=arrays["user_ids"],
                     indptr=arrays["indptr"], indices=arrays["indices"],
                     values=arrays["values"])

    return decoded.map(to_block), total
