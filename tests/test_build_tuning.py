"""The build's own tuning (svdfaiss.autotune): recorded, never overriding a flag, off with
--no-tune, skipped above the budget, deterministic, and validated on the build's rows only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from svdfaiss import autotune
from svdfaiss.builder import DEFAULT_SHRINKAGE, BuildConfig, auto_k, build
from svdfaiss.data import ReadOptions, build_interactions, read_log
from svdfaiss.evaluation import fit_svd, holdout_split, ranking_metrics, recommend_all
from svdfaiss.synthetic import SampleFiles, SampleSpec, write_sample
from tests.conftest import invoke
from tests.helpers import shared_file

PARAMS = ("k", "weighting", "beta", "shrinkage")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SampleFiles:
    """A small generated log (600 users, 300 items): tuned in about a second."""
    return write_sample(SampleSpec(users=600, items=300, events=15_000),
                        tmp_path_factory.mktemp("small"))


def matrix_of(path: Path):  # type: ignore[no-untyped-def]
    return build_interactions(read_log(path, ReadOptions()), 1, 1, "last")


def built(manifest: dict) -> dict:  # type: ignore[type-arg]
    p = manifest["parameters"]
    return {"k": p["k"], "weighting": p["weighting"]["scheme"],
            "beta": p["weighting"]["beta"], "shrinkage": p["shrinkage"]}


def test_build_records_the_tuning_and_builds_the_choice_on_all_rows(small, tmp_path):
    report = build(BuildConfig(input=small.events, model="m", index_dir=tmp_path,
                               user_index=None))
    tuning = report.manifest["tuning"]
    assert tuning["status"] == "tuned" and tuning["given"] == {}
    assert tuning["tuned"] == list(PARAMS)
    grid = tuning["grid"]
    assert grid == {"k": [128, 64, 256], "weighting": ["log", "binary"], "beta": [0.0],
                    "shrinkage": [30.0, 10.0, 100.0]}
    assert len(tuning["trials"]) == 3 * 2 * 1 * 3
    best = max(tuning["trials"], key=lambda t: t["ndcg@10"])
    assert tuning["chosen"] == {n: best[n] for n in PARAMS}
    assert tuning["validation_ndcg@10"] == best["ndcg@10"]
    assert tuning["defaults_validation_ndcg@10"] <= best["ndcg@10"]
    assert tuning["validation"]["seed"] == 43 and tuning["validation"]["users"] > 100
    assert tuning["seconds"] > 0 and "tune" in report.manifest["timings_seconds"]
    assert built(report.manifest) == tuning["chosen"]  # the published model uses them
    assert report.manifest["parameters"]["k_requested"] == "auto"
    # ...fitted on every row: the bundle holds all interactions, not the validation train
    inter = matrix_of(small.events)
    assert report.manifest["counts"]["interactions"] == inter.matrix.nnz
    on_disk = json.loads((report.path / "manifest.json").read_text())
    assert on_disk["tuning"]["chosen"] == tuning["chosen"]


def test_a_given_flag_is_never_overridden_and_the_rest_is_tuned(small, tmp_path, cli):
    result = invoke(cli, ["build", str(small.events), "--out", str(tmp_path), "--model", "m",
                          "--k", "16", "--weighting", "binary", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    tuning = manifest["tuning"]
    assert tuning["status"] == "tuned"
    assert tuning["given"] == {"k": 16, "weighting": "binary"}
    assert tuning["grid"]["k"] == [16] and tuning["grid"]["weighting"] == ["binary"]
    assert tuning["tuned"] == ["beta", "shrinkage"]
    assert manifest["parameters"]["k"] == 16 and manifest["parameters"]["k_requested"] == 16
    assert manifest["parameters"]["weighting"]["scheme"] == "binary"
    assert manifest["parameters"]["shrinkage"] in (10.0, 30.0, 100.0)

    shrunk = build(BuildConfig(input=small.events, model="s", index_dir=tmp_path,
                               shrinkage=0.0, beta=0.25, user_index=None))
    assert shrunk.manifest["tuning"]["grid"]["shrinkage"] == [0.0]
    assert shrunk.manifest["tuning"]["grid"]["beta"] == [0.25]
    assert built(shrunk.manifest)["shrinkage"] == 0.0
    assert built(shrunk.manifest)["beta"] == 0.25


def test_every_tuned_flag_given_skips_the_tuning(small, tmp_path):
    report = build(BuildConfig(input=small.events, model="m", index_dir=tmp_path, k=8,
                               weighting="none", shrinkage=5.0, user_index=None))
    tuning = report.manifest["tuning"]
    assert tuning["status"] == "skipped" and "all given" in tuning["reason"]
    assert built(report.manifest) == {"k": 8, "weighting": "none", "beta": 0.0,
                                      "shrinkage": 5.0}


def test_no_tune_gives_todays_defaults_exactly(small, tmp_path, cli):
    result = invoke(cli, ["build", str(small.events), "--out", str(tmp_path), "--model",
                          "off", "--no-tune", "--version", "v1"])
    assert result.exit_code == 0, result.output
    assert "tuning" in result.output and "--no-tune" in result.output
    fixed = build(BuildConfig(input=small.events, model="fixed", index_dir=tmp_path,
                              k=auto_k(600, 300), weighting="log", beta=0.0,
                              shrinkage=DEFAULT_SHRINKAGE, version="v1"))
    off = json.loads((tmp_path / "off" / "v1" / "manifest.json").read_text())
    assert off["tuning"]["status"] == "off" and off["tuning"]["reason"] == "--no-tune"
    assert built(off) == built(fixed.manifest) == {
        "k": 128, "weighting": "log", "beta": 0.0, "shrinkage": DEFAULT_SHRINKAGE}
    for name in ("item_factors.npy", "fold_factors.npy", "item_vectors.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "off" / "v1" / name),
                                      np.load(fixed.path / name))


def test_a_log_above_the_budget_keeps_the_defaults_and_prints_why(small, tmp_path, cli,
                                                                   monkeypatch):
    monkeypatch.setattr(autotune, "MAX_INTERACTIONS", 1_000)
    result = invoke(cli, ["build", str(small.events), "--out", str(tmp_path), "--model", "m",
                          "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    tuning = manifest["tuning"]
    assert tuning["status"] == "skipped"
    assert "above the tuning budget of 1,000" in tuning["reason"]
    assert built(manifest) == {"k": 128, "weighting": "log", "beta": 0.0, "shrinkage": 30.0}
    table = invoke(cli, ["build", str(small.events), "--out", str(tmp_path), "--model", "m"])
    assert "skipped" in table.output and "tuning budget" in table.output


def test_too_few_users_to_validate_keeps_the_defaults(tmp_path):
    log = tmp_path / "tiny.csv"
    log.write_text("user,item\n" + "".join(f"u{u},i{(u + j) % 7}\n"
                                           for u in range(12) for j in range(5)))
    report = build(BuildConfig(input=log, model="m", index_dir=tmp_path, user_index=None))
    assert report.manifest["tuning"]["status"] == "skipped"
    assert "users have 5 or more" in report.manifest["tuning"]["reason"]


def test_the_choice_is_deterministic_for_a_seed(small):
    inter = matrix_of(small.events)
    config = BuildConfig(input=small.events, model="m", index_dir=Path("."))
    first = autotune.tune_matrix(inter.matrix, inter.feedback, config).record
    again = autotune.tune_matrix(inter.matrix, inter.feedback, config).record
    assert first["trials"] == again["trials"] and first["chosen"] == again["chosen"]
    other = autotune.tune_matrix(inter.matrix, inter.feedback,
                                 BuildConfig(input=small.events, model="m",
                                             index_dir=Path("."), seed=1)).record
    assert other["validation"]["seed"] == 44


def test_validation_is_carved_from_the_given_rows_and_samples_users_above_the_cap(small):
    matrix = matrix_of(small.events).matrix
    split = autotune.validation_split(matrix, 43)
    reference = holdout_split(matrix, seed=43)
    assert (split.train != reference.train).nnz == 0  # under the cap: the protocol's split
    capped = autotune.validation_split(matrix, 43, max_users=50)
    assert capped.test_users.size == 50
    held = matrix - capped.train
    assert held.nnz == sum(len(t) for t in capped.test_items)
    assert (capped.train.multiply(matrix) != capped.train.multiply(capped.train)).nnz == 0
    for user, items in zip(capped.test_users, capped.test_items, strict=True):
        assert set(items) <= set(matrix[user].indices)


def test_the_fast_validation_ndcg_is_the_protocols(small):
    matrix = matrix_of(small.events).matrix
    split = autotune.validation_split(matrix, 43)
    judge = autotune._Judge(split)
    for k, scheme, shrinkage in ((32, "log", 30.0), (64, "binary", 0.0)):
        model = fit_svd(split.train, k, scheme, 0.0, shrinkage)
        fast = judge.ndcg(model.queries(split.train[split.test_users]), model.embedding.items)
        ranked = recommend_all(model.scorer(split.train), split.train, split.test_users, 10)
        assert fast == pytest.approx(ranking_metrics(ranked, split.test_items, (10,))[
            "ndcg@10"], abs=1e-4)


def test_the_tuning_svd_matches_the_builders(small):
    matrix = matrix_of(small.events).matrix.astype(np.float32)
    exact = autotune._factors(matrix, 20, 0)
    ref = fit_svd(matrix, 20, "none", 0.0).factors
    np.testing.assert_allclose(exact.singular_values, ref.singular_values, rtol=1e-3)
    # the same subspace: |V_exact^T V_ref| is the identity up to signs
    overlap = np.abs(exact.item_factors.T.astype(np.float64) @ ref.item_factors)
    np.testing.assert_allclose(np.diag(overlap)[:10], 1.0, atol=1e-3)


@pytest.mark.shared_data
@pytest.mark.slow
def test_movielens_default_build_chooses_a_larger_k_and_log_weighting(tmp_path):
    ratings = shared_file("ml-latest-small", "ratings.csv")
    report = build(BuildConfig(input=ratings, model="ml", index_dir=tmp_path,
                               user_index=None, similar_cache=0))
    tuning = report.manifest["tuning"]
    assert tuning["status"] == "tuned" and tuning["validation"]["users"] == 610
    assert tuning["chosen"] == {"k": 256, "weighting": "log", "beta": 0.0, "shrinkage": 30.0}
    assert tuning["validation_ndcg@10"] > tuning["defaults_validation_ndcg@10"]
