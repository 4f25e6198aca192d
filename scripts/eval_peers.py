"""Top-N side by side: svdfaiss against implicit's ALS, EASE and the baselines, every method
tuned on the same validation split (carved from train), then scored once on the same test
split (the protocol of docs/evaluation.md).

Grids, chosen on validation NDCG@10:
- svdfaiss: `svdfaiss tune`'s grid, k {32, 64, 128, 256} x weighting {none, binary, log,
  bm25} x shrinkage {0, 10, 30, 100}; also `svdfaiss build` with no flags ("svdfaiss defaults
  (auto-tuned)": the build's own tuning, svdfaiss.autotune, run on the training split alone,
  which it splits again to choose) and with --no-tune ("svdfaiss --no-tune", the fixed
  defaults);
- implicit ALS: factors {32, 64, 128} x regularization {0.01, 0.1, 1, 10, 100} (implicit does
  not scale regularization by counts, so the grid reaches large values) x alpha {1, 10, 40},
  15 iterations, binary confidence 1 + alpha * x;
- EASE: lambda {10, 50, 100, 250, 500, 1000};
- item-kNN (100 neighbours) and most popular have no parameters.
On explicit ratings, also rating prediction on the same 5 folds (seed 42): svdfaiss's rating
model (k {4, 8, 16} x reg {0.1, 0.2, 0.5}) against scikit-surprise's SVD (n_factors {50, 100}
x reg_all {0.02, 0.05, 0.1}), both chosen on the same validation part of fold 0's train.
Needs `pip install -e ".[bench]"` (implicit, scikit-surprise). Prints a table and writes JSON.

    python scripts/eval_peers.py ../shared/data/ml-latest-small/ratings.csv \
        --json docs/results/peers-ml-latest-small.json

`--only-defaults` scores the two default rows alone and merges them into the JSON's methods
(the other methods are kept as recorded; scripts/rescore_peers.py re-fits them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit asks for this

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import scipy.sparse as sp

from svdfaiss.autotune import tune_matrix
from svdfaiss.builder import BuildConfig
from svdfaiss.data import Interactions, ReadOptions, build_interactions, read_log
from svdfaiss.evaluation import (
    TUNE_GRID,
    Scorer,
    coverage,
    ease_scorer,
    fit_svd,
    holdout_split,
    item_knn_scorer,
    popularity_scorer,
    ranking_metrics,
    recommend_all,
    tune_svd,
)
from svdfaiss.rating import (
    RatingPart,
    cross_validate_with,
    tune_rating_model,
    validation_part,
)

SURPRISE_GRID = {"n_factors": (50, 100), "reg_all": (0.02, 0.05, 0.1)}
ALS_GRID = {"factors": (32, 64, 128), "regularization": (0.01, 0.1, 1.0, 10.0, 100.0),
            "alpha": (1.0, 10.0, 40.0)}
EASE_GRID = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0)


def als_scorer(train: sp.csr_matrix, factors: int, regularization: float,
               alpha: float) -> Scorer:
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                    alpha=alpha, iterations=15, random_state=0)
    model.fit((train > 0).astype(np.float32).tocsr(), show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda rows: users[rows] @ items.T


def surprise_fit_predict(part: RatingPart, **params: Any) -> tuple[np.ndarray, float]:
    """surprise's SVD (biased MF by SGD) fitted on the part's train; its predictions for the
    held-out pairs and its fit seconds."""
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    train = part.train.tocoo()
    frame = pd.DataFrame({"u": train.row, "i": train.col, "r": train.data})
    reader = Reader(rating_scale=(float(train.data.min()), float(train.data.max())))
    trainset = Dataset.load_from_df(frame, reader).build_full_trainset()
    algo = SVD(random_state=0, **params)
    start = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - start
    predictions = np.array([algo.predict(u, i).est for u, i in zip(part.rows.tolist(),
                                                                    part.cols.tolist(),
                                                                    strict=True)])
    return predictions, seconds


def rating_peers(matrix: sp.csr_matrix) -> dict[str, Any]:
    """svdfaiss's rating model against surprise SVD: both tuned on the same validation part
    of fold 0's train, then 5-fold RMSE/MAE on the same folds, with mean fit seconds."""
    ours = tune_rating_model(matrix)
    print(f"svdfaiss rating model: {ours['best']}", file=sys.stderr)
    part = validation_part(matrix)
    trials = []
    for values in itertools.product(*SURPRISE_GRID.values()):
        params = dict(zip(SURPRISE_GRID, values, strict=True))
        predicted, _ = surprise_fit_predict(part, **params)
        trials.append((part.errors(predicted)[0], params))
    best_rmse, best = min(trials, key=lambda t: t[0])
    print(f"surprise SVD: {best} (validation rmse {best_rmse:.4f})", file=sys.stderr)
    theirs = cross_validate_with(matrix, lambda p: surprise_fit_predict(p, **best))
    cv = ours["cross_validation"]
    return {"svdfaiss": {"params": ours["best"], "rmse": cv["rmse"], "mae": cv["mae"],
                         "rmse_by_fold": cv["rmse_by_fold"], "fit_seconds": cv["fit_seconds"]},
            "surprise SVD": {"params": best, "validation_rmse": best_rmse,
                             "rmse": theirs["rmse"], "mae": theirs["mae"],
                             "rmse_by_fold": theirs["rmse_by_fold"],
                             "fit_seconds": theirs["fit_seconds"]}}


def score(scorer: Scorer, train: sp.csr_matrix, users: np.ndarray,
          relevant: list[np.ndarray], n_items: int) -> dict[str, float]:
    ranked = recommend_all(scorer, train, users, 20)
    return {**ranking_metrics(ranked, relevant),
            "coverage@10": coverage(ranked, n_items, 10)}


def default_rows(path: Path, feedback: str, split: Any) -> dict[str, Any]:
    """What a user who passes no flag gets: `svdfaiss build` given the protocol's training
    rows only (its tuning splits them again: the test users' held-out rows never choose),
    and the same build with --no-tune."""
    n_items = split.train.shape[1]
    rows: dict[str, Any] = {}
    for name, tune in (("svdfaiss defaults (auto-tuned)", True), ("svdfaiss --no-tune", False)):
        config = BuildConfig(input=path, model="peers", index_dir=Path("."), tune=tune)
        start = time.perf_counter()
        tuned = tune_matrix(split.train, feedback, config)
        params = dict(tuned.record["chosen"])
        model = fit_svd(split.train, params["k"], params["weighting"], params["beta"],
                        params["shrinkage"])
        rows[name] = {"params": params, "fit_seconds": round(time.perf_counter() - start, 2),
                      "test": score(model.scorer(split.train), split.train, split.test_users,
                                    split.test_items, n_items)}
        if tune:
            rows[name]["tuning"] = {key: tuned.record[key] for key in (
                "status", "grid", "validation", "validation_ndcg@10",
                "defaults_validation_ndcg@10", "seconds")}
        print(f"{name}: {params} (test ndcg@10 {rows[name]['test']['ndcg@10']:.4f})",
              file=sys.stderr)
    return rows


def topn_peers(path: Path, inter: Interactions) -> dict[str, Any]:
    """Every top-N method tuned on one validation split, scored once on the test split."""
    matrix = inter.matrix
    split = holdout_split(matrix)
    validation = holdout_split(split.train, seed=43)
    n_items = matrix.shape[1]
    results: dict[str, Any] = {}

    def tuned(name: str, candidates: list[dict[str, Any]],
              make: Any) -> None:
        best, best_score = None, -1.0
        start = time.perf_counter()
        for params in candidates:
            val = score(make(validation.train, **params), validation.train,
                        validation.test_users, validation.test_items, n_items)["ndcg@10"]
            if val > best_score:
                best, best_score = params, val
        tuning = time.perf_counter() - start
        start = time.perf_counter()
        scorer = make(split.train, **best)
        fit = time.perf_counter() - start
        results[name] = {"params": best, "validation_ndcg@10": best_score,
                         "tuning_seconds": round(tuning, 1), "fit_seconds": round(fit, 2),
                         "test": score(scorer, split.train, split.test_users,
                                       split.test_items, n_items)}
        print(f"{name}: {best} (validation ndcg@10 {best_score:.4f}, tuning {tuning:.0f} s)",
              file=sys.stderr)

    start = time.perf_counter()
    svd = tune_svd(matrix, TUNE_GRID)
    tuning = time.perf_counter() - start
    best = svd["best"]
    start = time.perf_counter()
    model = fit_svd(split.train, best["k"], best["weighting"], best["beta"], best["shrinkage"])
    fit = time.perf_counter() - start
    results["svdfaiss"] = {"params": {k: best[k] for k in ("k", "weighting", "beta",
                                                            "shrinkage")},
                           "validation_ndcg@10": best["ndcg@10"],
                           "tuning_seconds": round(tuning, 1), "fit_seconds": round(fit, 2),
                           "test": score(model.scorer(split.train), split.train,
                                         split.test_users, split.test_items, n_items)}
    print(f"svdfaiss: {results['svdfaiss']['params']}", file=sys.stderr)
    results.update(default_rows(path, inter.feedback, split))
    tuned("implicit ALS", [dict(zip(ALS_GRID, v, strict=True))
                           for v in itertools.product(*ALS_GRID.values())], als_scorer)
    if n_items <= 20_000:
        tuned("EASE", [{"lam": lam} for lam in EASE_GRID], ease_scorer)
    tuned("item-kNN", [{}], lambda train: item_knn_scorer(train))
    tuned("most popular", [{}], lambda train: popularity_scorer(train))

    report: dict[str, Any] = {"test_users": int(split.test_users.size), "methods": results}
    print(f"\n{path.name}: {matrix.shape[0]:,} users, {n_items:,} items, "
          f"{split.test_users.size:,} test users")
    print(f"{'method':18}{'ndcg@10':>9}{'recall@20':>11}{'map@10':>9}{'cov@10':>8}  params")
    for name, r in results.items():
        t = r["test"]
        print(f"{name:18}{t['ndcg@10']:>9.4f}{t['recall@20']:>11.4f}{t['map@10']:>9.4f}"
              f"{t.get('coverage@10', float('nan')):>8.3f}  {r['params']}")
    if "EASE" in results:
        ratio = results["svdfaiss"]["test"]["ndcg@10"] / results["EASE"]["test"]["ndcg@10"]
        report["svdfaiss_over_ease_ndcg@10"] = round(ratio, 3)
        print(f"svdfaiss / EASE NDCG@10 = {ratio:.3f}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-rating", action="store_true",
                        help="Skip rating prediction (surprise) on explicit data.")
    parser.add_argument("--no-topn", action="store_true",
                        help="Skip the top-N comparison (keeps top-N results already in --json).")
    parser.add_argument("--only-defaults", action="store_true",
                        help="Score the default rows alone and merge them into --json.")
    args = parser.parse_args()

    inter = build_interactions(read_log(args.input, ReadOptions()), 1, 1, "last")
    matrix = inter.matrix
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "input": str(args.input),
        "users": int(matrix.shape[0]), "items": int(matrix.shape[1]),
        "interactions": int(matrix.nnz)}
    if args.only_defaults:
        if not args.json or not args.json.exists():
            raise SystemExit("--only-defaults merges into an existing --json")
        old = json.loads(args.json.read_text())
        methods = {k: v for k, v in old["methods"].items() if k != "svdfaiss defaults"}
        new = default_rows(args.input, inter.feedback, holdout_split(matrix))
        order = ["svdfaiss", *new, *(k for k in methods if k != "svdfaiss")]
        merged = {**methods, **new}
        old["methods"] = {k: merged[k] for k in order}
        old["defaults_date"] = time.strftime("%Y-%m-%d %H:%M")
        args.json.write_text(json.dumps(old, indent=2) + "\n")
        for name, r in new.items():
            t = r["test"]
            print(f"{name:32}{t['ndcg@10']:>9.4f}{t['recall@20']:>11.4f}{t['map@10']:>9.4f}"
                  f"  {r['params']}")
        return
    if not args.no_topn:
        report.update(topn_peers(args.input, inter))
    elif args.json and args.json.exists():  # keep the top-N results of an earlier run
        report = {**json.loads(args.json.read_text()), **report}
    if inter.feedback == "explicit" and not args.no_rating:
        rating = rating_peers(matrix)
        report["rating"] = rating
        print(f"\n{'rating (5 folds)':18}{'rmse':>9}{'mae':>9}{'fit s':>8}  params")
        for name, r in rating.items():
            print(f"{name:18}{r['rmse']:>9.4f}{r['mae']:>9.4f}{r['fit_seconds']:>8.3f}  "
                  f"{r['params']}")
        speedup = rating["surprise SVD"]["fit_seconds"] / rating["svdfaiss"]["fit_seconds"]
        report["rating_fit_speedup"] = round(speedup, 2)
        print(f"fit speed-up over surprise: {speedup:.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
