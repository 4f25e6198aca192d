"""What a recommendation id and an exposure cost the fast path, measured in process.

    python scripts/bench_exposures.py --calls 20000 --rounds 5 --json docs/results/exposures.json

HTTP throughput on this shared 2-core VM swings by several times within minutes, more than
the few microseconds at stake. So this drives `service.fastpath.FastPath` directly, as
uvicorn would call it, with no socket: the similar-items and recommendations fast paths
over the built-in sample, with exposure logging off (only the recommendation id) and on
(the id plus an exposure line buffered). The two are interleaved round by round, and the
median round's CPU microseconds per call is reported, with the ratio on/off. Also timed:
issuing an id alone, and the background flush (formatting every buffered line, one write
and one fsync), per line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from results import write_result  # noqa: E402
from serving import sample_bundle  # noqa: E402
from svdfaiss.config import Settings  # noqa: E402
from svdfaiss.experiment import ExposureLog, RecommendationIds, exposure_line  # noqa: E402
from svdfaiss.service.fastpath import FastPath  # noqa: E402
from svdfaiss.service.holders import Models  # noqa: E402
from svdfaiss.service.metrics import Metrics  # noqa: E402


def fast_path(index_dir: Path, model: str, exposures: str, work: Path) -> tuple[FastPath,
                                                                                Models]:
    settings = Settings(index_dir=index_dir, model=model, exposures=exposures,  # type: ignore[arg-type]
                        exposures_log=work / f"exposures-{exposures}.jsonl", live_users=0)
    models = Models(settings, Metrics())
    asyncio.run(models.reload())

    async def fastapi(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError(f"not on the fast path: {scope['path']}")

    return FastPath(fastapi, models, settings, routes={}), models


def cpu_us_per_call(app: FastPath, paths: list[str], calls: int) -> float:
    async def send(message: Any) -> None:
        return None

    async def loop() -> None:
        for n in range(calls):
            scope = {"type": "http", "method": "GET", "path": paths[n % len(paths)],
                     "query_string": b"k=10"}
            await app(scope, None, send)  # type: ignore[arg-type]

    start = time.process_time()
    asyncio.run(loop())
    return 1e6 * (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per route, setting, round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index_dir, users, items = sample_bundle(work, "bench")
        apps = {mode: fast_path(index_dir, "bench", mode, work) for mode in ("off", "on")}
        routes = {"GET /items/{id}/similar?k=10": [f"/items/{i}/similar" for i in items[:500]],
                  "GET /users/{id}/recommendations?k=10":
                      [f"/users/{u}/recommendations" for u in users[:500]]}
        runs: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for route, paths in routes.items():
                for mode, (app, models) in apps.items():
                    runs.setdefault((route, mode), []).append(
                        cpu_us_per_call(app, paths, args.calls))
                    if models.exposures is not None:
                        models.exposures.flush()
        ids = RecommendationIds()
        start = time.process_time()
        for _ in range(args.calls):
            ids.issue("control")
        issue_us = 1e6 * (time.process_time() - start) / args.calls
        log = ExposureLog(work / "flush.jsonl")
        exposure = (time.time(), "default", "control", "U0003", ids.issue("control"), False)
        line = exposure_line(*exposure)
        for _ in range(args.calls):
            log.record(*exposure)
        start = time.perf_counter()
        log.flush()
        flush_us = 1e6 * (time.perf_counter() - start) / args.calls
    rows = {}
    print(f"{'route':<38} {'CPU us, id only':>15} {'id + exposure':>13} {'ratio':>6}  rounds")
    for route in routes:
        off, on = sorted(runs[(route, "off")]), sorted(runs[(route, "on")])
        median_off, median_on = off[len(off) // 2], on[len(on) // 2]
        rows[route] = {"cpu_us_id_only": round(median_off, 2),
                       "cpu_us_with_exposure": round(median_on, 2),
                       "ratio": round(median_on / median_off, 3),
                       "rounds_id_only": [round(x, 2) for x in runs[(route, "off")]],
                       "rounds_with_exposure": [round(x, 2) for x in runs[(route, "on")]]}
        print(f"{route:<38} {median_off:>15.1f} {median_on:>13.1f} "
              f"{median_on / median_off:>6.3f}  off {rows[route]['rounds_id_only']} "
              f"on {rows[route]['rounds_with_exposure']}")
    print(f"issuing a recommendation id: {issue_us:.2f} us CPU; flushing exposures: "
          f"{flush_us:.2f} us wall a line ({args.calls} lines, one write and fsync)")
    write_result(args.json, calls=args.calls, rounds=args.rounds, rows=rows,
                 issue_id_cpu_us=round(issue_us, 3), flush_wall_us_per_line=round(flush_us, 3),
                 exposure_line_bytes=len(line))


if __name__ == "__main__":
    main()
