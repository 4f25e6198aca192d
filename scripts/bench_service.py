"""HTTP benchmark: similar-items on a generated 1M-item bundle against a bare FastAPI endpoint.

Both servers run side by side in the same run (uvicorn, one worker each, 127.0.0.1), loaded
one after the other by wrk (one thread, so it takes one core of two):
- saturation: 32 connections for --duration seconds;
- paced: 8 connections, each waiting --pace-ms between requests (wrk's Lua `delay`), about
  1,000 requests/s; wrk reports the rate it reached.
Also start-up to ready, server RSS, and recall@10 of the index against exact search.
Needs `wrk` (Debian package). Prints a table and writes JSON.

    python scripts/bench_service.py --work /tmp/svdfaiss-bench --json docs/results/service-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BARE_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/bare")
async def bare() -> dict:
    return {"model": "bare", "version": "0", "items": [{"item_id": "0", "score": 1.0}]}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], limit: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit(f"{url} not ready after {limit} s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_500_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--build-args", default="--index ivf --ivf-nlist 4096 --ivf-nprobe 16 "
                        "--user-index none --similar-cache 50")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--pace-ms", type=float, default=7.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    data = args.work / f"catalog-{args.items}"
    events = data / "events.csv"
    if not events.exists():
        subprocess.run([sys.executable, "-m", "svdfaiss", "synth", "--out", str(data),
                        "--users", str(args.users), "--items", str(args.items), "--events",
                        str(args.events), "--categories", "20", "--every-item"], check=True)
    index_dir = args.work / "indexes-service"
    model = f"items{args.items}"
    if not (index_dir / model / "CURRENT").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdfaiss", "build", str(events), "--model",
                        model, "--out", str(index_dir), *args.build_args.split()],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"built the bundle in {time.perf_counter() - t:.0f} s")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import numpy as np

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
        got = rec.similar_items(decode_ids(rec.item_ids[i : i + 1])[0], 10)
        scores, _ = exact_top_k(vectors, vectors[i], 11)
        hits += sum(s >= scores[-1] - 1e-5 for s in got.scores)
    recall = hits / 2000
    manifest = rec.manifest
    del rec, vectors

    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "svdfaiss", "serve", "--index-dir",
                            str(index_dir), "--model", model, "--port", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready_s = wait_ready(f"http://127.0.0.1:{port}/readyz", api)
    bare_port = free_port()
    bare_file = args.work / "bare_app.py"
    bare_file.write_text(BARE_APP)
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                             str(bare_port), "--no-access-log", "--log-level", "warning"],
                            cwd=args.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{bare_port}/bare", bare)
    try:
        similar_paths = [f"/items/{i}/similar?k=10" for i in ids]
        scripts = args.work
        results: dict[str, Any] = {}
        for name, url, paths in (("bare FastAPI", f"http://127.0.0.1:{bare_port}", ["/bare"]),
                                 ("similar items", f"http://127.0.0.1:{port}", similar_paths)):
            wrk(url, 4, 2, lua_script(scripts / "warm.lua", paths, None))  # warm-up
            results[name] = {
                "saturation": wrk(url, 32, args.duration,
                                  lua_script(scripts / "sat.lua", paths, None)),
                "paced": wrk(url, 8, args.duration,
                             lua_script(scripts / "paced.lua", paths, args.pace_ms)),
            }
        api_rss = rss_mb(api.pid)
    finally:
        for proc in (api, bare):
            proc.terminate()
            proc.wait(15)

    sat_ratio = (results["similar items"]["saturation"]["requests_per_s"]
                 / results["bare FastAPI"]["saturation"]["requests_per_s"])
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus",
        "bundle": {"items": manifest["counts"]["items"], "users": manifest["counts"]["users"],
                   "index": manifest["indexes"]["items"]},
        "recall_at_10_vs_exact": recall,
        "startup_to_ready_s": round(ready_s, 2),
        "service_rss_mb": round(api_rss, 1),
        "wrk": results,
        "similar_over_bare_saturation": round(sat_ratio, 3),
    }
    print(f"\n1M-item bundle: {manifest['counts']['items']:,} items, index "
          f"{manifest['indexes']['items']['type']} {manifest['indexes']['items']['params']}")
    print(f"recall@10 vs exact {recall:.3f}; start-up to ready {ready_s:.2f} s; "
          f"service RSS {api_rss:.0f} MB")
    header = f"{'':16}{'load':12}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
    print(header)
    for name, runs in results.items():
        for load, r in runs.items():
            print(f"{name:16}{load:12}{r['requests_per_s']:>9.0f}{r.get('p50_ms', 0):>9.3f}"
                  f"{r.get('p90_ms', 0):>9.3f}{r.get('p99_ms', 0):>9.3f}{r['non_2xx']:>9.0f}")
    print(f"saturation: similar items / bare FastAPI = {sat_ratio:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
