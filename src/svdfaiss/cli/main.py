"""The `svdfaiss` command line: parses flags, calls the library, prints results."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from svdfaiss import __version__, bundle
from svdfaiss.errors import InvalidBundle, InvalidInput, NoBundle, UnknownItem, UnknownUser

app = typer.Typer(
    help="SVD embeddings of an interaction log, served from persisted FAISS indexes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bundles_app = typer.Typer(help="List, show, verify, garbage-collect and roll back bundles.",
                          no_args_is_help=True)
query_app = typer.Typer(help="Query the current bundle of a model from the command line.",
                        no_args_is_help=True)
app.add_typer(bundles_app, name="bundles")
app.add_typer(query_app, name="query")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_CODES: dict[type[Exception], int] = {
    InvalidInput: 2,
    UnknownItem: 3,
    UnknownUser: 3,
    NoBundle: 4,
    InvalidBundle: 5,
}
DEFAULT_INDEX_DIR = Path("indexes")

F = TypeVar("F", bound=Callable[..., Any])


def _clean_errors(func: F) -> F:
    """Domain errors end the command with their message and a distinct exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except tuple(EXIT_CODES) as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            code = next(c for t, c in EXIT_CODES.items() if isinstance(exc, t))
            raise typer.Exit(code) from None
        except MemoryError:
            err.print("[bold red]error:[/] out of memory; lower --k or filter more rows")
            raise typer.Exit(6) from None
        except OSError as exc:  # a full disk, a file size limit, a permission
            err.print(f"[bold red]error:[/] {escape(str(exc))}; nothing was published")
            raise typer.Exit(7) from None

    return wrapper  # type: ignore[return-value]


IndexDirOpt = Annotated[Path, typer.Option("--index-dir", "--out", help="Folder of bundles.",
                                           envvar="SVDFAISS_INDEX_DIR")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model name.", envvar="SVDFAISS_MODEL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KOpt = Annotated[int, typer.Option("--k", min=1, max=100_000, help="Number of results.")]
ListOpt = Annotated[list[str] | None, typer.Option(help="Repeatable.")]
InputArg = Annotated[Path, typer.Argument(metavar="INPUT",
                                          help="Interactions: CSV, TSV or Parquet.")]
FormatOpt = Annotated[str, typer.Option("--format", help="auto|csv|tsv|parquet")]
FeedbackOpt = Annotated[str, typer.Option(help="auto|explicit|implicit")]
CategoryOpt = Annotated[str | None, typer.Option(help="Only items of this catalog category.")]
MinPriceOpt = Annotated[float | None, typer.Option(min=0.0, help="Catalog price at least.")]
MaxPriceOpt = Annotated[float | None, typer.Option(min=0.0, help="Catalog price at most.")]
InStockOpt = Annotated[bool | None, typer.Option(
    "--in-stock/--out-of-stock", help="Only items in stock, or only items out of stock.")]
ComponentsOpt = Annotated[int | None, typer.Option(
    "--k", min=1, help="SVD components (default: 128 up to 100k items, 64 above).")]
ShrinkageOpt = Annotated[float, typer.Option(
    min=0.0, help="EASE-style shrinkage lambda, in mean column energies (0: plain SVD).")]
NoValueOpt = Annotated[bool, typer.Option("--no-value",
                                          help="Ignore any value column: one row, one event.")]


def version_callback(value: bool) -> None:
    if value:
        out.print(f"svdfaiss {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """svdfaiss: from an interaction log to similar items and recommendations."""


# ---------------------------------------------------------------------------- synth


@app.command()
@_clean_errors
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for events.csv and items.csv.")],
    users: Annotated[int, typer.Option(min=2)] = 5_000,
    items: Annotated[int, typer.Option(min=2)] = 2_000,
    events: Annotated[int, typer.Option(min=2)] = 100_000,
    categories: Annotated[int, typer.Option(min=1)] = 12,
    single_event_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.4,
    explicit: Annotated[bool, typer.Option(help="Write 1-5 ratings instead of quantities.")]
    = False,
    every_item: Annotated[bool, typer.Option(
        help="Every catalog item gets at least one event (needs --events >= --items).")]
    = False,
    seed: int = 42,
) -> None:
    """Generate a sample catalog and event log with planted structure (deterministic)."""
    from svdfaiss.synthetic import SampleSpec, write_sample

    spec = SampleSpec(users=users, items=items, events=events, categories=categories,
                      seed=seed, single_event_share=single_event_share, explicit=explicit,
                      every_item=every_item)
    files = write_sample(spec, out_dir)
    out.print(f"wrote {files.rows:,} events to {files.events} and {items:,} items to "
              f"{files.catalog}")


# ---------------------------------------------------------------------------- build


@contextlib.contextmanager
def _stage_status(name: str) -> Iterator[None]:
    """A spinner naming the running stage, only when stderr is a terminal."""
    if err.is_terminal:
        with err.status(f"{name}..."):
            yield
    else:
        yield


@app.command()
@_clean_errors
def build(
    input_path: InputArg,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    fmt: FormatOpt = "auto",
    header: Annotated[bool | None, typer.Option("--header/--no-header",
                                                help="Default: detected.")] = None,
    delimiter: Annotated[str | None, typer.Option(help="Default: detected (',' or tab).")]
    = None,
    user_col: Annotated[str | None, typer.Option(help="Name or 0-based number.")] = None,
    item_col: Annotated[str | None, typer.Option(help="Name or 0-based number.")] = None,
    value_col: Annotated[str | None, typer.Option(help="Rating or count column.")] = None,
    timestamp_col: Annotated[str | None, typer.Option()] = None,
    no_value: NoValueOpt = False,
    feedback: FeedbackOpt = "auto",
    duplicates: Annotated[str, typer.Option(
        help="Explicit ratings given twice: last (by timestamp, then file order) or mean. "
             "Implicit counts always sum.")] = "last",
    strict: Annotated[bool, typer.Option(help="Any unusable row is an error.")] = False,
    min_user_interactions: Annotated[int, typer.Option(min=1)] = 1,
    min_item_interactions: Annotated[int, typer.Option(min=1)] = 1,
    weighting: Annotated[str, typer.Option(help="auto|none|binary|log|bm25")] = "auto",
    beta: Annotated[float, typer.Option(help="Item popularity scaling n_j^-beta, in [0, 1].")]
    = 0.0,
    k: ComponentsOpt = None,
    shrinkage: ShrinkageOpt = 30.0,
    gamma: Annotated[float, typer.Option(help="Item vectors for similarity: V S^gamma.")] = 1.0,
    solver: Annotated[str, typer.Option(help="arpack|randomized")] = "arpack",
    index: Annotated[str, typer.Option("--index", help="auto|flat|hnsw|ivf (similar items).")]
    = "auto",
    rec_index: Annotated[str, typer.Option(
        help="auto|flat|hnsw|ivf (recommendations; auto never picks HNSW, see docs).")] = "auto",
    user_index: Annotated[str, typer.Option(help="auto|flat|hnsw|ivf|none (similar users).")]
    = "auto",
    hnsw_m: int = 32,
    hnsw_ef_construction: int = 64,
    hnsw_ef_search: int = 128,
    ivf_nlist: Annotated[int, typer.Option(help="0: about sqrt(rows).")] = 0,
    ivf_nprobe: int = 32,
    items_catalog: Annotated[Path | None, typer.Option(
        "--items", help="Catalog CSV/Parquet with item_id, title, category, price.")] = None,
    content: Annotated[str, typer.Option(
        help="auto|on|off: content vectors (TF-IDF of the catalog's text and categories) "
             "for content and hybrid similar items; auto builds them when the catalog has "
             "such columns.")] = "auto",
    text_columns: Annotated[str | None, typer.Option(
        help="Comma-separated catalog columns of text (default: title, name, description "
             "found).")] = None,
    category_column: Annotated[str | None, typer.Option(
        help="The catalog column of categories, 'a|b' for several (default: category or "
             "genres found).")] = None,
    content_dim: Annotated[int, typer.Option(help="Size of the content vectors.")] = 64,
    events: Annotated[list[Path] | None, typer.Option(
        "--events", help="An events log written by the service (POST /events) to fold into "
        "the training data; repeatable.")] = None,
    hybrid_interactions: Annotated[float, typer.Option(
        help="Hybrid similar items: an item with n interactions weighs CF by n / (n + this) "
             "and content by the rest.")] = 5.0,
    new_item_weight: Annotated[float, typer.Option(
        help="Catalog items the log never mentions join recommendations with a vector "
             "predicted from their content, scaled by this (0: keep them out).")] = 1.0,
    similar_cache: Annotated[int | None, typer.Option(
        min=0, help="Neighbours precomputed per item (default: 50 up to 200k items; 0: off).")]
    = None,
    objective: Annotated[str, typer.Option(
        help="topn: rank by the SVD's scores; rating: by the predicted rating of a biased "
             "MF model (explicit ratings only).")] = "topn",
    rating_k: Annotated[int, typer.Option(min=0, help="Factors of the rating model.")] = 8,
    rating_reg: Annotated[float, typer.Option(help="Regularization of the rating model.")]
    = 0.2,
    evaluate_model: Annotated[bool, typer.Option(
        "--evaluate", help="Also score this configuration on a 20% holdout (docs/"
        "evaluation.md) and store the result in the manifest (GET /model shows it).")]
    = False,
    seed: int = 0,
    version: Annotated[str | None, typer.Option(help="Version name (default: UTC time).")]
    = None,
    json_out: JsonOpt = False,
) -> None:
    """Build a bundle from an interaction log and publish it as the model's CURRENT version."""
    from svdfaiss.builder import RECOMMENDATION_INDEX, BuildConfig
    from svdfaiss.builder import build as run_build
    from svdfaiss.content import ContentParams
    from svdfaiss.data import ReadOptions
    from svdfaiss.index import IndexParams

    choices = {"--format": (fmt, ("auto", "csv", "tsv", "parquet")),
               "--feedback": (feedback, ("auto", "explicit", "implicit")),
               "--duplicates": (duplicates, ("last", "mean")),
               "--weighting": (weighting, ("auto", "none", "binary", "log", "bm25")),
               "--solver": (solver, ("arpack", "randomized")),
               "--objective": (objective, ("topn", "rating")),
               "--content": (content, ("auto", "on", "off")),
               "--index": (index, ("auto", "flat", "hnsw", "ivf")),
               "--rec-index": (rec_index, ("auto", "flat", "hnsw", "ivf")),
               "--user-index": (user_index, ("auto", "flat", "hnsw", "ivf", "none"))}
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise InvalidInput(f"{flag} {value!r}: choose one of {', '.join(allowed)}")

    def index_params(kind: str, base: IndexParams = IndexParams()) -> IndexParams:
        return replace(base, kind=kind, hnsw_m=hnsw_m,  # type: ignore[arg-type]
                           hnsw_ef_construction=hnsw_ef_construction,
                           hnsw_ef_search=hnsw_ef_search, ivf_nlist=ivf_nlist,
                           ivf_nprobe=ivf_nprobe)

    config = BuildConfig(
        input=input_path,
        model=model,
        index_dir=index_dir,
        read=ReadOptions(format=fmt, header=header, delimiter=delimiter,  # type: ignore[arg-type]
                         user_col=user_col, item_col=item_col, value_col=value_col,
                         timestamp_col=timestamp_col, no_value=no_value,
                         feedback=feedback, duplicates=duplicates,  # type: ignore[arg-type]
                         strict=strict),
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
        weighting=weighting,  # type: ignore[arg-type]
        beta=beta,
        k=k,
        shrinkage=shrinkage,
        gamma=gamma,
        solver=solver,  # type: ignore[arg-type]
        item_index=index_params(index),
        rec_index=index_params(rec_index, RECOMMENDATION_INDEX),
        user_index=None if user_index == "none" else index_params(user_index),
        catalog=items_catalog,
        seed=seed,
        version=version,
        similar_cache=similar_cache,
        evaluate=evaluate_model,
        objective=objective,  # type: ignore[arg-type]
        rating_k=rating_k,
        rating_reg=rating_reg,
        content=content,  # type: ignore[arg-type]
        content_params=ContentParams(
            text_columns=None if text_columns is None else tuple(
                c.strip() for c in text_columns.split(",") if c.strip()),
            category_column=category_column, dim=content_dim),
        hybrid_interactions=hybrid_interactions,
        new_item_weight=new_item_weight,
        events=tuple(events or ()),
    )
    report = run_build(config, _stage_status)
    if json_out:
        out.print_json(json.dumps({"path": str(report.path), **report.manifest}))
    else:
        print_summary(report.path, report.manifest)


@app.command()
@_clean_errors
def evaluate(
    input_path: InputArg,
    fmt: FormatOpt = "auto",
    user_col: Annotated[str | None, typer.Option(help="Name or 0-based number.")] = None,
    item_col: Annotated[str | None, typer.Option(help="Name or 0-based number.")] = None,
    value_col: Annotated[str | None, typer.Option(help="Rating or count column.")] = None,
    no_value: NoValueOpt = False,
    feedback: FeedbackOpt = "auto",
    min_user_interactions: Annotated[int, typer.Option(min=1)] = 1,
    min_item_interactions: Annotated[int, typer.Option(min=1)] = 1,
    weighting: Annotated[str, typer.Option(help="auto|none|binary|log|bm25")] = "auto",
    beta: Annotated[float, typer.Option(help="Item popularity scaling n_j^-beta.")] = 0.0,
    k: ComponentsOpt = None,
    shrinkage: ShrinkageOpt = 30.0,
    at: Annotated[list[int] | None, typer.Option(
        "--at", help="Cutoffs (repeatable; default 10 and 20).")] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of each user held out.")] = 0.2,
    min_test_interactions: Annotated[int, typer.Option(
        help="Users with fewer interactions are never tested.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the holdout split.")] = 42,
    ease: Annotated[bool, typer.Option("--ease/--no-ease",
                                       help="Include EASE (an items x items inverse).")] = True,
    ease_lambda: float = 500.0,
    leave_last_out: Annotated[bool, typer.Option(
        help="Also hold out each user's latest interaction (when the log has timestamps).")]
    = True,
    rating: Annotated[bool, typer.Option(
        help="On explicit ratings, also 5-fold RMSE/MAE of the rating model.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
    = None,
    report_dir: Annotated[Path | None, typer.Option(
        "--report", help="Write an HTML report with plots to this folder (matplotlib).")]
    = None,
) -> None:
    """Hold out 20% of each user's interactions and score svdfaiss and baselines on them."""
    from svdfaiss.builder import BuildConfig
    from svdfaiss.data import ReadOptions, build_interactions, read_log
    from svdfaiss.evaluation import evaluate_topn, last_times, leave_last_out_split

    read = ReadOptions(format=fmt, user_col=user_col, item_col=item_col,  # type: ignore[arg-type]
                       value_col=value_col, no_value=no_value,
                       feedback=feedback)  # type: ignore[arg-type]
    config = BuildConfig(input=input_path, model="evaluate", index_dir=Path("."),
                         weighting=weighting, beta=beta, k=k,  # type: ignore[arg-type]
                         shrinkage=shrinkage)
    config.check()
    if report_dir is not None:
        report_module = _report_module()
    log = read_log(input_path, read)
    inter = build_interactions(log, min_user_interactions, min_item_interactions, "last")
    scheme = config.resolved_weighting(inter.feedback)
    k = config.resolved_k(inter.n_users, inter.n_items)
    options: dict[str, Any] = {"cutoffs": tuple(at or (10, 20)),
                               "min_interactions": min_test_interactions,
                               "ease_lambda": ease_lambda, "include_ease": ease}
    report = evaluate_topn(inter.matrix, k, scheme, beta, shrinkage,
                           test_fraction=test_fraction, seed=seed, **options)
    report["protocol"]["input"] = str(input_path)
    report["protocol"]["feedback"] = inter.feedback
    title = (f"svdfaiss evaluate: {input_path.name}, {inter.n_users:,} users, "
             f"{inter.n_items:,} items, {report['protocol']['test_users']:,} test users")
    _print_topn(report, title)
    ann = report["ann"]
    out.print(f"ANN ({ann['index']}): recall@10 against exact {ann['recall@10_vs_exact']:.3f}, "
              f"{ann['ms_per_query']:.3f} ms a query; SVD k={k}, weighting {scheme}, "
              f"beta {beta}, shrinkage {shrinkage:g}, explained energy "
              f"{report['svd']['explained_energy']:.3f}")
    times = last_times(log, inter) if leave_last_out else None
    if times is not None:
        last = evaluate_topn(inter.matrix, k, scheme, beta, shrinkage,
                             split=leave_last_out_split(inter.matrix, times,
                                                        min_test_interactions), **options)
        report["leave_last_out"] = {key: last[key] for key in ("protocol", "topn")}
        _print_topn(last, f"leave last out: the latest interaction of "
                          f"{last['protocol']['test_users']:,} users")
    elif leave_last_out:
        out.print("leave last out: skipped, the log has no timestamp column")
    if inter.feedback == "explicit" and rating:
        report["rating"] = _rating_report(inter.matrix, seed)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if report_dir is not None:
        page = report_module.write_report(report_dir, inter, report, k, scheme, beta,
                                          shrinkage)
        out.print(f"report: {page}")


def _report_module() -> Any:
    try:
        return importlib.import_module("svdfaiss.report")
    except ImportError as exc:
        raise InvalidInput(f"--report needs matplotlib ({exc}); install it with "
                           "pip install 'svdfaiss[report]'") from None


def _print_topn(report: dict[str, Any], title: str) -> None:
    cutoffs = report["protocol"]["cutoffs"]
    rows = [f"{m}@{c}" for c in cutoffs for m in ("ndcg", "recall", "precision", "map", "mrr",
                                                   "hit_rate", "coverage")]
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    methods = list(report["topn"])
    for method in methods:
        table.add_column(method.replace(" (ANN index)", "\n(ANN)"), justify="right")
    for row in rows:
        table.add_row(row, *(f"{report['topn'][m][row]:.4f}" for m in methods))
    out.print(table)


def _rating_report(matrix: Any, seed: int) -> dict[str, Any]:
    """5-fold RMSE and MAE of the rating model and of its biases alone."""
    from svdfaiss.rating import DEFAULT_K, DEFAULT_REG, cross_validate

    results = {"svdfaiss rating model": cross_validate(matrix, seed=seed, k=DEFAULT_K,
                                                      reg=DEFAULT_REG),
               "biases only": cross_validate(matrix, seed=seed, k=0, reg=DEFAULT_REG)}
    table = Table(title="rating prediction, 5 folds", title_justify="left")
    for name in ("method", "rmse", "mae", "fit seconds"):
        table.add_column(name, justify="right" if name != "method" else "left")
    for name, r in results.items():
        table.add_row(name, f"{r['rmse']:.4f}", f"{r['mae']:.4f}", f"{r['fit_seconds']:.3f}")
    out.print(table)
    return results


@app.command()
@_clean_errors
def tune(
    input_path: InputArg,
    fmt: FormatOpt = "auto",
    no_value: NoValueOpt = False,
    feedback: FeedbackOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the holdout split.")] = 42,
    ks: Annotated[list[int] | None, typer.Option(
        "--k", help="Grid of --k (repeatable; default 32 64 128 256).")] = None,
    weightings: Annotated[list[str] | None, typer.Option(
        "--weighting", help="Grid of weightings (default none binary log bm25).")] = None,
    betas: Annotated[list[float] | None, typer.Option(
        "--beta", help="Grid of beta (default 0).")] = None,
    shrinkages: Annotated[list[float] | None, typer.Option(
        "--shrinkage", help="Grid of shrinkage (default 0 10 30 100).")] = None,
    rating: Annotated[bool, typer.Option(
        help="On explicit ratings, also tune the rating model's k and regularization.")]
    = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
    = None,
) -> None:
    """Choose --k, --weighting, --beta and --shrinkage on a validation split carved from
    train."""
    from svdfaiss.data import ReadOptions, build_interactions, read_log
    from svdfaiss.evaluation import TUNE_GRID, tune_svd
    from svdfaiss.weighting import check_scheme

    read = ReadOptions(format=fmt, no_value=no_value,  # type: ignore[arg-type]
                       feedback=feedback)  # type: ignore[arg-type]
    inter = build_interactions(read_log(input_path, read), 1, 1, "last")
    grid = {"k": tuple(ks or TUNE_GRID["k"]),
            "weighting": tuple(weightings or TUNE_GRID["weighting"]),
            "beta": tuple(betas if betas is not None else TUNE_GRID["beta"]),
            "shrinkage": tuple(shrinkages if shrinkages is not None
                               else TUNE_GRID["shrinkage"])}
    if any(v < 0 for v in grid["shrinkage"]):
        raise InvalidInput("--shrinkage values must be >= 0")
    for scheme in grid["weighting"]:
        for beta in grid["beta"]:
            check_scheme(scheme, beta)
    result = tune_svd(inter.matrix, grid, seed=seed)
    table = Table(title=f"svdfaiss tune: {input_path.name}: {len(result['validation'])} "
                        f"settings scored by validation {result['metric']}, the best 5",
                  title_justify="left")
    for name in ("k", "weighting", "beta", "shrinkage", result["metric"]):
        table.add_column(name, justify="right")
    for trial in result["validation"][:5]:
        table.add_row(str(trial["k"]), trial["weighting"], str(trial["beta"]),
                      f"{trial['shrinkage']:g}", f"{trial[result['metric']]:.4f}")
    out.print(table)
    test = result["test"]
    out.print(f"winner on test: ndcg@10 {test['ndcg@10']:.4f}, recall@20 "
              f"{test['recall@20']:.4f}")
    out.print(f"build with: svdfaiss build {input_path} {result['flags']}")
    if inter.feedback == "explicit" and rating:
        from svdfaiss.rating import tune_rating_model

        tuned = tune_rating_model(inter.matrix, seed=seed)
        best, cv = tuned["best"], tuned["cross_validation"]
        result["rating"] = tuned
        out.print(f"rating model: best k {best['k']}, reg {best['reg']:g} (validation rmse "
                  f"{best['rmse']:.4f}); 5-fold rmse {cv['rmse']:.4f}, mae {cv['mae']:.4f}")
        out.print(f"build a rating model with: svdfaiss build {input_path} --objective rating "
                  f"--rating-k {best['k']} --rating-reg {best['reg']:g}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")


def _fmt_int(n: Any) -> str:
    return f"{int(n):,}"


def print_summary(path: Path, manifest: dict[str, Any]) -> None:
    """One screen: rows, reasons, shape, factorization, indexes, stage times, path."""
    rows, counts = manifest["rows"], manifest["counts"]
    fact, params = manifest["factorization"], manifest["parameters"]
    table = Table(title=f"svdfaiss build: model {manifest['model']}, version "
                        f"{manifest['version']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("input", f"{manifest['input']['path']} ({manifest['input']['feedback']}, "
                           f"columns {', '.join(f'{k}={v}' for k, v in manifest['input']['columns'].items() if v and k != 'feedback')})")  # noqa: E501
    table.add_row("rows read", _fmt_int(rows["read"]))
    table.add_row("rows used", f"{_fmt_int(rows['used'])} ({_fmt_int(rows['duplicates_merged'])}"
                               f" duplicates merged, {_fmt_int(rows['removed_by_filters'])} "
                               "removed by minimum-interaction filters)")
    table.add_row("rows rejected", _fmt_int(rows["rejected"]))
    for reason, count in rows["rejected_by_reason"].items():
        where = [str(e["line"]) for e in rows["rejected_examples"] if e["reason"] == reason]
        table.add_row("", f"  {reason}: {_fmt_int(count)} (line {', '.join(where)}"
                          f"{', ...' if count > len(where) else ''})")
    table.add_row("users x items", f"{_fmt_int(counts['users'])} x {_fmt_int(counts['items'])},"
                                   f" {_fmt_int(counts['interactions'])} interactions, density "
                                   f"{counts['density']:.2e}")
    w = params["weighting"]
    table.add_row("factorization", f"k={fact['k']}, weighting {w['scheme']}, beta {w['beta']},"
                                   f" shrinkage {params.get('shrinkage', 0):g}, explained "
                                   f"energy {fact['explained_energy']:.1%}")
    for name, meta in manifest["indexes"].items():
        table.add_row(f"index {name}", f"{meta['type']} over {_fmt_int(meta['rows'])} x "
                                       f"{meta['dim']} ({meta['metric']})")
    if manifest.get("catalog"):
        cat = manifest["catalog"]
        table.add_row("catalog", f"{cat['matched_items']:,} of {counts['items']:,} items matched"
                                 f" ({cat['path']})")
    content = manifest.get("content")
    if content:
        columns = [*content["text_columns"], *filter(None, [content["category_column"]])]
        table.add_row("content", f"{content['dim']}-d from {', '.join(columns)} "
                                 f"({_fmt_int(content['features'])} features); "
                                 f"{_fmt_int(content['new_items'])} catalog items without "
                                 "interactions get content neighbours")
        similar = content.get("new_items_in_similar")
        if similar:
            table.add_row("new items", f"their hybrid neighbours use CF vectors predicted from "
                                       f"their content (map R^2 {similar['r2']:.2f}, CF share "
                                       f"{similar['cf_share']:g})")
        mapped = content.get("new_items_in_recommendations")
        if mapped:
            table.add_row("new items", f"{_fmt_int(mapped['items'])} join recommendations "
                                       "through vectors predicted from their content (map "
                                       f"R^2 {mapped['r2']:.2f}, weight {mapped['weight']:g})")
    for events in manifest["input"].get("events", []):
        table.add_row("events", f"{_fmt_int(events['events'])} folded in from {events['path']}"
                                f" ({_fmt_int(events['rejected'])} unusable lines)")
    timings = manifest["timings_seconds"]
    table.add_row("seconds", ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
                  + f"; total {sum(timings.values()):.2f}")
    evaluation = manifest.get("evaluation") or {}
    if "topn" in evaluation:
        topn = evaluation["topn"]
        table.add_row("evaluation", "NDCG@10 " + ", ".join(
            f"{name} {m['ndcg@10']:.4f}" for name, m in topn.items()
            if name != "svdfaiss (ANN index)") + f" (20% holdout of "
            f"{evaluation['protocol']['test_users']:,} users)")
    elif "skipped" in evaluation:
        table.add_row("evaluation", f"skipped: {evaluation['skipped']}")
    table.add_row("bundle", str(path))
    out.print(table)


# ---------------------------------------------------------------------------- bundles


@bundles_app.command("list")
@_clean_errors
def bundles_list(model: ModelOpt = "default", index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
                 json_out: JsonOpt = False) -> None:
    """Every version of a model, oldest first; * marks CURRENT."""
    directory = bundle.model_dir(index_dir, model)
    infos = bundle.list_bundles(directory)
    if json_out:
        out.print_json(json.dumps([{"version": b.version, "current": b.current,
                                    "created_at": b.created_at, "size_bytes": b.size_bytes,
                                    "error": b.error} for b in infos]))
        return
    if not infos:
        raise NoBundle(f"{directory}: no bundles")
    table = Table("", "version", "created at", "users", "items", "size")
    for b in infos:
        c = (b.manifest or {}).get("counts", {})
        table.add_row("*" if b.current else "", b.version, b.created_at or (b.error or ""),
                      _fmt_int(c.get("users", 0)), _fmt_int(c.get("items", 0)),
                      f"{b.size_bytes / 1e6:.1f} MB")
    out.print(table)


def _version_dir(index_dir: Path, model: str, version: str | None) -> Path:
    """A named version's folder, or CURRENT's."""
    directory = bundle.model_dir(index_dir, model)
    return directory / (version or bundle.read_current(directory))


@bundles_app.command("show")
@_clean_errors
def bundles_show(
    version: Annotated[str | None, typer.Argument(help="Default: CURRENT.")] = None,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Print a version's manifest (JSON)."""
    out.print_json(json.dumps(bundle.read_manifest(_version_dir(index_dir, model, version))))


@bundles_app.command("verify")
@_clean_errors
def bundles_verify(
    version: Annotated[str | None, typer.Argument(help="Default: CURRENT.")] = None,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Check every file of a version against the manifest's size and sha256."""
    path = _version_dir(index_dir, model, version)
    bundle.check(path)
    out.print(f"{path}: ok")


@bundles_app.command("gc")
@_clean_errors
def bundles_gc(
    keep: Annotated[int, typer.Option(min=1, help="Newest versions to keep.")] = 3,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Delete old versions, keeping the newest N and always CURRENT."""
    removed = bundle.garbage_collect(bundle.model_dir(index_dir, model), keep)
    out.print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed
                                                      else ""))


@bundles_app.command("rollback")
@_clean_errors
def bundles_rollback(
    version: Annotated[str, typer.Argument(help="Version to make CURRENT.")],
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Point CURRENT at an older (verified) version."""
    directory = bundle.model_dir(index_dir, model)
    bundle.rollback(directory, version)
    out.print(f"{model}: CURRENT is now {version}")


# ---------------------------------------------------------------------------- query


def _print_results(rec: Any, results: Any, json_out: bool, id_key: str = "item_id",
                   extra: dict[str, Any] | None = None) -> None:
    records = results.records(id_key)
    if json_out:
        payload: dict[str, Any] = {"model": rec.model, "version": rec.version}
        payload.update(extra or {})
        payload["users" if id_key == "user_id" else "items"] = records
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    columns = list(records[0].keys()) if records else [id_key, "score"]
    table = Table("#", *columns, title=f"model {rec.model}, version {rec.version}",
                  title_justify="left")

    def cell(key: str, value: Any) -> str:
        if key == "score":
            return f"{value:.4f}"
        if key == "because":
            return ", ".join(f"{b['item_id']} ({b['contribution']:.3f})" for b in value)
        return str(value)

    for rank, r in enumerate(records, 1):
        table.add_row(str(rank), *[cell(k, v) for k, v in r.items()])
    out.print(table)


def _load(index_dir: Path, model: str) -> Any:
    from svdfaiss.recommender import Recommender

    return Recommender.load(index_dir, model)


@query_app.command("similar")
@_clean_errors
def query_similar(item_id: str, model: ModelOpt = "default",
                  index_dir: IndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
                  items: ListOpt = None, filter_items: ListOpt = None,
                  category: CategoryOpt = None, min_price: MinPriceOpt = None,
                  max_price: MaxPriceOpt = None, in_stock: InStockOpt = None,
                  mode: Annotated[str, typer.Option(
                      help="cf, content or hybrid (content needs a build with --items).")]
                  = "hybrid",
                  json_out: JsonOpt = False) -> None:
    """Items similar to ITEM_ID."""
    from svdfaiss.recommender import CatalogFilter

    rec = _load(index_dir, model)
    _print_results(rec, rec.similar_items(
        item_id, k, items, filter_items,
        catalog_filter=CatalogFilter(category, min_price, max_price, in_stock), mode=mode),
        json_out)


RecommendModeOpt = Annotated[str, typer.Option(
    "--mode", help="hybrid also ranks catalog items nobody has interacted with, through their "
                   "content (builds with --items); cf only the model's items.")]


@query_app.command("recommend")
@_clean_errors
def query_recommend(
    user_id: str, model: ModelOpt = "default", index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    k: KOpt = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen/--include-seen")] = True,
    items: ListOpt = None, filter_items: ListOpt = None,
    category: CategoryOpt = None, min_price: MinPriceOpt = None,
    max_price: MaxPriceOpt = None, in_stock: InStockOpt = None,
    popular_fallback: Annotated[bool, typer.Option(
        "--popular-fallback/--no-fallback",
        help="An unknown user gets the most popular items (or exit 3).")] = True,
    explain: Annotated[bool, typer.Option(
        help="Name the history items behind each result.")] = False,
    mode: RecommendModeOpt = "hybrid",
    json_out: JsonOpt = False,
) -> None:
    """Recommendations for USER_ID."""
    from svdfaiss.recommender import CatalogFilter

    rec = _load(index_dir, model)
    _print_results(rec, rec.recommend(
        user_id, k, exclude_seen, items, filter_items,
        CatalogFilter(category, min_price, max_price, in_stock),
        "popular" if popular_fallback else "none", explain, mode=mode), json_out)


@query_app.command("similar-users")
@_clean_errors
def query_similar_users(user_id: str, model: ModelOpt = "default",
                        index_dir: IndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
                        json_out: JsonOpt = False) -> None:
    """Users similar to USER_ID."""
    rec = _load(index_dir, model)
    _print_results(rec, rec.similar_users(user_id, k), json_out, id_key="user_id")


@query_app.command("basket")
@_clean_errors
def query_basket(
    item_ids: Annotated[list[str], typer.Argument(help="Items of an anonymous basket.")],
    model: ModelOpt = "default", index_dir: IndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
    items: ListOpt = None, filter_items: ListOpt = None,
    category: CategoryOpt = None, min_price: MinPriceOpt = None,
    max_price: MaxPriceOpt = None, in_stock: InStockOpt = None,
    explain: Annotated[bool, typer.Option(
        help="Name the basket items behind each result.")] = False,
    mode: RecommendModeOpt = "hybrid",
    json_out: JsonOpt = False,
) -> None:
    """Recommendations for a list of items (fold-in of an unseen user)."""
    from svdfaiss.recommender import CatalogFilter

    rec = _load(index_dir, model)
    results = rec.recommend_for_items(item_ids, k, True, items, filter_items,
                                      CatalogFilter(category, min_price, max_price, in_stock),
                                      explain, mode)
    if results.unknown and not json_out:
        err.print(f"ignored unknown item ids: {', '.join(results.unknown)}")
    _print_results(rec, results, json_out, extra={"unknown_item_ids": results.unknown})


@query_app.command("score")
@_clean_errors
def query_score(user_id: str, item_id: str, model: ModelOpt = "default",
                index_dir: IndexDirOpt = DEFAULT_INDEX_DIR, json_out: JsonOpt = False) -> None:
    """The model's score of ITEM_ID for USER_ID."""
    rec = _load(index_dir, model)
    value = rec.score(user_id, item_id)
    if json_out:
        sys.stdout.write(json.dumps({"model": rec.model, "version": rec.version,
                                     "user_id": user_id, "item_id": item_id,
                                     "score": value}) + "\n")
    else:
        out.print(f"{value:.6f}")


# ---------------------------------------------------------------------------- serve


def _serve(settings_env: dict[str, str], host: str, port: int, workers: int) -> None:
    """Run uvicorn on the app factory; settings travel as SVDFAISS_* variables so that every
    worker process builds the same app."""
    import os

    os.environ.update(settings_env)
    if workers == 1 and os.environ.get("SVDFAISS_VERIFY_CHECKSUMS", "true").lower() not in (
            "0", "false", "no", "off"):
        # Hash the bundle while the service's modules import (about a second); the load
        # at start-up then finds the digests ready. Problems are reported by that load.
        with contextlib.suppress(Exception):
            from svdfaiss import bundle

            directory = bundle.model_dir(Path(settings_env["SVDFAISS_INDEX_DIR"]),
                                         settings_env["SVDFAISS_MODEL"])
            bundle.prefetch_bundle(*bundle.current_bundle(directory))
    import uvicorn

    from svdfaiss.config import Settings

    # One request is one query: OpenMP teams per search only add threads that spin after each
    # search and starve the server (measured: p50 7.7 ms instead of sub-ms under wrk). libgomp
    # reads this when faiss first loads, which happens below, inside uvicorn.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    Settings().resolved_experiment()  # refuse bad settings before forking workers
    uvicorn.run("svdfaiss.service.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=False)


@app.command()
@_clean_errors
def serve(
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Model name; repeat it to serve an A/B test of several models "
        "(env SVDFAISS_MODEL for one).")] = None,
    weight: Annotated[list[float] | None, typer.Option(
        "--weight", help="Each --model's share of users, in the same order (default: "
        "equal).")] = None,
    experiment: Annotated[str, typer.Option(
        envvar="SVDFAISS_EXPERIMENT", help="The A/B experiment's name (hashed with each "
        "user id).")] = "default",
    experiment_file: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EXPERIMENT_FILE", help="JSON {name, variants: [{name, model, "
        "weight}]}, instead of --model/--weight.")] = None,
    host: Annotated[str, typer.Option(envvar="SVDFAISS_HOST",
                                      help="Bind address; 0.0.0.0 exposes the service.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SVDFAISS_PORT", min=1, max=65_535)] = 8000,
    workers: Annotated[int, typer.Option(envvar="SVDFAISS_WORKERS", min=1, max=64)] = 1,
    poll_seconds: Annotated[float, typer.Option(
        envvar="SVDFAISS_POLL_SECONDS", min=0.0,
        help="Reload when CURRENT changes, checked this often (0: off).")] = 0.0,
    max_k: Annotated[int, typer.Option(envvar="SVDFAISS_MAX_K", min=1)] = 1000,
    events_log: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EVENTS_LOG",
        help="Where POST /events appends (default: INDEX_DIR/events/MODEL.jsonl).")] = None,
    live_users: Annotated[int, typer.Option(
        envvar="SVDFAISS_LIVE_USERS", min=0,
        help="Users whose live events stay in memory (LRU); 0 turns POST /events off.")]
    = 100_000,
) -> None:
    """Serve the model's CURRENT bundle over HTTP (admin token: SVDFAISS_ADMIN_TOKEN)."""
    import os

    from pydantic import ValidationError

    models = model or [os.environ.get("SVDFAISS_MODEL", "default")]
    env = {"SVDFAISS_INDEX_DIR": str(index_dir), "SVDFAISS_MODEL": models[0],
           "SVDFAISS_HOST": host, "SVDFAISS_PORT": str(port), "SVDFAISS_WORKERS": str(workers),
           "SVDFAISS_POLL_SECONDS": str(poll_seconds), "SVDFAISS_MAX_K": str(max_k),
           "SVDFAISS_LIVE_USERS": str(live_users), "SVDFAISS_EXPERIMENT": experiment,
           "SVDFAISS_MODELS": json.dumps(models), "SVDFAISS_WEIGHTS": json.dumps(weight or [])}
    if experiment_file is not None:
        env["SVDFAISS_EXPERIMENT_FILE"] = str(experiment_file)
    if events_log is not None:
        env["SVDFAISS_EVENTS_LOG"] = str(events_log)
    try:
        _serve(env, host, port, workers)
    except ValidationError as exc:
        raise InvalidInput(f"bad settings: {exc}") from None


# ---------------------------------------------------------------------------- demo


@app.command()
@_clean_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the sample data goes.")] = Path("data"),
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    model: ModelOpt = "sample",
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve",
                                              help="Start the service after building.")] = True,
    host: Annotated[str, typer.Option(help="Bind address of the service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65_535)] = 8000,
) -> None:
    """Generate the built-in sample, build a bundle, serve it and show how to query it."""
    from svdfaiss.builder import BuildConfig
    from svdfaiss.builder import build as run_build
    from svdfaiss.recommender import Recommender
    from svdfaiss.synthetic import SampleSpec, write_sample

    files = write_sample(SampleSpec(), workdir / "sample")
    out.print(f"sample data: {files.events} ({files.rows:,} events), {files.catalog}")
    report = run_build(BuildConfig(input=files.events, model=model, index_dir=index_dir,
                                   catalog=files.catalog), _stage_status)
    print_summary(report.path, report.manifest)
    rec = Recommender.load(index_dir, model)
    user = _first_user(rec)
    item = rec.recommend(user, 1, mode="cf").ids[0]  # an item with interactions
    base = f"{_program()} query {{}} --model {model} --index-dir {index_dir}"
    out.print("\nFrom the command line:")
    out.print(f"  {base.format('similar ' + item)} --k 5")
    out.print(f"  {base.format('recommend ' + user)} --k 5")
    if not serve_after:
        out.print(f"  {base.format('basket ' + item)} --json")
        return
    url = f"http://{host}:{port}"
    out.print(f"\nServing on {url} (API docs: {url}/docs); stop with Ctrl+C.")
    out.print(f"Open {url}/demo in a browser: search the catalog, compare similar items by "
              "cf, content and hybrid, and see a user's recommendations explained. Or try:")
    out.print(f"  curl '{url}/items/{item}/similar?k=5'")
    out.print(f"  curl '{url}/items/{item}/similar?k=5&mode=content'")
    out.print(f"  curl '{url}/users/{user}/recommendations?k=5&explain=true'")
    out.print(f"  curl -X POST {url}/recommendations -H 'content-type: application/json' "
              f"-d '{{\"item_ids\": [\"{item}\"], \"k\": 5}}'")
    out.print(f"  curl -X POST {url}/events -H 'content-type: application/json' "
              f"-d '{{\"user_id\": \"{user}\", \"item_id\": \"{item}\"}}'")
    sys.stdout.flush()
    _serve({"SVDFAISS_INDEX_DIR": str(index_dir), "SVDFAISS_MODEL": model}, host, port, 1)


def _program() -> str:
    """How the user invoked us (`.venv/bin/svdfaiss` when the venv is not activated)."""
    invoked = Path(sys.argv[0])
    if invoked.name == "svdfaiss" and invoked.parent != Path(""):
        on_path = shutil.which("svdfaiss")
        if on_path is None or Path(on_path).resolve() != invoked.resolve():
            return str(invoked)
    return "svdfaiss"


def _first_user(rec: Any) -> str:
    from svdfaiss.data import decode_ids

    return decode_ids(rec.user_ids[:1])[0]


def run() -> None:
    """The `svdfaiss` command. An error exit skips the interpreter's teardown: threads that
    a failed threaded CSV read leaves in pyarrow's pool can abort it (apache/arrow#34314),
    which turned 1 in 40 "exit 2, not UTF-8" answers into SIGABRT. Nothing is pending by
    then: a failed build has already removed its temporary folder and released its lock."""
    try:
        app()
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise

