"""Atomic publish, verify, gc, rollback, and the no-pickle rule, on real files."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.errors import InvalidBundle, InvalidInput, NoBundle
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleSpec, write_sample


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_sample(SampleSpec(users=400, items=120, events=4000, categories=6),
                        tmp_path_factory.mktemp("small"))


def build_small(small, index_dir, version, **kw):
    return build(BuildConfig(input=small.events, model="m", index_dir=index_dir, k=8,
                             version=version, catalog=small.catalog, **kw))


def test_publish_points_current_at_the_new_version_and_leaves_no_tmp(tmp_path, small):
    r1 = build_small(small, tmp_path, "v1")
    r2 = build_small(small, tmp_path, "v2")
    model_dir = tmp_path / "m"
    assert (model_dir / "CURRENT").read_text() == "v2\n"
    assert r1.path == model_dir / "v1" and r2.path == model_dir / "v2"
    assert not list(model_dir.glob(".tmp-*"))
    manifest = bundle.read_manifest(r2.path)
    assert set(manifest["files"]) == {p.name for p in r2.path.iterdir()} - {"manifest.json",
                                                                           bundle.STAMP}
    for name, meta in manifest["files"].items():
        assert bundle.sha256_file(r2.path / name) == meta["sha256"]
    assert manifest["input"]["sha256"] == bundle.sha256_file(small.events)
    assert manifest["rows"]["read"] == 4000 and manifest["counts"]["users"] == 400
    assert bundle.verify(r2.path) == []


def test_verify_reports_missing_and_corrupted_files(tmp_path, small):
    path = build_small(small, tmp_path, "v1").path
    with (path / "item_factors.npy").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff\xff\xff\xff")
    (path / "users.faiss").unlink()
    problems = bundle.verify(path)
    assert any("item_factors.npy: sha256" in p for p in problems)
    assert any("users.faiss: missing" in p for p in problems)
    with pytest.raises(InvalidBundle, match="does not verify"):
        Recommender.open(path)


def test_prefetched_digests_are_used_once_and_never_for_a_changed_file(tmp_path, small,
                                                                        monkeypatch):
    path = build_small(small, tmp_path, "v1").path
    manifest = bundle.read_manifest(path)
    assert sorted(bundle.prefetch_bundle(path, manifest)) == [
        "content.faiss", "items.faiss", "items_mips.faiss", "users.faiss"]
    time.sleep(0.5)  # let the background hashing finish
    hashed: list[str] = []
    real = bundle.sha256_file
    monkeypatch.setattr(bundle, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    with (path / "item_factors.npy").open("r+b") as fh:  # changed after its prefetch
        fh.seek(200)
        fh.write(b"\xff\xff\xff\xff")
    os.utime(path / "item_factors.npy", ns=(1, 1))
    problems = bundle.verify(path, manifest)
    assert hashed == ["item_factors.npy"] and len(problems) == 1
    assert "item_factors.npy: sha256" in problems[0]
    bundle.verify(path, manifest)  # a digest serves one verify: the next one hashes again
    assert sorted(hashed) == sorted(["item_factors.npy", *manifest["files"]])


def hashing(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The names of the files sha256_file hashes from now on (prefetch threads included)."""
    hashed: list[str] = []
    real = bundle.sha256_file
    monkeypatch.setattr(bundle, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    return hashed


def test_a_published_bundle_loads_without_hashing_its_unchanged_files(tmp_path, small,
                                                                      monkeypatch):
    path = build_small(small, tmp_path, "v1").path
    manifest = bundle.read_manifest(path)
    assert bundle.unchanged_since_hashed(path, manifest) == set(manifest["files"])
    hashed = hashing(monkeypatch)
    rec = Recommender.open(path, trust_stamp=True)
    assert hashed == [] and rec.n_items > 100
    Recommender.open(path)  # without trust: every file, as before
    assert sorted(hashed) == sorted(manifest["files"])


def test_a_file_changed_after_publish_is_hashed_and_refused_even_with_its_times_reset(
        tmp_path, small, monkeypatch):
    path = build_small(small, tmp_path, "v1").path
    target = path / "items.faiss"
    stat = target.stat()
    time.sleep(0.01)  # past the file system's timestamp granularity
    with target.open("r+b") as fh:  # same size, one byte flipped, mtime set back
        fh.seek(stat.st_size // 2)
        byte = fh.read(1)
        fh.seek(stat.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest = bundle.read_manifest(path)
    assert bundle.unchanged_since_hashed(path, manifest) == set(manifest["files"]) - {
        "items.faiss"}
    hashed = hashing(monkeypatch)
    with pytest.raises(InvalidBundle, match=r"items\.faiss: sha256"):
        Recommender.open(path, trust_stamp=True)
    assert hashed == ["items.faiss"]


def test_a_copied_bundle_is_hashed_in_full_until_verify_stamps_it(tmp_path, small, cli,
                                                                   monkeypatch):
    import shutil

    from .conftest import invoke

    build_small(small, tmp_path / "a", "v1")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new inodes, the stamp copied along
    path = tmp_path / "b" / "m" / "v1"
    manifest = bundle.read_manifest(path)
    assert bundle.unchanged_since_hashed(path, manifest) == set()
    result = invoke(cli, ["bundles", "verify", "--model", "m", "--index-dir",
                          str(tmp_path / "b"), "--stamp"])
    assert result.exit_code == 0 and "stamped" in result.output
    assert bundle.unchanged_since_hashed(path, manifest) == set(manifest["files"])
    hashed = hashing(monkeypatch)
    Recommender.load(tmp_path / "b", "m", trust_stamp=True)
    assert hashed == []
    # A stamp cannot vouch for a digest the manifest does not hold.
    manifest["files"]["item_ids.npy"]["sha256"] = "0" * 64
    assert "item_ids.npy" not in bundle.unchanged_since_hashed(path, manifest)
    (path / bundle.STAMP).write_text("not json")
    assert bundle.unchanged_since_hashed(path, bundle.read_manifest(path)) == set()


def test_gc_keeps_the_newest_and_current_and_rollback_switches(tmp_path, small):
    for v in ("v1", "v2", "v3", "v4"):
        build_small(small, tmp_path, v)
    model_dir = tmp_path / "m"
    bundle.rollback(model_dir, "v1")
    assert bundle.read_current(model_dir) == "v1"
    removed = bundle.garbage_collect(model_dir, keep=2)
    assert sorted(removed) == ["v2"]
    assert sorted(b.version for b in bundle.list_bundles(model_dir)) == ["v1", "v3", "v4"]
    with pytest.raises(InvalidInput, match="no version 'v2'"):
        bundle.rollback(model_dir, "v2")


def test_rollback_refuses_a_version_that_does_not_verify(tmp_path, small):
    build_small(small, tmp_path, "v1")
    build_small(small, tmp_path, "v2")
    (tmp_path / "m" / "v1" / "items.faiss").write_bytes(b"garbage")
    with pytest.raises(InvalidBundle):
        bundle.rollback(tmp_path / "m", "v1")
    assert bundle.read_current(tmp_path / "m") == "v2"


def test_no_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(NoBundle, match="no published bundle"):
        Recommender.load(tmp_path, "nothing")


def test_bundle_holds_no_pickle(tmp_path, small):
    path = build_small(small, tmp_path, "v1").path
    for f in path.iterdir():
        assert f.suffix in {".npy", ".faiss", ".json", ".parquet"}, f.name
        if f.suffix == ".npy":
            np.load(f, allow_pickle=False)  # raises if the array needs pickle
        assert not zipfile.is_zipfile(f)
    json.loads((path / "manifest.json").read_text())


def test_a_failed_build_publishes_nothing_and_cleans_up(tmp_path, small, monkeypatch):
    build_small(small, tmp_path, "v1")

    def broken_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("svdfaiss.builder._write_files", broken_write)
    with pytest.raises(OSError, match="No space left"):
        build_small(small, tmp_path, "v2")
    model_dir = tmp_path / "m"
    assert bundle.read_current(model_dir) == "v1"
    assert not list(model_dir.glob(".tmp-*")) and not (model_dir / "v2").exists()


def test_sigkill_while_writing_leaves_current_on_the_previous_intact_bundle(tmp_path):
    data = write_sample(SampleSpec(users=60_000, items=8_000, events=400_000),
                        tmp_path / "data")
    index_dir = tmp_path / "indexes"
    cmd = [sys.executable, "-m", "svdfaiss", "build", str(data.events), "--model", "m",
           "--out", str(index_dir), "--k", "16", "--user-index", "flat"]
    subprocess.run([*cmd, "--version", "v1"], check=True, capture_output=True, timeout=300)
    model_dir = index_dir / "m"
    killed_while_writing = 0
    for trial in range(3):
        proc = subprocess.Popen([*cmd, "--version", f"v-killed-{trial}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_dir() for p in model_dir.glob(".tmp-*")):
                os.kill(proc.pid, signal.SIGKILL)
                killed_while_writing += 1
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
        assert bundle.read_current(model_dir) in {"v1", *(f"v-killed-{t}" for t in range(3))}
        current = model_dir / bundle.read_current(model_dir)
        assert bundle.verify(current) == []
    assert killed_while_writing >= 1
    # The next build removes what the killed ones left behind and publishes normally.
    subprocess.run([*cmd, "--version", "v2"], check=True, capture_output=True, timeout=300)
    assert bundle.read_current(model_dir) == "v2"
    assert not list(model_dir.glob(".tmp-*"))
    assert Recommender.load(index_dir, "m").version == "v2"


def test_a_full_disk_is_a_clear_error_publishes_nothing_and_cleans_up(tmp_path, small):
    """RLIMIT_FSIZE makes every write past 64 kB fail as a full disk would (EFBIG)."""
    build_small(small, tmp_path, "v1")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    data = write_sample(SampleSpec(users=3000, items=1500, events=30_000), tmp_path / "big")
    result = subprocess.run(
        [sys.executable, "-m", "svdfaiss", "build", str(data.events), "--model", "m", "--out",
         str(tmp_path), "--version", "v2", "--k", "32"],
        preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, result.stderr
    assert "error:" in result.stderr and "nothing was published" in result.stderr
    assert "Traceback" not in result.stderr
    assert bundle.read_current(tmp_path / "m") == "v1"
    assert not list((tmp_path / "m").glob(".tmp-*"))
    assert not (tmp_path / "m" / "v2").exists()
    assert bundle.verify(tmp_path / "m" / "v1") == []


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_an_intact_current(tmp_path, small, capsys):
    """Kill trials at random moments of a build: CURRENT always names a bundle that verifies."""
    index_dir = tmp_path / "indexes"
    cmd = [sys.executable, "-m", "svdfaiss", "build", str(small.events), "--model", "m",
           "--out", str(index_dir), "--k", "8"]
    started = time.monotonic()
    subprocess.run([*cmd, "--version", "v0"], check=True, capture_output=True, timeout=120)
    full_build = time.monotonic() - started
    model_dir = index_dir / "m"
    rng = random.Random(7)
    outcomes = {"killed": 0, "finished": 0}
    for trial in range(12):
        proc = subprocess.Popen([*cmd, "--version", f"t{trial}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * full_build)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            outcomes["killed"] += 1
        else:
            outcomes["finished"] += 1
        proc.wait(timeout=60)
        current = bundle.read_current(model_dir)
        assert current in {"v0", *(f"t{t}" for t in range(trial + 1))}
        assert bundle.verify(model_dir / current) == []
        assert Recommender.load(index_dir, "m").version == current
    with capsys.disabled():
        print(f"\nkill trials: {outcomes}, CURRENT verified after each")
    assert outcomes["killed"] >= 3, outcomes
