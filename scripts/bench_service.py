"""HTTP benchmark: similar-items on a generated 1M-item bundle against a bare FastAPI endpoint.

All servers run side by side in the same run (uvicorn, one worker each, 127.0.0.1):
- bare FastAPI: an `async def` endpoint returning a constant JSON;
- svdfaiss with SVDFAISS_SEARCH_MODE=threadpool (fast path for stored neighbours, a
  thread-pool call per search);
- svdfaiss with SVDFAISS_FAST_PATH=false (every request through the FastAPI route);
- svdfaiss with SVDFAISS_SEARCH_MODE=batch (concurrent searches batched into one call).
Each round loads every workload one after the other, `--rounds` times, and the table gives
medians over rounds (this VM's steal time makes single runs noisy):
- saturation: wrk, one thread (one core of two), 32 connections, --duration seconds;
- paced: scripts/paced_load.py at a fixed rate, latency from each request's intended send
  time (as wrk2), 16 connections.
Uncached workloads ask k=60, beyond the 50 stored neighbours, so every request searches.
Also start-up to ready (median of 3), server RSS, and recall@10 of the index against exact
search. Needs `wrk` (Debian package). Prints a table and writes JSON.

    python scripts/bench_service.py --work /tmp/svdfaiss-bench --json docs/results/service-1m.json

`--startup-only` measures start-up to ready only, for every bundle folder given with
`--index-dirs` (side by side, alternating), e.g. an old and a new build of the same log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from serving import BARE_APP, free_port, rss_mb, wait_ready  # noqa: E402


def wrk(url: str, connections: int, seconds: int, script: Path | None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    text = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    out: dict[str, float] = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)",
                                                                 text).group(1))}  # type: ignore[union-attr]
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if m:
            out[f"p{pct}_ms"] = round(float(m.group(1)) * units[m.group(2)], 3)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = socket_errors.group(1) if socket_errors else "none"  # type: ignore[assignment]
    return out


def lua_script(path: Path, paths: list[str], pace_ms: float | None) -> Path:
    quoted = ",".join(json.dumps(p) for p in paths)
    body = f"local paths = {{{quoted}}}\nlocal n = #paths\nlocal i = 0\n"
    body += "request = function()\n  i = i % n + 1\n  return wrk.format(nil, paths[i])\nend\n"
    if pace_ms is not None:
        body += f"delay = function()\n  return {pace_ms}\nend\n"
    path.write_text(body)
    return path


def start(cmd: list[str], env: dict[str, str], cwd: Path | None = None
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key medians of numeric results over rounds (errors summed)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if key in ("non_2xx", "errors"):
            out[key] = sum(values)
        elif values:
            out[key] = round(float(statistics.median(values)), 3)
    return out


def startup_seconds(index_dir: Path, model: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    port = free_port()
    proc = start([sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir),
                  "--model", model, "--port", str(port)], env)
    try:
        return wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    finally:
        stop(proc)


def startup_only(index_dirs: list[Path], model: str, rounds: int) -> None:
    """Start-up to ready of each bundle, alternating, `rounds` times; medians printed."""
    runs: dict[Path, list[float]] = {d: [] for d in index_dirs}
    for _ in range(rounds):
        for index_dir in index_dirs:
            runs[index_dir].append(startup_seconds(index_dir, model))
    for index_dir, seconds in runs.items():
        print(f"{index_dir}: start-up to ready {[round(s, 2) for s in seconds]} s, median "
              f"{statistics.median(seconds):.2f} s")


# The generated 1M-item shop and its build flags (scripts/bench_export.py reuses them).
ITEMS, USERS, EVENTS = 1_000_000, 1_500_000, 6_000_000
BUILD_ARGS = "--index ivf --ivf-nlist 4096 --ivf-nprobe 16 --user-index none --similar-cache 50"


def ensure_bundle(work: Path, items: int, users: int, events_n: int, build_args: str
                  ) -> tuple[Path, str]:
    """The generated log and its bundle under `work`, made on first use: (index dir, model)."""
    data = work / f"catalog-{items}"
    events = data / "events.csv"
    if not events.exists():
        subprocess.run([sys.executable, "-m", "svdfaiss", "synth", "--out", str(data),
                        "--users", str(users), "--items", str(items), "--events",
                        str(events_n), "--categories", "20", "--every-item"], check=True)
    index_dir = work / "indexes-service"
    model = f"items{items}"
    if not (index_dir / model / "CURRENT").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdfaiss", "build", str(events), "--model",
                        model, "--out", str(index_dir), *build_args.split()],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"built the bundle in {time.perf_counter() - t:.0f} s")
    return index_dir, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--build-args", default=BUILD_ARGS)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced rate, cached")
    parser.add_argument("--search-rate", type=float, default=300.0,
                        help="paced rate of the uncached (searching) workloads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--startup-only", action="store_true")
    parser.add_argument("--index-dirs", type=Path, nargs="+",
                        help="With --startup-only: folders holding the model to start.")
    args = parser.parse_args()
    if args.startup_only:
        startup_only(args.index_dirs or [args.work / "indexes-service"],
                     f"items{args.items}", args.rounds)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    index_dir, model = ensure_bundle(args.work, args.items, args.users, args.events,
                                     args.build_args)

    import numpy as np

    from paced_load import get_requests, paced_run
    from svdfaiss.data import decode_ids
    from svdfaiss.index import exact_top_k
    from svdfaiss.recommender import Recommender

    rec = Recommender.load(index_dir, model)
    rng = np.random.default_rng(0)
    sample = rng.choice(rec.n_items, 1000, replace=False)
    ids = decode_ids(rec.item_ids[np.sort(sample)])
    vectors = np.asarray(rec.item_vectors)
    hits = 0
    for i in sample[:200]:
        got = rec.similar_items(decode_ids(rec.item_ids[i : i + 1])[0], 10, use_cache=False)
        scores, _ = exact_top_k(vectors, vectors[i], 11)
        hits += sum(s >= scores[-1] - 1e-5 for s in got.scores)
    recall = hits / 2000
    manifest = rec.manifest
    del rec, vectors

    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    serve = [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir),
             "--model", model]
    startups = [startup_seconds(index_dir, model) for _ in range(3)]
    ready_s = statistics.median(startups)

    bare_file = args.work / "bare_app.py"
    bare_file.write_text(BARE_APP)
    ports = {name: free_port() for name in ("bare", "threadpool", "route", "batch")}
    procs = {
        "bare": start([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                       str(ports["bare"]), "--no-access-log", "--log-level", "warning"],
                      env, cwd=args.work),
        "threadpool": start([*serve, "--port", str(ports["threadpool"])],
                            {**env, "SVDFAISS_SEARCH_MODE": "threadpool"}),
        "route": start([*serve, "--port", str(ports["route"])],
                       {**env, "SVDFAISS_FAST_PATH": "false"}),
        "batch": start([*serve, "--port", str(ports["batch"])],
                       {**env, "SVDFAISS_SEARCH_MODE": "batch"}),
    }
    cached = [f"/items/{i}/similar?k=10" for i in ids]
    uncached = [f"/items/{i}/similar?k=60" for i in ids]
    workloads = [  # name, server, paths, paced rate
        ("bare FastAPI", "bare", ["/bare"], args.rate),
        ("similar, fast path", "threadpool", cached, args.rate),
        ("similar, FastAPI route", "route", cached, args.rate),
        ("search, thread pool", "threadpool", uncached, args.search_rate),
        ("search, batched", "batch", uncached, args.search_rate),
    ]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"saturation": [], "paced": []} for name, *_ in workloads}
    try:
        for name, port in ports.items():
            path = "/bare" if name == "bare" else "/readyz"
            wait_ready(f"http://127.0.0.1:{port}{path}", procs[name])
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", file=sys.stderr)
            for name, server, paths, rate in workloads:
                url = f"http://127.0.0.1:{ports[server]}"
                wrk(url, 4, 2, lua_script(args.work / "warm.lua", paths, None))
                runs[name]["saturation"].append(
                    wrk(url, 32, args.duration, lua_script(args.work / "sat.lua", paths, None)))
                paced = paced_run("127.0.0.1", ports[server], get_requests("127.0.0.1", paths),
                                  rate, args.duration, connections=16)
                runs[name]["paced"].append(paced.summary())
        rss = {name: round(rss_mb(proc.pid), 1) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop(proc)

    results = {name: {load: median_run(r) for load, r in loads.items()}
               for name, loads in runs.items()}

    def ratio(name: str, base: str) -> float:
        per_round = [a["requests_per_s"] / b["requests_per_s"] for a, b in
                     zip(runs[name]["saturation"], runs[base]["saturation"], strict=True)]
        return round(float(statistics.median(per_round)), 3)

    ratios = {"fast path / bare FastAPI": ratio("similar, fast path", "bare FastAPI"),
              "FastAPI route / bare FastAPI": ratio("similar, FastAPI route", "bare FastAPI"),
              "batched / thread pool": ratio("search, batched", "search, thread pool")}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus",
        "bundle": {"items": manifest["counts"]["items"], "users": manifest["counts"]["users"],
                   "index": manifest["indexes"]["items"]},
        "recall_at_10_vs_exact": recall,
        "startup_to_ready_s": {"median": round(ready_s, 2),
                               "runs": [round(s, 2) for s in startups]},
        "rss_mb": rss,
        "rounds": args.rounds,
        "medians": results,
        "saturation_ratios": ratios,
        "runs": runs,
    }
    print(f"\n1M-item bundle: {manifest['counts']['items']:,} items, index "
          f"{manifest['indexes']['items']['type']} {manifest['indexes']['items']['params']}")
    print(f"recall@10 vs exact {recall:.3f}; start-up to ready {ready_s:.2f} s (median of 3); "
          f"RSS MB {rss}")
    print(f"{'':24}{'load':12}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, loads in results.items():
        for load, r in loads.items():
            errors = r.get("non_2xx", 0) + r.get("errors", 0)
            print(f"{name:24}{load:12}{r['requests_per_s']:>9.0f}{r.get('p50_ms', 0):>9.3f}"
                  f"{r.get('p90_ms', 0):>9.3f}{r.get('p99_ms', 0):>9.3f}{errors:>8.0f}")
    for name, value in ratios.items():
        print(f"saturation, {name}: {value:.2f} (median of per-round ratios)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
