"""The scoring models: EASE-style shrinkage of the SVD, the biased-MF rating model, and the
evaluation protocols built on them (leave last out, the HTML report)."""

import json

import faiss
import numpy as np
import pytest
import scipy.sparse as sp

from svdfaiss.builder import BuildConfig, auto_k, build
from svdfaiss.data import ReadOptions, build_interactions, read_log
from svdfaiss.errors import InvalidInput
from svdfaiss.evaluation import ease_scorer, last_times, leave_last_out_split
from svdfaiss.factorize import Factors, shrinkage_embedding
from svdfaiss.rating import (
    cross_validate,
    fit_rating_model,
    fold_in_ratings,
    rating_folds,
)
from svdfaiss.recommender import Recommender

from .helpers import run_cli


def _binary(seed: int, users: int = 40, items: int = 25, density: float = 0.25) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density).astype(np.float64)
    dense[np.arange(users), rng.integers(0, items, users)] = 1.0  # nobody empty
    return sp.csr_matrix(dense)


def _full_factors(x: sp.csr_matrix) -> Factors:
    u, s, vt = np.linalg.svd(x.toarray(), full_matrices=False)
    keep = s > 1e-9 * s[0]
    total = float((x.data ** 2).sum())
    return Factors(u[:, keep], s[keep], vt[keep].T, float((s[keep] ** 2).sum() / total), total)


@pytest.mark.parametrize("shrinkage", [0.5, 3.0, 30.0])
def test_full_rank_shrinkage_scores_unseen_items_exactly_like_ease(shrinkage):
    x = _binary(seed=1)
    factors = _full_factors(x)
    embedding = shrinkage_embedding(factors, shrinkage, x.shape[1])
    lam = shrinkage * float((x.data ** 2).sum()) / x.shape[1]
    assert embedding.shrinkage_lambda == pytest.approx(lam)
    ours = (x @ embedding.fold) @ embedding.items.T
    ease = ease_scorer(x, lam)(np.arange(x.shape[0]))
    unseen = x.toarray() == 0
    np.testing.assert_allclose(ours[unseen], ease[unseen], rtol=2e-4, atol=2e-5)


def test_no_shrinkage_is_plain_svd_and_shares_one_array():
    factors = _full_factors(_binary(seed=2))
    embedding = shrinkage_embedding(factors, 0.0, 25)
    assert embedding.shared and embedding.shrinkage_lambda == 0.0
    np.testing.assert_allclose(embedding.items, factors.item_factors, atol=1e-6)
    with pytest.raises(InvalidInput, match="shrinkage"):
        shrinkage_embedding(factors, -1.0, 25)


def test_auto_k_is_128_for_small_catalogs_64_for_large_and_fits_tiny_matrices():
    assert auto_k(5_000, 2_000) == 128
    assert auto_k(4_000_000, 400_000) == 64
    assert auto_k(30, 2_000) == 29


def test_bundle_with_shrinkage_ranks_by_the_formula_and_without_it_stores_no_fold(
        sample, tmp_path):
    shrunk = build(BuildConfig(input=sample.events, model="s", index_dir=tmp_path, k=24,
                               shrinkage=30.0, user_index=None))
    plain = build(BuildConfig(input=sample.events, model="p", index_dir=tmp_path, k=24,
                              shrinkage=0.0, user_index=None))
    assert "fold_factors.npy" in shrunk.manifest["files"]
    assert "fold_factors.npy" not in plain.manifest["files"]
    params = shrunk.manifest["parameters"]
    assert params["shrinkage"] == 30.0 and params["shrinkage_lambda"] > 0
    weights = np.array(shrunk.manifest["factorization"]["component_weights"])
    assert np.all((weights > 0) & (weights < 1)) and np.all(np.diff(weights) <= 1e-6)

    rec = Recommender.load(tmp_path, "s")
    fold, items = np.asarray(rec.fold_factors), np.asarray(rec.item_factors)
    # fold = V F and items = V / d, with d_i = 1 - sum_j V_ij^2 F_j (the EASE diagonal)
    v = fold / weights
    d = 1.0 - (v ** 2) @ weights
    np.testing.assert_allclose(items * d[:, None], v, rtol=1e-3, atol=1e-5)
    for row in (0, 17, 4242):
        user = rec.user_ids[row].decode()
        scores = rec.user_vector(row) @ items.T
        scores[rec.seen_items(row)] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:10]
        got = rec.recommend(user, k=10)
        assert list(got.indexes) == list(expected)


# ------------------------------------------------------------------------- rating model


def _ratings(seed: int = 0, users: int = 120, items: int = 60, k: int = 3) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.6, (users, k)), rng.normal(0, 0.6, (items, k))
    bu, bi = rng.normal(0, 0.4, users), rng.normal(0, 0.4, items)
    truth = np.clip(3.5 + bu[:, None] + bi[None, :] + p @ q.T, 1, 5)
    mask = rng.random((users, items)) < 0.4
    noisy = np.clip(np.round(truth + rng.normal(0, 0.3, truth.shape)), 1, 5)
    return sp.csr_matrix(np.where(mask, noisy, 0.0))


def test_rating_model_ranks_exactly_inside_faiss_with_augmented_vectors():
    model = fit_rating_model(_ratings(), k=4, reg=0.1)
    index = faiss.IndexFlatIP(5)
    index.add(model.item_vectors())
    queries = model.user_vectors()
    _, found = index.search(queries, 60)
    for user in range(0, 120, 7):
        predicted = model.mu + model.user_bias[user] + model.item_bias + (
            model.item_factors @ model.user_factors[user])
        order = np.argsort(-predicted, kind="stable")
        # the same ranking (FAISS float32 may swap near-ties: compare predicted values)
        np.testing.assert_allclose(predicted[found[user]], predicted[order], atol=1e-4)


def test_rating_model_beats_the_biases_and_the_global_mean_on_held_out_folds():
    matrix = _ratings(seed=3, users=300, items=120)
    factors = cross_validate(matrix, k=3, reg=0.1)
    biases = cross_validate(matrix, k=0, reg=0.1)
    coo = matrix.tocoo()
    folds = rating_folds(coo.nnz, 5, 42)
    mean_rmse = np.mean([np.sqrt(np.mean((coo.data[folds == f] - coo.data[folds != f].mean())
                                         ** 2)) for f in range(5)])
    assert factors["rmse"] < biases["rmse"] < mean_rmse
    assert factors["mae"] < biases["mae"]
    assert len(factors["rmse_by_fold"]) == 5


def test_rating_folds_partition_every_rating_once_in_equal_parts():
    folds = rating_folds(103, 5, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(folds, rating_folds(103, 5, seed=1))
    with pytest.raises(InvalidInput):
        rating_folds(3, 5)


def test_conjugate_gradient_sweeps_match_exact_solves():
    matrix = _ratings(seed=4, users=200, items=90)
    exact = fit_rating_model(matrix, k=4, reg=0.1, iterations=3, cg_steps=0)
    approx = fit_rating_model(matrix, k=4, reg=0.1, iterations=3, cg_steps=5)
    coo = matrix.tocoo()
    np.testing.assert_allclose(approx.predict(coo.row, coo.col), exact.predict(coo.row, coo.col),
                               atol=2e-3)


def test_fold_in_of_a_training_users_ratings_reproduces_their_vector():
    matrix = _ratings(seed=5)
    model = fit_rating_model(matrix, k=3, reg=0.1, iterations=12, cg_steps=0)
    row = matrix.getrow(7)
    folded = fold_in_ratings(model, row.indices, row.data, reg=0.1)
    # the fitted user was solved against the items of the last-but-one half step: close
    np.testing.assert_allclose(folded[:3], model.user_factors[7], atol=2e-3)
    assert folded[3] == pytest.approx(model.user_bias[7], abs=2e-3)


# ------------------------------------------------------------------ protocols and report


def test_leave_last_out_holds_out_each_users_latest_interaction(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["user_id,item_id,rating,timestamp"]
    for user in range(4):
        for item in range(6):
            rows.append(f"u{user},i{item},{1 + (user + item) % 5},{100 * item + user}")
    rows.append("u0,i2,5,9999")  # u0 rated i2 again, last of all: i2 is u0's latest
    rows.append("u9,i1,3,5")  # too few interactions: never tested
    log.write_text("\n".join(rows) + "\n")
    read = read_log(log, ReadOptions())
    inter = build_interactions(read, 1, 1, "last")
    times = last_times(read, inter)
    split = leave_last_out_split(inter.matrix, times, min_interactions=5)
    held = {inter.user_ids[u].decode(): inter.item_ids[i[0]].decode()
            for u, i in zip(split.test_users, split.test_items, strict=True)}
    assert held == {"u0": "i2", "u1": "i5", "u2": "i5", "u3": "i5"}
    assert split.train.nnz == inter.matrix.nnz - 4


def test_last_times_is_none_without_timestamps(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id\n" + "".join(f"u{n % 7},i{n % 5}\n" for n in range(40)))
    read = read_log(log, ReadOptions())
    assert read.timestamps is None
    assert last_times(read, build_interactions(read)) is None


def test_evaluate_with_report_timestamps_and_ratings(tmp_path):
    pytest.importorskip("matplotlib")
    matrix = _ratings(seed=9, users=150, items=80)
    coo = matrix.tocoo()
    log = tmp_path / "ratings.csv"
    log.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"u{u},m{i},{r:g},{1000 + n}\n"
        for n, (u, i, r) in enumerate(zip(coo.row, coo.col, coo.data, strict=True))))
    out = tmp_path / "eval.json"
    report_dir = tmp_path / "report"
    result = run_cli(["evaluate", str(log), "--k", "8", "--no-ease", "--json", str(out),
                      "--report", str(report_dir)])
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["leave_last_out"]["protocol"]["split"].startswith("leave last out")
    assert report["leave_last_out"]["protocol"]["test_users"] == 150
    rating = report["rating"]
    assert rating["svdfaiss rating model"]["rmse"] < rating["biases only"]["rmse"]
    page = (report_dir / "index.html").read_text()
    for image in ("distributions", "long_tail", "spectrum", "metrics_vs_k", "ann_curve",
                  "popularity"):
        assert f"{image}.png" in page
        assert (report_dir / f"{image}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Rating prediction" in page and "leave last out" in page
    # 150 test users: the command, the JSON and the page say the test set is small
    assert "warning: small test set (random holdout): 150 of 150 users" in result.stderr
    assert report["warnings"][0].startswith("small test set (random holdout)")
    assert "<b>Warning:</b> small test set (random holdout)" in page
    assert "<pre>" not in page and "<h2>Protocol</h2><table class='protocol'>" in page


def _ratings_log(tmp_path, seed: int = 11):
    matrix = _ratings(seed=seed, users=150, items=80)
    coo = matrix.tocoo()
    log = tmp_path / "ratings.csv"
    log.write_text("userId,movieId,rating\n" + "".join(
        f"u{u},m{i},{r:g}\n" for u, i, r in zip(coo.row, coo.col, coo.data, strict=True)))
    return log


def test_a_rating_bundle_ranks_and_scores_by_the_predicted_rating(tmp_path):
    log = _ratings_log(tmp_path)
    report = build(BuildConfig(input=log, model="r", index_dir=tmp_path / "idx", k=16,
                               objective="rating", rating_k=4, rating_reg=0.1, evaluate=True))
    manifest = report.manifest
    assert manifest["parameters"]["objective"] == "rating"
    assert manifest["rating_model"]["k"] == 4 and "fold_factors.npy" not in manifest["files"]
    assert manifest["evaluation"]["rating"]["rmse"] > 0
    rec = Recommender.load(tmp_path / "idx", "r")
    items = np.asarray(rec.item_factors)
    users = np.asarray(rec.rating_users)
    bias = np.asarray(rec.rating_user_bias)
    mu, low, high = (manifest["rating_model"][key] for key in ("mu", "low", "high"))
    for row in (0, 42, 149):
        user = rec.user_ids[row].decode()
        predicted = mu + bias[row] + items @ users[row]
        unseen = np.setdiff1d(np.arange(rec.n_items), rec.seen_items(row))
        got = rec.recommend(user, k=5)
        np.testing.assert_allclose(got.scores, np.sort(predicted[unseen] - mu - bias[row])
                                   [::-1][:5], rtol=1e-4, atol=1e-4)
        item = rec.item_ids[unseen[0]].decode()
        assert rec.score(user, item) == pytest.approx(
            float(np.clip(predicted[unseen[0]], low, high)), abs=1e-4)
    basket = rec.recommend_for_items(["m1", "m2", "m3"], k=5)
    assert len(basket) == 5 and not {"m1", "m2", "m3"} & set(basket.ids)
    assert len(rec.similar_users(rec.user_ids[0].decode(), k=3)) == 3


def test_rating_objective_refuses_implicit_counts(sample, tmp_path):
    result = run_cli(["build", str(sample.events), "--out", str(tmp_path), "--objective",
                      "rating"])
    assert result.returncode == 2
    assert "--objective rating needs explicit ratings" in result.stderr
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").iterdir())


def test_tune_on_ratings_also_picks_the_rating_model(tmp_path):
    log = _ratings_log(tmp_path, seed=13)
    out = tmp_path / "tune.json"
    result = run_cli(["tune", str(log), "--k", "8", "--weighting", "none", "--shrinkage", "30",
                      "--json", str(out)])
    assert result.returncode == 0, result.stderr
    rating = json.loads(out.read_text())["rating"]
    best = rating["best"]
    assert best["k"] in (0, 4, 8) and len(rating["validation"]) == 9
    assert rating["cross_validation"]["rmse"] > 0
    assert (f"--objective rating --rating-k {best['k']} --rating-reg {best['reg']:g}"
            in result.stdout.replace("\n", " "))
