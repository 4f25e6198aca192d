"""A shop's first day (issue 16, items 1-5): the catalog read like the log (delimiters,
decimal commas, BOM, CRLF, synonyms, rejected rows), stock values normalised at build, every
input column reported, the same input flags on build, evaluate and tune, and --min-rating."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer.main

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.catalog import read_catalog
from svdfaiss.cli import app
from svdfaiss.cli.options import INPUT_FLAGS
from svdfaiss.data import ReadOptions, build_interactions, read_log
from svdfaiss.errors import InvalidInput
from svdfaiss.query.filters import CatalogFilter, CatalogFilters
from svdfaiss.recommender import Recommender

from .helpers import run_cli

USERS, ITEMS, PER_USER = 30, 12, 8


def shop_log(path: Path, header: str = "Kunde;Artikel;Menge", sep: str = ";",
             extra: str = "") -> Path:
    """A small purchase log: every user buys a window of items, quantities 1-3."""
    lines = [header]
    for u in range(USERS):
        for j in range(PER_USER):
            item = (u * 5 + j) % ITEMS
            row = [f"k{u:03d}", f"A{item:02d}", str(1 + (u + j) % 3)]
            lines.append(sep.join(row + ([extra.format(day=1 + j)] if extra else [])))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def excel_catalog(path: Path, stock: tuple[str, str] = ("ja", "nein"),
                  bad: tuple[str, ...] = ()) -> Path:
    """What Excel writes for a German shop: BOM, CRLF, ';', decimal commas, quotes."""
    lines = ["sku;Titel;Preis;Lager"]
    for i in range(ITEMS):
        lines.append(f'A{i:02d};"Artikel {i}; rot";{i},99;{stock[i % 2]}')
    lines += list(bad)
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    return path


def manifest_of(index_dir: Path, model: str = "default") -> dict:
    return bundle.read_manifest(bundle.model_dir(index_dir, model) /
                                bundle.read_current(bundle.model_dir(index_dir, model)))


# ---------------------------------------------------------------------------- 1. catalog


def test_an_excel_catalog_builds_with_its_prices_and_a_rejected_row_report(tmp_path):
    log = shop_log(tmp_path / "orders.csv")
    catalog = excel_catalog(tmp_path / "excel_catalog.csv",
                            bad=["A99;Neu;zehn;ja", "A98;Neu;5,00;vielleicht", ";ohne id;1,00;ja"])
    result = run_cli(["build", str(log), "--items", str(catalog), "--out",
                      str(tmp_path / "idx"), "--k", "4"])
    assert result.returncode == 0, result.stderr
    cat = manifest_of(tmp_path / "idx")["catalog"]
    assert cat["matched_items"] == ITEMS and cat["delimiter"] == ";" and cat["decimal_comma"]
    assert cat["rejected"] == 3
    assert cat["rejected_by_reason"] == {"non-numeric price": 1, "unknown stock value": 1,
                                         "missing item id": 1}
    lines = {e["reason"]: e["line"] for e in cat["rejected_examples"]}
    assert lines == {"non-numeric price": 14, "unknown stock value": 15, "missing item id": 16}
    assert "catalog rejected" in result.stdout and "unknown stock value: 1 (line 15" in \
        result.stdout
    rec = Recommender.load(tmp_path / "idx", "default")
    by_id = dict(zip([i.decode() for i in rec.item_ids.tolist()], rec.catalog["price"],
                     strict=False))
    assert by_id["A03"] == pytest.approx(3.99)
    assert rec.catalog["Titel"][0] == "Artikel 0; rot"


def test_the_catalog_id_column_is_found_by_synonym_or_named_by_flag(tmp_path):
    ids = np.array([b"A00", b"A01"])
    path = tmp_path / "items.tsv"
    path.write_text("Code\tName\nA00\teins\nA01\tzwei\n")
    with pytest.raises(InvalidInput, match=r"items.tsv: catalog needs an item id column.*"
                                           r"Code, Name.*--items-id-col"):
        read_catalog(path, ids)
    from svdfaiss.catalog import CatalogOptions

    table, info, _ = read_catalog(path, ids, options=CatalogOptions(id_col="Code"))
    assert table["Name"].to_pylist() == ["eins", "zwei"] and info["matched_items"] == 2
    pipes = tmp_path / "pipes.txt"
    pipes.write_text("Artikelnummer|Preis\nA00|1,5\n")  # detected '|', synonym, decimal comma
    table, info, _ = read_catalog(pipes, ids)
    assert table["price"].to_pylist() == [1.5, None] and info["delimiter"] == "|"


def test_items_delimiter_flag_reads_a_catalog_the_sniffer_would_misread(tmp_path):
    log = shop_log(tmp_path / "orders.csv")
    catalog = tmp_path / "c.csv"  # the header has more commas than semicolons
    catalog.write_text("item_id;title, long, with commas\n" +
                       "".join(f"A{i:02d};t{i}\n" for i in range(ITEMS)))
    result = run_cli(["build", str(log), "--items", str(catalog), "--items-delimiter", ";",
                      "--out", str(tmp_path / "idx"), "--k", "4"])
    assert result.returncode == 0, result.stderr
    assert manifest_of(tmp_path / "idx")["catalog"]["matched_items"] == ITEMS


def test_strict_makes_a_bad_catalog_row_an_error_naming_file_line_field_value(tmp_path):
    log = shop_log(tmp_path / "orders.csv")
    catalog = excel_catalog(tmp_path / "cat.csv", bad=["A50;x;1,00;vielleicht"])
    index_dir = tmp_path / "idx"
    result = run_cli(["build", str(log), "--items", str(catalog), "--out", str(index_dir),
                      "--k", "4", "--strict"])
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "cat.csv: line 14: Lager 'vielleicht': unknown stock value" in message
    assert "ja/nein" in message
    assert not (index_dir / "default").exists() or not list(
        (index_dir / "default").glob("2*"))


# ---------------------------------------------------------------------------- 2. stock


@pytest.mark.parametrize("stock", [("ja", "nein"), ("WAHR", "FALSCH"), ("Oui", "non"),
                                   ("Y", "n"), ("sí", "no")])
def test_localised_stock_values_filter_both_ways(tmp_path, stock):
    log = shop_log(tmp_path / "orders.csv")
    catalog = excel_catalog(tmp_path / "cat.csv", stock=stock)
    build(BuildConfig(input=log, model="m", index_dir=tmp_path, catalog=catalog, k=4))
    rec = Recommender.load(tmp_path, "m")
    assert rec.catalog["in_stock"].dtype == np.bool_
    ids = [i.decode() for i in rec.item_ids.tolist()]
    in_stock = rec.filter_set(CatalogFilter(in_stock=True))
    out_of_stock = rec.filter_set(CatalogFilter(in_stock=False))
    assert in_stock is not None and out_of_stock is not None
    assert {ids[p] for p in in_stock} == {f"A{i:02d}" for i in range(0, ITEMS, 2)}
    assert {ids[p] for p in out_of_stock} == {f"A{i:02d}" for i in range(1, ITEMS, 2)}


def test_a_bundle_built_before_stock_normalisation_filters_as_before():
    stored = np.array(["yes", "no", "1", "0", "true", None, "True", "nein"], dtype=object)
    filters = CatalogFilters("old", {"in_stock": stored}, len(stored))
    assert filters.filter_set(CatalogFilter(in_stock=True)).tolist() == [0, 2, 4, 6]
    assert filters.filter_set(CatalogFilter(in_stock=False)).tolist() == [1, 3, 5, 7]
    as_bool = np.array([True, None, False], dtype=object)  # a bool column with nulls
    filters = CatalogFilters("new", {"in_stock": as_bool}, 3)
    assert filters.filter_set(CatalogFilter(in_stock=True)).tolist() == [0]


# ---------------------------------------------------------------------------- 3. columns


def test_german_headers_sum_quantities_and_report_every_column(tmp_path):
    log = shop_log(tmp_path / "orders.csv", header="Kunde;Artikel;Menge;Filiale",
                   extra="Berlin")
    result = run_cli(["build", str(log), "--out", str(tmp_path / "idx"), "--k", "4"])
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "idx")
    assert manifest["input"]["columns"] == {"user": "Kunde", "item": "Artikel",
                                            "value": "Menge", "timestamp": None,
                                            "feedback": "implicit"}
    assert manifest["input"]["columns_report"] == [
        {"column": "Kunde", "used_as": "user id"}, {"column": "Artikel", "used_as": "item id"},
        {"column": "Menge", "used_as": "value: counts, summed"},
        {"column": "Filiale", "used_as": "ignored"}]
    assert "named like a count" in manifest["input"]["feedback_reason"]
    summary = " ".join(result.stdout.split())
    assert "Filiale: ignored" in summary and "named like a count" in summary
    version = bundle.model_dir(tmp_path / "idx", "default")
    values = np.load(version / bundle.read_current(version) / "rows_values.npy")
    assert set(values.tolist()) == {1.0, 2.0, 3.0}  # the quantities, not 1 a row


def test_value_col_named_like_a_quantity_is_counts_and_feedback_is_honoured(tmp_path):
    log = shop_log(tmp_path / "orders.csv", header="Kunde;Artikel;Menge")
    cols = read_log(log, ReadOptions(value_col="Menge")).columns
    assert cols.feedback == "implicit" and "Menge" in cols.feedback_reason
    cols = read_log(log, ReadOptions(value_col="Menge", feedback="explicit")).columns
    assert cols.feedback == "explicit" and cols.feedback_reason == "--feedback explicit"
    other = shop_log(tmp_path / "o2.csv", header="Kunde;Artikel;Wert")
    cols = read_log(other, ReadOptions(value_col="Wert")).columns
    assert cols.feedback == "explicit" and "--feedback implicit" in cols.feedback_reason


def test_an_order_date_column_is_the_timestamp_and_is_validated(tmp_path):
    log = shop_log(tmp_path / "orders.csv", header="customer_id;sku;qty;order_date",
                   extra="2024-03-0{day}")
    with log.open("a") as fh:
        fh.write("k001;A01;1;not a date\n")
    parsed = read_log(log)
    assert parsed.columns.timestamp == "order_date"
    assert parsed.rejected.counts == {"unparseable timestamp": 1}
    assert parsed.rejected.examples[0]["line"] == USERS * PER_USER + 2
    for name in ("Datum", "created_at", "date", "Bestelldatum"):
        renamed = tmp_path / f"{name}.csv"
        renamed.write_text(log.read_text().replace("order_date", name, 1))
        assert read_log(renamed).columns.timestamp == name


def test_a_decimal_comma_quantity_in_a_semicolon_log_is_a_number(tmp_path):
    log = tmp_path / "o.csv"
    log.write_bytes(b"\xef\xbb\xbfKunde;Artikel;Menge\r\nk1;A1;1,5\r\nk1;A2;2\r\nk2;A1;0,5\r\n")
    parsed = read_log(log)
    assert parsed.rejected.total == 0 and parsed.values.tolist() == [1.5, 2.0, 0.5]


# ---------------------------------------------------------------------------- 4. flags


def _flags(command: str) -> set[str]:
    click_app = typer.main.get_command(app)
    cmd = click_app.commands[command]  # type: ignore[attr-defined]
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


def test_build_evaluate_and_tune_take_every_input_flag():
    for command in ("build", "evaluate", "tune"):
        assert set(INPUT_FLAGS) | {"--no-header"} <= _flags(command), command
    assert (_flags("build") & {f for f in _flags("evaluate") if f.startswith("--")}) >= set(
        INPUT_FLAGS)


def test_tune_reads_a_semicolon_log_and_prints_a_complete_build_line(tmp_path):
    log = shop_log(tmp_path / "orders.csv", header="Kunde;Artikel;Wert")
    catalog = excel_catalog(tmp_path / "cat.csv")
    result = run_cli(["tune", str(log), "--delimiter", ";", "--value-col", "Wert",
                      "--feedback", "implicit", "--items", str(catalog), "--items-id-col",
                      "sku", "--k", "2", "--weighting", "log", "--shrinkage", "0"])
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("build with:"))
    words = shlex.split(line.removeprefix("build with:"))
    assert words[:3] == ["svdfaiss", "build", str(log)]
    for flag, value in (("--delimiter", ";"), ("--value-col", "Wert"),
                        ("--feedback", "implicit"), ("--items", str(catalog)),
                        ("--items-id-col", "sku"), ("--k", "2"), ("--weighting", "log"),
                        ("--shrinkage", "0")):
        assert words[words.index(flag) + 1] == value, (flag, words)
    # pasted, it builds
    built = run_cli([*words[1:], "--out", str(tmp_path / "idx")])
    assert built.returncode == 0, built.stderr
    assert manifest_of(tmp_path / "idx")["catalog"]["matched_items"] == ITEMS


def test_evaluate_takes_delimiter_header_and_timestamp_flags(tmp_path):
    log = shop_log(tmp_path / "orders.txt", header="a|b|c|d", sep="|", extra="2024-01-0{day}")
    out = tmp_path / "r.json"
    result = run_cli(["evaluate", str(log), "--delimiter", "|", "--header", "--user-col", "a",
                      "--item-col", "b", "--value-col", "c", "--feedback", "implicit",
                      "--timestamp-col", "d", "--k", "2", "--no-ease", "--min-test-interactions",
                      "3", "--json", str(out)])
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["protocol"]["feedback"] == "implicit"
    assert "leave last out: skipped" not in result.stdout


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("build", "--feedback", "counts"), ("evaluate", "--duplicates", "first"),
    ("tune", "--format", "xlsx"), ("evaluate", "--weighting", "tfidf"),
    ("tune", "--weighting", "auto")])
def test_choice_values_are_checked_for_every_command(tmp_path, command, flag, value):
    log = shop_log(tmp_path / "orders.csv")
    result = run_cli([command, str(log), flag, value, "--out" if command == "build" else
                      "--seed", str(tmp_path / "idx") if command == "build" else "1"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{flag} {value!r}: choose one of" in result.stderr


# ---------------------------------------------------------------------------- 5. min-rating


def ratings_log(path: Path) -> Path:
    lines = ["user_id,item_id,rating,timestamp"]
    for u in range(USERS):
        for j in range(6):
            lines.append(f"u{u},i{(u + j) % ITEMS},{1 + (u * 7 + j) % 5},{j}")
    lines.append("u0,i0,1,100")  # u0's later rating of i0 stands (last): 1
    path.write_text("\n".join(lines) + "\n")
    return path


def test_min_rating_drops_low_ratings_and_counts_them(tmp_path):
    log = ratings_log(tmp_path / "r.csv")
    plain = build_interactions(read_log(log))
    high = build_interactions(read_log(log), min_rating=3)
    assert high.matrix.data.min() >= 3 and plain.matrix.data.min() == 1
    assert high.matrix.nnz == int((plain.matrix.data >= 3).sum())
    assert high.removed_by_min_rating > 0
    assert high.rows_used + high.removed_by_min_rating + high.duplicates_merged == \
        plain.rows_used + plain.duplicates_merged
    u0 = int(np.searchsorted(high.user_ids, b"u0"))
    i0 = int(np.searchsorted(high.item_ids, b"i0"))
    assert high.matrix[u0, i0] == 0  # the rating that stands (1) is below 3
    result = run_cli(["build", str(log), "--min-rating", "3", "--out", str(tmp_path / "idx"),
                      "--k", "4"])
    assert result.returncode == 0, result.stderr
    rows = manifest_of(tmp_path / "idx")["rows"]
    assert rows["removed_by_min_rating"] == high.removed_by_min_rating
    assert rows["min_rating"] == 3
    assert "removed by --min-rating 3" in " ".join(result.stdout.split())


def test_min_rating_on_implicit_counts_is_an_error(tmp_path):
    log = shop_log(tmp_path / "orders.csv")
    result = run_cli(["build", str(log), "--min-rating", "2", "--out", str(tmp_path / "idx")])
    assert result.returncode == 2
    assert "--min-rating 2 applies to explicit ratings" in " ".join(result.stderr.split())
    assert not (tmp_path / "idx" / "default").exists() or not list(
        (tmp_path / "idx" / "default").glob("2*"))
