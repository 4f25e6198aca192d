"""Evaluation: metric functions on hand-computed cases, the split, and the protocol end to end."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from svdfaiss.evaluation import (
    category_share,
    coverage,
    evaluate_topn,
    holdout_split,
    ndcg_per_query,
    paired_difference,
    ranking_metrics,
    timelines,
    top_n_from_scores,
)

from .helpers import shared_file


def test_metrics_on_a_hand_computed_list():
    # Relevant {1, 3, 7}; ranked 3, 5, 1, 9: hits at ranks 1 and 3.
    m = ranking_metrics([np.array([3, 5, 1, 9])], [np.array([1, 3, 7])], cutoffs=[4])
    assert m["precision@4"] == pytest.approx(2 / 4)
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["f1@4"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"] == pytest.approx(dcg / idcg)
    assert m["map@4"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["hit_rate@4"] == 1.0 and m["mrr@4"] == 1.0


def test_a_late_first_hit_and_a_cutoff_below_it():
    m = ranking_metrics([np.array([4, 5, 6, 2])], [np.array([2])], cutoffs=[3, 4])
    assert m["hit_rate@3"] == 0.0 and m["mrr@3"] == 0.0 and m["ndcg@3"] == 0.0
    assert m["mrr@4"] == pytest.approx(1 / 4)
    assert m["ndcg@4"] == pytest.approx(1 / math.log2(5))
    assert m["map@4"] == pytest.approx(1 / 4)


def test_map_divides_by_every_relevant_item_as_trec_eval_map_cut():
    # Ranked a, x, b with relevant {a, b, c, d}: precision 1/1 at rank 1, 2/3 at rank 3,
    # over the 4 relevant items (not min(k, 4) = 3).
    a, x, b, c, d = 0, 1, 2, 3, 4
    m = ranking_metrics([np.array([a, x, b])], [np.array([a, b, c, d])], cutoffs=[3])
    assert m["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 4)
    # More relevant items than k: a perfect list cannot reach 1.
    m = ranking_metrics([np.array([0, 1])], [np.array([0, 1, 2, 3, 4])], cutoffs=[2])
    assert m["map@2"] == pytest.approx(2 / 5)
    # Hits past k count nothing; a miss-only list scores 0.
    m = ranking_metrics([np.array([9, 8, 0]), np.array([7])], [np.array([0]), np.array([1])],
                        cutoffs=[2, 3])
    assert m["map@2"] == 0.0 and m["map@3"] == pytest.approx((1 / 3) / 2)


def _reference_map(ranked: list[int], relevant: set[int], k: int) -> float:
    """trec_eval's map_cut_k for one query, written independently of ranking_metrics."""
    total, hits = 0.0, 0
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 30), max_size=25, unique=True),
                          st.sets(st.integers(0, 30), min_size=1, max_size=15)),
                min_size=1, max_size=6),
       st.integers(1, 20))
def test_map_agrees_with_an_independent_loop(queries, k):
    expected = sum(_reference_map(r, rel, k) for r, rel in queries) / len(queries)
    m = ranking_metrics([np.array(r, dtype=np.int64) for r, _ in queries],
                        [np.array(sorted(rel), dtype=np.int64) for _, rel in queries],
                        cutoffs=[k])
    assert m[f"map@{k}"] == pytest.approx(expected, abs=1e-12)


def test_users_without_test_items_are_not_averaged_and_empty_lists_score_zero():
    m = ranking_metrics([np.array([1, 2]), np.array([], dtype=np.int64), np.array([9])],
                        [np.array([1]), np.array([5]), np.array([], dtype=np.int64)],
                        cutoffs=[2])
    # user 1 (hit at rank 1) and user 2 (empty list) count; user 3 has no test items
    assert m["hit_rate@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert ranking_metrics([], [], cutoffs=[5])["ndcg@5"] == 0.0


def test_k_larger_than_the_candidates_counts_missing_places_as_misses():
    m = ranking_metrics([np.array([1, 2])], [np.array([1, 2])], cutoffs=[10])
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1.0)
    assert m["precision@10"] == pytest.approx(2 / 10)


def test_ties_break_towards_the_lower_item_and_train_items_are_excluded():
    scores = np.array([[1.0, 3.0, 3.0, 3.0, 0.5]])
    seen = sp.csr_matrix(np.array([[0, 0, 1, 0, 0]]))
    assert top_n_from_scores(scores, seen, 3)[0].tolist() == [1, 3, 0]
    assert top_n_from_scores(scores, seen, 10)[0].tolist() == [1, 3, 0, 4]
    assert coverage([np.array([1, 3]), np.array([3, 0])], n_items=5, k=2) == pytest.approx(0.6)


def test_holdout_split_is_seeded_disjoint_and_complete():
    rng = np.random.default_rng(0)
    matrix = sp.random(50, 40, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    matrix.data[:] = 1
    split = holdout_split(matrix, 0.2, 5, seed=42)
    again = holdout_split(matrix, 0.2, 5, seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(split.test_items, again.test_items,
                                                     strict=True))
    for user, items in zip(split.test_users, split.test_items, strict=True):
        row = matrix[user].indices
        assert np.isin(items, row).all()
        assert not np.isin(items, split.train[user].indices).any()
        assert len(items) == max(1, round(0.2 * row.size))
    assert split.train.nnz + sum(len(t) for t in split.test_items) == matrix.nnz
    short = np.diff(matrix.indptr) < 5
    assert not np.isin(np.flatnonzero(short), split.test_users).any()


def test_the_protocol_ranks_planted_structure_above_popularity(sample):
    from svdfaiss.data import ReadOptions, build_interactions, read_log

    inter = build_interactions(read_log(sample.events, ReadOptions()), 1, 1, "last")
    report = evaluate_topn(inter.matrix, 32, "bm25", 0.0, include_ease=False)
    topn = report["topn"]
    assert topn["svdfaiss"]["ndcg@10"] > 1.5 * topn["most popular"]["ndcg@10"]
    assert report["ann"]["recall@10_vs_exact"] > 0.95  # exact index below 25k items
    assert set(topn) == {"svdfaiss", "most popular", "item-kNN", "svdfaiss (ANN index)"}


@pytest.mark.shared_data
def test_movielens_beats_most_popular():
    from svdfaiss.data import ReadOptions, build_interactions, read_log

    path = shared_file("ml-latest-small", "ratings.csv")
    inter = build_interactions(read_log(path, ReadOptions()), 1, 1, "last")
    report = evaluate_topn(inter.matrix, 64, "bm25", 0.0, include_ease=False)
    assert report["topn"]["svdfaiss"]["ndcg@10"] > report["topn"]["most popular"]["ndcg@10"]


def test_evaluate_and_tune_commands_print_and_write_json(sample, tmp_path):
    import json

    from .helpers import run_cli

    out = tmp_path / "eval.json"
    result = run_cli(["evaluate", str(sample.events), "--k", "16", "--no-ease", "--json",
                      str(out)])
    assert result.returncode == 0, result.stderr
    assert "ndcg@10" in result.stdout and "most popular" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) >= {"protocol", "topn", "ann"}
    assert report["protocol"]["seed"] == 42 and report["protocol"]["cutoffs"] == [10, 20]
    assert 0 < report["topn"]["svdfaiss"]["recall@20"] <= 1

    tuned = tmp_path / "tune.json"
    result = run_cli(["tune", str(sample.events), "--k", "8", "--k", "16", "--weighting", "log",
                      "--weighting", "bm25", "--beta", "0", "--shrinkage", "0", "--shrinkage",
                      "30", "--json", str(tuned)])
    assert result.returncode == 0, result.stderr
    report = json.loads(tuned.read_text())
    best = report["best"]
    assert len(report["validation"]) == 8 and best == report["validation"][0]
    assert {t["shrinkage"] for t in report["validation"]} == {0, 30}
    assert (f"--k {best['k']} --weighting {best['weighting']} --beta 0.0 --shrinkage "
            f"{best['shrinkage']:g}") in result.stdout.replace("\n", " ")


def test_build_with_evaluate_stores_it_and_the_service_shows_it(sample, tmp_path):
    import httpx

    from svdfaiss.builder import BuildConfig, build

    from .helpers import server

    report = build(BuildConfig(input=sample.events, model="m", index_dir=tmp_path, k=32,
                               evaluate=True))
    evaluation = report.manifest["evaluation"]
    assert evaluation["protocol"]["seed"] == 42
    topn = evaluation["topn"]
    assert topn["svdfaiss"]["ndcg@10"] > topn["most popular"]["ndcg@10"]
    with server(tmp_path, "m") as url:
        body = httpx.get(f"{url}/model").json()
        assert body["version"] == report.manifest["version"]
        assert body["evaluation"]["topn"]["svdfaiss"] == topn["svdfaiss"]
        assert body["parameters"]["k"] == 32 and body["indexes"]["items"]["type"] == "flat"
    plain = build(BuildConfig(input=sample.events, model="plain", index_dir=tmp_path, k=8))
    assert plain.manifest["evaluation"] is None


def test_per_query_ndcg_averages_to_the_metric_and_pairs_are_bootstrapped():
    rng = np.random.default_rng(5)
    ranked = [rng.permutation(50)[:10] for _ in range(200)]
    relevant = [rng.choice(50, rng.integers(1, 6), replace=False) for _ in range(200)]
    per_query = ndcg_per_query(ranked, relevant, 10)
    assert per_query.mean() == pytest.approx(ranking_metrics(ranked, relevant, (10,))["ndcg@10"])
    assert ndcg_per_query([np.array([3, 1])], [np.array([1])], 10)[0] == pytest.approx(
        1 / np.log2(3))
    same = paired_difference(per_query, per_query)
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
    better = paired_difference(per_query + 0.1, per_query)
    assert better["mean"] == pytest.approx(0.1) and better["low"] == pytest.approx(0.1)
    noisy = paired_difference(per_query, rng.permutation(per_query))
    assert noisy["low"] < 0 < noisy["high"]  # a shuffle of itself: no measurable difference


def test_timelines_order_each_users_items_by_time_and_category_share_counts_overlaps():
    times = sp.csr_matrix(np.array([[30.0, 0, 10.0, 20.0], [0, 5.0, 5.0, 0]]))
    lines = timelines(times)
    assert lines[0].tolist() == [2, 3, 0] and lines[1].tolist() == [1, 2]  # ties: by item
    categories = [{"a"}, {"a", "b"}, {"c"}, set()]
    share = category_share([0, 3, 2], [np.array([1, 2]), np.array([0, 1]),
                                       np.array([0, 1])], categories, k=2)
    assert share == pytest.approx((0.5 + 0.0) / 2)  # item 3 has no category: left out


# ------------------------------------------------ similar items on a sparse purchase log


def _planted() -> sp.csr_matrix:
    # Items 0-2 co-bought (users 0-2), items 3-4 co-bought (user 3), item 5 bought alone by
    # two single-item users, item 6 never bought.
    rows = [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    cols = [0, 1, 1, 2, 0, 2, 3, 4, 5, 5]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(6, 7))


def test_item_evidence_counts_co_buyers_and_isolated_items_get_zero():
    from svdfaiss.evidence import co_item_counts, item_evidence

    m = _planted()
    assert item_evidence(m).tolist() == [2, 2, 2, 1, 1, 0, 0]
    assert co_item_counts(m).tolist() == [2, 2, 2, 1, 1, 0, 0]
    doubled = m.copy()
    doubled.data[:] = 3.0  # counts and ratings weigh nothing: a purchase is a purchase
    assert item_evidence(doubled).tolist() == item_evidence(m).tolist()


def test_components_label_disconnected_blocks_apart():
    from svdfaiss.evidence import item_components

    labels = item_components(_planted())
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert item_components(sp.csr_matrix((0, 3))).tolist() == [0, 1, 2]


def test_next_item_queries_hold_out_the_last_and_ask_about_the_one_before():
    from svdfaiss.evaluation import next_item_queries

    m = _planted()
    times = m.copy()
    times.data = np.arange(1, m.nnz + 1, dtype=np.float64)  # row order is time order
    times.data[0], times.data[1] = 5.0, 1.0  # user 0 bought item 1 first, then item 0
    protocol = next_item_queries(m, times)
    assert protocol.split.test_users.tolist() == [0, 1, 2, 3]
    assert protocol.targets.tolist() == [0, 2, 2, 4]
    assert protocol.queries.tolist() == [1, 1, 0, 3]
    assert protocol.split.train[0].toarray().ravel().tolist() == [0, 1, 0, 0, 0, 0, 0]


def test_cooccurrence_similarity_is_cosine_at_half_and_conditional_share_at_zero():
    from svdfaiss.evaluation import cooccurrence_similarity

    m = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=float))
    cos = cooccurrence_similarity(m, np.array([0]))
    assert cos[0].tolist() == pytest.approx([0, 1 / math.sqrt(3 * 1), 2 / math.sqrt(3 * 3)])
    share = cooccurrence_similarity(m, np.array([0]), exponent=0.0)
    assert share[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3])


def test_rank_rows_breaks_ties_by_popularity_and_fill_lists_tops_up():
    from svdfaiss.evaluation import fill_lists, hits_per_query, rank_rows

    scores = np.array([[0.5, 0.0, 0.0, -np.inf, 0.0]])
    ranked = rank_rows(scores, 3, tiebreak=np.array([0, 1, 5, 9, 5]))
    assert ranked[0].tolist() == [0, 2, 4]  # -inf never ranks; equal ties: lower index
    assert fill_lists([np.array([3])], [np.array([3, 1, 2])], 3)[0].tolist() == [3, 1, 2]
    hit, ndcg = hits_per_query([np.array([4, 2]), np.array([1])], np.array([2, 7]), 10)
    assert hit.tolist() == [1.0, 0.0] and ndcg.tolist() == pytest.approx([1 / math.log2(3), 0])


def test_other_component_share_counts_neighbours_outside_the_querys_component():
    from svdfaiss.evaluation import other_component_share

    labels = np.array([0, 0, 1, 2])
    share = other_component_share(np.array([0, 2]), [np.array([1, 2]), np.array([0, 1, 3])],
                                  labels)
    assert share == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.shared_data
def test_amazon_sample_has_the_reported_share_of_items_without_co_buyers():
    from svdfaiss.data import ReadOptions, build_interactions, read_log
    from svdfaiss.evidence import item_components, item_evidence

    path = shared_file("amazon-electronics-sample", "ratings_Electronics.csv")
    matrix = build_interactions(read_log(path, ReadOptions()), 1, 1, "last").matrix
    co_users = item_evidence(matrix)
    assert np.mean(co_users == 0) == pytest.approx(0.563, abs=0.005)
    labels = item_components(matrix)
    # every item without a co-buyer is a component of its own
    assert np.bincount(labels)[labels[co_users == 0]].max() == 1
