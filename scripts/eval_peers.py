"""Top-N side by side: svdfaiss against implicit's ALS, EASE and the baselines, every method
tuned on the same validation split (carved from train), then scored once on the same test
split (the protocol of docs/evaluation.md).

Grids, chosen on validation NDCG@10:
- svdfaiss: k {16, 32, 64, 128} x weighting {none, binary, log, bm25} x beta {0, 0.25, 0.5};
- implicit ALS: factors {32, 64, 128} x regularization {0.01, 0.1, 1, 10, 100} (implicit does
  not scale regularization by counts, so the grid reaches large values) x alpha {1, 10, 40},
  15 iterations, binary confidence 1 + alpha * x;
- EASE: lambda {10, 50, 100, 250, 500, 1000};
- item-kNN (100 neighbours) and most popular have no parameters.
Needs `pip install -e ".[bench]"` (implicit). Prints a table and writes JSON.

    python scripts/eval_peers.py ../shared/data/ml-latest-small/ratings.csv \
        --json docs/results/peers-ml-latest-small.json
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

from svdfaiss.data import ReadOptions, build_interactions, read_log
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


def score(scorer: Scorer, train: sp.csr_matrix, users: np.ndarray,
          relevant: list[np.ndarray], n_items: int) -> dict[str, float]:
    ranked = recommend_all(scorer, train, users, 20)
    return {**ranking_metrics(ranked, relevant),
            "coverage@10": coverage(ranked, n_items, 10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    inter = build_interactions(read_log(args.input, ReadOptions()), 1, 1, "last")
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

    svd = tune_svd(matrix, TUNE_GRID)
    best = svd["best"]
    start = time.perf_counter()
    model = fit_svd(split.train, best["k"], best["weighting"], best["beta"])
    fit = time.perf_counter() - start
    results["svdfaiss"] = {"params": {k: best[k] for k in ("k", "weighting", "beta")},
                           "validation_ndcg@10": best["ndcg@10"],
                           "fit_seconds": round(fit, 2),
                           "test": score(model.scorer(split.train), split.train,
                                         split.test_users, split.test_items, n_items)}
    print(f"svdfaiss: {results['svdfaiss']['params']}", file=sys.stderr)
    tuned("implicit ALS", [dict(zip(ALS_GRID, v, strict=True))
                           for v in itertools.product(*ALS_GRID.values())], als_scorer)
    if n_items <= 20_000:
        tuned("EASE", [{"lam": lam} for lam in EASE_GRID], ease_scorer)
    tuned("item-kNN", [{}], lambda train: item_knn_scorer(train))
    tuned("most popular", [{}], lambda train: popularity_scorer(train))

    report = {"date": time.strftime("%Y-%m-%d"), "input": str(args.input),
              "users": int(matrix.shape[0]), "items": n_items, "interactions": int(matrix.nnz),
              "test_users": int(split.test_users.size), "methods": results}
    print(f"\n{args.input.name}: {matrix.shape[0]:,} users, {n_items:,} items, "
          f"{split.test_users.size:,} test users")
    print(f"{'method':16}{'ndcg@10':>9}{'recall@20':>11}{'map@10':>9}{'cov@10':>8}  params")
    for name, r in results.items():
        t = r["test"]
        print(f"{name:16}{t['ndcg@10']:>9.4f}{t['recall@20']:>11.4f}{t['map@10']:>9.4f}"
              f"{t.get('coverage@10', float('nan')):>8.3f}  {r['params']}")
    if "EASE" in results:
        ratio = results["svdfaiss"]["test"]["ndcg@10"] / results["EASE"]["test"]["ndcg@10"]
        report["svdfaiss_over_ease_ndcg@10"] = round(ratio, 3)
        print(f"svdfaiss / EASE NDCG@10 = {ratio:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
