"""A fixed-rate HTTP load generator for 127.0.0.1, bounded in requests and seconds.

wrk keeps every connection busy (closed loop), so a slow response delays the next request
and hides latency; its Lua `delay` is only millisecond-grained. This client sends request i
at exactly start + i / rate over a pool of keep-alive connections and measures each latency
from that intended moment (as wrk2 does), so queueing shows up in the figures. It busy-polls
its sockets to keep sub-millisecond timing: give it a core of its own.

    python scripts/paced_load.py --port 8000 --path /items/0000000001/similar --rate 1000
"""

from __future__ import annotations

import argparse
import collections
import json
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PacedResult:
    """What a paced run measured; latencies in seconds, in send order."""

    rate_asked: float
    seconds: float
    sent: int = 0
    completed: int = 0
    errors: int = 0
    reconnects: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def percentiles_ms(self, latencies: Sequence[float] | None = None) -> dict[str, float]:
        data = np.asarray(self.latencies if latencies is None else latencies) * 1e3
        if data.size == 0:
            return {}
        return {f"p{p}_ms": round(float(np.percentile(data, p)), 3) for p in (50, 90, 99, 99.9)}

    def summary(self) -> dict[str, Any]:
        non_2xx = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return {"rate_asked": self.rate_asked, "requests_per_s": round(self.completed
                                                                       / self.seconds, 1),
                "sent": self.sent, "completed": self.completed, "errors": self.errors,
                "reconnects": self.reconnects,
                "non_2xx": non_2xx, **self.percentiles_ms(),
                # how late the client itself sent: large values mean the client, not the
                # server, was held up (an overloaded machine)
                "send_lag_p99_ms": round(float(np.percentile(self.send_lag, 99)) * 1e3, 3)
                if self.send_lag else None}

    def windows(self, width: float) -> list[dict[str, Any]]:
        """Percentiles per window of `width` seconds of send time (latency over time)."""
        sent = np.asarray(self.sent_at)
        lat = np.asarray(self.latencies)
        out = []
        for start in np.arange(0.0, self.seconds, width):
            mask = (sent >= start) & (sent < start + width)
            if mask.any():
                out.append({"t_s": round(float(start), 1), "requests": int(mask.sum()),
                            **self.percentiles_ms(lat[mask].tolist())})
        return out


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.due = 0.0  # the intended send time of the request in flight
        self.sent_offset = 0.0
        self.connect()

    def connect(self) -> None:
        """(Re)open the socket; a request in flight keeps its intended send time."""
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""

    def response_complete(self) -> int | None:
        """The status once a whole response is buffered (Content-Length bodies only)."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return None
        self.buf = self.buf[end + 4 + length:]
        return int(head[0].split()[1])


def paced_run(host: str, port: int, requests: Callable[[int], bytes], rate: float,
              seconds: float, connections: int = 16, timeout: float = 10.0) -> PacedResult:
    """Send `rate` requests a second for `seconds` (request i is `requests(i)`, raw bytes).

    Connections are used in turn, so none idles past the server's keep-alive timeout; one
    the server closed anyway is reopened and its request sent again, as browsers do. A
    request that gets no answer by the end counts as an error.
    """
    total = int(rate * seconds)
    result = PacedResult(rate, seconds)
    idle: collections.deque[_Conn] = collections.deque(
        _Conn(host, port) for _ in range(connections))
    busy: dict[_Conn, bytes] = {}
    sel = selectors.DefaultSelector()
    for conn in idle:
        sel.register(conn.sock, selectors.EVENT_READ, conn)

    def reopen(conn: _Conn, request: bytes) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        conn.connect()
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        conn.sock.sendall(request)
        result.reconnects += 1

    start = time.perf_counter()
    deadline = start + seconds + timeout
    next_i = 0
    try:
        while (next_i < total or busy) and time.perf_counter() < deadline:
            now = time.perf_counter()
            while next_i < total and idle and start + next_i / rate <= now:
                conn = idle.popleft()
                conn.due = start + next_i / rate
                conn.sent_offset = conn.due - start
                request = requests(next_i)
                busy[conn] = request
                try:
                    conn.sock.sendall(request)
                except OSError:
                    reopen(conn, request)
                result.send_lag.append(time.perf_counter() - conn.due)
                next_i += 1
                result.sent += 1
            # A response wakes select at once; its timeout only bounds how late the next send
            # may be, and epoll rounds it up to whole milliseconds, so poll when one is near.
            near = next_i < total and idle and start + next_i / rate - now < 0.0011
            for key, _ in sel.select(timeout=0.0 if near else 0.001):
                conn = key.data
                try:
                    chunk = conn.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:  # closed by the server: reopen and send the request again
                    if conn in busy:
                        reopen(conn, busy[conn])
                    continue
                conn.buf += chunk
                status = conn.response_complete()
                if status is not None:
                    done = time.perf_counter()
                    result.latencies.append(done - conn.due)
                    result.sent_at.append(conn.sent_offset)
                    result.statuses[status] += 1
                    result.completed += 1
                    del busy[conn]
                    idle.append(conn)
    finally:
        for conn in (*idle, *busy):
            sel.unregister(conn.sock)
            conn.sock.close()
    result.errors += result.sent - result.completed
    return result


def get_requests(host: str, paths: Sequence[str]) -> Callable[[int], bytes]:
    """Round-robin GET requests over `paths`, pre-encoded."""
    encoded = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in paths]
    return lambda i: encoded[i % len(encoded)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", action="append", required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = paced_run(args.host, args.port, get_requests(args.host, args.path), args.rate,
                       args.seconds, args.connections)
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
