"""A larger generated log through the approximate (IVF/HNSW) paths: recall and exact k."""

import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.index import exact_top_k
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def medium_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("medium")
    return write_sample(SampleSpec(users=300_000, items=60_000, events=1_500_000,
                                   categories=20, single_event_share=0.5), root / "data")


@pytest.fixture(scope="module")
def medium(medium_data, tmp_path_factory):
    """The defaults (shrinkage 30)."""
    index_dir = tmp_path_factory.mktemp("ix")
    report = build(BuildConfig(input=medium_data.events, model="medium", index_dir=index_dir))
    return Recommender.load(index_dir, "medium"), report


def _recommend_recall(rec: Recommender, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    factors = np.asarray(rec.item_factors)
    hits = 0
    users = rng.choice(rec.n_users, 100, replace=False)
    for u in users:
        got = rec.recommend(decode_ids(rec.user_ids[u : u + 1])[0], 10)
        scores = factors @ rec.user_vector(u)
        scores[rec.seen_items(u)] = -np.inf
        hits += sum(s >= np.sort(scores)[-10] - 1e-5 for s in got.scores)
    return hits / 1000


def test_auto_chooses_approximate_indexes_at_this_size(medium):
    _, report = medium
    kinds = {name: meta["type"] for name, meta in report.manifest["indexes"].items()}
    assert kinds == {"items": "hnsw", "items_mips": "banded", "users": "ivf"}


def test_recall_against_exact_search(medium):
    rec, _ = medium
    rng = np.random.default_rng(0)
    vectors = np.asarray(rec.item_vectors)
    hits = 0
    # The index's recall, over items the factors rank (reason cf); items with fewer
    # co-users answer by co-occurrence, another measure (svdfaiss.evidence).
    ranked_by_factors = [i for i in range(rec.n_items) if rec.evidence.has_evidence(i)
                         and rec.evidence.factors_speak(i)]
    items = rng.choice(ranked_by_factors, 100, replace=False)
    for i in items:
        got = rec.similar_items(decode_ids(rec.item_ids[i : i + 1])[0], 10)
        assert got.reason == "cf"
        others = np.delete(np.arange(rec.n_items), i)
        scores, _ = exact_top_k(vectors[others], vectors[i], 10, others)
        hits += sum(s >= scores[-1] - 1e-5 for s in got.scores)
    assert hits / 1000 >= 0.95


def test_recommendation_recall_with_and_without_shrinkage(medium, medium_data, tmp_path):
    """The MIPS weak spot (docs/benchmarks.md): one reduction over every item reached
    0.875-0.918 here with shrinkage; the norm bands reach 0.98 with and without it."""
    build(BuildConfig(input=medium_data.events, model="plain", index_dir=tmp_path,
                      shrinkage=0.0, user_index=None, similar_cache=0,
                      stored_recommendations=0))
    assert _recommend_recall(Recommender.load(tmp_path, "plain")) >= 0.98
    assert _recommend_recall(medium[0]) >= 0.98


def test_recall_at_300k_items_is_measured_and_reaches_098(tmp_path):
    """A skewed shop log of 300k items, default flags: the builder's own figure and an
    independent sample both reach 0.98 (one reduction gave 0.69 on this shape)."""
    data = write_sample(SampleSpec(users=600_000, items=300_000, events=3_000_000,
                                   categories=20), tmp_path / "data")
    report = build(BuildConfig(input=data.events, model="shop", index_dir=tmp_path / "ix",
                               user_index=None, similar_cache=0, stored_recommendations=20))
    meta = report.manifest["indexes"]["items_mips"]
    assert meta["type"] == "banded" and meta["rows"] > 200_000  # 236k after filters
    assert meta["recall_at_10"] >= 0.98 and meta["recall_meets_target"]
    rec = Recommender.load(tmp_path / "ix", "shop")
    assert _recommend_recall(rec, seed=3) >= 0.98
    # the stored rows (600k users; asked for: auto's probe may find them too slow here) are
    # the banded index's own answers, ties searched
    assert report.manifest["stored_recommendations"]["k"] == 20
    for u in np.random.default_rng(4).choice(rec.n_users, 50, replace=False).tolist():
        user = decode_ids(rec.user_ids[u : u + 1])[0]
        assert rec.recommend(user, 10, fallback="popular").records() == rec.recommend(
            user, 10, fallback="popular", use_stored=False).records()
    user = decode_ids(rec.user_ids[5:6])[0]
    deny = rec.recommend(user, 100).ids
    result = rec.recommend(user, 10, filter_items=deny)
    assert len(result) == 10 and not set(result.ids) & set(deny)


def test_filters_return_exactly_k_at_scale(medium):
    rec, _ = medium
    item = decode_ids(rec.item_ids[10:11])[0]
    allowed = decode_ids(rec.item_ids[::500])  # 120 items: exact path
    assert len(rec.similar_items(item, 10, items=allowed)) == 10
    big_allow = decode_ids(rec.item_ids[: rec.n_items // 2])  # ANN path with a selector
    result = rec.similar_items(item, 25, items=big_allow)
    assert len(result) == 25 and set(result.ids) <= set(big_allow)
    user = decode_ids(rec.user_ids[5:6])[0]
    deny = rec.recommend(user, 200).ids
    result = rec.recommend(user, 20, filter_items=deny)
    assert len(result) == 20 and not set(result.ids) & set(deny)
