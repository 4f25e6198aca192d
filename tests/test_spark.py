"""`build --engine spark` against the native builder on one small log, with a real local[2]
Spark session: the same rows counted (bad ones by reason), the same singular values, the
same similar items and recommendations, the same rating model (--objective rating, on a
log of ratings), and a killed build that publishes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.content import ContentEncoder
from svdfaiss.data import decode_ids
from svdfaiss.errors import InvalidInput
from svdfaiss.query.filters import CatalogFilter
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample

pytest.importorskip("pyspark", reason="the Spark engine needs pip install '.[spark]'")
if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
    pytest.skip("the Spark engine needs Java", allow_module_level=True)

pytestmark = pytest.mark.slow

BAD_ROWS = ["U0001,,3,1700000000", "only-one-field", "", "U0002,0000000001,-1,1700000001",
            "U0002,0000000001,abc,1700000002", "U0003,0000000002,2,yesterday"]


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    from svdfaiss.spark import spark_session

    session = spark_session("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated purchase log with bad rows of six kinds planted between good ones."""
    files = write_sample(SampleSpec(users=1500, items=400, events=20_000),
                         tmp_path_factory.mktemp("spark-data"))
    lines = files.events.read_text().splitlines()
    for i, bad in enumerate(BAD_ROWS):
        lines.insert(3 + 7 * i, bad)
    files.events.write_text("\n".join(lines) + "\n")
    return files.events


def _config(path: Path, index_dir: Path, **extra: object) -> BuildConfig:
    return BuildConfig(input=path, model="m", index_dir=index_dir, tune=False, k=16,
                       version="v1", **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def both(log: Path, spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from svdfaiss.spark.build import build_spark

    out = tmp_path_factory.mktemp("spark-bundles")
    native = build(_config(log, out / "native"))
    started = time.monotonic()
    on_spark = build_spark(_config(log, out / "spark"), spark=spark)
    print(f"spark build: {time.monotonic() - started:.1f} s, stages {on_spark.seconds}")
    return out, native, on_spark


def test_rows_are_counted_the_same_bad_ones_by_reason(both) -> None:  # type: ignore[no-untyped-def]
    _, native, on_spark = both
    rows_n, rows_s = native.manifest["rows"], on_spark.manifest["rows"]
    assert rows_s["rejected_by_reason"] == rows_n["rejected_by_reason"]
    assert rows_n["rejected"] == len(BAD_ROWS)  # the planted ones, six reasons or fewer
    for key in ("read", "used", "rejected", "duplicates_merged", "removed_by_filters"):
        assert rows_s[key] == rows_n[key], key
    by_line = lambda rows: sorted((e["line"], e["reason"]) for e in rows["rejected_examples"])  # noqa: E731
    assert by_line(rows_s) == by_line(rows_n)
    assert on_spark.manifest["counts"] == native.manifest["counts"]
    assert on_spark.manifest["input"]["columns"] == native.manifest["input"]["columns"]
    assert on_spark.manifest["evidence"] == native.manifest["evidence"]


def test_singular_values_match_within_1e_3(both) -> None:  # type: ignore[no-untyped-def]
    _, native, on_spark = both
    s_n = np.array(native.manifest["factorization"]["singular_values"])
    s_s = np.array(on_spark.manifest["factorization"]["singular_values"])
    assert s_s.shape == s_n.shape == (16,)
    assert np.max(np.abs(s_s - s_n) / s_n) < 1e-3


def _overlap(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / max(1, len(a))


def test_similar_items_and_recommendations_overlap_at_10(both) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = both
    native, on_spark = Recommender.load(out / "native", "m"), Recommender.load(out / "spark", "m")
    assert decode_ids(native.item_ids) == decode_ids(on_spark.item_ids)
    assert decode_ids(native.user_ids) == decode_ids(on_spark.user_ids)
    items = decode_ids(native.item_ids)[::4]
    users = decode_ids(native.user_ids)[::10]
    similar = [_overlap(native.similar_items(i, k=10).ids, on_spark.similar_items(i, k=10).ids)
               for i in items]
    recs = [_overlap(native.recommend(u, k=10).ids, on_spark.recommend(u, k=10).ids)
            for u in users]
    assert np.mean(similar) >= 0.98, np.mean(similar)
    assert np.mean(recs) >= 0.98, np.mean(recs)
    assert native.recommend(users[0], k=10).reason == on_spark.recommend(users[0], k=10).reason


def test_the_spark_bundle_verifies_and_has_the_native_files(both) -> None:  # type: ignore[no-untyped-def]
    _out, native, on_spark = both
    assert bundle.verify(on_spark.path) == []
    assert set(on_spark.manifest["files"]) == set(native.manifest["files"])
    assert on_spark.manifest["parameters"]["engine"] == "spark"


def test_parquet_input_counts_like_the_native_reader(log: Path, spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from svdfaiss.spark.build import build_spark

    table = pa.table({"customer_id": ["a", "a", "b", "b", "c", "", "c", "d"],
                      "sku": ["1", "2", "1", "3", "2", "3", "3", "1"],
                      "quantity": [1.0, 2.0, 1.0, 0.0, 3.0, 1.0, 1.0, 4.0]})
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    config = BuildConfig(input=path, model="p", index_dir=tmp_path / "n", tune=False, k=1,
                         version="v1")
    native = build(config)
    on_spark = build_spark(BuildConfig(input=path, model="p", index_dir=tmp_path / "s",
                                       tune=False, k=1, version="v1"), spark=spark)
    assert on_spark.manifest["rows"]["rejected_by_reason"] == {"zero count": 1,
                                                               "missing user id": 1}
    assert on_spark.manifest["rows"] == native.manifest["rows"]
    assert on_spark.manifest["counts"] == native.manifest["counts"]


def test_the_build_summary_prints_a_spark_bundle(both, capsys) -> None:  # type: ignore[no-untyped-def]
    """`svdfaiss build --engine spark` without --json ends by printing this summary; its
    tuning line once failed on the Spark manifest (a KeyError after a finished build)."""
    from svdfaiss.cli.printing import print_summary

    _out, native, on_spark = both
    print_summary(on_spark.path, on_spark.manifest)
    printed = capsys.readouterr().out
    assert "the Spark engine builds with the fixed defaults" in printed
    assert on_spark.manifest["tuning"]["status"] == native.manifest["tuning"]["status"] == "off"
    assert on_spark.manifest["tuning"]["chosen"] == native.manifest["tuning"]["chosen"]


def test_the_svd_does_not_depend_on_how_items_are_chunked(log: Path, spark) -> None:  # type: ignore[no-untyped-def]
    """The per-item sums cut into many chunks (7 items each: tens of keys, several a
    reducer, partials merged sparse and dense) give the factorization that one chunk gives."""
    from svdfaiss.data import ReadOptions
    from svdfaiss.spark.linalg import randomized_svd
    from svdfaiss.spark.read import read_blocks

    blocks = read_blocks(spark, str(log), ReadOptions())
    n_items = int(blocks.item_ids.size)

    def svd(chunk: int):  # type: ignore[no-untyped-def]
        return randomized_svd(blocks.blocks, blocks.n_users, n_items, 12,
                              lambda b, n=n_items: b.matrix(n), spark_context=spark.sparkContext,
                              chunk=chunk)

    whole, chunked = svd(n_items), svd(7)
    blocks.blocks.unpersist()
    assert n_items > 7 * 8
    np.testing.assert_allclose(chunked.singular_values, whole.singular_values, rtol=1e-5)
    signs = np.sign(np.einsum("ij,ij->j", chunked.item_factors, whole.item_factors))
    np.testing.assert_allclose(chunked.item_factors * signs, whole.item_factors, atol=1e-4)


def test_unsupported_flags_are_refused_before_spark_starts(log: Path, tmp_path: Path) -> None:
    from svdfaiss.spark.build import build_spark

    with pytest.raises(InvalidInput, match="--engine spark does not support --evaluate"):
        build_spark(BuildConfig(input=log, model="m", index_dir=tmp_path, evaluate=True))
    # --objective rating and --items are built; the others are still named.
    with pytest.raises(InvalidInput) as refused:
        build_spark(BuildConfig(input=log, model="m", index_dir=tmp_path, evaluate=True,
                                objective="rating", events=[log], catalog=log,
                                catalog_updates=(log,)))
    assert str(refused.value).startswith(
        "--engine spark does not support --catalog-updates, --events, --evaluate yet")
    assert "--objective" not in str(refused.value) and "--items" not in str(refused.value)


def test_a_killed_spark_build_leaves_current_on_the_previous_intact_bundle(
        log: Path, both) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = both
    index_dir = out / "spark"
    model_dir = index_dir / "m"
    cmd = [sys.executable, "-m", "svdfaiss", "build", str(log), "--model", "m", "--out",
           str(index_dir), "--k", "16", "--engine", "spark", "--spark-master", "local[2]",
           "--version", "v-killed"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # the JVM too, as one process group
    # Killed once it writes the bundle (rows streaming in), or at 90 s in whatever stage it
    # is (a loaded machine may not get that far): CURRENT must not move either way.
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_dir() for p in model_dir.glob(".tmp-*")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build finished before it could be killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert bundle.read_current(model_dir) == "v1"
    assert not (model_dir / "v-killed").exists()
    assert bundle.verify(model_dir / "v1") == []
    assert Recommender.load(index_dir, "m").version == "v1"


NEW_ITEMS = [("9000000001", "Wireless Camera 9001", "cameras", 120.0),
             ("9000000002", "Portable Controller 9002", "gaming", 45.5),
             ("9000000003", "Wireless Controller 9003", "gaming", 60.25)]


@pytest.fixture(scope="module")
def both_catalog(log: Path, spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The log built with its catalog (titles and categories: content vectors, hybrid
    similar items) by both engines; the catalog holds three items the log lacks."""
    from svdfaiss.spark.build import build_spark

    out = tmp_path_factory.mktemp("spark-catalog-bundles")
    catalog = out / "items.csv"
    lines = (log.parent / "items.csv").read_text().splitlines()
    lines += [f'"{i}","{title}","{category}",{price},true'
              for i, title, category, price in NEW_ITEMS]
    catalog.write_text("\n".join(lines) + "\n")
    native = build(_config(log, out / "native", catalog=catalog))
    started = time.monotonic()
    on_spark = build_spark(_config(log, out / "spark", catalog=catalog), spark=spark)
    print(f"spark build with a catalog: {time.monotonic() - started:.1f} s")
    return out, native, on_spark


def test_a_catalog_gives_the_native_files_and_manifest_sections(both_catalog) -> None:  # type: ignore[no-untyped-def]
    _, native, on_spark = both_catalog
    assert bundle.verify(on_spark.path) == []
    files = set(native.manifest["files"])
    assert set(on_spark.manifest["files"]) == files
    assert {"catalog.parquet", "content.faiss", "content_vectors.npy", "new_item_ids.npy",
            "new_item_factors.npy", "new_item_vectors.npy", "content_to_cf.npy",
            "content_to_rec.npy"} <= files
    m_n, m_s = native.manifest, on_spark.manifest
    assert m_s["catalog"] == m_n["catalog"]
    assert m_s["indexes"]["content"] == m_n["indexes"]["content"]
    assert m_s["input"]["catalog_updates"] == m_n["input"]["catalog_updates"] == []
    assert m_s["similar_cache"] == m_n["similar_cache"]
    assert m_n["similar_cache"]["mode"] == "hybrid"
    # Everything but the maps' fit to the factors (r2), which the two SVDs give apart.
    fitted = ("new_items_in_recommendations", "new_items_in_similar")
    assert {k: v for k, v in m_s["content"].items() if k not in fitted} == {
        k: v for k, v in m_n["content"].items() if k not in fitted}
    assert m_n["content"]["new_items"] == len(NEW_ITEMS)
    for key in fitted:
        drop_r2 = lambda section: {k: v for k, v in section.items() if k != "r2"}  # noqa: E731
        assert drop_r2(m_s["content"][key]) == drop_r2(m_n["content"][key]), key
        assert abs(m_s["content"][key]["r2"] - m_n["content"][key]["r2"]) < 0.01, key


def test_the_catalog_and_content_arrays_match(both_catalog) -> None:  # type: ignore[no-untyped-def]
    _, native, on_spark = both_catalog
    load = lambda report, name: np.load(report.path / name, allow_pickle=False)  # noqa: E731
    assert pq.read_table(on_spark.path / "catalog.parquet").equals(
        pq.read_table(native.path / "catalog.parquet"))
    np.testing.assert_array_equal(load(on_spark, "new_item_ids.npy"),
                                  load(native, "new_item_ids.npy"))
    assert decode_ids(load(native, "new_item_ids.npy")) == [i for i, *_ in NEW_ITEMS]
    # The content vectors and the encoder come from the catalog alone: the same arrays.
    for name in ("content_vectors.npy", *ContentEncoder.FILES):
        np.testing.assert_array_equal(load(on_spark, name), load(native, name), err_msg=name)
    # The catalog-only items' predicted CF vectors follow the SVD (its signs too): their
    # cosines with the model's items agree.
    cosines = [load(r, "new_item_vectors.npy") @ load(r, "item_vectors.npy").T
               for r in (native, on_spark)]
    np.testing.assert_allclose(cosines[1], cosines[0], atol=5e-3)


def test_catalog_similar_items_and_filters_overlap_at_10(both_catalog) -> None:  # type: ignore[no-untyped-def]
    out, native_report, _ = both_catalog
    native, on_spark = Recommender.load(out / "native", "m"), Recommender.load(out / "spark", "m")
    logged = decode_ids(native.item_ids)[::8]
    new = [i for i, *_ in NEW_ITEMS]
    for items in (new, logged):
        similar = [_overlap(native.similar_items(i, k=10).ids,
                            on_spark.similar_items(i, k=10).ids) for i in items]
        assert np.mean(similar) >= 0.98, (items[:3], np.mean(similar))
    catalog = pq.read_table(native_report.path / "catalog.parquet").to_pydict()
    category_of = dict(zip(decode_ids(native.item_ids) + new, catalog["category"],
                           strict=True))
    gaming = CatalogFilter(category="gaming")
    users = decode_ids(native.user_ids)[::25]
    recs, similar = [], []
    for user in users:
        a = native.recommend(user, k=10, catalog_filter=gaming).ids
        b = on_spark.recommend(user, k=10, catalog_filter=gaming).ids
        assert len(a) == len(b) == 10
        assert {category_of[i] for i in a + b} == {"gaming"}
        recs.append(_overlap(a, b))
    for item in new + logged:
        a = native.similar_items(item, k=10, catalog_filter=gaming).ids
        b = on_spark.similar_items(item, k=10, catalog_filter=gaming).ids
        assert {category_of[i] for i in a + b} <= {"gaming"}
        similar.append(_overlap(a, b))
    assert np.mean(recs) >= 0.98, np.mean(recs)
    assert np.mean(similar) >= 0.98, np.mean(similar)


RATING_TOLERANCE = 1e-4  # biases and predicted ratings, on a 1-5 scale (float32 CG sums)


@pytest.fixture(scope="module")
def both_rating(spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A generated log of 1-5 ratings built with --objective rating by both engines."""
    from svdfaiss.spark.build import build_spark

    ratings = write_sample(SampleSpec(users=900, items=250, events=12_000, explicit=True),
                           tmp_path_factory.mktemp("spark-ratings")).events
    out = tmp_path_factory.mktemp("spark-rating-bundles")
    started = time.monotonic()
    native = build(_config(ratings, out / "native", objective="rating"))
    middle = time.monotonic()
    on_spark = build_spark(_config(ratings, out / "spark", objective="rating"), spark=spark)
    print(f"rating builds: native {middle - started:.1f} s, spark "
          f"{time.monotonic() - middle:.1f} s (rating model "
          f"{on_spark.seconds['rating model']:.1f} s)")
    return out, native, on_spark


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {name: np.load(path / f"{name}.npy", allow_pickle=False)
            for name in ("rating_users", "rating_user_bias", "item_factors")}


def test_the_rating_model_matches_the_native_one(both_rating) -> None:  # type: ignore[no-untyped-def]
    _, native, on_spark = both_rating
    model_n, model_s = native.manifest["rating_model"], on_spark.manifest["rating_model"]
    assert model_s["mu"] == model_n["mu"]  # half-star sums are exact in float64
    assert model_s == model_n
    a_n, a_s = _arrays(native.path), _arrays(on_spark.path)
    assert {k: v.shape for k, v in a_s.items()} == {k: v.shape for k, v in a_n.items()}
    bias_gap = {"users": np.abs(a_s["rating_user_bias"] - a_n["rating_user_bias"]).max(),
                "items": np.abs(a_s["item_factors"][:, -1] - a_n["item_factors"][:, -1]).max()}
    predicted = [model_n["mu"] + a["rating_user_bias"][:, None]
                 + a["rating_users"] @ a["item_factors"].T for a in (a_n, a_s)]
    prediction_gap = np.abs(predicted[1] - predicted[0]).max()
    print(f"rating model: bias gap {bias_gap}, prediction gap {prediction_gap:.2e}")
    assert max(bias_gap.values()) < RATING_TOLERANCE
    assert prediction_gap < RATING_TOLERANCE


def test_rating_recommendations_overlap_at_10(both_rating) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = both_rating
    native, on_spark = Recommender.load(out / "native", "m"), Recommender.load(out / "spark", "m")
    users = decode_ids(native.user_ids)[::5]
    answers = [(native.recommend(u, k=10), on_spark.recommend(u, k=10)) for u in users]
    overlap = float(np.mean([_overlap(n.ids, s.ids) for n, s in answers]))
    print(f"rating recommendations: overlap@10 {overlap:.4f} over {len(users)} users")
    assert overlap >= 0.98, overlap
    assert {n.reason for n, _ in answers} == {s.reason for _, s in answers} == {"rating"}
    user = users[0]
    assert on_spark.score(user, on_spark.recommend(user, k=1).ids[0]) == pytest.approx(
        native.score(user, native.recommend(user, k=1).ids[0]), abs=RATING_TOLERANCE)


def test_the_rating_bundle_verifies_and_has_the_native_files(both_rating) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from svdfaiss.cli import app

    out, native, on_spark = both_rating
    assert bundle.verify(on_spark.path) == []
    verified = CliRunner().invoke(app, ["bundles", "verify", "--model", "m", "--index-dir",
                                        str(out / "spark")], catch_exceptions=False)
    assert verified.exit_code == 0, verified.output
    assert set(on_spark.manifest["files"]) == set(native.manifest["files"])
    assert {"rating_users.npy", "rating_user_bias.npy"} <= set(on_spark.manifest["files"])
    assert "fold_factors.npy" not in on_spark.manifest["files"]
    for name in ("items", "items_mips", "users"):
        index_n, index_s = native.manifest["indexes"][name], on_spark.manifest["indexes"][name]
        assert (index_s["type"], index_s["rows"], index_s["dim"]) == (
            index_n["type"], index_n["rows"], index_n["dim"]), name
    assert on_spark.manifest["indexes"]["users"]["dim"] == 8  # p_u, the default rating k
    assert on_spark.manifest["parameters"]["objective"] == "rating"


def test_the_rating_objective_refuses_implicit_counts_on_spark(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from svdfaiss.spark.build import build_spark

    path = tmp_path / "counts.csv"
    path.write_text("user_id,item_id,quantity\na,1,2\na,2,1\nb,1,3\nb,3,1\nc,2,1\n")
    with pytest.raises(InvalidInput, match="--objective rating needs explicit ratings"):
        build_spark(BuildConfig(input=path, model="c", index_dir=tmp_path / "out", tune=False,
                                k=1, objective="rating"), spark=spark)
