"""Live events: the JSON-lines log the service appends to, and how a build folds it in.

One line per accepted event: {"user_id", "item_id", "weight", "time", "known_item"}. The
service appends each batch with one write and one fsync before it acknowledges the events
(group commit); `svdfaiss build --events LOG` reads the log back into the training data.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np
import orjson

from svdfaiss.data import MAX_ID_BYTES, InteractionLog, RejectedRows
from svdfaiss.errors import InvalidInput

log = logging.getLogger("svdfaiss.events")

EXAMPLES_PER_REASON = 5
T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """One interaction sent to the service: a purchase, a click, or a rating (weight)."""

    user_id: str
    item_id: str
    weight: float
    time: float
    # The outcome an experiment counts (view, click, ...) and the variant it is attributed
    # to (svdfaiss.outcomes); the build reads only the fields above.
    type: str | None = None
    recommendation_id: str | None = None
    experiment: str | None = None
    variant: str | None = None

    def line(self, known_item: bool) -> bytes:
        record: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id,
                                  "weight": self.weight, "time": self.time,
                                  "known_item": known_item}
        for name in ("type", "recommendation_id", "experiment", "variant"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        return orjson.dumps(record) + b"\n"


def check_event_id(value: Any, name: str) -> str:
    """A usable id, or InvalidInput naming the field."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string")
    if "\x00" in value or len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidInput(f"{name} has a NUL byte or is longer than {MAX_ID_BYTES} bytes")
    return value


def parse_event(record: Any, feedback: str) -> Event:
    """An event from one decoded JSON line; raises InvalidInput naming the bad field."""
    if not isinstance(record, dict):
        raise InvalidInput("not a JSON object")
    user = check_event_id(record.get("user_id"), "user_id")
    item = check_event_id(record.get("item_id"), "item_id")
    weight, time = record.get("weight", 1.0), record.get("time", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(
            weight):
        raise InvalidInput("weight must be a finite number")
    if feedback == "implicit" and weight <= 0:
        raise InvalidInput("weight must be above 0 for implicit counts")
    if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
        raise InvalidInput("time must be a finite number (epoch seconds)")
    return Event(user, item, float(weight), float(time))


def read_events(path: Path, feedback: str, strict: bool = False,
                start: int = 0) -> tuple[list[Event], RejectedRows, int]:
    """The events of a log, the unusable lines by reason (with line numbers), lines read.

    A torn last line (the service killed mid-write, before its fsync acknowledged it) counts
    as unusable like any other; `strict` makes any unusable line an error. `start` is a byte
    offset at a line start to read from (line numbers then count from there).
    """
    return read_jsonl(Path(path), lambda record: parse_event(record, feedback), strict, start)


def read_jsonl(path: Path, parse: Callable[[Any], T], strict: bool = False, start: int = 0,
               what: str = "events log") -> tuple[list[T], RejectedRows, int]:
    """The records of a JSON-lines log (`parse` raises InvalidInput for a bad one), its
    unusable lines by reason with line numbers, and the lines read (see read_events)."""
    if not path.is_file():
        raise InvalidInput(f"{path}: {what} not found")
    records: list[T] = []
    rejected = RejectedRows()
    shown: dict[str, int] = {}
    lines = 0
    with path.open("rb") as handle:
        handle.seek(start)
        for number, raw in enumerate(handle, start=1):
            lines += 1
            if not raw.strip():
                continue
            try:
                records.append(parse(orjson.loads(raw)))
            except orjson.JSONDecodeError:
                reason = "not valid JSON"
            except InvalidInput as exc:
                reason = str(exc)
            else:
                continue
            if strict:
                raise InvalidInput(f"{path}, line {number}: {reason}")
            shown[reason] = shown.get(reason, 0) + 1
            examples = [(number, raw.decode("utf-8", "replace").rstrip())] if shown[
                reason] <= EXAMPLES_PER_REASON else []
            rejected.add(reason, 1, examples)
    return records, rejected, lines


def offset_since(path: Path, since: float, close_enough: int = 1 << 16) -> int:
    """A line start in the log before which every event is older than `since`, found by
    bisecting byte offsets: the service appends in time order, so a restart replays only
    the tail written after its bundle instead of parsing the whole log. A line that does
    not parse stops the search early (the offset found so far is still safe)."""
    with Path(path).open("rb") as handle:
        low, high = 0, handle.seek(0, os.SEEK_END)
        while high - low > close_enough:
            middle = (low + high) // 2
            handle.seek(middle)
            handle.readline()  # to the next line start
            position = handle.tell()
            if position >= high:
                break
            try:
                time = float(orjson.loads(handle.readline())["time"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                break
            if time < since:
                low = position
            else:
                high = position
    return low


def merge_events(log: InteractionLog, events: list[Event]) -> InteractionLog:
    """The log with the events appended as later rows (they win a "last" merge of ratings).

    Timestamps are kept when the log has them (an event's `time`), and dropped otherwise.
    """
    if not events:
        return log
    users = np.array([e.user_id.encode("utf-8") for e in events])
    items = np.array([e.item_id.encode("utf-8") for e in events])
    user_ids, item_ids = np.union1d(log.user_ids, users), np.union1d(log.item_ids, items)
    user_codes = np.concatenate([np.searchsorted(user_ids, log.user_ids)[log.user_codes],
                                 np.searchsorted(user_ids, users)])
    item_codes = np.concatenate([np.searchsorted(item_ids, log.item_ids)[log.item_codes],
                                 np.searchsorted(item_ids, items)])
    values = np.concatenate([log.values, np.array([e.weight for e in events],
                                                  dtype=log.values.dtype)])
    timestamps = None
    if log.timestamps is not None:
        timestamps = np.concatenate([log.timestamps, np.array(
            [e.time for e in events], dtype=log.timestamps.dtype)])
    return InteractionLog(user_codes=user_codes.astype(log.user_codes.dtype),
                          item_codes=item_codes.astype(log.item_codes.dtype), values=values,
                          timestamps=timestamps, user_ids=user_ids, item_ids=item_ids,
                          feedback=log.feedback, columns=log.columns,
                          rows_read=log.rows_read + len(events), rejected=log.rejected)


class EventLog:
    """Appends batches of lines to the events log: one write, then fsync, per batch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, lines: Iterable[bytes]) -> None:
        with self._lock:
            append_lines(self.path, list(lines))


def append_lines(path: Path, lines: list[bytes]) -> None:
    """Append whole lines to a log with one write and an fsync.

    A process killed mid-write can leave a torn last line with no newline; the first
    append after it starts on a new line, so the torn line stays one unusable line
    (skipped by readers) instead of swallowing the next, acknowledged, one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        data = b"".join(lines)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


class LiveUsers:
    """Each recent user's events since the bundle (item id -> weight), least recently used
    users dropped beyond `capacity`. Thread-safe; ids are external, so the state outlives a
    reload to a new bundle."""

    def __init__(self, capacity: int, max_items: int) -> None:
        self.capacity = capacity
        self.max_items = max_items
        self._users: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def add(self, event: Event, explicit: bool) -> None:
        """Counts add up (implicit); a rating replaces the previous one (explicit)."""
        with self._lock:
            items = self._users.pop(event.user_id, None) or {}
            if explicit:
                items.pop(event.item_id, None)
                items[event.item_id] = event.weight
            else:
                items[event.item_id] = items.pop(event.item_id, 0.0) + event.weight
            while len(items) > self.max_items:  # the oldest items of a very long session
                items.pop(next(iter(items)))
            self._users[event.user_id] = items
            while len(self._users) > self.capacity:
                self._users.popitem(last=False)
                self.evicted += 1

    def get(self, user_id: str) -> Mapping[str, float] | None:
        with self._lock:
            items = self._users.get(user_id)
            if items is None:
                return None
            self._users.move_to_end(user_id)
            return dict(items)

    def clear(self) -> None:
        with self._lock:
            self._users.clear()

    def __len__(self) -> int:
        return len(self._users)


class EventFollower(Generic[T]):
    """Reads the events log as it grows: the events other processes (or this one) appended
    since the last call, complete lines only. `parse` reads another log of JSON lines the
    same way (the live catalog's).

    Several service workers share one log, so a worker learns of an event another worker
    accepted by reading the log before it answers for a user. A call costs two `stat`s when
    nothing was appended. A renamed log (rotation) is read to its end, then the new file at
    the path is followed from its start. Unusable lines are counted and skipped.
    """

    def __init__(self, path: Path, feedback: str = "implicit",
                 parse: Callable[[Any], T] | None = None) -> None:
        self.path = Path(path)
        self.feedback = feedback
        # Events by default: parsed with the model's feedback, which start() may change.
        self._parse: Callable[[Any], T] = parse if parse is not None else cast(
            Callable[[Any], T], lambda record: parse_event(record, self.feedback))
        self.skipped = 0
        self._handle: Any = None  # the open log, or None before it exists
        self._offset = 0  # where the next complete line starts
        self._lock = threading.Lock()

    def start(self, since: float, feedback: str) -> None:
        """Follow from the first event at `since` or later (bisected, see offset_since);
        `feedback` is the model's (explicit events must carry a weight)."""
        with self._lock:
            self.feedback = feedback
            self._close()
            if self.path.is_file():
                self._open(offset_since(self.path, since))

    def start_at(self, offset: int) -> None:
        """Follow from a byte offset at a line start (0: the whole log)."""
        with self._lock:
            self._close()
            if self.path.is_file():
                self._open(offset)

    def poll(self) -> list[T]:
        """The events appended since the previous poll, in log order."""
        with self._lock:
            events: list[T] = []
            if self._handle is None:
                if not self.path.is_file():
                    return events
                self._open(0)  # created since: every line is new
            events += self._read_new()
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self._handle.fileno()).st_ino
            except FileNotFoundError:  # renamed away, nothing at the path yet
                return events
            if moved:
                self._close()
                self._open(0)
                events += self._read_new()
            return events

    def close(self) -> None:
        with self._lock:
            self._close()

    def _open(self, offset: int) -> None:
        self._handle = self.path.open("rb")
        self._offset = offset

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None

    def _read_new(self) -> list[T]:
        size = os.fstat(self._handle.fileno()).st_size
        if size < self._offset:  # truncated in place: what remains is new to us
            self._offset = 0
        if size == self._offset:
            return []
        self._handle.seek(self._offset)
        data = self._handle.read(size - self._offset)
        complete = data.rfind(b"\n") + 1  # a line still being written waits for next time
        start = self._offset
        self._offset += complete
        events: list[T] = []
        for raw in data[:complete].splitlines():
            if not raw.strip():
                continue
            try:
                events.append(self._parse(orjson.loads(raw)))
            except (orjson.JSONDecodeError, InvalidInput) as exc:
                # A torn line (a writer killed mid-write) or a bad one: skipped, and said.
                self.skipped += 1
                log.warning("events log %s: skipped an unusable line after byte %d (%s): "
                            "%.80r", self.path, start, "not valid JSON" if isinstance(
                                exc, orjson.JSONDecodeError) else exc, raw)
        return events


def bundle_cutoff(manifest: Mapping[str, Any]) -> float:
    """The time after which logged events are not in a bundle: its newest folded-in event
    (`svdfaiss build --events`), else the time it was built."""
    folded = [e["last_event_time"] for e in manifest["input"].get("events", [])
              if e.get("last_event_time") is not None]
    if folded:
        return float(max(folded))
    return dt.datetime.fromisoformat(str(manifest["created_at"])).timestamp()


class LiveEvents:
    """A service process's live rows, kept in step with the events log it shares with the
    other workers: every read first applies what was appended since (`EventFollower`), so a
    user's event shows in the next answer whichever worker accepted it.

    The rows hold the events logged after the serving bundle's cutoff (`bundle_cutoff`);
    `reset` starts over when another bundle is served.
    """

    def __init__(self, users: LiveUsers, path: Path) -> None:
        self.users = users
        self.follower: EventFollower[Event] = EventFollower(path)
        self._since = math.inf  # nothing applies before the first reset
        self._explicit = False
        self._knows: Callable[[str], bool] | None = None
        self._last_error = ""
        self._lock = threading.Lock()

    def reset(self, manifest: Mapping[str, Any], feedback: str,
              knows_item: Callable[[str], bool]) -> int:
        """Start over for a bundle: its cutoff, its feedback, which items it knows
        (`knows_item(item_id) -> bool`). Returns the events applied from the log's tail."""
        with self._lock:
            self.users.clear()
            self._since = bundle_cutoff(manifest)
            self._explicit = feedback == "explicit"
            self._knows = knows_item
            try:
                self.follower.start(self._since, feedback)
            except OSError as exc:  # serve without live rows rather than not at all
                log.warning("events log %s cannot be read: %s", self.follower.path, exc)
                return 0
            return self._apply()

    def sync(self) -> int:
        """Apply the events appended to the log since the last call; how many applied."""
        with self._lock:
            return self._apply()

    def get(self, user_id: str) -> Mapping[str, float] | None:
        """A user's live row, up to date with the log."""
        self.sync()
        return self.users.get(user_id)

    def _apply(self) -> int:
        if self._knows is None:
            return 0
        try:
            events = self.follower.poll()
        except OSError as exc:  # an unreadable log must not fail the answer: say why, once
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.warning("events log %s cannot be read, live rows wait: %s",
                            self.follower.path, exc)
            return 0
        self._last_error = ""
        applied = 0
        for event in events:
            if event.time > self._since and self._knows(event.item_id):
                self.users.add(event, self._explicit)
                applied += 1
        return applied

    def __len__(self) -> int:
        return len(self.users)

