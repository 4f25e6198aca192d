"""`svdfaiss evaluate` and `svdfaiss tune`: score a configuration and baselines on a holdout,
and choose the SVD's settings on a validation split, printing tables (and JSON, HTML)."""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import (
    ComponentsOpt,
    DelimiterOpt,
    DuplicatesOpt,
    FeedbackOpt,
    FormatOpt,
    HeaderOpt,
    InputArg,
    ItemColOpt,
    ItemsDelimiterOpt,
    ItemsIdColOpt,
    ItemsPriceColOpt,
    ItemsStockColOpt,
    MinItemInteractionsOpt,
    MinRatingOpt,
    MinUserInteractionsOpt,
    NoValueOpt,
    ShrinkageOpt,
    StrictOpt,
    TimestampColOpt,
    UserColOpt,
    ValueColOpt,
    WeightingOpt,
    catalog_flags_text,
    catalog_options,
    check_choice,
    input_flags_text,
    read_options,
)
from svdfaiss.cli.printing import err, out, progress_line, show
from svdfaiss.errors import InvalidInput


@clean_errors
def evaluate(
    input_path: InputArg,
    fmt: FormatOpt = "auto",
    header: HeaderOpt = None,
    delimiter: DelimiterOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    value_col: ValueColOpt = None,
    timestamp_col: TimestampColOpt = None,
    no_value: NoValueOpt = False,
    feedback: FeedbackOpt = "auto",
    duplicates: DuplicatesOpt = "last",
    strict: StrictOpt = False,
    min_rating: MinRatingOpt = None,
    min_user_interactions: MinUserInteractionsOpt = 1,
    min_item_interactions: MinItemInteractionsOpt = 1,
    weighting: WeightingOpt = "auto",
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
    from svdfaiss.data import build_interactions, read_log
    from svdfaiss.evaluation import (
        evaluate_topn,
        evaluation_warnings,
        last_times,
        leave_last_out_split,
    )

    check_choice("--weighting", weighting)
    read = read_options(fmt, header=header, delimiter=delimiter, user_col=user_col,
                        item_col=item_col, value_col=value_col, timestamp_col=timestamp_col,
                        no_value=no_value, feedback=feedback, duplicates=duplicates,
                        strict=strict, min_rating=min_rating)
    config = BuildConfig(input=input_path, model="evaluate", index_dir=Path("."),
                         weighting=weighting, beta=beta, k=k,  # type: ignore[arg-type]
                         shrinkage=shrinkage)
    config.check()
    if report_dir is not None:
        report_module = _report_module()
    log = read_log(input_path, read)
    inter = build_interactions(log, min_user_interactions, min_item_interactions,
                               read.duplicates, read.min_rating)
    scheme = config.resolved_weighting(inter.feedback)
    k = config.resolved_k(inter.n_users, inter.n_items)
    options: dict[str, Any] = {"cutoffs": tuple(at or (10, 20)),
                               "min_interactions": min_test_interactions,
                               "ease_lambda": ease_lambda, "include_ease": ease}
    report = evaluate_topn(inter.matrix, k, scheme, beta, shrinkage,
                           test_fraction=test_fraction, seed=seed, **options)
    report["protocol"]["input"] = str(input_path)
    report["protocol"]["feedback"] = inter.feedback
    report["protocol"]["removed_by_min_rating"] = inter.removed_by_min_rating
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
    report["warnings"] = evaluation_warnings(report)
    for warning in report["warnings"]:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")
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
    show(table)


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
    show(table)
    return results


@clean_errors
def tune(
    input_path: InputArg,
    fmt: FormatOpt = "auto",
    header: HeaderOpt = None,
    delimiter: DelimiterOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    value_col: ValueColOpt = None,
    timestamp_col: TimestampColOpt = None,
    no_value: NoValueOpt = False,
    feedback: FeedbackOpt = "auto",
    duplicates: DuplicatesOpt = "last",
    strict: StrictOpt = False,
    min_rating: MinRatingOpt = None,
    min_user_interactions: MinUserInteractionsOpt = 1,
    min_item_interactions: MinItemInteractionsOpt = 1,
    items_catalog: Annotated[Path | None, typer.Option(
        "--items", help="The catalog to build with (echoed in the \"build with:\" line).")]
    = None,
    items_delimiter: ItemsDelimiterOpt = None,
    items_id_col: ItemsIdColOpt = None,
    items_price_col: ItemsPriceColOpt = None,
    items_stock_col: ItemsStockColOpt = None,
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
    from svdfaiss.data import build_interactions, read_log
    from svdfaiss.evaluation import TUNE_GRID, tune_svd
    from svdfaiss.weighting import check_scheme

    read = read_options(fmt, header=header, delimiter=delimiter, user_col=user_col,
                        item_col=item_col, value_col=value_col, timestamp_col=timestamp_col,
                        no_value=no_value, feedback=feedback, duplicates=duplicates,
                        strict=strict, min_rating=min_rating)
    for scheme in weightings or ():
        check_choice("--weighting", scheme, allow_auto=False)
    if items_catalog is not None and not items_catalog.is_file():
        raise InvalidInput(f"{items_catalog}: catalog file not found")
    inter = build_interactions(read_log(input_path, read), min_user_interactions,
                               min_item_interactions, read.duplicates, read.min_rating)
    given = " ".join(w for w in (
        shlex.quote(str(input_path)), input_flags_text(read),
        f"--min-user-interactions {min_user_interactions}" if min_user_interactions > 1 else "",
        f"--min-item-interactions {min_item_interactions}" if min_item_interactions > 1 else "",
        catalog_flags_text(items_catalog, catalog_options(items_delimiter, items_id_col,
                                                          items_price_col, items_stock_col)))
        if w)
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
    result = tune_svd(inter.matrix, grid, seed=seed, progress=progress_line)
    table = Table(title=f"svdfaiss tune: {input_path.name}: {len(result['validation'])} "
                        f"settings scored by validation {result['metric']}, the best 5",
                  title_justify="left")
    for name in ("k", "weighting", "beta", "shrinkage", result["metric"]):
        table.add_column(name, justify="right")
    for trial in result["validation"][:5]:
        table.add_row(str(trial["k"]), trial["weighting"], str(trial["beta"]),
                      f"{trial['shrinkage']:g}", f"{trial[result['metric']]:.4f}")
    show(table)
    test = result["test"]
    out.print(f"winner on test: ndcg@10 {test['ndcg@10']:.4f}, recall@20 "
              f"{test['recall@20']:.4f}")
    result["build_with"] = f"svdfaiss build {given} {result['flags']}"
    out.print(f"build with: {result['build_with']}", markup=False)
    if inter.feedback == "explicit" and rating:
        from svdfaiss.rating import tune_rating_model

        tuned = tune_rating_model(inter.matrix, seed=seed)
        best, cv = tuned["best"], tuned["cross_validation"]
        result["rating"] = tuned
        out.print(f"rating model: best k {best['k']}, reg {best['reg']:g} (validation rmse "
                  f"{best['rmse']:.4f}); 5-fold rmse {cv['rmse']:.4f}, mae {cv['mae']:.4f}")
        out.print(f"build a rating model with: svdfaiss build {given} --objective rating "
                  f"--rating-k {best['k']} --rating-reg {best['reg']:g}", markup=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
