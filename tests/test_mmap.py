"""Bundles loaded by memory map answer exactly as bundles read into memory, for every index
type a build writes (flat, HNSW, IVF, the banded recommendation index), and really map."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.errors import InvalidBundle
from svdfaiss.index import IndexParams, build_index, read_index
from svdfaiss.query.filters import CatalogFilter
from svdfaiss.recommender import Recommender

# Two builds of the sample that between them write every index type: items (and content,
# which follows them: the catalog has text and categories) HNSW then IVF, recommendations
# banded (an IVF tail) then one flat MIPS index, users IVF then flat.
LAYOUTS = {
    "hnsw-items": dict(item_index=IndexParams(kind="hnsw"),
                       rec_index=IndexParams(kind="ivf", ivf_nlist=16, mips_head=256),
                       user_index=IndexParams(kind="ivf", ivf_nlist=32)),
    "ivf-items": dict(item_index=IndexParams(kind="ivf", ivf_nlist=32, ivf_nprobe=4),
                      rec_index=IndexParams(kind="flat"),
                      user_index=IndexParams(kind="flat")),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def pair(request, tmp_path_factory, sample) -> tuple[Recommender, Recommender, str]:
    """The same bundle loaded eagerly and by memory map, and the layout's name."""
    index_dir = tmp_path_factory.mktemp(request.param)
    build(BuildConfig(input=sample.events, model="sample", index_dir=index_dir,
                      catalog=sample.catalog, k=16, tune=False, similar_cache=0,
                      **LAYOUTS[request.param]))  # type: ignore[arg-type]
    return (Recommender.load(index_dir, "sample", mmap=False),
            Recommender.load(index_dir, "sample", mmap=True), request.param)


def same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.ids == b.ids and a.reason == b.reason
    np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))


def test_the_layouts_write_the_index_types_they_promise(pair):
    eager, _, layout = pair
    types = {name: meta["type"] for name, meta in eager.manifest["indexes"].items()}
    if layout == "hnsw-items":
        assert types == {"items": "hnsw", "items_mips": "banded", "users": "ivf",
                         "content": "hnsw"}
    else:
        assert types == {"items": "ivf", "items_mips": "flat", "users": "flat",
                         "content": "ivf"}


def test_mmap_answers_equal_eager_answers(pair):
    eager, mapped, _ = pair
    items = decode_ids(eager.item_ids[: eager.n_items : 37])
    users = decode_ids(eager.user_ids[: eager.n_users : 97])
    assert len(items) > 50 and len(users) > 50
    deny = items[1:6]
    shoes = CatalogFilter(category=str(eager.catalog["category"][0]))
    for item in items:
        for mode in ("cf", "content", "hybrid"):
            same(eager.similar_items(item, 10, mode=mode),
                 mapped.similar_items(item, 10, mode=mode))
        same(eager.similar_items(item, 7, filter_items=deny, mode="cf"),
             mapped.similar_items(item, 7, filter_items=deny, mode="cf"))
    for user in users:
        same(eager.recommend(user, 10), mapped.recommend(user, 10))
        same(eager.recommend(user, 10, mode="cf", catalog_filter=shoes),
             mapped.recommend(user, 10, mode="cf", catalog_filter=shoes))
        same(eager.similar_users(user, 10), mapped.similar_users(user, 10))
        assert eager.score(user, items[0]) == mapped.score(user, items[0])
    same(eager.recommend_for_items(items[:3], 10), mapped.recommend_for_items(items[:3], 10))
    batch = [eager.similar_items_batch(items[:20], [10] * 20),
             mapped.similar_items_batch(items[:20], [10] * 20)]
    for a, b in zip(*batch, strict=True):
        same(a, b)


def mapped_files() -> set[str]:
    """Files this process has memory-mapped (from /proc/self/maps)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_mmap_maps_every_index_and_array(pair):
    _, mapped, _ = pair
    maps = mapped_files()
    faiss_files = {str(mapped.path / meta["file"]) for meta in mapped.manifest["indexes"].values()}
    arrays = {str(mapped.path / name) for name in ("item_vectors.npy", "item_factors.npy",
                                                   "rows_indices.npy", "item_co_users.npy")}
    assert faiss_files | arrays <= maps
    assert isinstance(mapped.item_vectors, np.memmap) or isinstance(mapped.item_vectors.base,
                                                                    np.memmap)


def test_eager_load_maps_no_bundle_file(tmp_path, sample):
    build(BuildConfig(input=sample.events, model="sample", index_dir=tmp_path, k=8,
                      tune=False, similar_cache=0))
    rec = Recommender.load(tmp_path, "sample", mmap=False)
    assert not {str(rec.path / name) for name in rec.manifest["files"]} & mapped_files()
    assert rec.similar_items(decode_ids(rec.item_ids[:1])[0], 5, mode="cf").ids


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_truncated_index_read_by_mmap_is_an_invalid_bundle_naming_it(tmp_path, kind):
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    index = build_index(x, IndexParams(kind=kind, ivf_nlist=8))  # type: ignore[arg-type]
    path = tmp_path / "items.faiss"
    faiss.write_index(index, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InvalidBundle, match=r"items\.faiss: not a readable FAISS index"):
        read_index(path, mmap=True)
