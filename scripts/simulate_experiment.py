"""A simulated A/B experiment through the real server: does the report name the better model?

    python scripts/simulate_experiment.py --users 1000 --json docs/results/experiment.json

A generated population (`svdfaiss.synthetic.taste_population`): every user prefers one of 10
categories and clicks an item shown with probability 0.12 when it is of that category, 0.03
otherwise. Two models of the same users and items: `noise` (the control) learnt from random
purchases, `tastes` from purchases of each user's favourite category. Both are served as an
experiment at 50/50; each simulated user asks for 10 recommendations (half of them twice),
views the list with probability 0.9 (a view event), clicks with the true preference, buys a
clicked item half of the time (events with the answer's recommendation_id) and adds it to the
cart 30% of the time (without the id: attributed by assignment). The report
(`GET /experiments/sim`) is read after every `--step` users, as a team reading it daily
would, and the first reading whose always-valid interval excludes zero is printed. Then the
same traffic on a server whose assignment is skewed (65/35, while the design says 50/50):
the report read against the design must flag a sample ratio mismatch. Bounded: one pass over
the users per server, 4 client threads.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import httpx  # noqa: E402

from results import write_result  # noqa: E402
from serving import free_port, wait_ready  # noqa: E402
from svdfaiss import outcomes  # noqa: E402
from svdfaiss.builder import BuildConfig, build  # noqa: E402
from svdfaiss.experiment import ExperimentConfig, Variant  # noqa: E402
from svdfaiss.synthetic import TastePopulation, taste_population  # noqa: E402

TYPES = ["view", "click", "add_to_cart", "purchase"]


def visit(url: str, population: TastePopulation, n: int, seed: int) -> None:
    """One simulated user's visit (see the module docstring)."""
    rng = random.Random(seed * 100_003 + n)
    user = population.users[n]
    with httpx.Client(base_url=url, timeout=30) as client:
        body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
        if n % 2:
            body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
        if rng.random() >= 0.9:
            return
        rid = body["recommendation_id"]

        def post(item: str, kind: str, with_id: bool = True) -> None:
            client.post("/events", json={"user_id": user, "item_id": item, "type": kind,
                                         **({"recommendation_id": rid} if with_id else {})}
                        ).raise_for_status()

        shown = [i["item_id"] for i in body["items"]]
        post(shown[0], "view")
        for item in shown:
            if rng.random() < population.click_probability(n, item):
                post(item, "click")
                if rng.random() < 0.3:
                    post(item, "add_to_cart", with_id=False)
                if rng.random() < 0.5:
                    post(item, "purchase")


def serve(index_dir: Path, events_log: Path, weights: tuple[float, float],
          ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    env.update(SVDFAISS_EVENTS_LOG=str(events_log), SVDFAISS_EXPOSURE_FLUSH_SECONDS="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir),
         "--model", "noise", "--model", "tastes", "--weight", str(weights[0]), "--weight",
         str(weights[1]), "--experiment", "sim", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/readyz", proc)
    return proc, url


def run(index_dir: Path, events_log: Path, population: TastePopulation, weights: tuple[
        float, float], step: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Serve, send every user's visit, read the report every `step` users."""
    proc, url = serve(index_dir, events_log, weights)
    readings = []
    try:
        with ThreadPoolExecutor(4) as pool:
            for start in range(0, len(population.users), step):
                block = range(start, min(start + step, len(population.users)))
                list(pool.map(lambda n: visit(url, population, n, seed), block))
                data = httpx.get(f"{url}/experiments/sim", timeout=60).json()
                readings.append({"users": block.stop, "report": data})
        return readings[-1]["report"], readings
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--step", type=int, default=200, help="read the report this often")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    population = taste_population(users=args.users, items=200, categories=10, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tastes, noise = population.write_logs(work / "logs", per_user=6, seed=args.seed)
        for name, path in (("noise", noise), ("tastes", tastes)):
            build(BuildConfig(input=path, model=name, index_dir=work / "ix", k=10,
                              tune=False))
        final, readings = run(work / "ix", work / "fair" / "events.jsonl", population,
                              (0.5, 0.5), args.step, args.seed)
        skewed, _ = run(work / "ix", work / "skew" / "events.jsonl", population, (0.65, 0.35),
                        len(population.users), args.seed + 1)
        design = ExperimentConfig(name="sim", variants=[
            Variant(name="noise", model="noise", weight=0.5),
            Variant(name="tastes", model="tastes", weight=0.5)])
        against_design = outcomes.report(design, work / "skew" / "noise.exposures.jsonl",
                                         work / "skew" / "events.jsonl", TYPES)
    print(f"experiment sim: {args.users} simulated users, control noise, 50/50")
    print(f"{'variant':<8} {'users':>5} {'answers':>7} {'type':<12} {'rate (95%)':<22} "
          f"{'lift (95%)':<26} {'difference, always valid':<24}")
    for variant in final["variants"]:
        for kind in TYPES:
            entry = variant["conversion"][kind]
            rate = f"{entry['rate']:.3f} ({entry['interval'][0]:.3f}-{entry['interval'][1]:.3f})"
            lift = diff = ""
            if "lift" in entry and entry["lift"] is not None:
                low, high = entry["lift_interval"] or (float("nan"), float("nan"))
                lift = f"{entry['lift']:+.2f} ({low:+.2f} to {high:+.2f})"
                low, high = entry["always_valid_interval"]
                diff = f"{entry['difference']:+.3f} ({low:+.3f} to {high:+.3f})"
            print(f"{variant['variant']:<8} {variant['users']:>5} {variant['answers']:>7} "
                  f"{kind:<12} {rate:<22} {lift:<26} {diff:<24}")
    ratio = final["sample_ratio"]
    print(f"sample ratio: users {ratio['users']}, p {ratio['p_value']:.3g}, "
          f"mismatch {ratio['mismatch']}")
    for verdict in final["verdicts"]:
        first = next((r["users"] for r in readings for v in r["report"]["verdicts"]
                      if v["type"] == verdict["type"] and v["better_always_valid"]), None)
        print(f"{verdict['type']:<12} better (fixed): {verdict['better_fixed']}, better "
              f"(always valid): {verdict['better_always_valid']}, first reading excluding "
              f"zero: {first} users")
    srm = against_design["sample_ratio"]
    print(f"skewed assignment (served 65/35, design 50/50): users {srm['users']}, chi2 "
          f"{srm['chi2']:.1f}, p {srm['p_value']:.3g}, mismatch {srm['mismatch']}; against "
          f"its own weights: p {skewed['sample_ratio']['p_value']:.3g}")
    write_result(args.json, users=args.users, step=args.step, seed=args.seed, report=final,
                 readings=[{"users": r["users"], "verdicts": r["report"]["verdicts"]}
                           for r in readings],
                 skewed_against_design=srm, skewed_own=skewed["sample_ratio"])


if __name__ == "__main__":
    main()
