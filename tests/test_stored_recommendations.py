"""Stored recommendations: each user's top k computed at build time answer plain requests.

A stored answer must be the computed one (same items, scores, reasons and fields), must be
what plain requests actually read, and must never answer what it cannot: filters, lists,
explanations, live events, a live catalog change, k beyond the rows, tied scores.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.index import IndexParams
from svdfaiss.live_catalog import CatalogChange
from svdfaiss.query.filters import CatalogFilter
from svdfaiss.query.live import Encodings, live_items, view
from svdfaiss.query.recommend import ranks_new_items, stored_recommendations
from svdfaiss.recommender import Recommender

from .helpers import server


def _user(rec: Recommender, position: int) -> str:
    return str(rec.user_ids[position].decode())


def _tampered(rec: Recommender, **arrays: np.ndarray) -> Recommender:
    """A shallow copy of `rec` whose stored rows are replaced by `arrays`."""
    assert rec.stored is not None
    other = copy.copy(rec)
    other.stored = replace(rec.stored, **arrays)
    return other


def test_the_sample_bundle_stores_twenty_recommendations_per_user(rec):
    stored = rec.manifest["stored_recommendations"]
    assert stored["k"] == 20 and stored["users"] == rec.n_users
    assert stored["ranks_new_items"] is True  # the sample's catalog-only items are ranked
    assert rec.stored is not None and rec.stored.ids.shape == (rec.n_users, 20)
    assert (rec.stored.ids >= 0).all()  # every user has 20 unseen items to rank


def test_every_stored_answer_is_the_computed_answer(rec):
    with_new = ranks_new_items(rec, "hybrid")
    answered = 0
    for position in range(0, rec.n_users, 7):
        user = _user(rec, position)
        for k in (1, 5, 10, 20):
            stored = stored_recommendations(rec, position, k, with_new)
            computed = rec.recommend(user, k, fallback="popular", use_stored=False)
            if stored is None:
                continue
            answered += 1
            assert stored.records() == computed.records()
            assert (stored.reason, stored.reasons) == (computed.reason, computed.reasons)
            assert stored.indexes.tolist() == computed.indexes.tolist()
    # ties are rare on real-valued scores: nearly every request is a slice
    assert answered >= 0.99 * 4 * len(range(0, rec.n_users, 7))


def test_a_plain_request_reads_the_stored_row_and_nothing_else_does(rec):
    """User 0's stored row replaced by user 1's: the plain request returns the replacement
    (so it is what is read), every other kind of request searches."""
    assert rec.stored is not None
    ids, scores = rec.stored.ids.copy(), rec.stored.scores.copy()
    ids[0], scores[0] = ids[1], scores[1]
    other = _tampered(rec, ids=ids, scores=scores)
    user = _user(rec, 0)
    plain = other.recommend(user, 10)
    assert plain.indexes.tolist() == rec.stored.ids[1, :10].tolist()
    assert plain.ids != rec.recommend(user, 10, use_stored=False).ids

    searched = rec.recommend(user, 10, use_stored=False)
    first = searched.ids[0]
    cases = {
        "use_stored=False": {"use_stored": False},
        "deny-list": {"filter_items": [first]},
        "allow-list": {"items": searched.ids},
        "catalog filter": {"catalog_filter": CatalogFilter(in_stock=True)},
        "explain": {"explain": True},
        "seen items kept": {"exclude_seen": False},
        "live events": {"live": {first: 1.0}},
        "cf mode (the rows rank new items too)": {"mode": "cf"},
    }
    for name, kwargs in cases.items():
        got = other.recommend(user, 10, **kwargs)
        want = rec.recommend(user, 10, **{**kwargs, "use_stored": False})
        assert got.records() == want.records(), name
    beyond = other.recommend(user, 21)  # k beyond the 20 stored
    assert beyond.records() == rec.recommend(user, 21, use_stored=False).records()


def test_tied_scores_are_searched_not_sliced(rec):
    assert rec.stored is not None
    scores = rec.stored.scores.copy()
    scores[3, 4:6] = scores[3, 4]  # a tie inside the first 10
    scores[5, 9:11] = scores[5, 9]  # a tie across the cut at 10
    other = _tampered(rec, scores=scores)
    with_new = ranks_new_items(rec, "hybrid")
    assert stored_recommendations(other, 3, 10, with_new) is None
    assert stored_recommendations(other, 5, 10, with_new) is None
    assert stored_recommendations(other, 5, 11, with_new) is None  # 10th and 11th tie
    assert stored_recommendations(other, 5, 9, with_new) is not None  # both past the cut
    for position in (3, 5):
        user = _user(rec, position)
        assert other.recommend(user, 10).records() == rec.recommend(
            user, 10, use_stored=False).records()


def test_a_withdrawn_item_leaves_the_answer_of_a_live_catalog_view(rec):
    user = _user(rec, 2)
    top = rec.recommend(user, 10)
    change = CatalogChange("delete", top.ids[0], None, time.time())
    live = view(rec, live_items(rec, [change], Encodings()))
    assert live.stored is None
    answer = live.recommend(user, 10)
    assert top.ids[0] not in answer.ids and answer.ids[:9] == top.ids[1:]


@pytest.fixture(scope="module")
def sparse_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two blocks of co-bought items, and users whose one purchase nobody else made."""
    rng = np.random.default_rng(3)
    lines = ["user_id,item_id"]
    for u in range(400):
        chosen = rng.choice(30, size=rng.integers(2, 6), replace=False)
        lines += [f"u{u},A{i:02d}" for i in chosen]
    lines += [f"lonely{i},I{i:02d}" for i in range(8)]
    path = tmp_path_factory.mktemp("sparse") / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(log: Path, index_dir: Path, **config: object) -> Recommender:
    build(BuildConfig(input=log, model="m", index_dir=index_dir, k=6, version="v1",
                      **config))  # type: ignore[arg-type]
    return Recommender.load(index_dir, "m")


def test_users_without_evidence_store_the_popular_fallback(sparse_log, tmp_path):
    rec = _build(sparse_log, tmp_path / "i")
    assert rec.stored is not None
    assert rec.manifest["stored_recommendations"]["popular_rows"] == 8
    for i in range(8):
        user = f"lonely{i}"
        position = rec.user_index(user)
        assert rec.stored.popular[position] == 1
        stored = rec.recommend(user, 10, fallback="popular")
        computed = rec.recommend(user, 10, fallback="popular", use_stored=False)
        assert stored.reason == "popular" and stored.records() == computed.records()
        assert f"I{i:02d}" not in stored.ids  # the one seen item stays out
    assert rec.stored.popular[rec.user_index("u0")] == 0


def test_the_flags_and_the_hnsw_index_turn_the_rows_off(sparse_log, tmp_path):
    off = _build(sparse_log, tmp_path / "off", stored_recommendations=0)
    assert off.stored is None
    assert off.manifest["stored_recommendations"] == {"k": 0,
                                                      "reason": "--stored-recommendations 0"}
    assert not any(n.startswith("stored_rec") for n in off.manifest["files"])

    hnsw = _build(sparse_log, tmp_path / "hnsw", rec_index=IndexParams(kind="hnsw"))
    assert hnsw.stored is None
    assert "HNSW" in hnsw.manifest["stored_recommendations"]["reason"]

    five = _build(sparse_log, tmp_path / "five", stored_recommendations=5)
    assert five.stored is not None and five.stored.k == 5
    with_new = ranks_new_items(five, "hybrid")
    assert stored_recommendations(five, 0, 5, with_new) is not None
    assert stored_recommendations(five, 0, 6, with_new) is None
    for user in ("u0", "u1", "lonely0"):
        for k in (3, 10):
            assert five.recommend(user, k, fallback="popular").records() == five.recommend(
                user, k, fallback="popular", use_stored=False).records()


def test_the_service_answers_from_the_stored_rows(sample_index_dir, rec):
    with server(sample_index_dir) as url:
        info = httpx.get(f"{url}/model").json()
        assert info["stored_recommendations"]["k"] == 20
        for position in (0, 17, 4321):
            user = _user(rec, position)
            body = httpx.get(f"{url}/users/{user}/recommendations?k=10").json()
            stored = rec.stored
            assert stored is not None
            assert [i["item_id"] for i in body["items"]] == rec.external_items(
                np.asarray(stored.ids[position, :10], dtype=np.int64))
            assert [i["score"] for i in body["items"]] == [
                float(s) for s in stored.scores[position, :10]]


def test_auto_stores_nothing_when_the_timed_sample_says_it_would_take_too_long(
        sparse_log, tmp_path, monkeypatch):
    """A query made slow (0.5 s for the probe's 10 users): the estimate for every user
    exceeds the build so far, so auto stores no rows and says why, with the flag that
    stores them anyway; answers are then searched."""
    from svdfaiss import builder
    from svdfaiss.query import batch

    real = batch.stored_rows

    def slow_probe(model, k, users=None, threads=2, mode="hybrid"):  # type: ignore[no-untyped-def]
        if users is not None:
            time.sleep(0.5)
        return real(model, k, users, threads, mode)

    monkeypatch.setattr(batch, "stored_rows", slow_probe)
    monkeypatch.setattr(builder, "STORED_PROBE_USERS", 10)
    monkeypatch.setattr(builder, "STORED_BUDGET_MIN_SECONDS", 1.0)
    rec = _build(sparse_log, tmp_path / "slow")
    stored = rec.manifest["stored_recommendations"]
    assert stored["k"] == 0 and rec.stored is None
    assert "would take about" in stored["reason"]
    assert "--stored-recommendations 20 stores them anyway" in stored["reason"]
    assert not any(n.startswith("stored_rec") for n in rec.manifest["files"])
    assert len(rec.recommend("u0", 10).ids) == 10

    monkeypatch.setattr(batch, "stored_rows", real)  # the same build, timed honestly
    fast = _build(sparse_log, tmp_path / "fast")
    assert fast.manifest["stored_recommendations"]["k"] == 20
