"""Live events over HTTP: POST /events (fsynced per batch) against recommendation reads,
side by side in one run on the built-in sample, at one paced rate each.

    python scripts/bench_events.py --rate 150 --rounds 3 --json docs/results/events.json

Rows, each at the same rate from 16 connections on 127.0.0.1, interleaved over --rounds:
- GET recommendations of users with no live events (the baseline);
- POST /events (a known user, a known item; acknowledged once its line is fsynced);
- GET recommendations of the same users, now with live rows (fold-in on every request).
Prints each row's median round (p50, p99) and its p50 ratio to the baseline, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from paced_load import paced_run  # noqa: E402
from results import write_result  # noqa: E402
from serving import free_port, sample_bundle, wait_ready  # noqa: E402


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def post(path: str, body: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=5, help="per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, all_users, all_items = sample_bundle(work)
        users = all_users[:2000]
        items = all_items[::7]
        log = work / "events.jsonl"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
        env["SVDFAISS_EVENTS_LOG"] = str(log)
        proc = subprocess.Popen([sys.executable, "-m", "svdfaiss", "serve", "--index-dir",
                                 str(work / "ix"), "--model", "bench", "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows: dict[str, Any] = {}
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            plan = [
                ("recommendations, no live events",
                 lambda i: get(f"/users/{users[i % 1000]}/recommendations?k=10")),
                ("POST /events", lambda i: post("/events", json.dumps(
                    {"user_id": users[1000 + i % 1000], "item_id": items[i % len(items)]}))),
                ("recommendations, live rows",
                 lambda i: get(f"/users/{users[1000 + i % 1000]}/recommendations?k=10")),
            ]
            # Rounds interleave the rows, so that a slow spell of this shared VM falls on
            # all of them; each row reports its median round.
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
            for _ in range(args.rounds):
                for name, request in plan:
                    rounds[name].append(paced_run("127.0.0.1", port, request, args.rate,
                                                  args.seconds, connections=16).summary())
            for name, results in rounds.items():
                ordered = sorted(results, key=lambda r: r["p50_ms"])
                rows[name] = {**ordered[len(ordered) // 2],
                              "p50_ms_rounds": [r["p50_ms"] for r in results]}
        finally:
            proc.terminate()
            proc.wait(15)
        logged = len(log.read_bytes().splitlines()) if log.exists() else 0
    base = rows["recommendations, no live events"]["p50_ms"]
    print(f"{'row':<34} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10} non-2xx")
    for name, row in rows.items():
        print(f"{name:<34} {row['requests_per_s']:>7.1f} {row['p50_ms']:>8.3f} "
              f"{row['p99_ms']:>8.3f} {row['p50_ms'] / base:>10.2f} {row['non_2xx']}")
    print(f"events logged: {logged}")
    write_result(args.json, rate=args.rate, seconds=args.seconds, rounds=args.rounds,
                 rows=rows, events_logged=logged)


if __name__ == "__main__":
    main()
