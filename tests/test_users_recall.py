"""The similar-users index against exact cosine: the recall the builder measures, the
efSearch or nprobe it tunes, and that the served bundle searches with the tuned value."""

import copy
import json

import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.index import IndexParams, faiss, read_index
from svdfaiss.recall import measure_users
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("users")
    return root, write_sample(SampleSpec(users=12_000, items=3_000, events=120_000,
                                         categories=12), root / "data").events


def _build(data, name, user_index):
    root, events = data
    report = build(BuildConfig(input=events, model=name, index_dir=root / "ix", tune=False,
                               rec_index=IndexParams(kind="flat"), user_index=user_index,
                               similar_cache=0))
    return Recommender.load(root / "ix", name), report


def _independent_recall(rec, vectors, n_queries=300, seed=7):
    """recall@10 of rec.similar_users against numpy cosine over the stored vectors."""
    live = np.flatnonzero(np.einsum("ij,ij->i", vectors, vectors) > 0.5)
    users = np.random.default_rng(seed).choice(live, n_queries, replace=False)
    hits = 0
    for u in users.tolist():
        exact = vectors @ vectors[u]
        exact[u] = -np.inf
        kth = np.partition(-exact, 9)[9] * -1
        got = rec.similar_users(rec.user_ids[u].decode(), 10)
        hits += int(np.count_nonzero(np.asarray(got.scores) >= kth - 1e-4 * abs(kth)))
    return hits / (10 * n_queries)


def _stored(rec, report):
    index = read_index(report.path / "users.faiss")
    if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        faiss.downcast_index(index).make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def test_hnsw_users_index_is_tuned_to_the_target_and_serves_it(data, capsys):
    rec, report = _build(data, "hnsw", IndexParams(kind="hnsw", hnsw_m=8, hnsw_ef_search=8))
    meta = report.manifest["indexes"]["users"]
    record = meta["recall"]
    assert meta["type"] == "hnsw" and len(record["steps"]) > 1
    assert record["steps"][0]["ef_search"] == 8 and record["steps"][0]["recall_at_10"] < 0.98
    assert meta["recall_at_10"] >= 0.98 and meta["recall_meets_target"] is True
    assert meta["params"]["hnsw_ef_search"] == record["ef_search"] > 8
    # the tuned efSearch is in users.faiss, and the loaded bundle searches with it
    assert rec._users.index.hnsw.efSearch == record["ef_search"]
    on_disk = json.loads((report.path / "manifest.json").read_text())
    assert on_disk["indexes"]["users"]["recall_at_10"] == meta["recall_at_10"]
    independent = _independent_recall(rec, _stored(rec, report))
    assert independent >= 0.97 and abs(independent - meta["recall_at_10"]) < 0.02

    from svdfaiss.cli.printing import print_summary

    manifest = copy.deepcopy(report.manifest)
    print_summary(report.path, manifest)
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # a wrapped row joined
    assert (f"recall@10 {meta['recall_at_10']:.3f} against exact at efSearch "
            f"{record['ef_search']}") in out, out
    manifest["indexes"]["users"].update(recall_at_10=0.9, recall_meets_target=False)
    print_summary(report.path, manifest)
    err = " ".join(capsys.readouterr().err.split())
    assert "similar users reach recall@10 0.900 against exact cosine, below the target" in err


def test_ivf_users_index_raises_nprobe(data):
    rec, report = _build(data, "ivf", IndexParams(kind="ivf", ivf_nprobe=1))
    meta = report.manifest["indexes"]["users"]
    record = meta["recall"]
    assert meta["type"] == "ivf" and record["steps"][0]["nprobe"] == 1
    assert meta["recall_at_10"] >= 0.98 and meta["params"]["ivf_nprobe"] == record["nprobe"] > 1
    assert rec._users.index.nprobe == record["nprobe"]
    independent = _independent_recall(rec, _stored(rec, report))
    assert independent >= 0.97 and abs(independent - meta["recall_at_10"]) < 0.02


def test_measure_users_stops_at_the_cap_keeps_the_cheapest_near_best_and_flat_is_exact(monkeypatch):
    from svdfaiss import recall

    rng = np.random.default_rng(0)
    v = rng.standard_normal((3_000, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = faiss.IndexHNSWFlat(16, 4, faiss.METRIC_INNER_PRODUCT)
    index.add(v)
    index.hnsw.efSearch = 10  # search() uses at least k (10)
    with monkeypatch.context() as m:
        m.setattr(recall, "HNSW_EF_MAX", 40)
        record = measure_users(index, v, np.arange(100), target=1.01)  # never reached
    assert record["meets_target"] is False and record["ef_search"] == 40 == index.hnsw.efSearch
    assert [s["ef_search"] for s in record["steps"]] == [10, 20, 40]
    # short of the target at the cap: the cheapest efSearch within PLATEAU_GAIN of the best
    record = measure_users(index, v, np.arange(100), target=1.01)
    best = max(s["recall_at_10"] for s in record["steps"])
    assert record["steps"][-1]["ef_search"] == 1024 and record["meets_target"] is False
    assert record["recall_at_10"] >= best - 0.002 and record["ef_search"] < 1024
    assert record["ef_search"] == index.hnsw.efSearch
    assert all(s["recall_at_10"] < best - 0.002 for s in record["steps"]
               if s["ef_search"] < record["ef_search"])
    flat = faiss.IndexFlatIP(16)
    flat.add(v)
    assert measure_users(flat, v, np.arange(50))["recall_at_10"] == 1.0


def test_an_auto_users_hnsw_short_of_the_target_becomes_an_ivf(data, monkeypatch, capsys):
    from svdfaiss import recall
    from svdfaiss.cli.printing import print_summary

    real = recall.measure_users

    def saturated(index, *args, **kwargs):  # HNSW as on the Amazon sample: short, stuck
        record = real(index, *args, **kwargs)
        if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
            record.update(recall_at_10=0.9, meets_target=False)
        return record

    monkeypatch.setattr(recall, "measure_users", saturated)
    rec, report = _build(data, "auto", IndexParams(kind="auto"))  # 12k users: HNSW first
    meta = report.manifest["indexes"]["users"]
    assert meta["type"] == "ivf" and meta["params"]["kind"] == "ivf"
    assert meta["recall"]["instead_of"] == {"type": "hnsw", "recall_at_10": 0.9,
                                            "ef_search": 128}
    assert meta["recall_meets_target"] is True and rec._users.kind == "ivf"
    assert rec._users.index.nprobe == meta["params"]["ivf_nprobe"] == meta["recall"]["nprobe"]
    print_summary(report.path, report.manifest)
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "(an hnsw reached 0.900)" in out
    # a users index asked for by name is kept, and only warned about
    _, report = _build(data, "named", IndexParams(kind="hnsw"))
    assert report.manifest["indexes"]["users"]["type"] == "hnsw"
    assert report.manifest["indexes"]["users"]["recall_meets_target"] is False
