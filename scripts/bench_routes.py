"""Saturation throughput of the hot routes, with the fast path and without it, side by side.

    python scripts/bench_routes.py --seconds 5 --rounds 3 --json docs/results/routes.json
    python scripts/bench_routes.py --against ../svdfaiss-before   # a checkout of another commit

Builds the built-in sample and serves it twice (one worker each, one after the other on its
own port): with the fast path (the default) and with SVDFAISS_FAST_PATH=false, so every
request goes through FastAPI. Then `wrk -t1 -c4` on each route, rotating over 500 ids,
servers interleaved round by round so a slow spell of the VM falls on both. Needs `wrk`
(apt-get install wrk). Prints each (route, server)'s median round in requests/s and in
server CPU time per request (from /proc: steal, which swings this shared VM's throughput
by 4x within an hour, does not count there), with the ratios fast/FastAPI; writes JSON.
With `--against DIR` (another checkout, e.g. `git worktree add DIR COMMIT`), the same two
servers run from DIR/src too, interleaved with this tree's, and the ratios after/before are
printed: the way to show a refactor left the hot routes' cost unchanged. A bare FastAPI
endpoint answering a constant runs in the same rounds (`GET /bare`), and every route's
throughput is also given as a ratio to it. `--index-dir DIR --model NAME` serves an existing
bundle (its first 500 users and items) instead of the built-in sample. `--env KEY=VALUE`
(repeatable) sets a setting on every server, e.g. `--env SVDFAISS_EXPOSURES=on` to measure
exposure logging, which is otherwise on only with two or more variants.

Recommendations also run on a third server of this tree, the fast path with its answer cache
off (SVDFAISS_RECOMMENDATION_CACHE_MB=0): with 500 users in rotation, every request after
the first 500 is a cache hit on the fast path, so that row is what a user not asked for
recently costs: an array slice of the recommendations the build stored. A fourth server
(built-in sample only) serves the same sample built with `--stored-recommendations 0`, cache
off: every request searches, what a user with live events, or of a bundle without stored
rows, costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from results import write_result  # noqa: E402
from serving import free_port, sample_bundle, start_bare, wait_ready  # noqa: E402

RECOMMENDATIONS = "GET /users/{id}/recommendations?k=10"
NO_CACHE = "fast path, no cache"
COMPUTED = "fast path, no cache, no stored rows"

LUA = """local paths = {%s}
local n = #paths
local i = 0
request = function()
  i = i %% n + 1
  return wrk.format(nil, paths[i])
end
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: Path, seconds: int, pid: int) -> dict[str, float]:
    """One `wrk -t1 -c4` run: requests/s, the server's CPU microseconds per request and
    non-2xx answers."""
    before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rate, "cpu_us_per_request": 1e6 * used / max(1, count),
            "non_2xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per route, server, round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--against", type=Path,
                        help="another checkout whose src/ serves the same bundle alongside")
    parser.add_argument("--index-dir", type=Path, help="serve this folder's bundle instead")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every server of this tree and --against's, e.g. "
                        "SVDFAISS_EXPOSURES=on (exposure logging with one model served)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        computed_model = None
        if args.index_dir is None:
            index_dir, all_users, all_items = sample_bundle(work, args.model)
            from svdfaiss.builder import BuildConfig, build

            computed_model = f"{args.model}-computed"
            build(BuildConfig(input=work / "data" / "events.csv", model=computed_model,
                              index_dir=index_dir, catalog=work / "data" / "items.csv",
                              stored_recommendations=0))
        else:
            from svdfaiss.data import decode_ids
            from svdfaiss.recommender import Recommender

            index_dir = args.index_dir
            loaded = Recommender.load(index_dir, args.model, verify=False)
            all_users = decode_ids(loaded.user_ids[:500])
            all_items = decode_ids(loaded.item_ids[:500])
            del loaded
        users = all_users[:500]
        items = all_items[:500]
        routes = {
            "GET /bare (bare FastAPI)": ["/bare"],
            "GET /healthz": ["/healthz"],
            "GET /items/{id}/similar?k=10": [f"/items/{i}/similar?k=10" for i in items],
            RECOMMENDATIONS: [f"/users/{u}/recommendations?k=10" for u in users],
        }
        scripts = {}
        for n, (name, paths) in enumerate(routes.items()):
            scripts[name] = work / f"route{n}.lua"
            scripts[name].write_text(LUA % ",".join(json.dumps(p) for p in paths))
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
        env.update(dict(pair.split("=", 1) for pair in args.env))
        rows: dict[str, dict[str, Any]] = {}
        try:
            bare_port = free_port()
            bare = start_bare(work, bare_port, env)
            servers["bare FastAPI"] = (bare, f"http://127.0.0.1:{bare_port}")
            wait_ready(f"http://127.0.0.1:{bare_port}/bare", bare)
            trees = [("", HERE.parent / "src")]
            if args.against is not None:
                trees.append(("before: ", args.against.resolve() / "src"))
            kinds = [("fast path", {"SVDFAISS_FAST_PATH": "true"}),
                     ("FastAPI only", {"SVDFAISS_FAST_PATH": "false"})]
            flavours = [(t, f) for t in trees for f in kinds]
            no_cache = {"SVDFAISS_FAST_PATH": "true", "SVDFAISS_RECOMMENDATION_CACHE_MB": "0"}
            flavours.append((trees[0], (NO_CACHE, no_cache)))
            if computed_model is not None:
                flavours.append((trees[0], (COMPUTED, {**no_cache, "model": computed_model})))
            for (prefix, src), (server, settings) in flavours:
                server = prefix + server
                settings = dict(settings)
                model = settings.pop("model", args.model)
                port = free_port()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir),
                     "--model", model, "--port", str(port)],
                    env={**env, **settings, "PYTHONPATH": str(src)},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                servers[server] = (proc, f"http://127.0.0.1:{port}")
                wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            runs: dict[tuple[str, str], list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for route in routes:
                    for server, (proc, url) in servers.items():
                        if (server == "bare FastAPI") != route.startswith("GET /bare"):
                            continue  # the bare app has one route, and only it
                        if server in (NO_CACHE, COMPUTED) and route != RECOMMENDATIONS:
                            continue  # the cache serves recommendations only
                        runs.setdefault((route, server), []).append(
                            wrk(url, scripts[route], args.seconds, proc.pid))
            for (route, server), results in runs.items():
                rates = sorted(r["requests_per_s"] for r in results)
                cpu = sorted(r["cpu_us_per_request"] for r in results)
                rows.setdefault(route, {})[server] = {
                    "requests_per_s": rates[len(rates) // 2],
                    "cpu_us_per_request": round(cpu[len(cpu) // 2], 1),
                    "rounds": [r["requests_per_s"] for r in results],
                    "cpu_rounds": [round(r["cpu_us_per_request"], 1) for r in results],
                    "non_2xx": sum(int(r["non_2xx"]) for r in results)}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(15)
    print(f"{'route':<38} {'req/s fast':>10} {'FastAPI':>8} {'ratio':>6} "
          f"{'CPU us fast':>12} {'FastAPI':>8} {'ratio':>6} {'fast/bare':>9} non-2xx")
    bare_rate = rows["GET /bare (bare FastAPI)"]["bare FastAPI"]["requests_per_s"]
    print(f"{'GET /bare (bare FastAPI)':<38} {bare_rate:>10.0f}")
    for route, by_server in rows.items():
        if "bare FastAPI" in by_server:
            continue
        fast, slow = by_server["fast path"], by_server["FastAPI only"]
        errors = sum(s["non_2xx"] for s in by_server.values())
        print(f"{route:<38} {fast['requests_per_s']:>10.0f} {slow['requests_per_s']:>8.0f} "
              f"{fast['requests_per_s'] / slow['requests_per_s']:>6.2f} "
              f"{fast['cpu_us_per_request']:>12.0f} {slow['cpu_us_per_request']:>8.0f} "
              f"{fast['cpu_us_per_request'] / slow['cpu_us_per_request']:>6.2f} "
              f"{fast['requests_per_s'] / bare_rate:>9.2f} {errors}")
    for server in (NO_CACHE, COMPUTED):
        if server not in rows[RECOMMENDATIONS]:
            continue
        uncached = rows[RECOMMENDATIONS][server]
        print(f"{RECOMMENDATIONS + ', ' + server:<75} {uncached['requests_per_s']:>7.0f} "
              f"req/s {uncached['cpu_us_per_request']:>6.0f} CPU us "
              f"{uncached['requests_per_s'] / bare_rate:>5.2f} of bare")
    if args.against is not None:
        print(f"\n{'route':<38} {'server':<14} {'req/s after':>11} {'before':>8} {'ratio':>6} "
              f"{'CPU us after':>12} {'before':>8} {'ratio':>6}")
        for route, by_server in rows.items():
            if "bare FastAPI" in by_server:
                continue
            for server in ("fast path", "FastAPI only"):
                after, before = by_server[server], by_server["before: " + server]
                print(f"{route:<38} {server:<14} {after['requests_per_s']:>11.0f} "
                      f"{before['requests_per_s']:>8.0f} "
                      f"{after['requests_per_s'] / before['requests_per_s']:>6.2f} "
                      f"{after['cpu_us_per_request']:>12.0f} {before['cpu_us_per_request']:>8.0f}"
                      f" {after['cpu_us_per_request'] / before['cpu_us_per_request']:>6.2f}")
    write_result(args.json, seconds=args.seconds, rounds=args.rounds, wrk="-t1 -c4",
                 env=args.env,
                 against=None if args.against is None else str(args.against), rows=rows)


if __name__ == "__main__":
    main()
