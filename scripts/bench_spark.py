"""The native builder against `--engine spark` on one generated log, side by side in one run.

Generates an Amazon-shaped log (`svdfaiss synth`, 4.2M users, 476k items, 7.8M events by
default) unless it exists, then builds it twice with the same flags (`--no-tune --k K`):
natively, and on Spark (`--spark-master local[2]` by default). Each build runs as a child
process whose whole process tree (the JVM and Python workers included) is sampled every
0.2 s from /proc: the peak of its summed memory (PSS) is reported, and with
`--memory-cap-gb` a tree that goes above the cap is killed (the cap is the same rule for
both engines) and reported as "over the cap". `--timeout` bounds each build. Prints a table
and writes JSON. Linux only (reads /proc).

    python scripts/bench_spark.py --work /tmp/svdfaiss-bench --json docs/results/spark.json
    python scripts/bench_spark.py --users 420000 --items 47600 --events 780000 --k 32
"""

from __future__ import annotations

import argparse
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


def tree_rss(root: int) -> int:
    """Summed proportional set size (PSS: shared pages split among their sharers, so
    forked Python workers are not counted twice) of a process and all its descendants."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_bounded(cmd: list[str], cap_bytes: int | None, timeout: float,
                env: dict[str, str]) -> dict[str, Any]:
    """Run cmd in its own process group: wall seconds, peak tree RSS, and how it ended."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    peak, ended = 0, "finished"
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if cap_bytes is not None and peak > cap_bytes:
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
    if ended == "finished" and proc.returncode != 0:
        ended = f"failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}"
    result: dict[str, Any] = {"ended": ended, "wall_s": round(wall, 1),
                              "peak_tree_pss_gb": round(peak / 1e9, 2)}
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
    parser.add_argument("--memory-cap-gb", type=float)
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
    env = {**os.environ,
           "PYSPARK_SUBMIT_ARGS": f"--driver-memory {args.spark_driver_memory} pyspark-shell"}
    runs: dict[str, Any] = {}
    for engine in args.engines.split(","):
        index_dir = args.work / f"indexes-{engine}"
        cmd = [sys.executable, "-m", "svdfaiss", "build", str(events), "--model", "bench",
               "--out", str(index_dir), "--no-tune", "--k", str(args.k), "--json",
               "--engine", engine]
        if engine == "spark":
            cmd += ["--spark-master", args.spark_master]
        print(f"== {engine}: {' '.join(cmd)}", flush=True)
        runs[engine] = run_bounded(cmd, cap, args.timeout, env)
        print(f"   {runs[engine]['ended']}, {runs[engine]['wall_s']} s, peak "
              f"{runs[engine]['peak_tree_pss_gb']} GB", flush=True)
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
                 k=args.k, memory_cap_gb=args.memory_cap_gb, spark_master=args.spark_master,
                 spark_driver_memory=args.spark_driver_memory, runs=runs,
                 spark_over_native_wall=ratio)


if __name__ == "__main__":
    main()
