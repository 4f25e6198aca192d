"""`svdfaiss evaluate --report DIR`: an HTML page of plots about the data and the model.

Needs matplotlib (the `report` extra). Every figure is a PNG next to `index.html`, so the
folder can be opened from disk or published as it is.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a display, also on a desktop

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
from matplotlib.ticker import NullFormatter

from svdfaiss.data import Interactions
from svdfaiss.evaluation import (
    evaluation_warnings,
    fit_svd,
    holdout_split,
    ranking_metrics,
    recommend_all,
)
from svdfaiss.factorize import Factors, truncated_svd
from svdfaiss.index import IndexParams, build_index, mips_augment, mips_query
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_rows

K_SWEEP = (16, 32, 64, 128, 256)
NPROBES = (1, 2, 4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128, 256)
ANN_QUERIES = 1_000


def _save(fig: Any, directory: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=100)
    plt.close(fig)
    return name


def _distributions(directory: Path, matrix: sp.csr_matrix, explicit: bool) -> str:
    per_user = np.diff(matrix.indptr)
    per_item = np.bincount(matrix.indices, minlength=matrix.shape[1])
    panels = 3 if explicit else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for ax, counts, what in ((axes[0], per_user, "user"), (axes[1], per_item, "item")):
        bins = np.unique(np.logspace(0, np.log10(max(2, counts.max())), 30).astype(int))
        ax.hist(counts[counts > 0], bins=bins.tolist())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"interactions per {what}")
        ax.set_ylabel(f"{what}s")
        ax.set_title(f"median {np.median(counts):g}, max {counts.max():,}")
    if explicit:
        values, counts = np.unique(np.round(matrix.data, 2), return_counts=True)
        axes[2].bar([f"{v:g}" for v in values], counts)
        axes[2].set_xlabel("rating")
        axes[2].set_ylabel("ratings")
        axes[2].set_title(f"mean {matrix.data.mean():.2f}")
    return _save(fig, directory, "distributions.png")


def _long_tail(directory: Path, matrix: sp.csr_matrix) -> tuple[str, float]:
    popularity = np.sort(np.bincount(matrix.indices, minlength=matrix.shape[1]))[::-1]
    share = np.cumsum(popularity) / max(1, popularity.sum())
    items = np.arange(1, popularity.size + 1) / popularity.size
    head = float(share[max(0, int(0.2 * popularity.size) - 1)])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(items, share)
    ax.axvline(0.2, color="grey", linestyle=":")
    ax.set_xlabel("share of items, most popular first")
    ax.set_ylabel("share of interactions")
    ax.set_title(f"the top 20% of items hold {head:.0%} of interactions")
    return _save(fig, directory, "long_tail.png"), head


def _spectrum(directory: Path, matrix: sp.csr_matrix, scheme: str,
              beta: float) -> tuple[str, dict[str, float], Factors]:
    k = min(256, min(matrix.shape) - 1)
    scale, mean_row = item_column_scale(matrix, scheme, beta)
    weighting = WeightingParams(scheme=scheme, beta=beta,  # type: ignore[arg-type]
                                mean_row_length=mean_row)
    factors = truncated_svd(weight_rows(matrix, weighting, scale), k)
    s2 = factors.singular_values.astype(np.float64) ** 2
    energy = np.cumsum(s2) / factors.total_energy
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.semilogy(np.arange(1, k + 1), factors.singular_values, label="singular value")
    ax.set_xlabel("component")
    ax.set_ylabel("singular value")
    twin = ax.twinx()
    twin.plot(np.arange(1, k + 1), energy, color="tab:orange", label="explained energy")
    twin.set_ylabel("cumulative explained energy")
    twin.set_ylim(0, 1)
    ax.set_title(f"{k} components explain {energy[-1]:.1%} of the weighted matrix")
    marks = {f"k={c}": float(energy[c - 1]) for c in K_SWEEP if c <= k}
    return _save(fig, directory, "spectrum.png"), marks, factors


def _against_k(directory: Path, matrix: sp.csr_matrix, scheme: str, beta: float,
               shrinkage: float, k: int) -> tuple[str, list[dict[str, float]], list[np.ndarray]]:
    split = holdout_split(matrix)
    rows, chosen = [], []
    for value in sorted({*K_SWEEP, k}):
        if value >= min(matrix.shape):
            continue
        model = fit_svd(split.train, value, scheme, beta, shrinkage)
        ranked = recommend_all(model.scorer(split.train), split.train, split.test_users, 20)
        metrics = ranking_metrics(ranked, split.test_items)
        rows.append({"k": value, "ndcg@10": metrics["ndcg@10"],
                     "recall@20": metrics["recall@20"]})
        if value == k:
            chosen = ranked
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ks = [r["k"] for r in rows]
    ax.plot(ks, [r["ndcg@10"] for r in rows], marker="o", label="NDCG@10")
    ax.plot(ks, [r["recall@20"] for r in rows], marker="s", label="Recall@20")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (SVD components)")
    ax.set_ylabel("on the test split")
    ax.axvline(k, color="grey", linestyle=":")
    ax.legend()
    ax.set_title(f"weighting {scheme}, beta {beta:g}, shrinkage {shrinkage:g}")
    return _save(fig, directory, "metrics_vs_k.png"), rows, chosen


def _ann_curve(directory: Path, matrix: sp.csr_matrix, scheme: str, beta: float,
               shrinkage: float, k: int,
               spectrum: Factors) -> tuple[str, list[dict[str, Any]]]:
    """recall@10 against exact search, and time per query, as IVF and HNSW settings vary.

    The model is the spectrum's SVD cut to k components when it has that many."""
    model = fit_svd(matrix, k, scheme, beta, shrinkage,
                    factors=spectrum.leading(k) if k <= spectrum.k else None)
    items = mips_augment(model.item_factors)
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(matrix.shape[0], min(ANN_QUERIES, matrix.shape[0]),
                               replace=False))
    queries = mips_query(model.queries(matrix[users]))
    exact = build_index(items, IndexParams(kind="flat"))
    _, truth = exact.search(queries, 10)
    points: list[dict[str, Any]] = []
    ivf = build_index(items, IndexParams(kind="ivf"))
    hnsw = build_index(items, IndexParams(kind="hnsw"))
    for kind, index, knob, values in (("ivf", ivf, "nprobe", NPROBES),
                                      ("hnsw", hnsw, "efSearch", EF_SEARCHES)):
        for value in values:
            if kind == "ivf":
                if value > index.nlist:
                    continue
                index.nprobe = value
            else:
                index.hnsw.efSearch = value
            index.search(queries[:50], 10)  # warm up: the first search pays for allocation
            start = time.perf_counter()
            _, found = index.search(queries, 10)
            ms = 1e3 * (time.perf_counter() - start) / len(users)
            recall = float(np.mean([np.intersect1d(f, t).size / 10
                                    for f, t in zip(found, truth, strict=True)]))
            points.append({"index": kind, knob: value, "recall@10": recall, "ms": ms})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, marker in (("ivf", "o"), ("hnsw", "s")):
        mine = [p for p in points if p["index"] == kind]
        ax.plot([p["ms"] for p in mine], [p["recall@10"] for p in mine], marker=marker,
                label=f"{kind} ({'nprobe' if kind == 'ivf' else 'efSearch'} varies)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
    ax.set_xlabel("ms per query (batched, this machine)")
    ax.set_ylabel("recall@10 against exact")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title(f"{len(users):,} user queries over {matrix.shape[1]:,} items")
    return _save(fig, directory, "ann_curve.png"), points


def _popularity(directory: Path, matrix: sp.csr_matrix,
                ranked: list[np.ndarray]) -> tuple[str, dict[str, float]]:
    popularity = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
    recommended = np.concatenate([r[:10] for r in ranked] or [np.empty(0, dtype=np.int64)])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.unique(np.logspace(0, np.log10(max(2.0, popularity.max())), 30).astype(int))
    ax.hist(popularity[popularity > 0], bins=bins.tolist(), density=True, alpha=0.5,
            label="catalog")
    if recommended.size:
        ax.hist(np.maximum(popularity[recommended], 1), bins=bins.tolist(), density=True, alpha=0.5,
                label="recommended (top 10)")
    ax.set_xscale("log")
    ax.set_xlabel("item popularity (interactions)")
    ax.set_ylabel("density")
    ax.legend()
    medians = {"catalog": float(np.median(popularity)),
               "recommended": float(np.median(popularity[recommended]))
               if recommended.size else 0.0}
    ax.set_title(f"median popularity: catalog {medians['catalog']:g}, "
                 f"recommended {medians['recommended']:g}")
    return _save(fig, directory, "popularity.png"), medians


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return html.escape(f"{value:.4f}" if isinstance(value, float) else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# The protocol's fields as the report names them, in this order; others follow as they are.
PROTOCOL_LABELS = {
    "split": "split", "test_fraction": "share of each test user held out",
    "seed": "seed", "min_interactions": "interactions a user needs to be tested",
    "candidates": "candidates", "cutoffs": "cutoffs", "users": "users", "items": "items",
    "interactions": "interactions", "test_users": "test users",
    "test_interactions": "test interactions", "input": "input", "feedback": "feedback",
    "removed_by_min_rating": "ratings removed by --min-rating", "skipped": "skipped",
}


def _protocol_value(key: str, value: Any, protocol: dict[str, Any]) -> str:
    if key == "test_users" and protocol.get("users"):
        return f"{value:,} of {protocol['users']:,} ({value / protocol['users']:.1%})"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def _protocol_table(protocol: dict[str, Any]) -> str:
    """The evaluation protocol as a two-column table: what, and its value."""
    keys = [k for k in PROTOCOL_LABELS if k in protocol] + [
        k for k in protocol if k not in PROTOCOL_LABELS]
    rows = "".join(
        f"<tr><th>{html.escape(PROTOCOL_LABELS.get(k, k.replace('_', ' ')))}</th>"
        f"<td>{html.escape(_protocol_value(k, protocol[k], protocol))}</td></tr>"
        for k in keys)
    return f"<table class='protocol'>{rows}</table>"


def write_report(directory: Path, inter: Interactions, report: dict[str, Any], k: int,
                 scheme: str, beta: float, shrinkage: float) -> Path:
    """Draw every figure into `directory` and write `index.html`; returns the page."""
    directory.mkdir(parents=True, exist_ok=True)
    matrix = inter.matrix
    figures: list[tuple[str, str, str]] = []
    name = _distributions(directory, matrix, inter.feedback == "explicit")
    figures.append(("Interactions and ratings", name,
                    "How many interactions users and items have (log scales)."))
    name, head = _long_tail(directory, matrix)
    figures.append(("The long tail", name,
                    f"The most popular 20% of items hold {head:.0%} of interactions."))
    name, energy, spectrum = _spectrum(directory, matrix, scheme, beta)
    figures.append(("Singular value spectrum", name,
                    "Explained energy at k: " + ", ".join(f"{c} {e:.1%}"
                                                          for c, e in energy.items())))
    name, sweep, ranked = _against_k(directory, matrix, scheme, beta, shrinkage, k)
    figures.append(("Metrics against k", name, _table(["k", "ndcg@10", "recall@20"],
                                                      [list(r.values()) for r in sweep])))
    name, points = _ann_curve(directory, matrix, scheme, beta, shrinkage, k, spectrum)
    figures.append(("ANN recall against latency", name, _table(
        ["index", "setting", "recall@10", "ms/query"],
        [[p["index"], p.get("nprobe", p.get("efSearch")), p["recall@10"], p["ms"]]
         for p in points])))
    name, medians = _popularity(directory, matrix, ranked)
    figures.append(("Popularity of recommended items", name,
                    f"Median popularity of the catalog {medians['catalog']:g}, of the "
                    f"items svdfaiss recommends {medians['recommended']:g}."))
    methods = list(report["topn"])
    metrics = [m for m in next(iter(report["topn"].values())) if m.endswith(("@10", "@20"))]
    sections = [
        "<h2>Top-N on the random holdout</h2>",
        _table(["metric", *methods], [[m, *(report["topn"][x][m] for x in methods)]
                                      for m in metrics]),
    ]
    if "leave_last_out" in report:
        last = report["leave_last_out"]["topn"]
        sections += ["<h2>Top-N, leave last out</h2>",
                     _table(["metric", *last], [[m, *(last[x][m] for x in last)]
                                                for m in metrics])]
    if "rating" in report:
        sections += ["<h2>Rating prediction (5 folds)</h2>",
                     _table(["method", "rmse", "mae", "fit seconds"],
                            [[n, r["rmse"], r["mae"], r["fit_seconds"]]
                             for n, r in report["rating"].items()])]
    for title, image, caption in figures:
        text = caption if caption.startswith("<table>") else html.escape(caption)
        sections.append(f"<h2>{html.escape(title)}</h2><img src='{image}' alt='"
                        f"{html.escape(title)}'><div>{text}</div>")
    warnings = report.get("warnings")
    if warnings is None:
        warnings = evaluation_warnings(report)
    notes = "".join(f"<p class='warning'><b>Warning:</b> {html.escape(w)}</p>"
                    for w in warnings)
    protocol = "<h2>Protocol</h2>" + _protocol_table(report["protocol"])
    if "leave_last_out" in report:
        protocol += ("<h3>Leave last out</h3>"
                     + _protocol_table(report["leave_last_out"]["protocol"]))
    page = directory / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>svdfaiss evaluation</title>"
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}img{max-width:100%}"
        ".warning{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}"
        "table.protocol td{text-align:left}</style></head><body>"
        f"<h1>svdfaiss evaluation: {inter.n_users:,} users, {inter.n_items:,} items, "
        f"{matrix.nnz:,} interactions</h1><p>Model: k {k}, weighting {html.escape(scheme)}, "
        f"beta {beta:g}, shrinkage {shrinkage:g}.</p>{notes}{protocol}"
        + "".join(sections) + "</body></html>\n", encoding="utf-8")
    return page
