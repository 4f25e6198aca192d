"""The live catalog: item upserts and withdrawals sent to the service, their durable log, and
the state they leave.

One JSON line per accepted change: {"op": "put", "item_id", "fields", "time"} or
{"op": "delete", "item_id", "time"}. The service appends and fsyncs a change before it
acknowledges it (the events log's `EventLog` and group commit), follows the log as other
workers append to it (`events.EventFollower`), and replays it after a restart or a reload;
`svdfaiss build --catalog-updates LOG` folds it into the next bundle (`apply_to_catalog`).

A change replaces the item's whole live record (a put is the item's full state, a delete
withdraws it), so applying a change twice leaves what applying it once left: a replay that
overlaps what was already applied cannot count anything twice.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa

from svdfaiss.catalog import STOCK_FALSE, STOCK_TRUE
from svdfaiss.data import InteractionLog, RejectedRows
from svdfaiss.errors import InvalidInput
from svdfaiss.events import EventFollower, check_event_id, offset_since, read_jsonl

log = logging.getLogger("svdfaiss.catalog")

DEFAULT_LIVE_ITEMS = 10_000
MAX_TEXT_CHARS = 10_000  # one text field of a live item
Kind = Literal["number", "bool", "text"]


@dataclass(frozen=True)
class CatalogChange:
    """One accepted change: an item's full live record (put) or its withdrawal (delete)."""

    op: Literal["put", "delete"]
    item_id: str
    fields: Mapping[str, Any] | None
    time: float

    def line(self) -> bytes:
        record: dict[str, Any] = {"op": self.op, "item_id": self.item_id, "time": self.time}
        if self.op == "put":
            record["fields"] = dict(self.fields or {})
        return orjson.dumps(record) + b"\n"


def column_kinds(catalog: Mapping[str, np.ndarray]) -> dict[str, Kind]:
    """What each column of a bundle's catalog holds: numbers, booleans (stock) or text."""
    kinds: dict[str, Kind] = {}
    for name, column in catalog.items():
        values = [v for v in column[:1000].tolist() if v is not None]
        if column.dtype.kind == "b" or (values and all(isinstance(v, bool) for v in values)):
            kinds[name] = "bool"
        elif column.dtype.kind in "fiu" or (values and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            kinds[name] = "number"
        else:
            kinds[name] = "text"
    return kinds


def check_fields(item_id: str, fields: Any, kinds: Mapping[str, Kind]) -> dict[str, Any]:
    """A put's fields, checked against the catalog's columns: InvalidInput names the item,
    the field and the value. Missing columns are null (a put is the item's full record)."""
    if not isinstance(fields, dict):
        raise InvalidInput(f"item {item_id!r}: fields must be a JSON object")
    unknown = sorted(set(fields) - set(kinds))
    if unknown:
        raise InvalidInput(f"item {item_id!r}: field {unknown[0]!r} is not a catalog column "
                           f"(the catalog has {', '.join(sorted(kinds)) or 'no columns'})")
    out: dict[str, Any] = {}
    for name, kind in kinds.items():
        value = fields.get(name)
        if value is None:
            out[name] = None
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not \
                    math.isfinite(value):
                raise InvalidInput(f"item {item_id!r}: field {name!r} must be a finite "
                                   f"number or null, got {value!r}")
            if name.lower() == "price" and value < 0:
                raise InvalidInput(f"item {item_id!r}: field {name!r} must be 0 or more, "
                                   f"got {value!r}")
            out[name] = float(value)
        elif kind == "bool":
            out[name] = _stock(item_id, name, value)
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise InvalidInput(f"item {item_id!r}: field {name!r} must be a string or "
                                   f"null, got {value!r}")
            text = str(value)
            if len(text) > MAX_TEXT_CHARS or "\x00" in text:
                raise InvalidInput(f"item {item_id!r}: field {name!r} is longer than "
                                   f"{MAX_TEXT_CHARS} characters or holds a NUL byte")
            out[name] = text
    return out


def _stock(item_id: str, name: str, value: Any) -> bool:
    """A stock value as the catalog reader reads it: a boolean, a count, or a stock word."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value > 0
    if isinstance(value, str) and value.strip().lower() in STOCK_TRUE | STOCK_FALSE:
        return value.strip().lower() in STOCK_TRUE
    raise InvalidInput(f"item {item_id!r}: field {name!r} must be true, false, a whole "
                       f"number (a count) or a stock word such as 'yes', got {value!r}")


def parse_change(record: Any) -> CatalogChange:
    """A change from one decoded log line; InvalidInput names the bad field."""
    if not isinstance(record, dict):
        raise InvalidInput("not a JSON object")
    op = record.get("op")
    if op not in ("put", "delete"):
        raise InvalidInput(f"op must be 'put' or 'delete', got {op!r}")
    item = check_event_id(record.get("item_id"), "item_id")
    time = record.get("time")
    if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
        raise InvalidInput("time must be a finite number (epoch seconds)")
    fields = record.get("fields")
    if op == "put" and not isinstance(fields, dict):
        raise InvalidInput("a put needs its fields as a JSON object")
    return CatalogChange(op, item, fields if op == "put" else None, float(time))


def read_changes(path: Path, strict: bool = False,
                 ) -> tuple[list[CatalogChange], RejectedRows, int]:
    """The changes of a catalog log, its unusable lines by reason (a torn last line among
    them), and the lines read; `strict` makes an unusable line an error."""
    return read_jsonl(Path(path), parse_change, strict, what="catalog updates log")


def final_state(changes: Iterable[CatalogChange]) -> dict[str, CatalogChange]:
    """Each item's last change, in the order the items were last changed."""
    state: OrderedDict[str, CatalogChange] = OrderedDict()
    for change in changes:
        state.pop(change.item_id, None)
        state[change.item_id] = change
    return state


def catalog_cutoff(manifest: Mapping[str, Any]) -> float:
    """The time after which logged changes are not in a bundle: the newest change a
    `--catalog-updates` build folded in. A bundle built without the log holds none of its
    changes, so the whole log applies (-inf)."""
    folded = [u["last_change_time"] for u in manifest["input"].get("catalog_updates", [])
              if u.get("last_change_time") is not None]
    return float(max(folded)) if folded else -math.inf


class LiveCatalog:
    """The changes in effect over the serving bundle (each item's last change after the
    bundle's cutoff), kept in step with the catalog log every worker appends to: `sync`
    applies what was appended since the last call. Bounded: at most `capacity` items are
    live; a change to a further item is refused (`full`) until a build folds the log in.
    `version` counts the changes applied, so readers rebuild their view only on a change."""

    def __init__(self, path: Path, capacity: int = DEFAULT_LIVE_ITEMS) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.follower: EventFollower[CatalogChange] = EventFollower(path, parse=parse_change)
        self._items: OrderedDict[str, CatalogChange] = OrderedDict()
        self._since = math.inf  # nothing applies before the first reset
        self._lock = threading.Lock()
        self.version = 0

    def reset(self, manifest: Mapping[str, Any]) -> int:
        """Start over for a bundle: apply the log's changes after its cutoff. Returns how
        many lines applied; a torn or unusable line is skipped with a warning."""
        with self._lock:
            self._items.clear()
            self.version += 1
            self._since = catalog_cutoff(manifest)
            try:
                if self.path.is_file() and math.isfinite(self._since):
                    self.follower.start_at(offset_since(self.path, self._since))
                else:
                    self.follower.start_at(0)
            except OSError as exc:
                log.warning("catalog log %s cannot be read: %s", self.path, exc)
                return 0
            applied = self._apply()
            if len(self._items) > self.capacity:
                log.warning("the catalog log holds %d live items, above SVDFAISS_LIVE_ITEMS "
                            "%d: all are applied, changes to further items are refused until "
                            "a build folds the log in (--catalog-updates)", len(self._items),
                            self.capacity)
            return applied

    def sync(self) -> int:
        """Apply the changes appended to the log since the last call; how many."""
        with self._lock:
            return self._apply()

    def full(self, item_ids: Iterable[str]) -> bool:
        """Whether changing these items would hold more than `capacity` items live."""
        with self._lock:
            added = {i for i in item_ids if i not in self._items}
            return bool(added) and len(self._items) + len(added) > self.capacity

    def changes(self) -> tuple[int, list[CatalogChange]]:
        """The version and each live item's change, oldest first."""
        with self._lock:
            return self.version, list(self._items.values())

    def get(self, item_id: str) -> CatalogChange | None:
        with self._lock:
            return self._items.get(item_id)

    def _apply(self) -> int:
        try:
            changes = self.follower.poll()
        except OSError as exc:
            log.warning("catalog log %s cannot be read, live changes wait: %s", self.path, exc)
            return 0
        if self.follower.skipped:
            log.warning("catalog log %s: %d unusable line(s) skipped (a torn last line from "
                        "a killed process is one)", self.path, self.follower.skipped)
            self.follower.skipped = 0
        applied = 0
        for change in changes:
            if change.time > self._since:
                self._items.pop(change.item_id, None)
                self._items[change.item_id] = change
                applied += 1
        if applied:
            self.version += 1
        return applied

    def __len__(self) -> int:
        return len(self._items)


def apply_to_catalog(table: pa.Table, item_ids: list[str], changes: Iterable[CatalogChange],
                     ) -> tuple[pa.Table, list[str], set[str]]:
    """A catalog table (one row per id of `item_ids`) with each item's last change applied:
    a put replaces the row's fields (or adds a row), a delete removes the row. Returns the
    table, its ids, and the ids withdrawn."""
    state = final_state(changes)
    rows = {name: table[name].to_pylist() for name in table.column_names}
    position = {item: n for n, item in enumerate(item_ids)}
    ids = list(item_ids)
    withdrawn = {i for i, c in state.items() if c.op == "delete"}
    for item, change in state.items():
        if change.op != "put":
            continue
        fields = change.fields or {}
        if item not in position:
            position[item] = len(ids)
            ids.append(item)
            for values in rows.values():
                values.append(None)
        for name, values in rows.items():
            values[position[item]] = fields.get(name)
    keep = [n for n, item in enumerate(ids) if item not in withdrawn]
    out = pa.table({name: _typed([values[n] for n in keep], table.schema.field(name).type, name)
                    for name, values in rows.items()})
    return out, [ids[n] for n in keep], withdrawn


def _typed(values: list[Any], kind: pa.DataType, name: str) -> pa.Array:
    """A column of the catalog's type (a whole-number column takes a put's 10.0)."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        try:
            return pa.array(values).cast(kind, safe=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InvalidInput(f"catalog updates: column {name!r} takes {kind} values; a put "
                               f"holds one it cannot be ({exc})") from None


def without_items(log: InteractionLog, item_ids: set[str]) -> tuple[InteractionLog, int]:
    """The interaction log without the rows of withdrawn items (the next build drops them
    from the model), ids compacted; and how many rows were dropped."""
    if not item_ids:
        return log, 0
    gone = np.isin(log.item_ids, np.array([i.encode("utf-8") for i in item_ids]))
    keep = ~gone[log.item_codes]
    if keep.all():
        return log, 0
    users, items = np.unique(log.user_codes[keep]), np.unique(log.item_codes[keep])
    if not items.size:
        raise InvalidInput("the catalog updates withdraw every item of the log")
    return replace(
        log,
        user_codes=np.searchsorted(users, log.user_codes[keep]).astype(log.user_codes.dtype),
        item_codes=np.searchsorted(items, log.item_codes[keep]).astype(log.item_codes.dtype),
        values=log.values[keep],
        timestamps=None if log.timestamps is None else log.timestamps[keep],
        user_ids=log.user_ids[users], item_ids=log.item_ids[items]), int((~keep).sum())
