"""Builds on real public data from ../shared/data (skipped where it is absent)."""

import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import ReadOptions, decode_ids, read_log
from svdfaiss.recommender import Recommender

from .helpers import run_cli, shared_file

pytestmark = pytest.mark.shared_data


def test_movielens_builds_with_a_sensible_summary(tmp_path):
    ratings = shared_file("ml-latest-small", "ratings.csv")
    movies = shared_file("ml-latest-small", "movies.csv")
    result = run_cli(["build", str(ratings), "--model", "ml", "--out", str(tmp_path),
                      "--items", str(movies)])
    assert result.returncode == 0, result.stderr
    assert "100,836" in result.stdout and "610 x 9,724" in result.stdout
    rec = Recommender.load(tmp_path, "ml")
    assert rec.manifest["input"]["feedback"] == "explicit"
    assert rec.manifest["rows"]["rejected"] == 0
    # Toy Story (1): Toy Story 2 is a neighbour, and animated/children's films are several
    # times more frequent among its neighbours than in the catalog.
    similar = rec.similar_items("1", 10)
    assert "3114" in similar.ids, similar.fields["title"]
    family = [("Animation" in g or "Children" in g) for g in rec.catalog["genres"]]
    share = np.mean([("Animation" in g or "Children" in g) for g in similar.fields["genres"]])
    assert share >= 3 * np.mean(family), (share, np.mean(family), similar.fields["title"])


def test_amazon_sample_keeps_leading_zeros_and_reads_the_same_without_header(tmp_path):
    path = shared_file("amazon-electronics-sample", "ratings_Electronics.csv")
    with_header = read_log(path)
    assert "0132793040" in decode_ids(with_header.item_ids)
    headerless = tmp_path / "ratings_Electronics.csv"
    headerless.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))
    without = read_log(headerless)
    assert with_header.rows_read == without.rows_read == 50_698
    np.testing.assert_array_equal(with_header.user_ids, without.user_ids)
    np.testing.assert_array_equal(with_header.item_ids, without.item_ids)
    np.testing.assert_array_equal(with_header.values, without.values)
    np.testing.assert_array_equal(with_header.timestamps, without.timestamps)
    forced = read_log(headerless, ReadOptions(header=False, feedback="explicit"))
    assert forced.rows_read == 50_698


def test_amazon_sample_builds_with_user_minimum(tmp_path):
    path = shared_file("amazon-electronics-sample", "ratings_Electronics.csv")
    report = build(BuildConfig(input=path, model="amz", index_dir=tmp_path, k=32,
                               min_user_interactions=2, min_item_interactions=2))
    counts = report.manifest["counts"]
    assert counts["users"] > 500 and counts["items"] > 300
    assert report.manifest["rows"]["removed_by_filters"] > 40_000  # most users rate once
    rec = Recommender.load(tmp_path, "amz")
    item = decode_ids(rec.item_ids[:1])[0]
    assert len(rec.similar_items(item, 10)) == 10
