"""Neural models side by side with svdfaiss and its peers, on the protocol of
docs/evaluation.md (scripts/eval_peers.py): the same test split (seed 42) and the same
validation split carved from its train (seed 43).

- Mult-VAE and ELSA (svdfaiss.neural) are tuned on that validation split: each grid point
  (`GRIDS`, or `--grid ALGO:NAME=V1,V2;NAME=V1,...` for any NeuralParams field) trains on
  the validation train rows, stopping early on the validation held-out items (NDCG@10)
  after `--patience` epochs without a better one, or at `--max-epochs`, or when
  `--time-budget` seconds are spent. The winner is then trained as `svdfaiss build
  --algorithm NAME` trains it (on the test split's train rows, stopping early on a split it
  carves from them) and scored once on the test split. Every training records what
  stopped it (`stopped_by`: patience, time_budget, max_epochs); a converged comparison is
  one where none stopped on the budget. `--refit` also trains each winner on all the test
  split's train rows for the epochs its final fit chose (the build's early stopping holds
  20% of its users' rows out) and scores that too, under `refit_on_all_rows`.
- The peers are re-fitted in the same run with the parameters scripts/eval_peers.py chose
  on the same validation split (read from its JSON: `--peers`), so fit times compare on one
  machine state; their NDCG@10 is checked against the recorded figure.
- Bundle size and query latency: `svdfaiss build` with no flags and with `--algorithm
  NAME` (the chosen parameters) on all rows; size of the published folder; latency of
  `Recommender.recommend` (k 10, one thread) for 300 users with evidence, p50 and p95.
  The neural bundles for this are trained for at most `--bundle-budget` seconds (size and
  latency do not depend on the epochs).

    python scripts/eval_neural.py ../shared/data/ml-latest-small/ratings.csv \
        --peers docs/results/peers-ml-latest-small.json \
        --json docs/results/neural-ml-latest-small.json \
        --grid 'elsa:dim=256,512;lr=1e-3,3e-3,1e-2'
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np

from eval_peers import als_scorer, score
from svdfaiss import evidence
from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import ReadOptions, build_interactions, decode_ids, read_log
from svdfaiss.evaluation import (
    ease_scorer,
    fit_svd,
    holdout_split,
    item_knn_scorer,
    popularity_scorer,
)
from svdfaiss.neural import NeuralParams, binary, train
from svdfaiss.recommender import Recommender

GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "multvae": {"dim": (200,), "hidden": (600,), "lr": (1e-3, 3e-3), "dropout": (0.5,)},
    "elsa": {"dim": (256,), "lr": (1e-3, 1e-2)},
}
LATENCY_USERS = 300


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_grid(text: str) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """`ALGO:NAME=V1,V2;NAME=V1` as (algorithm, {name: values}); values are ints when they
    read as ints, else floats."""
    algorithm, _, body = text.partition(":")
    fields = {f.name for f in dataclasses.fields(NeuralParams)} - {"algorithm"}
    grid: dict[str, tuple[Any, ...]] = {}
    for part in filter(None, body.split(";")):
        name, _, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if algorithm not in GRIDS or name not in fields or not values:
            raise SystemExit(f"--grid {text!r}: want ALGO:NAME=V1,V2;... with ALGO one of "
                             f"{', '.join(GRIDS)} and NAME one of {', '.join(sorted(fields))}")
        grid[name] = tuple(int(v) if v.strip().lstrip("-").isdigit() else float(v)
                           for v in values.split(","))
    return algorithm, grid


def tune_neural(algorithm: str, split: Any, validation: Any, base: NeuralParams,
                grid: dict[str, tuple[Any, ...]], refit: bool = False) -> dict[str, Any]:
    """Grid on the validation split, then the build's training of the winner, scored on test."""
    n_items = split.train.shape[1]
    trials = []
    start = time.perf_counter()
    base = replace(base, algorithm=algorithm)  # type: ignore[arg-type]
    for values in itertools.product(*grid.values()):
        params = replace(base, **dict(zip(grid, values, strict=True)))
        model = train(validation.train, params,
                      validation=(validation.train, validation.test_users,
                                  validation.test_items))
        # binary rows: what the model trained on and what its bundle folds in (not ratings)
        val = score(lambda rows, m=model: m.scores(binary(validation.train[rows])),
                    validation.train, validation.test_users, validation.test_items,
                    n_items)["ndcg@10"]
        if abs(val - model.training["best_validation_ndcg@10"]) > 1e-4:  # the same split
            log(f"warning: validation ndcg@10 {val:.5f} but training's best epoch had "
                f"{model.training['best_validation_ndcg@10']:.5f}")
        trials.append({"params": dict(zip(grid, values, strict=True)),
                       "validation_ndcg@10": val, "epochs": model.training["epochs"],
                       "best_epoch": model.training["best_epoch"],
                       "updates": model.training["updates"],
                       "stopped": model.training["stopped"],
                       "stopped_by": model.training["stopped_by"],
                       "seconds": model.training["seconds"]})
        log(f"{algorithm} {trials[-1]['params']}: validation ndcg@10 {val:.4f} "
            f"({model.training['epochs']} epochs, best {model.training['best_epoch']}, "
            f"{model.training['seconds']:.1f} s, {model.training['stopped']})")
    tuning = time.perf_counter() - start
    best = max(trials, key=lambda t: t["validation_ndcg@10"])
    params = replace(base, **best["params"])
    start = time.perf_counter()
    model = train(split.train, params, progress=None)  # as `svdfaiss build` trains it
    fit = time.perf_counter() - start
    test = score(lambda rows: model.scores(binary(split.train[rows])), split.train,
                 split.test_users, split.test_items, n_items)
    log(f"{algorithm}: test ndcg@10 {test['ndcg@10']:.4f} ({model.training['epochs']} epochs, "
        f"best {model.training['best_epoch']}, {fit:.1f} s, {model.training['stopped']})")
    refitted: dict[str, Any] | None = None
    if refit:  # the build's early stopping holds out 20% of its users' rows: train on all
        epochs = model.training["best_epoch"]
        start = time.perf_counter()
        again = train(split.train, params, epochs_on_all_rows=epochs)
        refitted = {"epochs": epochs, "fit_seconds": round(time.perf_counter() - start, 2),
                    "stopped_by": again.training["stopped_by"],
                    "test": score(lambda rows: again.scores(binary(split.train[rows])),
                                  split.train, split.test_users, split.test_items, n_items)}
        log(f"{algorithm} refit on all train rows for {epochs} epochs: test ndcg@10 "
            f"{refitted['test']['ndcg@10']:.4f}")
    return {"params": best["params"], "grid": {k: list(v) for k, v in grid.items()},
            "validation_ndcg@10": best["validation_ndcg@10"],
            "tuning_seconds": round(tuning, 1), "fit_seconds": round(fit, 2),
            "trials": trials, "training": {k: v for k, v in model.training.items()
                                           if k != "history"},
            "test": test, "refit_on_all_rows": refitted}


def refit_peers(peers: dict[str, Any], split: Any) -> dict[str, Any]:
    """The peers with their recorded tuned parameters, fitted and scored in this run."""
    n_items = split.train.shape[1]
    makers: dict[str, Any] = {
        "svdfaiss": lambda p: fit_svd(split.train, p["k"], p["weighting"], p["beta"],
                                      p["shrinkage"]).scorer(split.train),
        "svdfaiss --no-tune": lambda p: fit_svd(split.train, p["k"], p["weighting"],
                                                p["beta"], p["shrinkage"]).scorer(split.train),
        "EASE": lambda p: ease_scorer(split.train, **p),
        "implicit ALS": lambda p: als_scorer(split.train, **p),
        "item-kNN": lambda p: item_knn_scorer(split.train),
        "most popular": lambda p: popularity_scorer(split.train),
    }
    out: dict[str, Any] = {}
    for name, make in makers.items():
        if name not in peers:
            continue
        params = peers[name]["params"]
        try:
            start = time.perf_counter()
            scorer = make(params)
            fit = time.perf_counter() - start
        except ImportError as exc:  # implicit is the bench extra
            log(f"{name}: not re-fitted ({exc}); recorded figures kept")
            out[name] = {**peers[name], "refit": False}
            continue
        test = score(scorer, split.train, split.test_users, split.test_items, n_items)
        recorded = peers[name]["test"]["ndcg@10"]
        out[name] = {"params": params, "fit_seconds": round(fit, 2), "test": test,
                     "refit": True, "recorded_ndcg@10": recorded,
                     "validation_ndcg@10": peers[name].get("validation_ndcg@10")}
        log(f"{name}: test ndcg@10 {test['ndcg@10']:.4f} (recorded {recorded:.4f}), "
            f"fit {fit:.2f} s")
    return out


def bundle_figures(path: Path, config: BuildConfig, tmp: Path) -> dict[str, Any]:
    """Build a bundle on all rows; its size on disk and recommend() latency."""
    start = time.perf_counter()
    report = build(replace(config, index_dir=tmp, model="m"))
    build_seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in report.path.iterdir() if f.is_file())
    rec = Recommender.load(tmp, "m")
    components = np.asarray(rec.evidence.components) if rec.evidence.components is not None \
        else None
    with_evidence = (evidence.users_with_evidence(components, rec.rows)
                     if components is not None else np.ones(rec.n_users, dtype=bool))
    users = np.flatnonzero(with_evidence)
    users = np.random.default_rng(0).choice(users, min(LATENCY_USERS, users.size),
                                            replace=False)
    ids = decode_ids(rec.user_ids[np.sort(users)])
    for user in ids[:20]:  # warm up
        rec.recommend(user, 10)
    times = []
    for user in ids:
        t = time.perf_counter()
        rec.recommend(user, 10)
        times.append(time.perf_counter() - t)
    basket = []
    for user in ids[:100]:
        items = decode_ids(rec.item_ids[rec.seen_items(rec.user_index(user))[:5]])
        t = time.perf_counter()
        rec.recommend_for_items(items, 10)
        basket.append(time.perf_counter() - t)
    shutil.rmtree(tmp / "m")
    return {"bundle_bytes": size, "build_seconds": round(build_seconds, 1),
            "recommend_p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
            "recommend_p95_us": round(float(np.percentile(times, 95)) * 1e6, 1),
            "basket_p50_us": round(float(np.percentile(basket, 50)) * 1e6, 1),
            "users_timed": len(ids), "neural": report.manifest.get("neural") and {
                k: v for k, v in report.manifest["neural"]["training"].items()
                if k != "history"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--peers", type=Path, required=True,
                        help="scripts/eval_peers.py's JSON for this dataset (tuned params)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--algorithms", default="multvae,elsa")
    parser.add_argument("--time-budget", type=float, default=900.0,
                        help="seconds per training (each grid point and the final fit)")
    parser.add_argument("--patience", type=int, default=NeuralParams.patience,
                        help="epochs without a better validation NDCG@10 before stopping")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--grid", action="append", default=[], metavar="ALGO:NAME=V1,V2;...",
                        help="replace ALGO's grid (repeat for each algorithm)")
    parser.add_argument("--refit", action="store_true",
                        help="also train each winner on all the test split's train rows for "
                             "its final fit's best epoch count, and score that on test")
    parser.add_argument("--bundle-budget", type=float, default=30.0)
    args = parser.parse_args()
    grids = dict(GRIDS)
    grids.update(parse_grid(text) for text in args.grid)
    import torch

    torch.set_num_threads(1)
    inter = build_interactions(read_log(args.input, ReadOptions()), 1, 1, "last")
    matrix = inter.matrix
    split = holdout_split(matrix)
    validation = holdout_split(split.train, seed=43)
    peers = json.loads(args.peers.read_text())["methods"]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "input": str(args.input),
        "users": int(matrix.shape[0]), "items": int(matrix.shape[1]),
        "interactions": int(matrix.nnz), "test_users": int(split.test_users.size),
        "machine": f"{os.cpu_count()} cores, shared with other work",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "time_budget_seconds": args.time_budget, "patience": args.patience,
        "max_epochs": args.max_epochs, "torch_threads": 1, "torch": str(torch.__version__)}
    neural_base = NeuralParams(time_budget=args.time_budget, patience=args.patience,
                               max_epochs=args.max_epochs, threads=1)
    methods = refit_peers(peers, split)
    chosen: dict[str, dict[str, Any]] = {}
    for algorithm in args.algorithms.split(","):
        methods[algorithm] = tune_neural(algorithm, split, validation, neural_base,
                                         grids[algorithm], args.refit)
        chosen[algorithm] = methods[algorithm]["params"]
    report["methods"] = methods
    bundles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = BuildConfig(input=args.input, model="m", index_dir=Path(tmp))
        bundles["svdfaiss"] = bundle_figures(args.input, base, Path(tmp))
        log(f"bundle svdfaiss: {bundles['svdfaiss']}")
        for algorithm, params in chosen.items():
            neural = replace(neural_base, algorithm=algorithm,  # type: ignore[arg-type]
                             time_budget=args.bundle_budget, **params)
            config = replace(base, algorithm=algorithm, neural=neural)  # type: ignore[arg-type]
            bundles[algorithm] = bundle_figures(args.input, config, Path(tmp))
            log(f"bundle {algorithm}: {bundles[algorithm]}")
    report["bundles"] = bundles
    report["neural_params"] = {a: asdict(replace(neural_base, algorithm=a, **p))  # type: ignore[arg-type]
                               for a, p in chosen.items()}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\n{args.input}: {matrix.shape[0]:,} users, {matrix.shape[1]:,} items, "
          f"{split.test_users.size:,} test users")
    print(f"{'method':20}{'ndcg@10':>9}{'recall@20':>11}{'fit s':>8}  params")
    for name, r in methods.items():
        t = r["test"]
        trained = (f"  ({r['training']['epochs']} epochs, best {r['training']['best_epoch']}, "
                   f"stopped by {r['training']['stopped_by']})" if "training" in r else "")
        print(f"{name:20}{t['ndcg@10']:>9.4f}{t['recall@20']:>11.4f}{r['fit_seconds']:>8.2f}"
              f"  {r['params']}{trained}")
    if "EASE" in methods:
        for algorithm in chosen:
            ratio = methods[algorithm]["test"]["ndcg@10"] / methods["EASE"]["test"]["ndcg@10"]
            report[f"{algorithm}_over_ease_ndcg@10"] = round(ratio, 3)
            print(f"{algorithm} / EASE NDCG@10 = {ratio:.3f}")
            refitted = methods[algorithm]["refit_on_all_rows"]
            if refitted is not None:
                ratio = refitted["test"]["ndcg@10"] / methods["EASE"]["test"]["ndcg@10"]
                report[f"{algorithm}_refit_over_ease_ndcg@10"] = round(ratio, 3)
                print(f"{algorithm} refit on all rows: NDCG@10 "
                      f"{refitted['test']['ndcg@10']:.4f}, recall@20 "
                      f"{refitted['test']['recall@20']:.4f}, / EASE = {ratio:.3f}")
    print(f"\n{'bundle':12}{'MB':>8}{'build s':>9}{'p50 us':>9}{'p95 us':>9}{'basket p50':>12}")
    for name, b in bundles.items():
        print(f"{name:12}{b['bundle_bytes'] / 1e6:>8.1f}{b['build_seconds']:>9.1f}"
              f"{b['recommend_p50_us']:>9.0f}{b['recommend_p95_us']:>9.0f}"
              f"{b['basket_p50_us']:>12.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
