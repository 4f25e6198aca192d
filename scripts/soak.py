"""Soak: a fixed request rate from 127.0.0.1 for a bounded time, with a reload every
--reload-every seconds, reporting errors, latency percentiles over time and RSS over time.

Builds two versions of the built-in sample (or serves --index-dir/--model), starts
`svdfaiss serve` with an admin token, and alternates CURRENT between the versions before
each reload, so every reload really swaps the model. Traffic mixes similar items (stored
neighbours), similar items with a deny-list (the FastAPI route and a FAISS search), user
recommendations, live events (POST /events: fsynced to a log, folded into the next
recommendations, with a live store of 100 users so that its LRU bound is exercised) and
unknown ids (404s are expected answers, not errors).
Exits 1 when a request failed (a 5xx or no answer), a reload did not load, or RSS grew.

    python scripts/soak.py --seconds 600 --rate 500 --json docs/results/soak-600s.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from paced_load import paced_run  # noqa: E402
from serving import free_port, rss_mb, wait_ready  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"


def cpu_times() -> list[int]:
    """The machine's cumulative CPU times (user, nice, system, idle, iowait, irq, softirq,
    steal), from /proc/stat."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def prepare(work: Path) -> tuple[Path, str, list[str]]:
    """Two versions of the sample model; CURRENT names the first."""
    from svdfaiss import bundle
    from svdfaiss.builder import BuildConfig, build
    from svdfaiss.synthetic import SampleSpec, write_sample

    files = write_sample(SampleSpec(), work / "data")
    index_dir = work / "indexes"
    for version, k in (("soak-b", 48), ("soak-a", 64)):
        build(BuildConfig(input=files.events, model="soak", index_dir=index_dir,
                          catalog=files.catalog, k=k, version=version))
    bundle.set_current(bundle.model_dir(index_dir, "soak"), "soak-a")
    return index_dir, "soak", ["soak-a", "soak-b"]


def request_mix(index_dir: Path, model: str) -> list[bytes]:
    from svdfaiss.data import decode_ids
    from svdfaiss.recommender import Recommender

    rec = Recommender.load(index_dir, model)
    rng = random.Random(0)
    items = decode_ids(rec.item_ids[:: max(1, rec.n_items // 300)])
    users = decode_ids(rec.user_ids[:: max(1, rec.n_users // 300)])
    paths = []
    for n in range(1000):
        kind = n % 10
        if kind < 5:
            paths.append(f"/items/{rng.choice(items)}/similar?k=10")
        elif kind < 7:
            paths.append(f"/items/{rng.choice(items)}/similar?k=10&filter_items="
                         f"{rng.choice(items)}")
        elif kind < 8:
            paths.append(f"/users/{rng.choice(users)}/recommendations?k=10")
        elif kind < 9:  # a live event: a known or new user, a known or (1 in 8) unknown item
            user = rng.choice(users) if n % 3 else f"soak-new-{n}"
            item = rng.choice(items) if n % 8 else f"soak-unknown-{n}"
            paths.append(json.dumps({"user_id": user, "item_id": item}))
        else:
            paths.append("/items/no-such-item/similar")
    return [_post_event(p) if p.startswith("{") else
            f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths]


def _post_event(body: str) -> bytes:
    return (f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--reload-every", type=float, default=60)
    parser.add_argument("--window", type=float, default=0, help="seconds per row (default "
                        "a tenth of the run)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    window = args.window or max(1.0, args.seconds / 10)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        index_dir, model, versions = prepare(work)
        requests = request_mix(index_dir, model)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
        env["SVDFAISS_ADMIN_TOKEN"] = TOKEN
        # Live events go to a log of their own; a small live store exercises its LRU bound.
        env["SVDFAISS_EVENTS_LOG"] = str(work / "events.jsonl")
        env["SVDFAISS_LIVE_USERS"] = "100"
        proc = subprocess.Popen([sys.executable, "-m", "svdfaiss", "serve", "--index-dir",
                                 str(index_dir), "--model", model, "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{url}/readyz", proc)
            report = soak(proc, url, port, index_dir, model, versions, requests, args,
                          window)
            events_log = work / "events.jsonl"
            report["events_logged"] = (len(events_log.read_bytes().splitlines())
                                       if events_log.exists() else 0)
        finally:
            proc.terminate()
            proc.wait(15)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


def soak(proc: subprocess.Popen[bytes], url: str, port: int, index_dir: Path, model: str,
         versions: list[str], requests: list[bytes], args: argparse.Namespace,
         window: float) -> dict[str, Any]:
    from svdfaiss import bundle

    stop = threading.Event()
    rss: list[tuple[float, float]] = []
    # Steal: time the hypervisor gave this VM's CPUs to someone else. On a shared VM it,
    # more than the service, sets the latency tail; recorded so the two can be told apart.
    steal: list[tuple[float, float]] = []
    reloads: list[dict[str, Any]] = []
    start = time.monotonic()

    def background() -> None:
        next_reload = args.reload_every
        n = 0
        before = cpu_times()
        while not stop.wait(1.0):
            elapsed = time.monotonic() - start
            rss.append((round(elapsed, 1), round(rss_mb(proc.pid), 1)))
            now = cpu_times()
            delta = [b - a for a, b in zip(before, now, strict=True)]
            before = now
            steal.append((round(elapsed, 1), round(100 * delta[7] / max(1, sum(delta)), 1)))
            if elapsed >= next_reload:
                next_reload += args.reload_every
                n += 1
                target = versions[n % len(versions)]
                bundle.set_current(bundle.model_dir(index_dir, model), target)
                request = urllib.request.Request(
                    f"{url}/admin/reload", method="POST",
                    headers={"authorization": f"Bearer {TOKEN}"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        body = json.load(response)
                except OSError as exc:
                    body = {"result": f"failed: {exc}"}
                reloads.append({"t_s": round(elapsed, 1), "to": target, **body})

    watcher = threading.Thread(target=background, daemon=True)
    watcher.start()
    result = paced_run("127.0.0.1", port, lambda i: requests[i % len(requests)], args.rate,
                       args.seconds, connections=16)
    stop.set()
    watcher.join()
    server_errors = sum(n for status, n in result.statuses.items() if status >= 500)
    unexpected = sum(n for status, n in result.statuses.items()
                     if status not in (200, 404) and status < 500)
    values = [m for _, m in rss]
    tenth = max(1, len(values) // 10)
    first, last = (sorted(values[:tenth])[tenth // 2] if values else 0.0,
                   sorted(values[-tenth:])[tenth // 2] if values else 0.0)
    growth = last - first
    # Flat: less than 10% (and 40 MB) between the first and the last tenth of the run.
    flat = growth < max(40.0, 0.1 * first)
    failed_reloads = [r for r in reloads if r.get("result") != "loaded"]
    summary = result.summary()
    latency = result.windows(window)
    for row in latency:  # the mean steal over each latency window
        inside = [p for t, p in steal if row["t_s"] <= t < row["t_s"] + window]
        row["steal_percent"] = round(sum(inside) / len(inside), 1) if inside else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds, "rate": args.rate, "reload_every_s": args.reload_every,
        "requests": summary, "statuses": dict(sorted(result.statuses.items())),
        "server_errors": server_errors, "unexpected_statuses": unexpected,
        "reloads": reloads, "failed_reloads": len(failed_reloads),
        "latency_over_time": latency, "steal_percent_over_time": steal,
        "rss_mb_over_time": rss, "rss_first_tenth_mb": first, "rss_last_tenth_mb": last,
        "rss_growth_mb": round(growth, 1), "rss_flat": flat,
        "passed": (summary["errors"] == 0 and server_errors == 0 and unexpected == 0
                   and not failed_reloads and flat),
    }


def print_report(report: dict[str, Any]) -> None:
    req = report["requests"]
    print(f"soak {report['seconds']:.0f} s at {report['rate']:.0f} req/s, a reload every "
          f"{report['reload_every_s']:.0f} s ({report['date']})")
    if "events_logged" in report:
        print(f"live events logged (fsynced): {report['events_logged']}")
    print(f"sent {req['sent']}, answered {req['completed']}, no answer {req['errors']}, "
          f"5xx {report['server_errors']}, statuses {report['statuses']}, "
          f"reconnects {req['reconnects']}")
    print(f"reloads {len(report['reloads'])}, failed {report['failed_reloads']}")
    print(f"{'t (s)':>8}{'requests':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'steal %':>9}")
    for row in report["latency_over_time"]:
        print(f"{row['t_s']:>8.0f}{row['requests']:>10}{row['p50_ms']:>9.2f}"
              f"{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['steal_percent'] or 0:>9.1f}")
    print(f"RSS first tenth {report['rss_first_tenth_mb']:.0f} MB, last tenth "
          f"{report['rss_last_tenth_mb']:.0f} MB (growth {report['rss_growth_mb']:+.0f} MB, "
          f"{'flat' if report['rss_flat'] else 'GROWING'})")
    print("PASSED" if report["passed"] else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
