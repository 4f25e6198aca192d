"""`svdfaiss export`: every user's or item's answer in one file, equal to the service's.

The batched answers are checked row by row against the single queries of `Recommender`
(over flat, HNSW and banded IVF recommendation indexes), against a real server for a
sample, and on a planted log whose users and items without evidence take the fallbacks.
"""

from __future__ import annotations

import re
import urllib.parse

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from svdfaiss.builder import RECOMMENDATION_INDEX, BuildConfig, build
from svdfaiss.errors import InvalidInput
from svdfaiss.export import export_recommendations, export_similar, read_ids
from svdfaiss.index import IndexParams
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample

from .helpers import run_cli, server


def _csv(path):  # type: ignore[no-untyped-def]
    """A CSV export read back as a user should: ids as strings (leading zeros matter)."""
    ids = {name: pa.string() for name in ("user_id", "item_id", "similar_item_id")}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=ids))


def _by_id(table, key: str) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    rows: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        rows.setdefault(row[key], []).append(row)
    return rows


def _same(exported: list[dict], records: list[dict], id_key: str) -> None:
    """An exported answer equals a single query's records: ids, order, reasons, scores."""
    assert [r[id_key] for r in exported] == [r["item_id"] for r in records]
    assert [r["rank"] for r in exported] == list(range(1, len(records) + 1))
    assert [r["reason"] for r in exported] == [r["reason"] for r in records]
    np.testing.assert_allclose([r["score"] for r in exported],
                               [r["score"] for r in records], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module", params=["flat", "hnsw", "ivf"])
def indexed(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A generated shop with its catalog, its recommendation index of each kind (ivf is
    banded: an exact head and an IVF tail)."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    data = write_sample(SampleSpec(users=1500, items=600, events=24_000, categories=6),
                        root / "data")
    rec_index = (IndexParams(kind="ivf", mips_head=200, ivf_nlist=8, ivf_nprobe=2)
                 if request.param == "ivf" else IndexParams(kind=request.param))
    build(BuildConfig(input=data.events, model="m", index_dir=root / "idx", k=16,
                      catalog=data.catalog, rec_index=rec_index, tune=False, version="v1"))
    rec = Recommender.load(root / "idx", "m")
    kind = rec.manifest["indexes"]["items_mips"]["type"]
    assert kind == {"flat": "flat", "hnsw": "hnsw", "ivf": "banded"}[request.param]
    assert RECOMMENDATION_INDEX.mips_head > 0  # the default is banded too
    return rec, root


def test_recommendations_equal_the_single_queries(indexed, tmp_path):
    rec, _ = indexed
    out = tmp_path / "recs.parquet"
    summary = export_recommendations(rec, out, k=10, chunk=256)  # several chunks
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score", "reason"]
    assert summary.ids == rec.n_users and summary.rows == table.num_rows == 10 * rec.n_users
    exported = _by_id(table, "user_id")
    assert len(exported) == rec.n_users
    for user in range(0, rec.n_users, 7):
        user_id = rec.user_ids[user].decode()
        records = rec.recommend(user_id, 10, fallback="popular").records()
        _same(exported[user_id], records, "item_id")
    reasons = set(table.column("reason").to_pylist())
    assert "cf" in reasons and reasons <= {"cf", "content", "popular"}


def test_similar_items_equal_the_single_queries(indexed, tmp_path):
    rec, _ = indexed
    out = tmp_path / "similar.csv"
    summary = export_similar(rec, out, k=8, chunk=100)
    table = _csv(out)
    assert table.column_names == ["item_id", "rank", "similar_item_id", "score", "reason",
                                  "status"]
    exported = _by_id(table, "item_id")
    assert summary.ids == rec.n_catalog == len(exported)  # catalog-only items too
    for position in range(0, rec.n_catalog, 5):
        item_id = rec.external_items(np.array([position]))[0]
        _same(exported[item_id], rec.similar_items(item_id, 8).records(), "similar_item_id")


def test_users_file_picks_users_and_order(indexed, tmp_path):
    rec, _ = indexed
    chosen = [rec.user_ids[i].decode() for i in (5, 0, 42)]
    ids = tmp_path / "users.txt"
    ids.write_text("user_id\n" + "\n".join(chosen) + "\n")
    positions = read_ids(ids, [rec.user_ids], "user")
    assert positions.tolist() == [5, 0, 42]
    out = tmp_path / "some.csv"
    export_recommendations(rec, out, k=3, users=positions)
    assert _csv(out).column("user_id").to_pylist() == [u for u in chosen
                                                                  for _ in range(3)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two co-purchase blocks and isolated items, each bought by one user who bought nothing
    else: those users and items have no collaborative evidence (tests/test_evidence.py)."""
    rng = np.random.default_rng(3)
    lines = ["user_id,item_id"]
    for block, users in (("A", 400), ("B", 120)):
        for u in range(users):
            chosen = rng.choice(30, size=rng.integers(2, 6), replace=False)
            lines += [f"{block}u{u},{block}{i:02d}" for i in chosen]
    lines += [f"Iu{i},I{i:02d}" for i in range(6)]
    folder = tmp_path_factory.mktemp("planted-export")
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    build(BuildConfig(input=folder / "events.csv", model="planted", index_dir=folder / "idx",
                      k=8, version="v1"))
    return folder / "idx"


def test_fallbacks_for_users_and_items_without_evidence(planted, tmp_path):
    rec = Recommender.load(planted, "planted")
    recs = _by_id(pq.read_table(export_recommendations(rec, tmp_path / "r.parquet").path),
                  "user_id")
    for i in range(6):
        assert {r["reason"] for r in recs[f"Iu{i}"]} == {"popular"}
        _same(recs[f"Iu{i}"], rec.recommend(f"Iu{i}", 10).records(), "item_id")
    _same(recs["Au0"], rec.recommend("Au0", 10).records(), "item_id")
    assert {r["reason"] for r in recs["Au0"]} == {"cf"}
    # hybrid (the default): an isolated item gets the popular items, as the service gives
    similar = _by_id(pq.read_table(export_similar(rec, tmp_path / "s.parquet").path),
                     "item_id")
    assert {r["reason"] for r in similar["I00"]} == {"popular"}
    _same(similar["I00"], rec.similar_items("I00", 10).records(), "similar_item_id")
    # mode cf refuses it, and the export says so instead of inventing neighbours
    summary = export_similar(rec, tmp_path / "cf.csv", mode="cf")
    assert summary.refused == 6
    cf = _by_id(_csv(tmp_path / "cf.csv"), "item_id")
    assert len(cf["I03"]) == 1 and not cf["I03"][0]["similar_item_id"]  # empty in CSV
    assert cf["I03"][0]["rank"] is None and cf["I03"][0]["score"] is None
    assert "no collaborative evidence" in cf["I03"][0]["status"]
    assert all(r["status"] == "ok" for r in cf["A01"])


def test_export_equals_a_real_server(sample_index_dir, rec, tmp_path):
    sample_users = [rec.user_ids[i].decode() for i in range(0, rec.n_users, 250)]
    users = read_ids(_lines(tmp_path / "users.txt", sample_users), [rec.user_ids], "user")
    exported = _by_id(pq.read_table(
        export_recommendations(rec, tmp_path / "r.parquet", k=5, users=users).path), "user_id")
    assert sorted(exported) == sorted(sample_users)
    items = [rec.external_items(np.array([p]))[0] for p in range(0, rec.n_catalog, 100)]
    chosen = read_ids(_lines(tmp_path / "items.txt", items),
                      [rec.item_ids, rec.new_item_ids], "item")
    neighbours = _by_id(pq.read_table(
        export_similar(rec, tmp_path / "s.parquet", k=5, items=chosen).path), "item_id")
    with server(sample_index_dir, "sample") as url:
        for user_id in sample_users:
            body = httpx.get(f"{url}/users/{urllib.parse.quote(user_id, safe='')}"
                             "/recommendations", params={"k": 5}).json()
            _same(exported[user_id], body["items"], "item_id")
        for item_id in items:
            body = httpx.get(f"{url}/items/{urllib.parse.quote(item_id, safe='')}/similar",
                             params={"k": 5}).json()
            _same(neighbours[item_id], body["items"], "similar_item_id")


def _lines(path, ids):  # type: ignore[no-untyped-def]
    path.write_text("\n".join(ids) + "\n")
    return path


def test_cli_exports_with_progress_and_a_summary(sample_index_dir, rec, tmp_path):
    out = tmp_path / "similar.csv"
    result = run_cli(["export", "similar", "--index-dir", str(sample_index_dir), "--model",
                      "sample", "--out", str(out), "--k", "3", "--chunk", "500"])
    assert result.returncode == 0, result.stderr
    assert f"items: 500 of {rec.n_catalog:,}" in result.stderr  # a line per tenth, or so
    assert f"items: {rec.n_catalog:,} of {rec.n_catalog:,}" in result.stderr
    assert f"for {rec.n_catalog:,} items to {out}" in result.stdout
    assert _csv(out).num_rows == 3 * rec.n_catalog
    assert [p.name for p in tmp_path.iterdir()] == ["similar.csv"]  # no temporary left


def test_bad_users_file_fails_in_the_cli_and_writes_nothing(sample_index_dir, tmp_path):
    ids = _lines(tmp_path / "users.txt", ["U0001", "U0002", "nobody", "U0003", "gone"])
    out = tmp_path / "recs.csv"
    out.write_text("the previous export\n")
    result = run_cli(["export", "recommendations", "--index-dir", str(sample_index_dir),
                      "--model", "sample", "--out", str(out), "--users", str(ids)])
    assert result.returncode == 2
    assert (f"{ids} line 3: unknown user id 'nobody' (and 1 more unknown ids)"
            in result.stderr), result.stderr
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.csv", "users.txt"]


@pytest.mark.parametrize(("content", "message"), [
    (b"U0001\n\nU0002\n", "line 2: empty user id"),
    (b"U0001\nU0002\nU0001\n", "line 3: user id 'U0001' repeats line 1"),
    (b"U0001\n\xff\xfe\n", "line 2: user id b'\\xff\\xfe' is not UTF-8"),
    (b"user_id\n", "no user ids after the header"),
    (b"", "no user ids"),
])
def test_bad_ids_files_name_the_line_and_the_id(rec, tmp_path, content, message):
    ids = tmp_path / "users.txt"
    ids.write_bytes(content)
    with pytest.raises(InvalidInput, match=re.escape(f"{ids}")) as raised:
        read_ids(ids, [rec.user_ids], "user")
    assert message in str(raised.value)


def test_ids_are_taken_exactly_as_written(rec, tmp_path):
    first = rec.user_ids[0].decode()
    ids = tmp_path / "users.txt"
    ids.write_bytes(b"\xef\xbb\xbf" + f"{first}\r\n {first}\n".encode())  # BOM, CRLF
    with pytest.raises(InvalidInput, match=f"line 2: unknown user id ' {first}'"):
        read_ids(ids, [rec.user_ids], "user")


def test_bad_targets_and_modes_fail_before_any_work(rec, tmp_path):
    (tmp_path / "folder.csv").mkdir()
    for out, mode, message in ((tmp_path / "x.json", "hybrid", "name a .parquet or .csv"),
                               (tmp_path / "no" / "x.csv", "hybrid", "does not exist"),
                               (tmp_path / "folder.csv", "hybrid", "is a folder"),
                               (tmp_path / "x.csv", "nope", "mode 'nope'")):
        with pytest.raises(InvalidInput, match=re.escape(message)):
            export_similar(rec, out, mode=mode)
        with pytest.raises(InvalidInput, match=re.escape(message)):
            export_recommendations(rec, out, mode=mode)
    assert [p.name for p in tmp_path.iterdir()] == ["folder.csv"]
