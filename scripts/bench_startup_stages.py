"""Where `svdfaiss serve`'s start-up goes: wall and CPU seconds at each stage, per tree.

Each start runs the command line (`python -m svdfaiss serve`) in a process that marks, on
stderr, the wall time since launch and its own CPU time (user + system) when the
interpreter is up, when `svdfaiss.cli`, uvicorn, fastapi, faiss and `svdfaiss.service.app`
have imported, when uvicorn.run is called, around `create_app`, `Models.reload` and
`Recommender.load`, and at the first 200 from /readyz (read from the script's side). The
marks cost nothing measurable (a few calls). Starts alternate between the trees given;
medians per stage are printed.

    python scripts/bench_startup_stages.py --src /tmp/startup-before/src src \\
        --index-dir /tmp/startup-bench/indexes-service --model items1000000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from serving import free_port, wait_ready  # noqa: E402

HARNESS = r'''
import functools, importlib.abc, importlib.util, os, runpy, sys, time
T0 = float(sys.argv[1])
def mark(what):
    c = os.times()
    sys.stderr.write(f"STAGE {time.time() - T0:.4f} {c.user + c.system:.3f} {what}\n")
    sys.stderr.flush()
mark("interpreter up")
WATCH = {"svdfaiss.cli", "uvicorn", "fastapi", "faiss", "svdfaiss.service.app"}
def timed(f, label):
    @functools.wraps(f)
    def w(*a, **k):
        mark(f"{label} begins")
        try:
            return f(*a, **k)
        finally:
            mark(f"{label} done")
    return w
def patch(name, module):
    if name == "uvicorn":
        module.run = timed(module.run, "uvicorn.run")
    if name == "svdfaiss.service.app":
        module.create_app = timed(module.create_app, "create_app")
        from svdfaiss import recommender
        from svdfaiss.service import holders
        recommender.Recommender.load = timed(recommender.Recommender.load, "Recommender.load")
        reload = holders.Models.reload
        async def models_reload(self, *a, **k):
            mark("Models.reload begins")
            try:
                return await reload(self, *a, **k)
            finally:
                mark("Models.reload done")
        holders.Models.reload = models_reload
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in WATCH:
            return None
        WATCH.discard(name)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            mark(f"import {name} done")
            patch(name, module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Finder())
sys.argv = ["svdfaiss", *sys.argv[2:]]
runpy.run_module("svdfaiss", run_name="__main__")
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(src: Path, index_dir: Path, model: str) -> dict[str, tuple[float, float]]:
    """Stage -> (wall seconds since launch, CPU seconds of the server) for one start."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as marks:
        launched = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-c", HARNESS, repr(launched), "serve", "--index-dir",
             str(index_dir), "--model", model, "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(src)}, stdout=subprocess.DEVNULL,
            stderr=marks)
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            ready = (time.time() - launched, cpu_seconds(proc.pid))
        finally:
            proc.terminate()
            proc.wait(15)
        marks.seek(0)
        stages: dict[str, tuple[float, float]] = {}
        for line in marks:
            if line.startswith("STAGE "):
                _, wall, cpu, what = line.rstrip("\n").split(" ", 3)
                stages.setdefault(what, (float(wall), float(cpu)))
    stages["ready (first 200 from /readyz)"] = ready
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, nargs="+", required=True,
                        help="src/ folders of the trees to compare")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    starts: dict[Path, list[dict[str, tuple[float, float]]]] = {s: [] for s in args.src}
    for _ in range(args.runs):
        for src in args.src:
            starts[src].append(one_start(src, args.index_dir, args.model))
    for src, runs in starts.items():
        print(f"{src}: medians (ranges) of {len(runs)} starts: wall s since launch, CPU s")
        for stage in runs[0]:
            if all(stage in run for run in runs):
                walls = sorted(run[stage][0] for run in runs)
                cpus = sorted(run[stage][1] for run in runs)
                print(f"  {statistics.median(walls):7.3f} ({walls[0]:.3f}-{walls[-1]:.3f}) "
                      f"{statistics.median(cpus):6.2f} ({cpus[0]:.2f}-{cpus[-1]:.2f})  {stage}")


if __name__ == "__main__":
    main()
