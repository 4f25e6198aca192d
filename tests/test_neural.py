"""Neural models (svdfaiss.neural): trained with PyTorch, served as inner products without it.

Skips without PyTorch (`pip install -e ".[neural]"`). The models here are tiny (a few
thousand parameters, a few epochs) so the module trains in seconds on 2 shared cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from svdfaiss import neural  # noqa: E402
from svdfaiss.builder import BuildConfig, build  # noqa: E402
from svdfaiss.data import decode_ids  # noqa: E402
from svdfaiss.errors import InvalidInput  # noqa: E402
from svdfaiss.neural import NeuralParams, train  # noqa: E402
from svdfaiss.recommender import Recommender  # noqa: E402

from .helpers import run_cli, server  # noqa: E402

# The service's own tests, run again against a neural bundle (the fixtures below replace
# test_service's `versions`, so `live` and `own_copy` serve Mult-VAE models).
from .test_service import (  # noqa: E402, F401
    live,
    own_copy,
    test_a_bad_new_bundle_is_refused_and_the_old_keeps_serving,
    test_batched_searches_equal_single_ones,
    test_each_endpoint_equals_the_recommender,
    test_every_response_names_the_model_version,
    test_the_fast_path_answers_byte_for_byte_like_the_fastapi_route,
    test_the_fast_path_answers_plain_recommendations_without_fastapi,
    test_three_reloads_under_load_lose_no_request,
)

TINY = NeuralParams(dim=8, hidden=16, max_epochs=6, patience=3, batch_size=64,
                    time_budget=60, lr=0.01)
GROUPS, GROUP_ITEMS, USERS_PER_GROUP = 3, 20, 100


@pytest.fixture(scope="module")
def planted() -> sp.csr_matrix:
    """300 users in 3 groups; each user holds 8 of their group's 20 items."""
    rng = np.random.default_rng(5)
    rows, cols = [], []
    for user in range(GROUPS * USERS_PER_GROUP):
        group = user // USERS_PER_GROUP
        items = group * GROUP_ITEMS + rng.choice(GROUP_ITEMS, 8, replace=False)
        rows += [user] * items.size
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                         shape=(GROUPS * USERS_PER_GROUP, GROUPS * GROUP_ITEMS))


@pytest.fixture(scope="module", params=["multvae", "elsa"])
def trained(request: pytest.FixtureRequest, planted: sp.csr_matrix) -> neural.NeuralModel:
    return train(planted, replace(TINY, algorithm=request.param), keep_network=True)


def test_the_numpy_encoder_equals_the_torch_forward_pass(trained, planted):
    net, x = trained.network, planted[:50]
    net.eval()
    with torch.no_grad():
        batch = neural._batch(torch, x)
        if trained.params.algorithm == "multvae":
            expected = net.encode(batch)[0].numpy()  # the mean z
            got = trained.encoder.encode(x)
            assert np.allclose(got[:, -1], 1.0)  # [z, 1]
            got = got[:, :-1]
        else:
            expected = torch.sparse.mm(batch, net.normalized()).numpy()  # x A
            got = trained.encoder.encode(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_exported_inner_products_equal_the_training_time_scores(trained, planted):
    expected = neural.torch_scores(torch, trained.params, trained.network, planted[:50])
    np.testing.assert_allclose(trained.scores(planted[:50]), expected, rtol=1e-4, atol=1e-4)


def test_the_model_learns_the_planted_groups(trained, planted):
    scores = trained.scores(planted)
    scores[planted.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :10]
    own_group = (top // GROUP_ITEMS) == (np.arange(planted.shape[0]) // USERS_PER_GROUP)[:, None]
    assert own_group.mean() > 0.9  # chance: 1/3
    assert trained.training["best_validation_ndcg@10"] > 0.2


def test_the_epochs_validation_ndcg_equals_the_evaluation_protocols():
    from svdfaiss.evaluation import ranking_metrics, top_n_from_scores

    rng = np.random.default_rng(3)
    users, items = 40, 30
    seen = sp.random(users, items, density=0.3, format="lil", random_state=4, dtype=np.float32)
    seen[0, :25] = 1  # 5 unseen items: a list shorter than k
    seen = seen.tocsr()
    relevant = [np.sort(rng.choice(items, rng.integers(0, 6), replace=False))
                for _ in range(users)]  # some users hold none: not counted
    scores = rng.normal(size=(users, items)).astype(np.float32)
    expected = ranking_metrics(top_n_from_scores(scores, seen, 10), relevant,
                               cutoffs=(10,))["ndcg@10"]
    got = neural.ValidationNdcg(seen, relevant)(scores.copy())
    assert 0 < expected < 1 and got == pytest.approx(expected, rel=1e-12)


def test_one_item_rows_teach_elsa_nothing_so_training_skips_them():
    params = replace(TINY, algorithm="elsa")
    net = neural._networks(torch, params, 50)
    ones = sp.csr_matrix((np.ones(4, np.float32), ([0, 1, 2, 3], [3, 7, 7, 40])), shape=(4, 50))
    loss = neural._loss(torch, params, net, neural._batch(torch, ones), 0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2.0)
    assert float(net.a.grad.abs().max()) < 1e-6
    assert neural._min_row(params) == 2 and neural._min_row(replace(TINY)) == 1


def test_training_is_seeded_and_reproducible(planted):
    params = replace(TINY, max_epochs=2)
    a, b = train(planted, params), train(planted, params)
    other = train(planted, replace(params, seed=1))
    for layer_a, layer_b in zip(a.encoder.layers, b.encoder.layers, strict=True):
        np.testing.assert_array_equal(layer_a.weight, layer_b.weight)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    assert not np.array_equal(a.item_vectors, other.item_vectors)


def test_early_stopping_keeps_the_best_epoch_and_the_time_budget_holds(planted):
    lines: list[str] = []
    stopped = train(planted, replace(TINY, max_epochs=200, patience=2, lr=0.05),
                    progress=lines.append)
    history = stopped.training["history"]
    assert stopped.training["epochs"] < 200 and "no better" in stopped.training["stopped"]
    assert stopped.training["stopped_by"] == "patience"
    best = max(history, key=lambda h: h["validation_ndcg@10"])
    assert stopped.training["best_epoch"] == best["epoch"]
    assert len(lines) == len(history) and lines[0].startswith("epoch 1: loss ")
    budget = train(planted, replace(TINY, max_epochs=200, patience=200, time_budget=0.01))
    assert budget.training["epochs"] == 1 and "time budget" in budget.training["stopped"]
    assert budget.training["stopped_by"] == "time_budget"


def test_a_refit_trains_on_all_rows_for_the_given_epochs_and_keeps_the_last(planted):
    params = replace(TINY, algorithm="elsa")
    refit = train(planted, params, epochs_on_all_rows=3)
    assert refit.training["epochs"] == 3 and refit.training["best_epoch"] == 3
    assert refit.training["stopped_by"] == "fixed_epochs"
    assert refit.training["validation"]["users"] == 0
    again = train(planted, params, epochs_on_all_rows=3)
    np.testing.assert_array_equal(refit.item_vectors, again.item_vectors)
    with pytest.raises(InvalidInput, match="refit"):
        train(planted, params, epochs_on_all_rows=0)


def test_bad_parameters_are_refused_by_name(planted):
    with pytest.raises(InvalidInput, match="--dropout"):
        train(planted, replace(TINY, dropout=1.0))
    with pytest.raises(InvalidInput, match="--dim"):
        train(planted, replace(TINY, dim=0))
    no_validation = sp.identity(10, format="csr", dtype=np.float32)  # 1 item per user
    with pytest.raises(InvalidInput, match="validation split"):
        train(no_validation, TINY)


def test_a_clear_error_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InvalidInput, match=r"svdfaiss\[neural\]"):
        neural.require_torch()


# ---------------------------------------------------------------------------- bundles

NEURAL = replace(TINY, max_epochs=3, patience=3, batch_size=256)


def _neural_config(sample, index_dir: Path, version: str,
                   params: NeuralParams = NEURAL) -> BuildConfig:
    return BuildConfig(input=sample.events, model="sample", index_dir=index_dir,
                       catalog=sample.catalog, version=version, algorithm="multvae",
                       neural=params)


@pytest.fixture(scope="module")
def versions(tmp_path_factory, sample) -> Path:
    """Mult-VAE versions v1..v4 of the sample (CURRENT: v1), as test_service builds SVDs."""
    index_dir = tmp_path_factory.mktemp("neural-served")
    for version, dim in (("v2", 4), ("v3", 6), ("v4", 8), ("v1", 12)):
        build(_neural_config(sample, index_dir, version, replace(NEURAL, dim=dim)))
    return index_dir


@pytest.fixture(scope="module")
def rec_neural(versions) -> Recommender:
    return Recommender.load(versions, "sample")


def test_a_neural_bundle_records_its_model_and_ranks_by_its_scores(rec_neural):
    model = rec_neural
    manifest = model.manifest
    assert manifest["parameters"]["algorithm"] == "multvae"
    assert manifest["factorization"] is None
    record = manifest["neural"]
    assert record["architecture"]["encoder"] == [model.n_items, 16, 12]
    assert record["training"]["epochs"] >= 1 and record["training"]["seconds"] > 0
    assert {"encoder_0_weight.npy", "encoder_1_bias.npy"} <= manifest["files"].keys()
    # a known user's recommendations are the top of encode(row) . [w_j, b_j] over unseen items
    user = int(np.argmax(np.diff(model.rows.indptr)))
    user_id = decode_ids(model.user_ids[user : user + 1])[0]
    row = model.rows[user : user + 1].copy()
    row.data[:] = 1
    scores = (model.encoder.encode(row) @ np.asarray(model.item_factors).T)[0]
    scores[row.indices] = -np.inf
    got = rec_neural.recommend(user_id, 10, mode="cf")
    assert got.reason == "cf"
    np.testing.assert_allclose(got.scores, np.sort(scores)[::-1][:10], rtol=1e-5, atol=1e-6)
    assert rec_neural.score(user_id, got.ids[0]) == pytest.approx(got.scores[0], rel=1e-5)


def test_explanations_of_a_neural_model_are_leave_one_out_drops(rec_neural):
    model = rec_neural
    user = int(np.argmax(np.diff(model.rows.indptr)))
    user_id = decode_ids(model.user_ids[user : user + 1])[0]
    got = rec_neural.recommend(user_id, 3, mode="cf", explain=True)
    first = got.because[0][0]
    row = model.rows[user : user + 1].copy()
    row.data[:] = 1
    without = row.copy()
    without.data[without.indices == model.item_index(first["item_id"])] = 0
    without.eliminate_zeros()
    v = np.asarray(model.item_factors[got.indexes[0]])
    drop = float(model.encoder.encode(row)[0] @ v - model.encoder.encode(without)[0] @ v)
    assert first["contribution"] == pytest.approx(drop, rel=1e-4, abs=1e-6)


def test_the_cli_builds_a_neural_bundle_that_verifies_and_serves_without_torch(tmp_path, sample):
    index_dir = tmp_path / "indexes"
    built = run_cli(["build", str(sample.events), "--index-dir", str(index_dir), "--algorithm",
                     "elsa", "--dim", "8", "--epochs", "2", "--time-budget", "60"])
    assert built.returncode == 0, built.stderr
    assert "epoch 1: loss" in built.stderr and "ELSA" in built.stdout
    verified = run_cli(["bundles", "verify", "--index-dir", str(index_dir)])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # serving imports no torch: load and answer with torch made unimportable
    code = ("import sys; sys.modules['torch'] = None\n"
            "from svdfaiss.recommender import Recommender\n"
            f"rec = Recommender.load({str(index_dir)!r}, 'default')\n"
            "user = rec.user_ids[0].decode()\n"
            "print(len(rec.recommend(user, 5).ids), len(rec.recommend_for_items("
            "[rec.item_ids[0].decode()], 5).ids))")
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert served.returncode == 0, served.stderr
    assert served.stdout.split() == ["5", "5"]
    manifest = json.loads(next(index_dir.glob("default/2*/manifest.json")).read_text())
    assert manifest["neural"]["encoder"] is None  # ELSA folds in linearly: x A
    assert manifest["neural"]["training"]["epochs"] <= 2


def test_the_cli_takes_the_training_flags_and_refits_on_every_row(tmp_path, sample):
    """--lr, --batch-size and --dropout reach the model; --refit trains again on all rows
    for the early-stopped run's best epoch count and records both runs."""
    index_dir = tmp_path / "indexes"
    built = run_cli(["build", str(sample.events), "--index-dir", str(index_dir), "--algorithm",
                     "multvae", "--dim", "8", "--epochs", "3", "--patience", "2",
                     "--time-budget", "60", "--lr", "0.003", "--batch-size", "128",
                     "--dropout", "0.2", "--refit", "--json"])
    assert built.returncode == 0, built.stderr
    manifest = json.loads(built.stdout)
    neural_record = manifest["neural"]
    assert {k: neural_record["parameters"][k] for k in ("lr", "batch_size", "dropout")} == {
        "lr": 0.003, "batch_size": 128, "dropout": 0.2}
    training, stopped = neural_record["training"], neural_record["training"]["early_stopping"]
    assert stopped["stopped_by"] in ("patience", "max_epochs") and stopped["best_epoch"] >= 1
    assert training["stopped_by"] == "fixed_epochs"
    assert training["epochs"] == training["best_epoch"] == stopped["best_epoch"]
    rec = Recommender.load(index_dir, "default")
    assert len(rec.recommend(rec.user_ids[0].decode(), 5).ids) == 5


@pytest.mark.parametrize(("flags", "needle"), [
    (["--refit"], "--refit"),
    (["--algorithm", "deep"], "--algorithm 'deep'"),
    (["--algorithm", "multvae", "--k", "16"], "--k"),
    (["--algorithm", "elsa", "--weighting", "log"], "--weighting log"),
    (["--algorithm", "multvae", "--evaluate"], "--evaluate"),
])
def test_bad_flags_are_refused_before_anything_is_built(tmp_path, sample, flags, needle):
    index_dir = tmp_path / "indexes"
    result = run_cli(["build", str(sample.events), "--index-dir", str(index_dir), *flags])
    assert result.returncode == 2
    assert needle in result.stderr
    assert not (index_dir / "default").exists() or not any(
        p.name[0].isdigit() for p in (index_dir / "default").iterdir())


def test_the_service_answers_a_neural_model_info(versions) -> None:
    import httpx

    with server(versions) as url:
        body = httpx.get(f"{url}/model").json()
    assert body["explained_energy"] is None
    assert body["neural"]["algorithm"] == "multvae"
    assert "history" not in body["neural"]["training"]
