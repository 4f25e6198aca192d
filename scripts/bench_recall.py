"""Recommendation recall@10 against exact scoring and single-query latency, old vs new default.

For each shape: generate the log (`svdfaiss synth`), build a bundle with this checkout's
default recommendation index (`svdfaiss build`, the shape's flags), load it, and on the same
sampled users (seen items excluded) measure side by side:
- old default: one MIPS reduction over all items, IVF with spherical k-means (the index
  every bundle had before norm bands), built in-process over the bundle's item vectors;
- new default: the bundle's own index as the service loads it (banded: exact head plus IVF);
- flat: exact search (`--rec-index flat`), for latency only (its recall is 1 by definition).
Latency: one query at a time through query.retrieval.top_k, OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 python scripts/bench_recall.py --work /tmp/recall-bench \\
        --json docs/results/recall-scale.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from results import write_result  # noqa: E402
from svdfaiss import bundle, evidence, recall  # noqa: E402
from svdfaiss.index import IndexParams, build_index, mips_augment  # noqa: E402
from svdfaiss.query.model import LoadedModel  # noqa: E402
from svdfaiss.query.retrieval import Space, top_k  # noqa: E402
from svdfaiss.query.vectors import seen_items, user_vector  # noqa: E402

# The recommendation index of every bundle before norm bands (builder.py at 3e677e3).
OLD_DEFAULT = IndexParams(kind="auto", flat_max=25_000, hnsw_max=0)

SHAPES: dict[str, dict[str, Any]] = {
    "1m": {"synth": ["--users", "1500000", "--items", "1000000", "--events", "6000000",
                     "--categories", "20", "--every-item"],
           "build": ["--index", "ivf", "--ivf-nlist", "4096", "--ivf-nprobe", "16"],
           "about": "scripts/bench_service.py's 1M-item bundle and its IVF flags"},
    "amazon": {"synth": ["--users", "4200000", "--items", "476000", "--events", "7800000",
                         "--categories", "20", "--single-event-share", "0.7"],
               "build": [], "about": "the Amazon shape of scripts/bench_build.py, defaults"},
    "shop300k": {"synth": ["--users", "600000", "--items", "300000", "--events", "3000000",
                           "--categories", "20"],
                 "build": [], "about": "a generated 300k-item shop log, defaults"},
}


def latency_and_recall(space: Space, queries: np.ndarray, seen: list[np.ndarray],
                       kth: np.ndarray) -> dict[str, float]:
    hits, seconds = 0, []
    for q, s, t in zip(queries, seen, kth, strict=True):
        start = time.perf_counter()
        scores, _ = top_k(space, q, 10, None, s)
        seconds.append(time.perf_counter() - start)
        hits += int(np.count_nonzero(scores >= t - 1e-4 * abs(float(t))))
    ms = np.asarray(seconds) * 1e3
    return {"recall_at_10": round(hits / (10 * len(seen)), 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def run_shape(name: str, work: Path, queries: int) -> dict[str, Any]:
    shape = SHAPES[name]
    data, index_dir = work / name / "data", work / name / "new"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    if not (data / "events.csv").exists():
        subprocess.run([sys.executable, "-m", "svdfaiss", "synth", "--out", str(data),
                        *shape["synth"]], check=True, env=env)
    if not index_dir.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "svdfaiss", "build", str(data / "events.csv"),
                        "--model", "m", "--out", str(index_dir), "--user-index", "none",
                        "--similar-cache", "0", *shape["build"]], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        print(f"{name}: built in {time.perf_counter() - start:.0f} s", flush=True)
    version_dir, manifest = bundle.current_bundle(bundle.model_dir(index_dir, "m"))
    model = LoadedModel.open_version(version_dir, manifest, verify=False)
    vectors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    eligible = evidence.users_with_evidence(
        np.load(version_dir / "item_component.npy"), model.rows)
    users = recall.sample_users(eligible, queries, seed=12345)  # not the builder's sample
    q = np.stack([user_vector(model, int(u)) for u in users]).astype(np.float32)
    seen = [seen_items(model, int(u)) for u in users]
    kth = recall.exact_kth(vectors, q, seen)
    meta = manifest["indexes"]["items_mips"]
    old_params = dataclasses.replace(OLD_DEFAULT, ivf_nlist=meta["params"]["ivf_nlist"]
                                     if name == "1m" else 0,
                                     ivf_nprobe=16 if name == "1m" else 32)
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    old = build_index(mips_augment(vectors), old_params)
    old_build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(vectors.shape[1] + 1)
    flat.add(mips_augment(vectors))
    rows = {
        "old default (IVF, one MIPS reduction)": {
            **latency_and_recall(recall.rec_space(old, vectors), q, seen, kth),
            "index": f"ivf nlist {old.nlist} nprobe {old.nprobe}",
            "build_s": round(old_build, 1)},
        "new default (as loaded from the bundle)": {
            **latency_and_recall(model._mips, q, seen, kth),
            "index": f"{meta['type']} head {meta.get('head_rows', 0)} "
                     f"nlist {meta['params']['ivf_nlist']} nprobe {meta['params']['ivf_nprobe']}",
            "build_s": round(manifest["timings_seconds"].get("index items", 0.0), 1),
            "builder_recall_at_10": meta.get("recall_at_10")},
        "flat (exact, --rec-index flat)": {
            **latency_and_recall(recall.rec_space(flat, vectors), q, seen, kth),
            "index": "flat"},
    }
    return {"shape": shape["about"], "synth": shape["synth"], "build_flags": shape["build"],
            "users": model.n_users, "items": model.n_items, "queries": len(seen),
            "manifest_recall": meta.get("recall"), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recall-bench"))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    print(f"{'shape':9} {'index':42} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name in args.shapes:
        out[name] = run_shape(name, args.work, args.queries)
        for label, row in out[name]["rows"].items():
            print(f"{name:9} {label:42} {row['recall_at_10']:9.4f} {row['p50_ms']:8.3f} "
                  f"{row['p99_ms']:8.3f}  {row['index']}", flush=True)
        write_result(args.json, machine=os.uname().machine, cpus=os.cpu_count(),
                     omp_num_threads=os.environ.get("OMP_NUM_THREADS"), shapes=out)


if __name__ == "__main__":
    main()
