"""A/B tests: stable hash assignment with the configured weights, several models served at
once, the `model` override, and variants in responses, /readyz and /metrics."""

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.config import Settings
from svdfaiss.errors import InvalidInput
from svdfaiss.experiment import Experiment, ExperimentConfig, Variant, read_experiment
from svdfaiss.recommender import Recommender

from .helpers import server


def _experiment(name: str = "exp", weights: tuple[float, ...] = (0.7, 0.2, 0.1)) -> Experiment:
    return Experiment(ExperimentConfig(name=name, variants=[
        Variant(name=f"v{n}", model=f"m{n}", weight=w) for n, w in enumerate(weights)]))


def test_assignment_splits_100k_users_within_1_percent_of_the_weights():
    experiment = _experiment()
    users = [f"user-{n}" for n in range(100_000)]
    counts = {v.name: 0 for v in experiment.variants}
    for user in users:
        counts[experiment.assign(user).name] += 1
    shares = np.array([counts[f"v{n}"] for n in range(3)]) / len(users)
    assert np.all(np.abs(shares - [0.7, 0.2, 0.1]) < 0.01), shares
    # Another experiment name reshuffles users independently of this one.
    other = _experiment("another")
    same = sum(experiment.assign(u).name == other.assign(u).name for u in users[:20_000])
    assert abs(same / 20_000 - (0.7**2 + 0.2**2 + 0.1**2)) < 0.02


def test_assignment_is_stable_across_processes():
    """A restart must not move users: the hash is SHA-256, not Python's salted hash()."""
    users = [f"user-{n}" for n in range(2000)]
    here = [_experiment().assign(u).name for u in users]
    script = ("import json, sys\n"
              "from svdfaiss.experiment import Experiment, ExperimentConfig, Variant\n"
              "e = Experiment(ExperimentConfig(name='exp', variants=[Variant(name=f'v{n}', "
              "model=f'm{n}', weight=w) for n, w in enumerate((0.7, 0.2, 0.1))]))\n"
              "print(json.dumps([e.assign(f'user-{n}').name for n in range(2000)]))\n")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}, check=True)
        assert json.loads(out.stdout) == here


def test_bad_experiments_are_refused_with_the_reason(tmp_path):
    with pytest.raises(InvalidInput, match="2 weights for 3 models"):
        Settings(models=["a", "b", "c"], weights=[1, 2]).resolved_experiment()
    with pytest.raises(InvalidInput, match="greater than 0"):
        Settings(models=["a", "b"], weights=[1, 0]).resolved_experiment()
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"name": "x", "variants": [
        {"name": "a", "model": "m", "weight": 1}, {"name": "a", "model": "n"}]}))
    with pytest.raises(InvalidInput, match=r"exp.json: .*variant names must differ"):
        read_experiment(path)
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"exp\.json: not JSON"):
        read_experiment(path)
    assert Settings(model="solo").resolved_experiment().variants == [
        Variant(name="solo", model="solo", weight=1.0)]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, sample):
    index_dir = tmp_path_factory.mktemp("ab")
    for model, k in (("control", 16), ("treatment", 48)):
        build(BuildConfig(input=sample.events, model=model, index_dir=index_dir, k=k,
                          catalog=sample.catalog))
    return index_dir


def test_two_models_served_by_user_hash_with_override_and_metrics(two_models, tmp_path):
    experiment = Experiment(ExperimentConfig(name="ranking", variants=[
        Variant(name="control", model="control", weight=0.5),
        Variant(name="treatment", model="treatment", weight=0.5)]))
    recs = {m: Recommender.load(two_models, m) for m in ("control", "treatment")}
    users = [u.decode() for u in recs["control"].user_ids[:40]]
    args = ["--model", "treatment", "--weight", "0.5", "--weight", "0.5",
            "--experiment", "ranking"]
    settings = {"SVDFAISS_EVENTS_LOG": str(tmp_path / "events.jsonl")}
    with server(two_models, model="control", extra_args=args, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        ready = client.get("/readyz").json()
        assert ready["experiment"] == "ranking"
        assert [(v["variant"], v["version"] is not None) for v in ready["variants"]] == [
            ("control", True), ("treatment", True)]
        seen = set()
        for user in users:
            body = client.get(f"/users/{user}/recommendations", params={"k": 5}).json()
            variant = experiment.assign(user).name
            seen.add(variant)
            assert body["variant"] == variant and body["model"] == variant
            assert [i["item_id"] for i in body["items"]] == recs[variant].recommend(user, 5).ids
        assert seen == {"control", "treatment"}
        forced = client.get(f"/users/{users[0]}/recommendations",
                            params={"model": "treatment"}).json()
        assert forced["variant"] == "treatment" and forced["model"] == "treatment"
        item = recs["control"].item_ids[0].decode()
        anonymous = client.get(f"/items/{item}/similar").json()  # the fast path: control
        assert anonymous["variant"] == "control"
        viewer = next(u for u in users if experiment.assign(u).name == "treatment")
        assert client.get(f"/items/{item}/similar",
                          params={"user_id": viewer}).json()["variant"] == "treatment"
        basket = client.post("/recommendations", json={"item_ids": [item],
                                                       "user_id": viewer}).json()
        assert basket["variant"] == "treatment"
        unknown = client.get(f"/users/{users[0]}/recommendations", params={"model": "nope"})
        assert unknown.status_code == 422 and "not served" in unknown.text
        metrics = client.get("/metrics").text
        counted = {v: sum(experiment.assign(u).name == v for u in users) for v in seen}
        line = ('svdfaiss_variant_requests_total{experiment="ranking",model="treatment",'
                'variant="treatment"}')
        assert f"{line} {counted['treatment'] + 3}.0" in metrics, metrics
        for model in ("control", "treatment"):  # each model's own load figures
            assert f'svdfaiss_bundle_load_seconds{{model="{model}"}}' in metrics
        assert client.get("/model", params={"model": "treatment"}).json()[
            "parameters"]["k"] == 48
        # A batch assigns each user their own variant, as one request would.
        batch = client.post("/batch/recommendations",
                            json={"user_ids": [*users[:10], "nobody"], "k": 5}).json()
        assert batch["variant"] == "control"
        for entry in batch["results"][:10]:
            variant = experiment.assign(entry["id"]).name
            assert (entry["variant"], entry["model"]) == (variant, variant)
            assert entry["version"] == recs[variant].version
            assert [i["item_id"] for i in entry["items"]] == recs[variant].recommend(
                entry["id"], 5).ids
        assert {e["variant"] for e in batch["results"][:10]} == {"control", "treatment"}
        assert "error" in batch["results"][10]
        forced_batch = client.post("/batch/recommendations", json={
            "user_ids": users[:3], "model": "treatment"}).json()
        assert forced_batch["variant"] == "treatment"
        assert all("variant" not in e for e in forced_batch["results"])
        after = client.get("/metrics").text
        batch_treatment = sum(experiment.assign(u).name == "treatment"
                              for u in [*users[:10], "nobody"])
        value = float(next(x for x in after.splitlines() if x.startswith(line)).split()[-1])
        # before: the first count; then GET /model?model=treatment, the batch's treatment
        # users, and the forced batch (one request of its variant)
        assert value == counted["treatment"] + 3 + 1 + batch_treatment + 1, value
