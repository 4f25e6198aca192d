"""Experiment outcomes (issue 17): attribution by recommendation id, the report's statistics,
a simulated experiment through the real server, and events surviving SIGKILL."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from scipy import integrate, stats

from svdfaiss import outcomes
from svdfaiss.builder import BuildConfig, build
from svdfaiss.experiment import ExperimentConfig, Variant
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import TastePopulation, taste_population

from .helpers import free_port, run_cli, server

TYPES = ["view", "click", "add_to_cart", "purchase"]


# ------------------------------------------------------------------ the statistics


def test_wilson_and_the_lift_interval_match_their_formulas():
    low, high = outcomes.wilson(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook case
    assert outcomes.wilson(0, 0) is None
    x, n, xc, nc = 60, 400, 40, 410
    lift = outcomes.lift_interval(x, n, xc, nc)
    # Katz: log RR +- z sqrt(1/x - 1/n + 1/xc - 1/nc)
    log_rr = math.log((x / n) / (xc / nc))
    half = stats.norm.ppf(0.975) * math.sqrt(1 / x - 1 / n + 1 / xc - 1 / nc)
    assert lift == pytest.approx((math.exp(log_rr - half) - 1, math.exp(log_rr + half) - 1))
    assert outcomes.lift_interval(0, 100, 5, 100) is None  # no log interval through zero


def test_the_always_valid_interval_is_where_the_mixture_likelihood_ratio_reaches_1_over_alpha():
    x, n, xc, nc, tau = 70, 500, 50, 480, 0.05
    result = outcomes.always_valid_difference(x, n, xc, nc, tau)
    assert result is not None
    p, pc = x / n, xc / nc
    v = p * (1 - p) / n + pc * (1 - pc) / nc

    def mixture_ratio(d0: float) -> float:
        """The mixture over N(0, tau^2) of the normal likelihood ratio, integrated."""
        estimate = p - pc

        def integrand(theta: float) -> float:
            return (math.exp((theta * (estimate - d0) - theta ** 2 / 2) / v)
                    * stats.norm.pdf(theta, 0, tau))

        return integrate.quad(integrand, -1, 1, points=[0.0])[0]

    assert mixture_ratio(result["low"]) == pytest.approx(20.0, rel=1e-3)
    assert mixture_ratio(result["high"]) == pytest.approx(20.0, rel=1e-3)
    assert result["p_value"] == pytest.approx(min(1.0, 1 / mixture_ratio(0.0)), rel=1e-3)
    assert outcomes.always_valid_difference(0, 10, 0, 10, tau) is None  # no variance


def test_read_every_day_the_always_valid_interval_keeps_its_level_and_a_fixed_one_does_not():
    """A/A tests read after every 100 users per arm, 40 times: the fixed-horizon interval
    excludes the true difference (0) in far more than 5% of experiments; the mSPRT
    sequence in at most 5%."""
    rng = np.random.default_rng(7)
    runs, looks, step, rate = 300, 40, 100, 0.1
    z = stats.norm.ppf(0.975)
    fixed_wrong = sequential_wrong = 0
    for _ in range(runs):
        a = np.cumsum(rng.random(looks * step) < rate)
        b = np.cumsum(rng.random(looks * step) < rate)
        fixed = sequential = False
        for look in range(1, looks + 1):
            n = look * step
            x, xc = int(a[n - 1]), int(b[n - 1])
            p, pc = x / n, xc / n
            se = math.sqrt(p * (1 - p) / n + pc * (1 - pc) / n)
            fixed |= abs(p - pc) > z * se
            av = outcomes.always_valid_difference(x, n, xc, n, tau=0.05)
            sequential |= av is not None and (av["low"] > 0 or av["high"] < 0)
        fixed_wrong += fixed
        sequential_wrong += sequential
    assert fixed_wrong / runs > 0.15, fixed_wrong
    assert sequential_wrong / runs <= 0.05, sequential_wrong


def test_the_sample_ratio_check_flags_a_skew_and_passes_a_fair_split():
    fair = outcomes.sample_ratio([498, 502], [0.5, 0.5])
    assert fair is not None and not fair["mismatch"]
    skewed = outcomes.sample_ratio([560, 440], [1, 1])
    assert skewed is not None and skewed["mismatch"] and skewed["p_value"] < 0.001
    assert not outcomes.sample_ratio([700, 300], [0.7, 0.3])["mismatch"]  # type: ignore[index]
    assert outcomes.sample_ratio([5], [1]) is None


def test_the_report_counts_from_the_logs_and_skips_a_torn_line(tmp_path, caplog):
    config = ExperimentConfig(name="e", variants=[Variant(name="a", model="m"),
                                                  Variant(name="b", model="n")])
    exposures, events = tmp_path / "x.jsonl", tmp_path / "e.jsonl"

    def exposure(t, variant, user, **extra):
        return {"time": t, "experiment": "e", "variant": variant, "user_id": user,
                "recommendation_id": f"{variant}:r{t}", **extra}

    def event(t, variant, user, kind):
        return {"user_id": user, "item_id": "i", "weight": 1.0, "time": t,
                "known_item": True, "type": kind, "experiment": "e", "variant": variant}

    rows = [exposure(1, "a", "u1"), exposure(2, "a", "u1"), exposure(3, "a", "u2"),
            exposure(4, "a", None), exposure(5, "b", "u3"),
            exposure(6, "b", "u4", forced=True), {**exposure(7, "a", "u9"),
                                                  "experiment": "other"}]
    exposures.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    lines = [event(10, "a", "u1", "click"), event(11, "a", "u1", "click"),
             event(0.5, "a", "u2", "click"),  # before u2's first exposure: no conversion
             event(12, "b", "u3", "purchase"), event(13, "b", "u7", "click"),  # unexposed
             {**event(14, "a", "u2", "click"), "experiment": "other"},
             {**event(15, "a", "u2", "view"), "type": None}]
    events.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines)
                       + b'{"user_id": "u2", "item_id": "i", "wei')
    with caplog.at_level("WARNING", logger="svdfaiss.outcomes"):
        data = outcomes.report(config, exposures, events, TYPES)
    a, b = data["variants"]
    assert (a["users"], a["answers"], a["anonymous_answers"], a["forced_answers"]) == (2, 4, 1,
                                                                                      0)
    assert (b["users"], b["answers"], b["forced_answers"]) == (1, 2, 1)
    assert a["events"] == {"click": 3, "none": 1} and b["events"] == {"click": 1,
                                                                       "purchase": 1}
    assert a["conversion"]["click"]["users"] == 1 and a["conversion"]["click"]["rate"] == 0.5
    assert b["conversion"]["purchase"]["users"] == 1 and b["events_without_exposure"] == 1
    assert data["skipped"]["events"]["lines"] == 1
    assert "e.jsonl, line 8: not valid JSON" in data["skipped"]["events"]["examples"][0]
    assert "line 8" in caplog.text


# ------------------------------------------------------------------ the simulated experiment


@pytest.fixture(scope="module")
def population() -> TastePopulation:
    return taste_population(users=600, items=200, categories=10, seed=3)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, population) -> Path:
    """`noise` learnt from random purchases (the control), `tastes` from the true tastes."""
    root = tmp_path_factory.mktemp("sim")
    tastes, noise = population.write_logs(root / "logs", per_user=6, seed=3)
    for name, path in (("noise", noise), ("tastes", tastes)):
        build(BuildConfig(input=path, model=name, index_dir=root / "ix", k=10, tune=False))
    return root / "ix"


EXPERIMENT_ARGS = ["--model", "tastes", "--weight", "0.5", "--weight", "0.5",
                   "--experiment", "sim"]


def _settings(tmp_path: Path) -> dict[str, str]:
    return {"SVDFAISS_EVENTS_LOG": str(tmp_path / "events.jsonl"),
            "SVDFAISS_EXPOSURE_FLUSH_SECONDS": "0.2"}


def test_every_answer_carries_a_unique_id_and_events_are_attributed_by_it(two_models,
                                                                          tmp_path):
    recs = {m: Recommender.load(two_models, m) for m in ("noise", "tastes")}
    item = recs["noise"].item_ids[0].decode()
    with server(two_models, model="noise", extra_args=EXPERIMENT_ARGS,
                settings=_settings(tmp_path)) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        answers = [client.get("/users/S00001/recommendations", params={"k": 3}),  # fast path
                   client.get("/users/S00001/recommendations", params={"k": 3, "mode": "cf"}),
                   client.get(f"/items/{item}/similar"),  # fast path, no user: control
                   client.get(f"/items/{item}/similar", params={"mode": "cf"}),
                   client.get("/users/S00001/similar"),
                   client.get(f"/users/S00001/items/{item}/score"),
                   client.post("/recommendations", json={"item_ids": [item],
                                                         "user_id": "S00001"})]
        ids = [a.json()["recommendation_id"] for a in answers]
        batch = client.post("/batch/recommendations", json={
            "user_ids": ["S00001", "S00002", "S00003", "S00004"], "k": 2}).json()
        ids += [e["recommendation_id"] for e in batch["results"]]
        assert len(set(ids)) == len(ids) == 11
        for answer, rid in zip(answers, ids, strict=False):
            assert rid.startswith(answer.json()["variant"] + ":")
        for entry in batch["results"]:
            assert entry["recommendation_id"].startswith(entry["variant"] + ":")
        user = "S00001"
        own = answers[0].json()["variant"]
        other = next(v for v in ("noise", "tastes") if v != own)
        forced = client.get(f"/users/{user}/recommendations",
                            params={"model": other, "k": 3}).json()
        assert forced["variant"] == other
        # By the id: the variant that gave the answer, not the user's assignment.
        by_id = client.post("/events", json={"user_id": user, "item_id": item,
                                             "type": "click",
                                             "recommendation_id": forced["recommendation_id"]})
        assert by_id.status_code == 200, by_id.text
        assert by_id.json()["attributed_to"] == other and by_id.json()["variant"] == own
        plain = client.post("/events", json={"user_id": user, "item_id": item,
                                             "type": "purchase"})
        assert plain.json()["attributed_to"] == own  # no id: the assignment
        untyped = client.post("/events", json={"user_id": user, "item_id": item})
        assert untyped.status_code == 200 and untyped.json()["type"] is None
        bad_type = client.post("/events", json={"user_id": user, "item_id": item,
                                                "type": "clik"})
        assert bad_type.status_code == 422
        assert "'view', 'click', 'add_to_cart' or 'purchase'" in bad_type.text
        for rid in ("nobody:123", "no-separator", f"{own}:"):
            bad = client.post("/events", json={"user_id": user, "item_id": item,
                                               "recommendation_id": rid})
            assert bad.status_code == 422 and "not issued by experiment 'sim'" in bad.text
        assert client.get("/experiments/another").status_code == 404
        metrics = client.get("/metrics").text
        for variant, kind in ((other, "click"), (own, "purchase"), (own, "none")):
            assert (f'svdfaiss_experiment_events_total{{experiment="sim",type="{kind}",'
                    f'variant="{variant}"}} 1.0') in metrics, (variant, kind)
        report = client.get("/experiments/sim").json()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 3  # the refused events were not logged
    assert [(e.get("type"), e["variant"], e.get("recommendation_id")) for e in lines] == [
        ("click", other, forced["recommendation_id"]), ("purchase", own, None),
        (None, own, None)]
    exposures = [json.loads(x) for x in (tmp_path / "noise.exposures.jsonl").read_text(
        ).splitlines()]
    assert sorted(e["recommendation_id"] for e in exposures) == sorted(
        [*ids, forced["recommendation_id"]])
    assert [e for e in exposures if e.get("forced")] == [
        e for e in exposures if e["recommendation_id"] == forced["recommendation_id"]]
    by_name = {v["variant"]: v for v in report["variants"]}
    assert sum(v["answers"] for v in by_name.values()) == 12
    assert by_name[own]["events"] == {"purchase": 1, "none": 1}
    assert by_name[other]["events"] == {"click": 1}


@pytest.mark.slow
def test_two_workers_log_to_one_place_and_report_the_same_figures(two_models, population,
                                                                   tmp_path):
    """Each worker buffers its own exposures and appends them to the shared log; whichever
    worker answers GET /experiments reads the same figures."""
    users = population.users[:80]
    with server(two_models, model="noise", extra_args=[*EXPERIMENT_ARGS, "--workers", "2"],
                settings=_settings(tmp_path), start_seconds=120) as url:
        for user in users:  # a fresh connection each: the workers share them out
            body = httpx.get(f"{url}/users/{user}/recommendations", timeout=10).json()
            answer = httpx.post(f"{url}/events", json={
                "user_id": user, "item_id": body["items"][0]["item_id"], "type": "click",
                "recommendation_id": body["recommendation_id"]}, timeout=10)
            assert answer.status_code == 200
        time.sleep(1.0)  # beyond SVDFAISS_EXPOSURE_FLUSH_SECONDS: every worker has flushed
        reports = [httpx.get(f"{url}/experiments/sim", timeout=30).json() for _ in range(6)]
    exposures = [json.loads(x) for x in (tmp_path / "noise.exposures.jsonl").read_text(
        ).splitlines()]
    tags = {e["recommendation_id"].split(":")[1][:12] for e in exposures}
    assert len(tags) == 2, tags  # both workers answered and logged
    for report in reports:
        assert report["variants"] == reports[0]["variants"]
    variants = reports[0]["variants"]
    assert sum(v["users"] for v in variants) == sum(v["answers"] for v in variants) == 80
    assert sum(v["conversion"]["click"]["users"] for v in variants) == 80


def _simulate(url: str, population: TastePopulation, seed: int,
              events: bool = True) -> dict[str, int]:
    """Every user asks for 10 recommendations (half of them twice), views the list with
    probability 0.9, clicks each item shown with the true preference, buys a clicked item
    half of the time, and adds it to the cart 30% of the time (sent without the id:
    attributed by assignment). `events=False`: answers only. Returns the requests made."""
    counts = {"answers": 0, "events": 0}

    def one(n: int) -> tuple[int, int]:
        rng = random.Random(seed * 100_003 + n)
        user = population.users[n]
        asked = posted = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
            asked += 1
            if n % 2:
                body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
                asked += 1
            rid = body["recommendation_id"]

            def post(item: str, kind: str, with_id: bool = True) -> None:
                nonlocal posted
                answer = client.post("/events", json={
                    "user_id": user, "item_id": item, "type": kind,
                    **({"recommendation_id": rid} if with_id else {})})
                assert answer.status_code == 200, answer.text
                posted += 1

            if not events or rng.random() >= 0.9:
                return asked, posted
            shown = [i["item_id"] for i in body["items"]]
            post(shown[0], "view")
            for item in shown:
                if rng.random() < population.click_probability(n, item):
                    post(item, "click")
                    if rng.random() < 0.3:
                        post(item, "add_to_cart", with_id=False)
                    if rng.random() < 0.5:
                        post(item, "purchase")
        return asked, posted

    with ThreadPoolExecutor(4) as pool:
        for asked, posted in pool.map(one, range(len(population.users))):
            counts["answers"] += asked
            counts["events"] += posted
    return counts


@pytest.mark.slow
def test_a_simulated_experiment_names_the_better_model_and_a_skew_trips_the_srm_check(
        two_models, population, tmp_path):
    settings = _settings(tmp_path)
    with server(two_models, model="noise", extra_args=EXPERIMENT_ARGS,
                settings=settings) as url:
        counts = _simulate(url, population, seed=1)
        served = httpx.get(f"{url}/experiments/sim", timeout=30).json()
    cli = run_cli(["experiment", "report", "--index-dir", str(two_models), "--model", "noise",
                   *EXPERIMENT_ARGS, "--events-log", settings["SVDFAISS_EVENTS_LOG"],
                   "--json", "--plot", str(tmp_path / "sim.png")])
    assert cli.returncode == 0, cli.stderr
    offline = json.loads(cli.stdout)
    assert offline["variants"] == served["variants"]  # the same figures offline
    assert (tmp_path / "sim.png").stat().st_size > 5_000
    noise, tastes = served["variants"]
    assert noise["users"] + tastes["users"] == len(population.users)
    assert noise["answers"] + tastes["answers"] == counts["answers"]
    assert sum(noise["events"].values()) + sum(tastes["events"].values()) == counts["events"]
    assert not served["sample_ratio"]["mismatch"]
    verdicts = {v["type"]: v for v in served["verdicts"]}
    for kind in ("click", "purchase", "add_to_cart"):
        entry = tastes["conversion"][kind]
        assert entry["lift_interval"][0] > 0 and entry["always_valid_interval"][0] > 0, kind
        assert verdicts[kind]["better_fixed"] == verdicts[kind]["better_always_valid"] \
            == "tastes"
    # Viewing does not depend on the model: no winner.
    assert verdicts["view"]["better_always_valid"] is None
    table = run_cli(["experiment", "report", "--index-dir", str(two_models), "--model",
                     "noise", *EXPERIMENT_ARGS, "--events-log",
                     settings["SVDFAISS_EVENTS_LOG"]])
    assert "click: tastes against noise: tastes is better" in table.stdout, table.stdout
    assert "sample ratio" in table.stdout and "MISMATCH" not in table.stdout

    # A deliberately skewed assignment: served at 65/35 while the design says 50/50.
    skew = tmp_path / "skew"
    skewed_args = ["--model", "tastes", "--weight", "0.65", "--weight", "0.35",
                   "--experiment", "sim"]
    with server(two_models, model="noise", extra_args=skewed_args,
                settings=_settings(skew)) as url:
        _simulate(url, population, seed=2, events=False)
        own = httpx.get(f"{url}/experiments/sim", timeout=30).json()["sample_ratio"]
    assert not own["mismatch"]  # against the weights it serves, the split is right
    design = run_cli(["experiment", "report", "--index-dir", str(two_models), "--model",
                      "noise", *EXPERIMENT_ARGS, "--events-log", str(skew / "events.jsonl"),
                      "--json"])
    ratio = json.loads(design.stdout)["sample_ratio"]
    assert ratio["mismatch"] and ratio["p_value"] < 0.001, ratio


# ------------------------------------------------------------------ SIGKILL


def _start(index_dir: Path, port: int, settings: dict[str, str],
           log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    env.update(settings)
    handle = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir), "--model",
         "noise", *EXPERIMENT_ARGS, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def _stream_and_kill(proc: subprocess.Popen[bytes], url: str, stream: list[tuple[str, str]],
                     kill_after: int) -> list[tuple[str, str] | None]:
    """POST the stream's click events from 4 clients; SIGKILL the server once `kill_after`
    were acknowledged. Each event, or None where it was not acknowledged."""
    acks = [0]
    due = threading.Event()
    lock = threading.Lock()

    def send(event: tuple[str, str]) -> tuple[str, str] | None:
        try:
            answer = httpx.post(f"{url}/events", json={
                "user_id": event[0], "item_id": event[1], "type": "click"}, timeout=5)
        except httpx.TransportError:
            return None
        if answer.status_code != 200:
            return None
        with lock:
            acks[0] += 1
            if acks[0] >= kill_after:
                due.set()
        return event

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, e) for e in stream]
        due.wait(60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return [f.result() for f in futures]


TRIALS = 5
EVENTS_PER_TRIAL = 60


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_event_and_applies_none_twice(
        two_models, population, tmp_path):
    """Trials: a stream of events (4 concurrent clients) while the server is SIGKILLed at a
    random moment (after a random number of acknowledged events); a restart on the same
    log. Every acknowledged event is in the log once,
    in the report once, and in the user's live row once (their recommendations are the
    fold-in of exactly the events logged for them); a torn last line is skipped with a
    warning and the next append starts on a line of its own."""
    rng = random.Random(17)
    settings = _settings(tmp_path)
    log_path = Path(settings["SVDFAISS_EVENTS_LOG"])
    server_log = tmp_path / "server.log"
    port = free_port()
    tastes = Recommender.load(two_models, "tastes")
    noise = Recommender.load(two_models, "noise")
    items = [i.decode() for i in noise.item_ids[:50]]
    acknowledged: list[tuple[str, str]] = []
    killed_mid_stream = 0
    proc = _start(two_models, port, settings, server_log)
    try:
        url = f"http://127.0.0.1:{port}"
        for trial in range(TRIALS):
            stream = [(f"K{trial}-{n % 12}", items[(trial * 7 + n) % len(items)])
                      for n in range(EVENTS_PER_TRIAL)]

            kill_after = rng.randrange(5, EVENTS_PER_TRIAL - 10)  # a random moment
            done = _stream_and_kill(proc, url, stream, kill_after)
            acknowledged += [e for e in done if e is not None]
            killed_mid_stream += sum(e is None for e in done) > 0
            if trial == TRIALS - 1:  # a kill in the middle of a write: a torn last line
                with log_path.open("ab") as handle:
                    handle.write(b'{"user_id": "K-torn", "item_id": "')
            proc = _start(two_models, port, settings, server_log)
        # After the last restart: one more acknowledged event lands on a line of its own.
        last = httpx.post(f"http://127.0.0.1:{port}/events", json={
            "user_id": "K-after", "item_id": items[0], "type": "click"}, timeout=5)
        assert last.status_code == 200
        acknowledged.append(("K-after", items[0]))
        logged = [json.loads(x) for x in log_path.read_bytes().splitlines()
                  if x.strip() and not x.startswith(b'{"user_id": "K-torn"')]
        pairs = [(e["user_id"], e["item_id"]) for e in logged]
        # Each acknowledged event is in the log; an event is logged once per send (sends
        # of one pair are counted together: several sends may share a pair).
        for pair in set(acknowledged):
            assert pairs.count(pair) >= acknowledged.count(pair), pair
        sent = {(f"K{t}-{n % 12}", items[(t * 7 + n) % len(items)]): 0 for t in range(TRIALS)
                for n in range(EVENTS_PER_TRIAL)}
        for t in range(TRIALS):
            for n in range(EVENTS_PER_TRIAL):
                sent[(f"K{t}-{n % 12}", items[(t * 7 + n) % len(items)])] += 1
        for pair, count in sent.items():
            assert pairs.count(pair) <= count, pair  # never applied twice
        warning = server_log.read_text()
        assert "skipped an unusable line" in warning, warning[-2000:]
        # Live rows after the restarts: exactly the logged events, once each.
        users = sorted({u for u, _ in acknowledged})
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for user in users:
                row: dict[str, float] = {}
                for u, i in pairs:
                    if u == user:
                        row[i] = row.get(i, 0.0) + 1.0
                body = client.get(f"/users/{user}/recommendations", params={"k": 5}).json()
                rec = tastes if body["variant"] == "tastes" else noise
                assert [x["item_id"] for x in body["items"]] == rec.recommend(
                    user, 5, live=row).ids, user
            report = client.get("/experiments/sim").json()
        counted = sum(v["events"].get("click", 0) for v in report["variants"])
        assert counted == len(logged)
        assert report["skipped"]["events"]["lines"] == 1
    finally:
        proc.kill()
        proc.wait(10)
    assert killed_mid_stream >= 1  # at least one kill hit the stream
    print(f"trials {TRIALS}, events acknowledged {len(acknowledged)}, logged {len(logged)}, "
          f"kills mid-stream {killed_mid_stream}")
