"""The evaluation report: its protocol as a table, and the warnings a reader needs.

The report of the Amazon sample stored in docs/results (svdfaiss evaluate with the
defaults) is the case the first-day issue found: 151 of 47,141 users tested, and a rating
model (RMSE 1.2902) worse than its biases alone (1.2841).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from svdfaiss.data import ReadOptions, build_interactions, read_log
from svdfaiss.evaluation import SMALL_TEST_USERS, evaluate_topn, evaluation_warnings
from svdfaiss.synthetic import SampleSpec, write_sample

AMAZON_REPORT = (Path(__file__).resolve().parents[1] / "docs" / "results"
                 / "eval-amazon-electronics-sample.json")


def amazon_report() -> dict:  # type: ignore[type-arg]
    return json.loads(AMAZON_REPORT.read_text())


def test_the_amazon_sample_warns_of_its_small_test_set_and_its_rating_model():
    warnings = evaluation_warnings(amazon_report())
    small = [w for w in warnings if w.startswith("small test set (random holdout)")]
    assert len(small) == 1
    assert "151 of 47,141 users (0.3%) are tested" in small[0]
    assert f"fewer than {SMALL_TEST_USERS} and under 5% of the users" in small[0]
    # hit rate@10 0.2318 over 151 users: sqrt(p (1 - p) / n) = 0.0343
    assert "hit rate@10 0.232 has a standard error of 0.034" in small[0]
    assert "below about 0.069 are noise" in small[0]
    rating = [w for w in warnings if w.startswith("the rating model predicts worse")]
    assert rating == [
        "the rating model predicts worse than its biases alone: RMSE 1.2902 against 1.2841 "
        "(5 folds); its factors add noise on this log. Build with --objective rating "
        "--rating-k 0 for the biases alone, or let svdfaiss tune choose (its grid includes "
        "k 0)"]


def test_a_large_representative_test_set_and_a_better_rating_model_warn_of_nothing():
    report = amazon_report()
    report["protocol"].update(users=6_000, test_users=5_000)
    report["leave_last_out"]["protocol"].update(users=6_000, test_users=5_000)
    report["rating"]["svdfaiss rating model"]["rmse"] = 1.2
    assert evaluation_warnings(report) == []
    report["protocol"]["test_users"] = 200  # few, though 3% of the users
    assert [w[:40] for w in evaluation_warnings(report)] == [
        "small test set (random holdout): 200 of "]


def test_the_html_report_shows_the_protocol_as_a_table_and_the_warnings(tmp_path):
    pytest.importorskip("matplotlib")
    from svdfaiss.report import write_report

    data = write_sample(SampleSpec(users=300, items=120, events=4_000, categories=4),
                        tmp_path / "data")
    inter = build_interactions(read_log(data.events, ReadOptions()))
    report = evaluate_topn(inter.matrix, 8, "bm25", 0.0, include_ease=False)
    report["rating"] = amazon_report()["rating"]
    page = write_report(tmp_path / "report", inter, report, 8, "bm25", 0.0, 0.0).read_text()
    assert "<pre>" not in page and '"split"' not in page  # no JSON dump
    table = re.search(r"<h2>Protocol</h2><table class='protocol'>(.*?)</table>", page)
    assert table is not None
    rows = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table.group(1)))
    tested = report["protocol"]["test_users"]
    assert rows["test users"] == f"{tested:,} of 300 ({tested / 300:.1%})"
    assert rows["split"] == "random holdout per user"
    assert rows["cutoffs"] == "10, 20" and rows["seed"] == "42"
    assert rows["interactions a user needs to be tested"] == "5"
    warnings = re.findall(r"<p class='warning'><b>Warning:</b> (.*?)</p>", page)
    assert [w[:31] for w in warnings] == ["small test set (random holdout)",
                                          "the rating model predicts worse"]
