"""`svdfaiss query ...`: similar items, recommendations, similar users, baskets and scores
from a model's CURRENT bundle, printed as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import DEFAULT_INDEX_DIR, IndexDirOpt, JsonOpt, ModelOpt
from svdfaiss.cli.printing import err, out, print_results

query_app = typer.Typer(help="Query the current bundle of a model from the command line.",
                        no_args_is_help=True)

# The options the query commands share.
KOpt = Annotated[int, typer.Option("--k", min=1, max=100_000, help="Number of results.")]
ListOpt = Annotated[list[str] | None, typer.Option(help="Repeatable.")]
CategoryOpt = Annotated[str | None, typer.Option(help="Only items of this catalog category.")]
MinPriceOpt = Annotated[float | None, typer.Option(min=0.0, help="Catalog price at least.")]
MaxPriceOpt = Annotated[float | None, typer.Option(min=0.0, help="Catalog price at most.")]
InStockOpt = Annotated[bool | None, typer.Option(
    "--in-stock/--out-of-stock", help="Only items in stock, or only items out of stock.")]
RecommendModeOpt = Annotated[str, typer.Option(
    "--mode", help="hybrid also ranks catalog items nobody has interacted with, through their "
                   "content (builds with --items); cf only the model's items.")]


def _load(index_dir: Path, model: str) -> Any:
    from svdfaiss.recommender import Recommender

    return Recommender.load(index_dir, model)


@query_app.command("similar")
@clean_errors
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
    print_results(rec, rec.similar_items(
        item_id, k, items, filter_items,
        catalog_filter=CatalogFilter(category, min_price, max_price, in_stock), mode=mode),
        json_out)


@query_app.command("recommend")
@clean_errors
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
    print_results(rec, rec.recommend(
        user_id, k, exclude_seen, items, filter_items,
        CatalogFilter(category, min_price, max_price, in_stock),
        "popular" if popular_fallback else "none", explain, mode=mode), json_out)


@query_app.command("similar-users")
@clean_errors
def query_similar_users(user_id: str, model: ModelOpt = "default",
                        index_dir: IndexDirOpt = DEFAULT_INDEX_DIR, k: KOpt = 10,
                        json_out: JsonOpt = False) -> None:
    """Users similar to USER_ID."""
    rec = _load(index_dir, model)
    print_results(rec, rec.similar_users(user_id, k), json_out, id_key="user_id")


@query_app.command("basket")
@clean_errors
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
    print_results(rec, results, json_out, extra={"unknown_item_ids": results.unknown})


@query_app.command("score")
@clean_errors
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
