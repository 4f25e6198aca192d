"""Live events: fold-in of a user's new events, the bounded live store, the fsynced events
log, its replay after a restart, and `build --events` folding the log into a bundle."""

import json
import os

import httpx
import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.errors import InvalidInput, UnknownUser
from svdfaiss.events import Event, EventFollower, LiveEvents, LiveUsers, read_events
from svdfaiss.factorize import fold_in
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample
from svdfaiss.weighting import weight_rows

from .helpers import server


def _expected_after_event(rec: Recommender, user: int, item: int, weight: float,
                          k: int) -> tuple[list[int], np.ndarray]:
    """The fold-in prediction, computed here from the stored row: q = w(x + weight e_i) V F."""
    row = rec.rows[user : user + 1].toarray()
    row[0, item] += weight
    import scipy.sparse as sp

    x = sp.csr_matrix(row)
    q = fold_in(weight_rows(x, rec.weighting, rec.item_scale), rec.fold_factors)[0]
    scores = rec.recommendation_vectors() @ q  # new items' predicted vectors too
    scores[x.indices] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return top.tolist(), scores[top]


def test_an_event_changes_the_next_recommendations_as_fold_in_predicts(rec):
    user = 17
    user_id = rec.user_ids[user].decode()
    before = rec.recommend(user_id, 10)
    item = int(before.indexes[0])  # buying the top recommendation
    after = rec.recommend(user_id, 10, live={rec.item_ids[item].decode(): 1.0})
    expected, scores = _expected_after_event(rec, user, item, 1.0, 10)
    assert list(after.indexes) == expected and item not in after.indexes
    np.testing.assert_allclose(after.scores, scores, rtol=1e-4, atol=1e-5)
    assert after.ids != before.ids


def test_a_new_user_is_known_from_the_first_event_like_a_basket(rec):
    items = decode_ids(rec.item_ids[[5, 9, 9]])
    with pytest.raises(UnknownUser):
        rec.recommend("brand-new", 10)
    live = rec.recommend("brand-new", 10, live={items[0]: 1.0, items[1]: 2.0})
    basket = rec.recommend_for_items(items, 10)
    assert live.ids == basket.ids and live.reason == "cf"
    only_unknown = rec.recommend("brand-new", 5, live={"no-such-item": 1.0},
                                 fallback="popular")
    assert only_unknown.reason == "popular"


def test_the_live_store_is_bounded_and_least_recently_used_goes_first():
    live = LiveUsers(capacity=2, max_items=3)
    for user in ("a", "b"):
        live.add(Event(user, "i1", 1.0, 0.0), explicit=False)
    live.get("a")  # a is now the most recent
    live.add(Event("c", "i1", 1.0, 0.0), explicit=False)
    assert live.get("b") is None and live.get("a") == {"i1": 1.0} and len(live) == 2
    for n, item in enumerate(["i1", "i2", "i3", "i4"]):
        live.add(Event("a", item, float(n + 1), 0.0), explicit=False)
    assert live.get("a") == {"i2": 2.0, "i3": 3.0, "i4": 4.0}  # the oldest item dropped
    live.add(Event("a", "i3", 5.0, 0.0), explicit=True)  # a rating replaces
    assert live.get("a") == {"i2": 2.0, "i4": 4.0, "i3": 5.0}
    live.add(Event("a", "i2", 1.0, 0.0), explicit=False)  # counts add up
    assert live.get("a") == {"i4": 4.0, "i3": 5.0, "i2": 3.0}


def test_events_over_http_log_apply_report_and_survive_a_restart(sample_index_dir, rec,
                                                                 tmp_path):
    log_path = tmp_path / "events" / "live.jsonl"
    settings = {"SVDFAISS_EVENTS_LOG": str(log_path)}
    user_id = rec.user_ids[23].decode()
    with server(sample_index_dir, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        before = client.get(f"/users/{user_id}/recommendations", params={"k": 10}).json()
        bought = before["items"][0]["item_id"]
        answer = client.post("/events", json={"user_id": user_id, "item_id": bought})
        assert answer.status_code == 200, answer.text
        assert answer.json()["applied"] is True and answer.json()["weight"] == 1.0
        after = client.get(f"/users/{user_id}/recommendations", params={"k": 10}).json()
        expected = rec.recommend(user_id, 10, live={bought: 1.0})
        assert [i["item_id"] for i in after["items"]] == expected.ids
        assert bought not in [i["item_id"] for i in after["items"]]
        unknown = client.post("/events", json={"user_id": "newcomer", "item_id": "not-sold-yet",
                                               "weight": 2})
        assert unknown.status_code == 200
        assert unknown.json()["applied"] is False and "unknown item" in unknown.json()["detail"]
        cold = client.get("/users/newcomer/recommendations").json()
        assert cold["items"][0]["reason"] == "popular"  # nothing known to fold in yet
        for bad in ({"user_id": user_id, "item_id": bought, "weight": 0},
                    {"user_id": user_id, "item_id": bought, "weight": -1},
                    {"user_id": "", "item_id": bought},
                    {"user_id": user_id, "item_id": bought, "extra": 1}):
            assert client.post("/events", json=bad).status_code == 422, bad
        # Python's JSON parser reads NaN and Infinity: a 422 naming the field, never a 500.
        for path, body in (("/events", b'{"user_id": "u", "item_id": "i", "weight": NaN}'),
                           ("/recommendations", b'{"item_ids": ["a"], "min_price": Infinity}')):
            answer = client.post(path, content=body,
                                 headers={"content-type": "application/json"})
            assert answer.status_code == 422 and "finite" in answer.text, answer.text
        metrics = client.get("/metrics").text
        assert 'svdfaiss_events_total{result="applied"} 1.0' in metrics
        assert 'svdfaiss_events_total{result="unknown_item"} 1.0' in metrics
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(e["user_id"], e["item_id"], e["known_item"]) for e in lines] == [
        (user_id, bought, True), ("newcomer", "not-sold-yet", False)]
    # A restart replays the events logged since the bundle was built.
    with server(sample_index_dir, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        again = client.get(f"/users/{user_id}/recommendations", params={"k": 10}).json()
        assert [i["item_id"] for i in again["items"]] == expected.ids


def test_a_full_disk_is_a_503_and_changes_nothing(sample_index_dir, rec, tmp_path):
    """/dev/full fails every write with ENOSPC, whoever the user is."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    settings = {"SVDFAISS_EVENTS_LOG": "/dev/full"}
    user_id = rec.user_ids[4].decode()
    item_id = rec.item_ids[4].decode()
    with server(sample_index_dir, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        before = client.get(f"/users/{user_id}/recommendations").json()
        refused = client.post("/events", json={"user_id": user_id, "item_id": item_id})
        assert refused.status_code == 503 and "events log" in refused.json()["detail"]
        after = client.get(f"/users/{user_id}/recommendations").json()
        # The same answer; only the recommendation id is new (each answer gets its own).
        assert after.pop("recommendation_id") != before.pop("recommendation_id")
        assert after == before
        assert 'svdfaiss_events_total{result="refused"} 1.0' in client.get("/metrics").text


def test_build_folds_the_events_log_in_and_reports_bad_lines(tmp_path):
    files = write_sample(SampleSpec(users=300, items=120, events=6000), tmp_path / "s")
    log_path = tmp_path / "events.jsonl"
    good = [Event("U-new", "I-new", 1.0, 1.0), Event("U-new", "I-new-2", 2.0, 2.0),
            Event("U-other", "I-new", 1.0, 3.0)]
    log_path.write_bytes(b"".join(e.line(False) for e in good) + b'{"user_id": "x"}\n'
                         + b'{"user_id": "u", "item_id": "i", "weight": -2}\n' + b'{"user_i')
    events, rejected, lines = read_events(log_path, "implicit")
    assert events == good and lines == 6
    assert rejected.counts == {"item_id must be a non-empty string": 1,
                               "weight must be above 0 for implicit counts": 1,
                               "not valid JSON": 1}
    assert [e["line"] for e in rejected.examples] == [4, 5, 6]
    with pytest.raises(InvalidInput, match=r"events.jsonl, line 4: item_id"):
        read_events(log_path, "implicit", strict=True)
    report = build(BuildConfig(input=files.events, model="m", index_dir=tmp_path / "idx",
                               events=(log_path,)))
    rec = Recommender.open(report.path)
    assert rec.knows_item("I-new") and rec.knows_item("I-new-2")
    assert set(rec.recommend("U-new", 5).ids).isdisjoint({"I-new", "I-new-2"})  # seen
    info = report.manifest["input"]["events"][0]
    assert info["events"] == 3 and info["rejected"] == 3 and info["lines"] == 6


def test_explicit_ratings_need_a_weight_and_a_new_rating_replaces_the_old(tmp_path):
    files = write_sample(SampleSpec(users=300, items=120, events=6000, explicit=True),
                         tmp_path / "s")
    build(BuildConfig(input=files.events, model="r", index_dir=tmp_path / "idx"))
    rec = Recommender.load(tmp_path / "idx", "r")
    assert rec.feedback == "explicit"
    user_id = rec.user_ids[0].decode()
    rated = int(rec.seen_items(0)[0])
    item_id = rec.item_ids[rated].decode()
    row = rec._live_row(0, {item_id: 1.0})
    assert row[0, rated] == 1.0 and row.nnz == rec.seen_items(0).size  # replaced, not added
    with server(tmp_path / "idx", model="r",
                settings={"SVDFAISS_EVENTS_LOG": str(tmp_path / "e.jsonl")}) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        missing = client.post("/events", json={"user_id": user_id, "item_id": item_id})
        assert missing.status_code == 422
        assert "give the rating as weight" in missing.json()["detail"][0]["msg"]
        rated_now = client.post("/events", json={"user_id": user_id, "item_id": item_id,
                                                 "weight": 1})
        assert rated_now.json()["applied"] is True
        got = client.get(f"/users/{user_id}/recommendations", params={"k": 5}).json()
        assert [i["item_id"] for i in got["items"]] == rec.recommend(
            user_id, 5, live={item_id: 1.0}).ids


def test_an_events_token_guards_post_events(sample_index_dir, rec, tmp_path):
    from pydantic import ValidationError

    from svdfaiss.config import Settings

    with pytest.raises(ValidationError, match="SVDFAISS_EVENTS_TOKEN must be at least 16"):
        Settings(events_token="short")
    log_path = tmp_path / "events.jsonl"
    token = "events-token-0123456789"
    settings = {"SVDFAISS_EVENTS_LOG": str(log_path), "SVDFAISS_EVENTS_TOKEN": token}
    event = {"user_id": rec.user_ids[1].decode(), "item_id": rec.item_ids[1].decode()}
    with server(sample_index_dir, settings=settings) as url, \
            httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/events", json=event).status_code == 401
        assert client.post("/events", json=event,
                           headers={"authorization": "Bearer wrong-token-0123456"}
                           ).status_code == 403
        assert client.post("/events", json=event,
                           headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert len(log_path.read_text().splitlines()) == 1


@pytest.mark.shared_data
def test_a_movielens_rating_event_changes_recommendations_as_fold_in_predicts(tmp_path):
    from .helpers import shared_file

    ratings = shared_file("ml-latest-small", "ratings.csv")
    build(BuildConfig(input=ratings, model="ml", index_dir=tmp_path))
    rec = Recommender.load(tmp_path, "ml")
    user = int(rec.user_index("1"))
    before = rec.recommend("1", 10)
    loved = before.ids[0]  # user 1 watches their top recommendation and rates it 5
    after = rec.recommend("1", 10, live={loved: 5.0})
    expected, scores = _expected_after_event(rec, user, rec.item_index(loved), 5.0, 10)
    assert list(after.indexes) == expected and loved not in after.ids
    np.testing.assert_allclose(after.scores, scores, rtol=1e-4, atol=1e-5)
    assert after.ids != before.ids


def test_a_restart_replays_only_the_tail_written_after_the_bundle(tmp_path):
    from svdfaiss.events import offset_since

    log_path = tmp_path / "events.jsonl"
    events = [Event(f"u{n % 97}", f"i{n % 31}", 1.0, 1000.0 + n) for n in range(20_000)]
    log_path.write_bytes(b"".join(e.line(True) for e in events) + b'{"user_id": "torn')
    for since in (0.0, 1000.5, 15_000.0, 20_998.0, 99_999.0):
        start = offset_since(log_path, since, close_enough=512)
        parsed, _, _ = read_events(log_path, "implicit", start=start)
        assert [e for e in parsed if e.time >= since] == [e for e in events if e.time >= since]
        assert len(parsed) <= len([e for e in events if e.time >= since]) + 100  # the tail


def test_live_rows_under_a_rating_model_refit_the_user_with_the_new_rating(tmp_path):
    from svdfaiss.rating import fold_in_augmented

    files = write_sample(SampleSpec(users=300, items=120, events=6000, explicit=True),
                         tmp_path / "s")
    build(BuildConfig(input=files.events, model="r", index_dir=tmp_path / "idx",
                      objective="rating"))
    rec = Recommender.load(tmp_path / "idx", "r")
    user_id = rec.user_ids[2].decode()
    item = int(rec.recommend(user_id, 1).indexes[0])
    after = rec.recommend(user_id, 10, live={rec.item_ids[item].decode(): 1.0})
    row = rec.rows[2].toarray()[0]
    row[item] = 1.0  # a poor rating for the top recommendation
    rated = np.flatnonzero(row)
    solved = fold_in_augmented(rec.item_factors, rec.rating_model["mu"], rated, row[rated])
    scores = np.asarray(rec.item_factors) @ np.append(solved[:-1], 1.0)
    scores[rated] = -np.inf
    assert list(after.indexes) == list(np.argsort(-scores, kind="stable")[:10])
    assert after.reason == "rating"


def test_the_follower_reads_complete_lines_and_follows_a_rotated_log(tmp_path):
    path = tmp_path / "live.jsonl"
    follower = EventFollower(path)
    follower.start(0.0, "implicit")
    assert follower.poll() == []  # no log yet
    first, second, third = (Event(f"u{n}", "i", 1.0, 100.0 + n) for n in range(3))
    path.write_bytes(first.line(True) + second.line(True)[:10])  # the second still written
    assert follower.poll() == [first]
    with path.open("ab") as handle:
        handle.write(second.line(True)[10:] + b"not json\n")
    assert follower.poll() == [second] and follower.skipped == 1
    assert follower.poll() == []
    with path.open("ab") as handle:  # appended just before the rotation
        handle.write(third.line(True))
    path.rename(tmp_path / "live.jsonl.1")
    assert follower.poll() == [third]  # read to the end of the renamed file
    fourth = Event("u4", "i", 1.0, 104.0)
    path.write_bytes(fourth.line(True))
    assert follower.poll() == [fourth]  # then the new file from its start
    path.write_bytes(b"")  # truncated in place
    assert follower.poll() == []
    fifth = Event("u5", "i", 1.0, 105.0)
    path.write_bytes(fifth.line(True))
    assert follower.poll() == [fifth]
    follower.close()


def test_live_rows_start_after_the_bundle_cutoff_and_start_over_on_reset(tmp_path):
    path = tmp_path / "live.jsonl"
    events = [Event("u1", "a", 1.0, 100.0), Event("u1", "b", 1.0, 200.0),
              Event("u2", "zzz", 1.0, 300.0)]
    path.write_bytes(b"".join(e.line(True) for e in events))
    live = LiveEvents(LiveUsers(10, 10), path)
    known = {"a", "b"}.__contains__
    # A bundle that folded the log in up to t=100 holds the first event already.
    folded = {"created_at": "2026-01-01T00:00:00+00:00",
              "input": {"events": [{"path": str(path), "last_event_time": 100.0}]}}
    assert live.reset(folded, "implicit", known) == 1
    assert live.get("u1") == {"b": 1.0} and live.get("u2") is None  # zzz: unknown item
    with path.open("ab") as handle:  # another worker accepts an event
        handle.write(Event("u1", "b", 2.0, 400.0).line(True))
    assert live.get("u1") == {"b": 3.0}
    # A bundle built without --events: its build time is the cutoff.
    plain = {"created_at": "1970-01-01T00:05:00+00:00", "input": {"events": []}}
    assert live.reset(plain, "implicit", known) == 1  # only the event at t=400
    assert live.get("u1") == {"b": 2.0}


def test_two_workers_see_each_others_events_at_once(sample_index_dir, rec, tmp_path):
    log_path = tmp_path / "events" / "live.jsonl"
    settings = {"SVDFAISS_EVENTS_LOG": str(log_path)}
    first, second = rec.user_ids[23].decode(), rec.user_ids[41].decode()
    with server(sample_index_dir, settings=settings) as url_a, \
            server(sample_index_dir, settings=settings) as url_b, \
            httpx.Client(timeout=10) as client:
        def top(url: str, user_id: str) -> list[str]:
            answer = client.get(f"{url}/users/{user_id}/recommendations", params={"k": 10})
            return [i["item_id"] for i in answer.json()["items"]]

        bought = top(url_a, first)[0]
        assert client.post(f"{url_a}/events",
                           json={"user_id": first, "item_id": bought}).json()["applied"]
        assert top(url_b, first) == rec.recommend(first, 10, live={bought: 1.0}).ids
        other = top(url_b, second)[0]
        client.post(f"{url_b}/events", json={"user_id": second, "item_id": other})
        assert top(url_a, second) == rec.recommend(second, 10, live={other: 1.0}).ids
        # Rotation: the log renamed, the next event starts a new file both follow.
        log_path.rename(log_path.with_suffix(".1"))
        again = top(url_a, first)[0]
        client.post(f"{url_a}/events", json={"user_id": first, "item_id": again})
        expected = rec.recommend(first, 10, live={bought: 1.0, again: 1.0}).ids
        assert top(url_b, first) == expected and top(url_a, first) == expected


def test_an_unreadable_log_leaves_live_rows_as_they_are_and_says_so(tmp_path, caplog):
    path = tmp_path / "live.jsonl"
    path.write_bytes(Event("u1", "a", 1.0, 200.0).line(True))
    live = LiveEvents(LiveUsers(10, 10), path)
    live.reset({"created_at": "1970-01-01T00:00:00+00:00", "input": {}}, "implicit",
               lambda item: True)

    def broken() -> list[Event]:
        raise OSError(5, "Input/output error")

    live.follower.poll = broken  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="svdfaiss.events"):
        assert live.get("u1") == {"a": 1.0} and live.get("u1") == {"a": 1.0}
    warnings = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per request
