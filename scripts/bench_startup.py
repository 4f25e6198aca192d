"""Start-up to ready and memory of `svdfaiss serve` on a 1M-item bundle: memory-mapped
against read into memory, and against the code before memory maps ("today").

Variants, started one after the other in each round (alternating, `--rounds` times):
- today: the service from `--baseline-src` (a checkout of the commit before memory maps:
  FAISS indexes read into memory, arrays mapped), every checksum verified;
- eager: this tree with SVDFAISS_MMAP=false (every file read into memory), every checksum;
- mmap, full hash: indexes and arrays mapped, every checksum (SVDFAISS_TRUST_HASH_STAMP=false);
- mmap, stamped: this tree's defaults, on a bundle whose stamp vouches for its files (the
  script stamps it first, as `svdfaiss bundles verify --stamp` does: a bundle that was built
  before stamps existed);
- mmap, unverified: SVDFAISS_VERIFY_CHECKSUMS=false.
Each start is timed from the process's launch to the first 200 from /readyz; RSS (and its
anonymous and file-backed parts) is read at ready and again after `--queries` requests
(similar items with k=60, beyond the stored neighbours, so each one searches the IVF; and
recommendations), bounded by `--query-seconds`, with the CPU seconds the server had used
at ready (on a shared machine, the part of a start-up that other processes' load does not
stretch). "imports" times, for both trees, `python -c "import svdfaiss.service.app,
uvicorn"` and what `python -m svdfaiss serve` imports before it can answer (the command
line too): the floor under any start-up. "load alone" times `Recommender.load` (checksums
off) in a fresh process, mapped and eager (and mapped with the baseline's code). The bundle's
files are in the page cache (a warm start: caches are not dropped on this shared machine).
`--variants` and `--loads` choose what to time; `--compile` byte-compiles both trees first,
as a pip install does (a tree run from source under PYTHONDONTWRITEBYTECODE compiles every
module of its own at each start). Prints a table and writes JSON.

    python scripts/bench_startup.py --baseline-src /tmp/svdfaiss-today/src \\
        --json docs/results/startup-1m.json

The bundle is the one scripts/bench_service.py builds (same --work, --items, --build-args).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path[:0] = [str(SRC), str(HERE)]

from serving import free_port, wait_ready  # noqa: E402


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its anonymous and file-backed parts, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used: on a shared machine, the part of
    a start-up that other processes' load does not stretch."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def query(port: int, paths: list[str], seconds: float) -> dict[str, float]:
    """GET each path once over a keep-alive connection, stopping after `seconds`; a request
    that fails or takes over 10 s counts as an error (and the connection is replaced)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start, errors = time.perf_counter(), 0
    latencies: list[float] = []
    for path in paths:
        if time.perf_counter() - start > seconds:
            break
        sent = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            errors += response.status != 200
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append(time.perf_counter() - sent)
    conn.close()
    ms = sorted(1000 * x for x in latencies) or [float("nan")]
    return {"requests": len(latencies), "errors": errors,
            "seconds": round(time.perf_counter() - start, 2),
            "p50_ms": round(ms[len(ms) // 2], 2), "p99_ms": round(ms[int(len(ms) * 0.99)], 2),
            "max_ms": round(ms[-1], 1)}


def run_variant(src: Path, env: dict[str, str], index_dir: Path, model: str,
                paths: list[str], seconds: float) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir), "--model",
         model, "--port", str(port)], env={**env, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        at_ready = memory_mb(proc.pid)
        cpu = cpu_seconds(proc.pid)
        served = query(port, paths, seconds)
        return {"ready_s": round(ready, 3), "cpu_at_ready_s": cpu, "at_ready": at_ready,
                "after_queries": memory_mb(proc.pid), "queries": served}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


LOAD = """
import json, sys, time
from pathlib import Path
from svdfaiss.recommender import Recommender
def status():
    return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status")
            if l.startswith(("VmRSS", "RssAnon", "RssFile"))}
before = status()
start = time.perf_counter()
rec = Recommender.load(Path(sys.argv[1]), sys.argv[2], verify=False, mmap=sys.argv[3] == "1")
seconds = time.perf_counter() - start
after = status()
print(json.dumps({"load_s": round(seconds, 3),
                  **{k + "_delta_mb": round(after[k] - before[k], 1) for k in after}}))
"""


def load_in_process(env: dict[str, str], src: Path, index_dir: Path, model: str, mmap: bool
                    ) -> dict[str, float]:
    """`Recommender.load` alone, checksums off, in a fresh process: seconds and RSS growth."""
    done = subprocess.run([sys.executable, "-c", LOAD, str(index_dir), model, str(int(mmap))],
                          env={**env, "PYTHONPATH": str(src)}, check=True,
                          capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


VARIANTS = ("today", "eager", "mmap, full hash", "mmap, stamped", "mmap, unverified")
IMPORTS = {"app": "import svdfaiss.service.app, uvicorn",
           # what `python -m svdfaiss serve` imports before the first request: the command
           # line too (typer, rich, every command's module)
           "serve": "import svdfaiss.cli, svdfaiss.service.app, uvicorn, faiss"}


def import_seconds(env: dict[str, str], src: Path, what: str) -> dict[str, float]:
    """Wall and CPU seconds of a fresh `python -c IMPORTS[what]` with `src` first."""
    before, start = os.times(), time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS[what]],
                   env={**env, "PYTHONPATH": str(src)}, check=True)
    wall, after = time.perf_counter() - start, os.times()
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="src/ of the code to compare with (e.g. git archive of main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--query-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which starts to time (default: all; 'eager' takes a minute)")
    parser.add_argument("--loads", nargs="*", choices=("mmap", "eager", "baseline mmap"),
                        default=["mmap", "eager"], help="which loads alone to time")
    parser.add_argument("--compile", action="store_true",
                        help="byte-compile both trees first (python -m compileall), as a pip "
                             "install does; without it a tree run from source with "
                             "PYTHONDONTWRITEBYTECODE set compiles every module at each start")
    args = parser.parse_args()
    if args.compile:
        for tree in (SRC, args.baseline_src):
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True)

    index_dir = args.work / "indexes-service"
    model = f"items{args.items}"
    if not (index_dir / model / "CURRENT").exists():
        sys.exit(f"no bundle at {index_dir / model}: run scripts/bench_service.py --work "
                 f"{args.work} first (it builds the 1M-item bundle)")
    import numpy as np

    from svdfaiss.data import decode_ids
    from svdfaiss.recommender import Recommender

    rec = Recommender.load(index_dir, model, verify=False)
    rng = np.random.default_rng(0)
    items = decode_ids(rec.item_ids[np.sort(rng.choice(rec.n_items, args.queries // 2,
                                                       replace=False))])
    users = decode_ids(rec.user_ids[np.sort(rng.choice(rec.n_users, args.queries // 2,
                                                       replace=False))])
    paths = [p for pair in zip((f"/items/{i}/similar?k=60" for i in items),
                               (f"/users/{u}/recommendations?k=10" for u in users),
                               strict=True) for p in pair]
    bundle_mb = sum(f.stat().st_size for f in rec.path.iterdir()) / 1e6
    from svdfaiss import bundle

    if bundle.unchanged_since_hashed(rec.path, rec.manifest) != set(rec.manifest["files"]):
        print(f"stamping {rec.path} (svdfaiss bundles verify --stamp)", flush=True)
        bundle.check(rec.path, stamp=True)
    del rec

    base = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    full = {**base, "SVDFAISS_TRUST_HASH_STAMP": "false"}
    everything: dict[str, tuple[Path, dict[str, str]]] = {
        "today": (args.baseline_src, base),
        "eager": (SRC, {**full, "SVDFAISS_MMAP": "false"}),
        "mmap, full hash": (SRC, full),
        "mmap, stamped": (SRC, base),
        "mmap, unverified": (SRC, {**base, "SVDFAISS_VERIFY_CHECKSUMS": "false"}),
    }
    variants = {name: everything[name] for name in VARIANTS if name in args.variants}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    trees = {"today": args.baseline_src, "this": SRC}
    imports: dict[str, list[dict[str, float]]] = {
        f"{what}, {tree}": [] for tree in trees for what in IMPORTS}
    loads: dict[str, list[dict[str, float]]] = {name: [] for name in args.loads}
    for r in range(args.rounds):
        for tree, src in trees.items():
            for what in IMPORTS:
                imports[f"{what}, {tree}"].append(import_seconds(base, src, what))
        print(f"round {r + 1} imports: {({k: v[-1] for k, v in imports.items()})}", flush=True)
        for name in loads:
            loads[name].append(load_in_process(
                base, args.baseline_src if name.startswith("baseline") else SRC, index_dir,
                model, name != "eager"))
            print(f"round {r + 1} load only, {name}: {loads[name][-1]}", flush=True)
        for name, (src, env) in variants.items():
            runs[name].append(run_variant(src, env, index_dir, model, paths,
                                          args.query_seconds))
            print(f"round {r + 1} {name}: ready {runs[name][-1]['ready_s']} s", flush=True)

    def median(name: str, *keys: str) -> float:
        values = []
        for run in runs[name]:
            value: Any = run
            for key in keys:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    today = median("today", "ready_s") if "today" in runs else float("nan")
    summary = {name: {
        "ready_s": median(name, "ready_s"),
        "ready_vs_today": round(median(name, "ready_s") / today, 2),
        "cpu_at_ready_s": median(name, "cpu_at_ready_s"),
        "rss_at_ready_mb": median(name, "at_ready", "VmRSS"),
        "anon_at_ready_mb": median(name, "at_ready", "RssAnon"),
        "file_at_ready_mb": median(name, "at_ready", "RssFile"),
        "rss_after_queries_mb": median(name, "after_queries", "VmRSS"),
        "anon_after_queries_mb": median(name, "after_queries", "RssAnon"),
        "file_after_queries_mb": median(name, "after_queries", "RssFile"),
        "queries": median(name, "queries", "requests"),
        "query_p50_ms": median(name, "queries", "p50_ms"),
        "query_p99_ms": median(name, "queries", "p99_ms"),
        "query_max_ms": max(float(run["queries"]["max_ms"]) for run in runs[name]),
        "query_errors": sum(run["queries"]["errors"] for run in runs[name]),
    } for name in variants}
    print(f"\nbundle {bundle_mb:,.0f} MB; medians of {args.rounds} rounds")
    for name, values in imports.items():
        print(f"imports alone ({IMPORTS[name.split(',')[0]]!r}), {name.split(', ')[1]}: "
              f"{statistics.median(v['wall_s'] for v in values):.2f} s wall, "
              f"{statistics.median(v['cpu_s'] for v in values):.2f} s CPU")
    header = ("variant", "ready s", "x today", "CPU s", "RSS ready", "anon", "file", "RSS after",
              "anon", "file", "queries", "p50 ms", "p99 ms", "max ms")
    for name, values in loads.items():
        print(f"Recommender.load alone, {name}, unverified: "
              f"{statistics.median(v['load_s'] for v in values):.2f} s, RSS +"
              f"{statistics.median(v['VmRSS_delta_mb'] for v in values):.0f} MB (anon +"
              f"{statistics.median(v['RssAnon_delta_mb'] for v in values):.0f})")
    print(" | ".join(header))
    for name, s in summary.items():
        print(" | ".join(str(x) for x in (
            name, s["ready_s"], s["ready_vs_today"], s["cpu_at_ready_s"], s["rss_at_ready_mb"],
            s["anon_at_ready_mb"], s["file_at_ready_mb"], s["rss_after_queries_mb"],
            s["anon_after_queries_mb"], s["file_after_queries_mb"],
            f"{s['queries']:.0f} ({s['query_errors']} errors)", s["query_p50_ms"],
            s["query_p99_ms"], s["query_max_ms"])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, shared",
            "python": platform.python_version(), "bundle_mb": round(bundle_mb),
            "items": args.items, "compiled": args.compile,
            "baseline_src": str(args.baseline_src), "imports": imports,
            "load_in_process": loads,
            "summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
