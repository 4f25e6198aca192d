"""Evidence before similarity: a planted log with isolated items and separate components.

Items I* are each bought by one user who bought nothing else; items A* and B* form two
co-purchase components that no user links. The right answers are known: no cf neighbour for
an I item, every cf neighbour of an A item among the A items, the popular items for a user
whose only purchase is an I item.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from svdfaiss.builder import BuildConfig, build
from svdfaiss.errors import NoEvidence, NoUserEvidence
from svdfaiss.evidence import MIN_CO_USERS, isolated, item_components, item_evidence, summary
from svdfaiss.recommender import Recommender

from .helpers import run_cli, server

BLOCK_ITEMS, ISOLATED = 40, 12
# Block A's items have over MIN_CO_USERS co-users (ranked by the factors: cf), block B's
# fewer (ranked by shared users: co_bought).
BLOCK_USERS = {"A": 900, "B": 200}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    lines = ["user_id,item_id"]
    for block in ("A", "B"):
        for u in range(BLOCK_USERS[block]):
            # Tastes within the block: users like one half more than the other.
            half = rng.integers(2)
            weights = np.where((np.arange(BLOCK_ITEMS) < BLOCK_ITEMS // 2) == half, 4.0, 1.0)
            chosen = rng.choice(BLOCK_ITEMS, size=rng.integers(2, 7), replace=False,
                                p=weights / weights.sum())
            lines += [f"{block}u{u},{block}{i:02d}" for i in chosen]
    lines += [f"Iu{i},I{i:02d}" for i in range(ISOLATED)]
    folder = tmp_path_factory.mktemp("planted")
    path = folder / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    index_dir = folder / "indexes"
    build(BuildConfig(input=path, model="planted", index_dir=index_dir, k=8, version="v1"))
    return index_dir


@pytest.fixture(scope="module")
def prec(planted) -> Recommender:  # type: ignore[no-untyped-def]
    return Recommender.load(planted, "planted")


def test_components_and_isolated_items_on_a_small_matrix():
    # users: u0 {0, 1}, u1 {1, 2}, u2 {3}, u3 {4, 5}, u4 {6}
    rows, cols = [0, 0, 1, 1, 2, 3, 3, 4], [0, 1, 1, 2, 3, 4, 5, 6]
    matrix = sp.csr_matrix((np.ones(8), (rows, cols)), shape=(5, 7))
    labels = item_components(matrix)
    assert labels.tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert isolated(labels).tolist() == [False, False, False, True, False, False, True]
    counts = summary(labels, np.ones(7, dtype=np.float32), matrix)
    assert counts["items_with_cf_evidence"] == 5 and counts["users_with_cf_evidence"] == 3
    assert counts["components"] == 2 and counts["largest_component_items"] == 3


def test_co_users_count_the_users_who_bought_the_item_and_another():
    # users: u0 {0, 1}, u1 {1, 2}, u2 {3}, u3 {1}
    matrix = sp.csr_matrix((np.ones(6), ([0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 3, 1])), shape=(4, 4))
    assert item_evidence(matrix).tolist() == [1, 2, 1, 0]


def test_manifest_counts_the_evidence(prec):
    evidence = prec.manifest["evidence"]
    assert evidence["items"] == 2 * BLOCK_ITEMS + ISOLATED
    assert evidence["items_with_cf_evidence"] == 2 * BLOCK_ITEMS
    assert evidence["components"] == 2
    assert evidence["users_with_cf_evidence"] == sum(BLOCK_USERS.values())
    co_users = np.asarray(prec.evidence.co_users)
    a_items = [i for i, x in enumerate(prec.item_ids) if x.startswith(b"A")]
    b_items = [i for i, x in enumerate(prec.item_ids) if x.startswith(b"B")]
    assert co_users[a_items].min() >= MIN_CO_USERS > co_users[b_items].max()


def test_isolated_items_never_get_cf_neighbours(prec):
    for i in range(ISOLATED):
        item = f"I{i:02d}"
        with pytest.raises(NoEvidence, match="no collaborative evidence"):
            prec.similar_items(item, 5, mode="cf")
        answer = prec.similar_items(item, 5)  # no catalog: the popular fallback
        assert answer.reason == "popular" and item not in answer.ids and len(answer) == 5
        assert prec.cached_similar_items(item, 5) is None  # nothing stored to serve


def test_every_cf_neighbour_is_in_the_query_items_component(prec):
    for block, other in (("A", "B"), ("B", "A")):
        for i in range(BLOCK_ITEMS):
            item = f"{block}{i:02d}"
            for answer in (prec.similar_items(item, 10),
                           prec.similar_items(item, 10, use_cache=False, mode="cf"),
                           *prec.similar_items_batch([item], [10])):
                assert answer.reason == ("cf" if block == "A" else "co_bought")
                assert len(answer) == 10
                assert all(n.startswith(block) for n in answer.ids), (item, answer.ids)
            # Asked for more than the component holds: cf gives only its other items;
            # co-occurrence fills up with popular items, each labelled so.
            wide = prec.similar_items(item, 60, use_cache=False, mode="cf")
            if block == "A":
                assert len(wide) == BLOCK_ITEMS - 1 and not any(n.startswith(other)
                                                                for n in wide.ids)
            else:
                records = wide.records()
                assert len(records) == 60
                assert all(r["item_id"].startswith(block) for r in records
                           if r["reason"] == "co_bought")
                assert all(r["reason"] == "popular" for r in records
                           if not r["item_id"].startswith(block))


def test_users_without_evidence_get_popular_items(prec):
    for i in range(ISOLATED):
        answer = prec.recommend(f"Iu{i}", 5)
        assert answer.reason == "popular" and f"I{i:02d}" not in answer.ids
        with pytest.raises(NoUserEvidence):
            prec.similar_users(f"Iu{i}", 5)
    assert prec.recommend("Au0", 5).reason == "cf"
    basket = prec.recommend_for_items(["I00", "I01"], 3)
    assert basket.reason == "popular" and not {"I00", "I01"} & set(basket.ids)
    # a live event on an item with evidence makes the user answerable by cf
    assert prec.recommend("Iu0", 5, live={"A00": 1.0}).reason == "cf"


def test_http_cli_and_python_give_the_same_answer_and_reason(planted, prec):
    base = ["--model", "planted", "--index-dir", str(planted), "--json"]
    cases = [("similar", "I03", {}), ("similar", "A05", {}), ("similar", "A05", {"mode": "cf"}),
             ("recommend", "Iu3", {}), ("recommend", "Bu7", {})]
    with server(planted, model="planted") as url:
        for kind, ident, params in cases:
            if kind == "similar":
                py = prec.similar_items(ident, 4, mode=params.get("mode", "hybrid"))
                path = f"/items/{ident}/similar"
            else:
                py = prec.recommend(ident, 4)
                path = f"/users/{ident}/recommendations"
            http = httpx.get(url + path, params={"k": 4, **params}).json()["items"]
            args = ["query", kind, ident, "--k", "4", *base]
            if "mode" in params:
                args += ["--mode", params["mode"]]
            cli = run_cli(args)
            assert cli.returncode == 0, cli.stderr
            cli_items = json.loads(cli.stdout)["items"]
            for answer in (http, cli_items):
                assert [i["item_id"] for i in answer] == py.ids
                assert {i["reason"] for i in answer} == {py.reason}
                np.testing.assert_allclose([i["score"] for i in answer], py.scores, rtol=1e-6)
        refused = httpx.get(url + "/items/I03/similar", params={"mode": "cf"})
        assert refused.status_code == 404 and "no collaborative evidence" in refused.text
        cli_refused = run_cli(["query", "similar", "I03", "--mode", "cf", *base])
        assert cli_refused.returncode == 3 and "no collaborative evidence" in cli_refused.stderr


def test_co_bought_answers_are_the_brute_force_cosine_of_user_columns(rec):
    """On the generated sample: an item with fewer co-users than the gate answers mode cf
    with the cosine of binary user columns, computed here independently."""
    binary = (rec.rows > 0).astype(np.float64).tocsc()
    sizes = np.asarray(binary.sum(axis=0)).ravel()
    low = [i for i in range(rec.n_items)
           if rec.evidence.has_evidence(i) and not rec.evidence.factors_speak(i)]
    assert low  # the sample has such items
    for i in low[:: max(1, len(low) // 15)]:
        answer = rec.similar_items(rec.item_ids[i].decode(), 10, mode="cf")
        shared = (binary.T @ binary[:, i]).toarray().ravel()
        cosine = shared / np.sqrt(sizes[i] * sizes)
        cosine[i] = 0
        by_cooc = [r for r in answer.records() if r["reason"] == "co_bought"]
        expected = np.sort(cosine[cosine > 0])[::-1][: len(by_cooc)]
        np.testing.assert_allclose([r["score"] for r in by_cooc], expected, rtol=1e-5)
        assert len(answer) == 10
