"""Re-score the test metrics of a peers JSON (scripts/eval_peers.py) with each method's
recorded parameters, without re-tuning.

Tuning chooses by validation NDCG@10, so a change to another metric's definition (MAP@k
now divides by every relevant item, trec_eval's map_cut_k) leaves every choice as it was;
this re-fits each chosen configuration on the same test split (seed 42), checks that
NDCG@10 reproduces the recorded figure, and replaces the `test` metrics in the JSON. The
tuning and fit seconds, and the rating part, are kept from the original run.

    python scripts/rescore_peers.py ../shared/data/ml-latest-small/ratings.csv \
        --json docs/results/peers-ml-latest-small.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from eval_peers import als_scorer, score
from svdfaiss.autotune import tune_matrix
from svdfaiss.builder import BuildConfig
from svdfaiss.data import ReadOptions, build_interactions, read_log
from svdfaiss.evaluation import (
    ease_scorer,
    fit_svd,
    holdout_split,
    item_knn_scorer,
    popularity_scorer,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--why", default="map@k divides by every relevant item (trec_eval "
                        "map_cut)", help="Why the figures were re-scored (recorded).")
    parser.add_argument("--tolerance", type=float, default=0.002,
                        help="Largest NDCG@10 change accepted as a reproduction (ALS varies).")
    args = parser.parse_args()
    report: dict[str, Any] = json.loads(args.json.read_text())
    inter = build_interactions(read_log(args.input, ReadOptions()), 1, 1, "last")
    split = holdout_split(inter.matrix)
    n_items = inter.matrix.shape[1]
    for name, method in report["methods"].items():
        params = method["params"]
        if name == "svdfaiss defaults (auto-tuned)":  # the build's tuning, re-run on train
            config = BuildConfig(input=args.input, model="peers", index_dir=Path("."))
            chosen = tune_matrix(split.train, inter.feedback, config).record["chosen"]
            if chosen != params:
                raise SystemExit(f"{name}: the tuning now chooses {chosen}, not {params}")
        if name.startswith("svdfaiss"):
            model = fit_svd(split.train, params["k"], params["weighting"], params["beta"],
                            params["shrinkage"])
            scorer = model.scorer(split.train)
        elif name == "implicit ALS":
            scorer = als_scorer(split.train, **params)
        elif name == "EASE":
            scorer = ease_scorer(split.train, **params)
        elif name == "item-kNN":
            scorer = item_knn_scorer(split.train)
        else:
            scorer = popularity_scorer(split.train)
        test = score(scorer, split.train, split.test_users, split.test_items, n_items)
        before = method["test"]
        drift = abs(test["ndcg@10"] - before["ndcg@10"])
        print(f"{name:18} ndcg@10 {before['ndcg@10']:.4f} -> {test['ndcg@10']:.4f}   "
              f"map@10 {before['map@10']:.4f} -> {test['map@10']:.4f}")
        if drift > args.tolerance:
            raise SystemExit(f"{name}: NDCG@10 moved by {drift:.4f}; not a reproduction")
        method["test"] = test
    report["rescored"] = {"date": time.strftime("%Y-%m-%d %H:%M"),
                          "why": args.why}
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
