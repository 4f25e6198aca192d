"""The banded recommendation index against exact scoring: recall, filters, exactly k, and the
recall the builder measures and records."""

import copy
import json

import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.index import BandedIndex, IndexParams, build_rec_index
from svdfaiss.recall import exact_kth, measure, rec_space
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample


def uneven(n, d, seed):
    """Clustered directions with heavy-tailed norms, as shrinkage item vectors have."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, d))
    x = centers[rng.integers(0, 50, n)] + rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x * rng.lognormal(-3.0, 1.5, n)[:, None]).astype(np.float32)


def test_banded_index_reaches_098_where_one_reduction_does_not():
    v = uneven(30_000, 32, 0)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((200, 32)).astype(np.float32)
    seen = [rng.choice(v.shape[0], 3, replace=False) for _ in range(200)]
    params = IndexParams(kind="ivf", ivf_nprobe=8)
    banded = build_rec_index(v, IndexParams(kind="ivf", ivf_nprobe=8, mips_head=2048))
    assert isinstance(banded, BandedIndex) and banded.head.size == 2048
    assert banded.tail.ntotal == v.shape[0] - 2048
    record = measure(banded, v, q, seen, tune=False)
    plain = measure(build_rec_index(v, params), v, q, seen, tune=False)
    assert record["recall_at_10"] >= 0.98 > plain["recall_at_10"]


def test_tuning_raises_nprobe_until_the_target():
    v = uneven(30_000, 32, 2)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((100, 32)).astype(np.float32)
    seen = [np.empty(0, dtype=np.int64)] * 100
    index = build_rec_index(v, IndexParams(kind="ivf", ivf_nprobe=1))
    record = measure(index, v, q, seen, target=0.99)
    assert record["meets_target"] and record["recall_at_10"] >= 0.99
    assert record["nprobe"] == index.nprobe > 1 and len(record["steps"]) > 1


def test_filters_give_exactly_k_and_only_allowed_items():
    v = uneven(30_000, 32, 4)
    space = rec_space(build_rec_index(v, IndexParams(kind="ivf", mips_head=2048)), v)
    from svdfaiss.query.retrieval import top_k

    q = np.random.default_rng(5).standard_normal(32).astype(np.float32)
    allowed = np.arange(0, 30_000, 2)  # 15k: above the exact threshold, a bitmap selector
    scores, ids = top_k(space, q, 50, allowed, np.empty(0, dtype=np.int64))
    assert ids.size == 50 and np.all(ids % 2 == 0)
    assert np.all(np.diff(scores) <= 0)
    # the answer for an allow-list matches exact scoring over the allowed rows
    kth = exact_kth(v[allowed], q[None, :], [np.empty(0, dtype=np.int64)], k=50)[0]
    assert np.count_nonzero(scores >= kth - 1e-6) >= 49
    deny = top_k(space, q, 200, None, np.empty(0, dtype=np.int64))[1]
    assert deny.size == 200
    scores, ids = top_k(space, q, 20, None, deny)
    assert ids.size == 20 and not set(ids.tolist()) & set(deny.tolist())
    # limit (cf mode behind catalog-only rows): only positions below it, still exactly k
    scores, ids = top_k(space, q, 30, None, np.empty(0, dtype=np.int64), limit=1000)
    assert ids.size == 30 and ids.max() < 1000
    # head rows all denied: the tail answers
    head = space.head.ids
    scores, ids = top_k(space, q, 10, None, head)
    assert ids.size == 10 and not set(ids.tolist()) & set(head.tolist())


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    data = write_sample(SampleSpec(users=60_000, items=40_000, events=400_000, categories=20,
                                   single_event_share=0.5), root / "data")
    index_dir = root / "ix"
    report = build(BuildConfig(input=data.events, model="shop", index_dir=index_dir,
                               user_index=None, similar_cache=0))
    return Recommender.load(index_dir, "shop"), report, index_dir


def test_default_build_records_its_measured_recall(shop):
    rec, report, index_dir = shop
    meta = report.manifest["indexes"]["items_mips"]
    assert meta["type"] == "banded" and meta["rows"] == rec.n_items
    assert meta["recall_at_10"] >= 0.98 and meta["recall_meets_target"] is True
    assert meta["recall"]["queries"] > 100 and meta["recall"]["k"] == 10
    on_disk = json.loads(next((index_dir / "shop").glob("*/manifest.json")).read_text())
    assert on_disk["indexes"]["items_mips"]["recall_at_10"] == meta["recall_at_10"]


def test_recommendations_of_the_default_bundle_match_exact_scoring(shop):
    rec, _, _ = shop
    rng = np.random.default_rng(9)
    factors = np.asarray(rec.item_factors)
    hits = asked = 0
    for u in rng.choice(rec.n_users, 100, replace=False):
        got = rec.recommend(decode_ids(rec.user_ids[u : u + 1])[0], 10)
        if got.reason != "cf":
            continue
        scores = factors @ rec.user_vector(u)
        scores[rec.seen_items(u)] = -np.inf
        hits += sum(s >= np.sort(scores)[-10] - 1e-6 for s in got.scores)
        asked += 1
    assert asked > 50 and hits / (10 * asked) >= 0.98


def test_filters_on_the_default_bundle_give_exactly_k(shop):
    rec, _, _ = shop
    user = decode_ids(rec.user_ids[7:8])[0]
    big_allow = decode_ids(rec.item_ids[: rec.n_items // 2])
    result = rec.recommend(user, 25, items=big_allow)
    assert len(result) == 25 and set(result.ids) <= set(big_allow)
    deny = rec.recommend(user, 200).ids
    result = rec.recommend(user, 20, filter_items=deny)
    assert len(result) == 20 and not set(result.ids) & set(deny)


def test_hybrid_items_after_the_models_are_banded_too(sample, tmp_path):
    """Catalog-only items (content-predicted vectors after the model's) sit in the same
    banded index: hybrid ranks them with the rest, cf never returns them, both exactly k,
    and the answer is the brute-force top k (the sample is small: the tail is probed whole)."""
    build(BuildConfig(input=sample.events, model="h", index_dir=tmp_path, catalog=sample.catalog,
                      rec_index=IndexParams(kind="ivf", mips_head=256, ivf_nprobe=64)))
    rec = Recommender.load(tmp_path, "h")
    meta = rec.manifest["indexes"]["items_mips"]
    assert meta["type"] == "banded" and meta["rows"] == rec.n_catalog > rec.n_items
    vectors = np.vstack([np.asarray(rec.item_factors), rec.new_item_factors])
    reached = 0
    for user in range(0, rec.n_users, rec.n_users // 30):
        scores = vectors @ rec.user_vector(user)
        scores[rec.seen_items(user)] = -np.inf
        hybrid = rec.recommend(rec.user_ids[user].decode(), 20)
        assert len(hybrid) == 20
        np.testing.assert_allclose(hybrid.scores, np.sort(scores)[::-1][:20], rtol=1e-4,
                                   atol=1e-6)
        reached += int((hybrid.indexes >= rec.n_items).any())
        cf = rec.recommend(rec.user_ids[user].decode(), 20, mode="cf")
        assert len(cf) == 20 and cf.indexes.max() < rec.n_items
        np.testing.assert_allclose(cf.scores, np.sort(scores[: rec.n_items])[::-1][:20],
                                   rtol=1e-4, atol=1e-6)
    assert reached > 0


def test_a_bundle_with_one_reduction_still_loads_and_answers(sample, tmp_path):
    """Bundles built before norm bands hold one IVF over every item: same answers as ever."""
    build(BuildConfig(input=sample.events, model="old", index_dir=tmp_path,
                      rec_index=IndexParams(kind="ivf", ivf_nlist=16, ivf_nprobe=16)))
    rec = Recommender.load(tmp_path, "old")
    meta = rec.manifest["indexes"]["items_mips"]
    assert meta["type"] == "ivf" and "head_rows" not in meta
    factors = np.asarray(rec.item_factors)
    scores = factors @ rec.user_vector(3)
    scores[rec.seen_items(3)] = -np.inf
    got = rec.recommend(rec.user_ids[3].decode(), 10)
    np.testing.assert_allclose(got.scores, np.sort(scores)[::-1][:10], rtol=1e-4, atol=1e-6)


def test_the_build_summary_shows_the_recall_and_warns_below_the_target(shop, capsys):
    from svdfaiss.cli.printing import print_summary

    _, report, _ = shop
    manifest = copy.deepcopy(report.manifest)
    print_summary(report.path, manifest)
    captured = capsys.readouterr()
    assert "recall@10" in captured.out and "warning: recommendations" not in captured.err
    manifest["indexes"]["items_mips"].update(recall_at_10=0.9, recall_meets_target=False)
    print_summary(report.path, manifest)
    err = " ".join(capsys.readouterr().err.split())
    assert "recall@10 0.900 against exact scoring, below the target 0.98" in err
