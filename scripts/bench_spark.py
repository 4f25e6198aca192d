"""The native builder against `--engine spark` on one generated log, side by side in one run.

Generates an Amazon-shaped log (`svdfaiss synth`, 4.2M users, 476k items, 7.8M events by
default) unless it exists, then builds it twice with the same flags (`--no-tune --k K`):
natively, and on Spark (`--spark-master local[2]` by default). Each build runs as a child
process whose whole process tree (the JVM and Python workers included) is sampled every
0.2 s from /proc: the peak of its summed memory (PSS) is reported, and with
`--memory-cap-gb` a tree that goes above the cap is killed (the cap is the same rule for
both engines) and reported as "over the cap"; with `--cgroup` as well (root, Linux) each
build runs in a memory cgroup capped there instead, so the kernel enforces the cap (and its
peak, page cache included, is reported). `--timeout` bounds each build. Prints a table
and writes JSON. Linux only (reads /proc).

    python scripts/bench_spark.py --work /tmp/svdfaiss-bench --json docs/results/spark.json
    python scripts/bench_spark.py --users 420000 --items 47600 --events 780000 --k 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _role(pid: int, root: int) -> str:
    """Which part of a build a process is: the driver's Python, the JVM, or a worker."""
    if pid == root:
        return "driver_python"
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return "jvm" if fh.read().strip() == "java" else "workers"
    except OSError:
        return "workers"


def tree_pss(root: int) -> dict[str, int]:
    """Summed proportional set size (PSS: shared pages split among their sharers, so
    forked Python workers are not counted twice) of a process and all its descendants,
    by role (driver_python, jvm, workers), and the anonymous memory of all of them (what a
    memory cap cannot reclaim: file pages mapped, such as jars and shuffle files, can be)."""
    tree, todo = _children(), [root]
    by_role = {"driver_python": 0, "jvm": 0, "workers": 0, "anonymous": 0}
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                role = _role(pid, root)
                for line in fh:
                    if line.startswith("Pss:"):
                        by_role[role] += int(line.split()[1]) * 1024
                    elif line.startswith("Anonymous:"):
                        by_role["anonymous"] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return by_role


class MemoryCgroup:
    """A memory cgroup capped at `cap` bytes (cgroup v1 or v2, as root): the kernel itself
    holds the processes put in it to the cap (reclaiming page cache first, then OOM-killing),
    so the cap is not a sampled guess. Its peak usage counts page cache too."""

    def __init__(self, name: str, cap: int) -> None:
        v1 = Path("/sys/fs/cgroup/memory")
        own = Path("/proc/self/cgroup").read_text().splitlines()
        if v1.is_dir():
            parent = next(line.split(":", 2)[2] for line in own
                          if line.split(":", 2)[1].split(",").count("memory"))
            self.path, self.v2 = v1 / parent.lstrip("/") / name, False
        else:
            parent = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
            root = Path("/sys/fs/cgroup") / parent.lstrip("/")
            (root / "cgroup.subtree_control").write_text("+memory")
            self.path, self.v2 = root / name, True
        self.path.mkdir(exist_ok=True)
        self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(cap))
        if not self.v2 and (self.path / "memory.memsw.limit_in_bytes").exists():
            self._write("memory.memsw.limit_in_bytes", str(cap))  # no swapping past it
        if self.v2:
            self._write("memory.swap.max", "0")

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def enter(self) -> None:
        """Put the calling process in the cgroup (a child's preexec_fn)."""
        self._write("cgroup.procs", str(os.getpid()))

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        text = (self.path / ("memory.events" if self.v2 else "memory.oom_control")).read_text()
        return sum(int(line.split()[1]) for line in text.splitlines()
                   if line.startswith("oom_kill "))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_bounded(cmd: list[str], cap_bytes: int | None, timeout: float,
                env: dict[str, str], cgroup: MemoryCgroup | None = None) -> dict[str, Any]:
    """Run cmd in its own process group (in `cgroup` when given): wall seconds, peak tree
    PSS, and how it ended. Without a cgroup a tree whose sampled PSS passes the cap is
    killed; with one the kernel enforces the cap."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env,
                            preexec_fn=None if cgroup is None else cgroup.enter)
    peak, ended = 0, "finished"
    peaks = {"driver_python": 0, "jvm": 0, "workers": 0, "anonymous": 0}
    while proc.poll() is None:
        sample = tree_pss(proc.pid)
        peak = max(peak, sample["driver_python"] + sample["jvm"] + sample["workers"])
        peaks = {role: max(peaks[role], sample[role]) for role in peaks}
        if cgroup is None and cap_bytes is not None and peak > cap_bytes:
            ended = "over the cap (killed)"
        elif time.perf_counter() - start > timeout:
            ended = f"over {timeout:.0f} s (killed)"
        else:
            time.sleep(0.2)
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        break
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"wall_s": round(wall, 1), "peak_tree_pss_gb": round(peak / 1e9, 2),
                              "peak_pss_gb_by_role": {role: round(v / 1e9, 2)
                                                      for role, v in peaks.items()}}
    if cgroup is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a JVM the OOM killer left orphaned
        result["cgroup_peak_gb"] = round(cgroup.peak() / 1e9, 2)
        result["oom_kills"] = cgroup.oom_kills()
        if result["oom_kills"] and ended == "finished":
            ended = "killed by the kernel at the cgroup's cap"
    if ended == "finished" and proc.returncode != 0:
        ended = f"failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}"
    result["ended"] = ended
    if ended == "finished":
        manifest = json.loads(stdout)
        result["stages_s"] = manifest["timings_seconds"]
        result["counts"] = manifest["counts"]
        result["singular_values"] = manifest["factorization"]["singular_values"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/svdfaiss-bench"))
    parser.add_argument("--users", type=int, default=4_200_000)
    parser.add_argument("--items", type=int, default=476_000)
    parser.add_argument("--events", type=int, default=7_800_000)
    parser.add_argument("--single-event-share", type=float, default=0.7)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--spark-driver-memory", default="2g")
    parser.add_argument("--spark-submit-args", default="",
                        help="more spark-submit options for the Spark build (PYSPARK_SUBMIT_ARGS)"
                             ", e.g. --conf spark.driver.extraJavaOptions=...")
    parser.add_argument("--memory-cap-gb", type=float)
    parser.add_argument("--cgroup", action="store_true",
                        help="enforce --memory-cap-gb with a memory cgroup (root) instead of "
                             "killing a tree whose sampled PSS passes it")
    parser.add_argument("--build-args", default="",
                        help="more `svdfaiss build` flags, the same for both engines")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--engines", default="native,spark")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = args.work / f"amazon-shaped-{args.users}-{args.items}-{args.events}"
    events = data / "events.csv"
    if not events.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdfaiss", "synth", "--out", str(data),
                        "--users", str(args.users), "--items", str(args.items),
                        "--events", str(args.events), "--categories", "20",
                        "--single-event-share", str(args.single_event_share)], check=True)
        print(f"generated {events} in {time.perf_counter() - t:.1f} s")
    cap = None if args.memory_cap_gb is None else int(args.memory_cap_gb * 1e9)
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": f"--driver-memory {args.spark_driver_memory} "
                                               f"{args.spark_submit_args} pyspark-shell"}
    runs: dict[str, Any] = {}
    for engine in args.engines.split(","):
        index_dir = args.work / f"indexes-{engine}"
        cmd = [sys.executable, "-m", "svdfaiss", "build", str(events), "--model", "bench",
               "--out", str(index_dir), "--no-tune", "--k", str(args.k), "--json",
               "--engine", engine, *args.build_args.split()]
        if engine == "spark":
            cmd += ["--spark-master", args.spark_master]
        print(f"== {engine}: {' '.join(cmd)}", flush=True)
        cgroup = None
        if args.cgroup:
            if cap is None:
                parser.error("--cgroup needs --memory-cap-gb")
            cgroup = MemoryCgroup(f"svdfaiss-bench-{engine}", cap)
        try:
            runs[engine] = run_bounded(cmd, cap, args.timeout, env, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()
        print(f"   {runs[engine]['ended']}, {runs[engine]['wall_s']} s, peak "
              f"{runs[engine]['peak_tree_pss_gb']} GB {runs[engine]['peak_pss_gb_by_role']}",
              flush=True)
    ratio = None
    if all(runs.get(e, {}).get("ended") == "finished" for e in ("native", "spark")):
        ratio = round(runs["spark"]["wall_s"] / runs["native"]["wall_s"], 2)
        s_n, s_s = runs["native"]["singular_values"], runs["spark"]["singular_values"]
        runs["spark"]["singular_values_max_rel_diff"] = max(
            abs(a - b) / a for a, b in zip(s_n, s_s, strict=True))
    print(f"\n{'engine':8} {'ended':28} {'wall s':>8} {'peak GB':>8}")
    for engine, run in runs.items():
        print(f"{engine:8} {run['ended'][:28]:28} {run['wall_s']:>8} "
              f"{run['peak_tree_pss_gb']:>8}")
    if ratio is not None:
        print(f"spark / native wall time: {ratio}x")
    write_result(args.json, machine=f"{platform.platform()}, {os.cpu_count()} cpus (shared)",
                 input={"path": str(events), "bytes": events.stat().st_size,
                        "users": args.users, "items": args.items, "events": args.events},
                 k=args.k, memory_cap_gb=args.memory_cap_gb,
                 cap_enforced_by="cgroup" if args.cgroup else "sampled PSS",
                 build_args=args.build_args, spark_master=args.spark_master,
                 spark_driver_memory=args.spark_driver_memory,
                 spark_submit_args=args.spark_submit_args, runs=runs,
                 spark_over_native_wall=ratio)


if __name__ == "__main__":
    main()
