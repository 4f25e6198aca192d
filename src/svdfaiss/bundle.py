"""The on-disk bundle: write into a temporary folder, publish atomically, load, verify, gc.

Layout: `<index_dir>/<model>/<version>/` holds the files and `manifest.json`;
`<index_dir>/<model>/CURRENT` names the served version. A build writes everything into
`<model>/.tmp-<random>/`, fsyncs, renames the folder to its version and only then replaces
CURRENT with `os.replace`, so a crash at any point leaves the previous version served and no
partial bundle under a version name. No pickle: FAISS files, `.npy`, JSON and Parquet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdfaiss.errors import InvalidBundle, InvalidInput, NoBundle

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
# Written by publish beside the files: each file's sha256 and identity when it was hashed.
STAMP = ".hashed.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_model_name(model: str) -> str:
    if not MODEL_NAME.match(model):
        raise InvalidInput(
            f"model name {model!r} must be 1-100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    return model


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Digests started ahead of a `verify` (see `prefetch_digests`), by file identity.
_prefetched: dict[tuple[int, int, int, int], Future[str]] = {}
_prefetch_lock = threading.Lock()
_prefetch_pool: ThreadPoolExecutor | None = None


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def prefetch_digests(paths: Iterable[Path]) -> None:
    """Start hashing files on two background threads, in the given order.

    The next `verify` of such a file uses that digest when the file is still the same
    (device, inode, size and mtime), so hashing overlaps whatever the caller does meanwhile
    (imports, loading indexes already verified). A digest is used once, then forgotten.
    """
    global _prefetch_pool
    with _prefetch_lock:
        if _prefetch_pool is None:
            _prefetch_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
        for path in paths:
            try:
                key = _identity(path)
            except OSError:
                continue  # verify will name the problem
            if key not in _prefetched:
                _prefetched[key] = _prefetch_pool.submit(sha256_file, path)


def prefetch_bundle(version_dir: Path, manifest: dict[str, Any],
                    trust_stamp: bool = False) -> list[str]:
    """Prefetch the digests of a bundle, FAISS files first (with `trust_stamp`, not those
    `unchanged_since_hashed` finds); returns the FAISS files' names."""
    faiss_files = [str(meta["file"]) for meta in manifest.get("indexes", {}).values()]
    rest = [name for name in manifest.get("files", {}) if name not in faiss_files]
    skip = unchanged_since_hashed(version_dir, manifest) if trust_stamp else set()
    prefetch_digests(version_dir / name for name in faiss_files + rest
                     if "/" not in name and not name.startswith(".") and name not in skip)
    return faiss_files


def _file_identity(path: Path) -> list[int]:
    """What changes whenever a file's bytes can have: which file (device, inode), its size,
    and its modification and status-change times (a write sets both; `touch -d` can set the
    mtime back but sets the ctime to now)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def write_stamp(directory: Path, digests: dict[str, str],
                identities: dict[str, list[int]] | None = None) -> None:
    """Record, beside the files, the sha256 each had and its identity when it was hashed
    (`identities`, taken before hashing; default: now, for files only this process wrote)."""
    path = directory / STAMP
    entries = {name: {"sha256": digest, "identity": (identities or {}).get(name)
                      or _file_identity(directory / name)}
               for name, digest in digests.items()}
    with path.open("w") as fh:
        fh.write(json.dumps({"files": entries}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def unchanged_since_hashed(version_dir: Path, manifest: dict[str, Any]) -> set[str]:
    """Files of the manifest whose stamp (`write_stamp`, at publish) holds the manifest's
    sha256 and whose identity has not changed since: the same file on the same file system,
    not written since. Hashing them again would find the same digest.

    A copy of the bundle (another inode, another machine) matches nothing, so it is hashed in
    full; so is a bundle without a stamp. Corruption that leaves the metadata alone (a disk
    returning bad blocks) goes undetected, as it would after a full hash at load, since the
    mapped pages are read from disk again later.
    """
    try:
        stamp = json.loads((version_dir / STAMP).read_text())
        entries = stamp["files"]
        if not isinstance(entries, dict):
            return set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    unchanged = set()
    for name, meta in manifest.get("files", {}).items():
        entry = entries.get(name)
        if ("/" in name or name.startswith(".") or not isinstance(entry, dict)
                or not isinstance(meta, dict) or entry.get("sha256") != meta.get("sha256")):
            continue
        try:
            if entry.get("identity") == _file_identity(version_dir / name):
                unchanged.add(name)
        except OSError:
            continue
    return unchanged


def _digest(path: Path) -> str:
    try:
        key = _identity(path)
    except OSError:
        return sha256_file(path)  # raises the OSError with its path
    with _prefetch_lock:
        future = _prefetched.pop(key, None)
    return future.result() if future is not None else sha256_file(path)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_version() -> str:
    """A sortable, unique version name: UTC time to the second and a random suffix."""
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(2)}"


def model_dir(index_dir: Path, model: str) -> Path:
    return Path(index_dir) / check_model_name(model)


@contextlib.contextmanager
def model_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock of one model's folder for a build or an admin change."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInput(
                f"{directory}: another build or bundle command holds {directory / LOCK}; "
                "wait for it to finish"
            ) from None
        # Holding the lock, any temporary folder left is from a process that died mid-build.
        for stale in directory.glob(TMP_PREFIX + "*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


class BundleWriter:
    """Collects a bundle's files in a temporary folder; `publish` makes it the current one."""

    def __init__(self, directory: Path) -> None:
        self.model_dir = directory
        self.tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        self.tmp.mkdir(parents=True)
        self.files: list[str] = []

    def path(self, name: str) -> Path:
        self.files.append(name)
        return self.tmp / name

    def save_array(self, name: str, array: np.ndarray) -> None:
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays would need pickle")
        np.save(self.path(name), np.ascontiguousarray(array), allow_pickle=False)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def publish(self, manifest: dict[str, Any], version: str) -> Path:
        """Checksum and fsync every file, write the manifest, rename, then point CURRENT."""
        if not VERSION_NAME.match(version):
            raise InvalidInput(f"version name {version!r} is not a valid folder name")
        target = self.model_dir / version
        if target.exists():
            raise InvalidInput(f"{target} already exists; choose another version name")
        paths = [self.tmp / name for name in self.files]
        with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL
            digests = list(pool.map(sha256_file, paths))
            list(pool.map(_fsync, paths))
        manifest["files"] = {
            name: {"sha256": digest, "size": path.stat().st_size}
            for name, path, digest in zip(self.files, paths, digests, strict=True)
        }
        # Identities after the fsyncs: nothing but this writer has touched these files.
        write_stamp(self.tmp, dict(zip(self.files, digests, strict=True)))
        manifest_path = self.tmp / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        _fsync(manifest_path)
        _fsync(self.tmp)
        os.rename(self.tmp, target)
        _fsync(self.model_dir)
        set_current(self.model_dir, version)
        return target


def set_current(directory: Path, version: str) -> None:
    """Atomically point CURRENT at a version (write a temporary file, fsync, os.replace)."""
    tmp = directory / f"{TMP_PREFIX}{CURRENT}-{secrets.token_hex(4)}"
    with tmp.open("w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / CURRENT)
    _fsync(directory)


def models_hint(index_dir: Path) -> str:
    """Which models a folder of bundles holds, for an error about a missing one."""
    try:
        names = sorted(p.name for p in index_dir.iterdir() if (p / CURRENT).is_file())
    except OSError:
        names = []
    if not names:
        return f"{index_dir} holds no published model yet: build one with svdfaiss build"
    return f"models in {index_dir}: {', '.join(names)} (choose with --model NAME)"


def read_current(directory: Path) -> str:
    """The version CURRENT names; NoBundle when there is none."""
    try:
        version = (directory / CURRENT).read_text().strip()
    except FileNotFoundError:
        raise NoBundle(f"{directory}: no published bundle ({CURRENT} is missing); "
                       f"{models_hint(directory.parent)}") from None
    if not VERSION_NAME.match(version):
        raise InvalidBundle(f"{directory / CURRENT}: does not name a version ({version!r})")
    return version


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidBundle(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidBundle(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise InvalidBundle(
            f"{path}: unsupported bundle format {manifest.get('format_version')!r} "
            f"(this svdfaiss reads format {FORMAT_VERSION})"
            if isinstance(manifest, dict) else f"{path}: not a manifest object"
        )
    if not isinstance(manifest.get("files"), dict):
        raise InvalidBundle(f"{path}: has no file list")
    return manifest


def verify(version_dir: Path, manifest: dict[str, Any] | None = None,
           names: Iterable[str] | None = None, trust_stamp: bool = False) -> list[str]:
    """Problems of a bundle (missing files, size or sha256 mismatches); empty when intact.

    `names` limits the check to some of the manifest's files (all by default);
    `trust_stamp` skips the files `unchanged_since_hashed` vouches for.
    """
    try:
        manifest = manifest or read_manifest(version_dir)
    except InvalidBundle as exc:
        return [str(exc)]
    problems: list[str] = []
    files = manifest["files"]
    wanted = list(files) if names is None else list(names)
    if trust_stamp:
        skip = unchanged_since_hashed(version_dir, manifest)
        wanted = [name for name in wanted if name not in skip]
    problems += [f"{name}: not in the manifest" for name in wanted if name not in files]
    entries = [(name, files[name]) for name in wanted if name in files]
    present = []
    for name, meta in entries:
        path = version_dir / name
        if "/" in name or name.startswith("."):
            problems.append(f"{name}: unsafe file name in manifest")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{path}: size {path.stat().st_size}, manifest says {meta.get('size')}")
        else:
            present.append((path, meta))
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(_digest, [p for p, _ in present]))
    for (path, meta), digest in zip(present, digests, strict=True):
        if digest != meta.get("sha256"):
            problems.append(f"{path}: sha256 {digest[:12]}..., manifest says "
                            f"{str(meta.get('sha256'))[:12]}...")
    return problems


def check(version_dir: Path, stamp: bool = False) -> None:
    """Raise InvalidBundle listing every problem `verify` finds. With `stamp`, an intact
    bundle's stamp is rewritten for the files as they are here (after a copy, say), so that
    services trusting it need not hash them again; files that changed while they were
    hashed are left out."""
    try:
        manifest = read_manifest(version_dir)
    except InvalidBundle as exc:
        raise InvalidBundle(f"{version_dir} does not verify:\n  {exc}") from None
    before = {}
    for name in manifest["files"]:
        with contextlib.suppress(OSError):
            if "/" not in name and not name.startswith("."):
                before[name] = _file_identity(version_dir / name)
    problems = verify(version_dir, manifest)
    if problems:
        raise InvalidBundle(f"{version_dir} does not verify:\n  " + "\n  ".join(problems))
    if stamp:
        same = {name: identity for name, identity in before.items()
                if _file_identity(version_dir / name) == identity}
        try:
            write_stamp(version_dir, {name: str(manifest["files"][name]["sha256"])
                                      for name in same}, same)
        except OSError as exc:
            raise InvalidInput(f"{version_dir}: verified, but cannot write {STAMP} "
                               f"({exc.strerror})") from None


@dataclass(frozen=True)
class BundleInfo:
    """One version of a model, as `bundles list` shows it."""

    version: str
    path: Path
    created_at: str
    current: bool
    size_bytes: int
    manifest: dict[str, Any] | None
    error: str | None


def list_bundles(directory: Path) -> list[BundleInfo]:
    """Every version folder of a model, oldest first; broken ones carry their error."""
    if not directory.is_dir():
        return []
    try:
        current: str | None = read_current(directory)
    except (NoBundle, InvalidBundle):
        current = None
    out = []
    for path in directory.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            manifest: dict[str, Any] | None = read_manifest(path)
            error = None
        except InvalidBundle as exc:
            manifest, error = None, str(exc)
        created = str(manifest.get("created_at", "")) if manifest else ""
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        out.append(BundleInfo(path.name, path, created, path.name == current, size, manifest,
                              error))
    return sorted(out, key=lambda b: (b.created_at, b.version))


def garbage_collect(directory: Path, keep: int) -> list[str]:
    """Remove all but the `keep` newest versions (never the current one); returns removed."""
    if keep < 1:
        raise InvalidInput("--keep must be at least 1")
    with model_lock(directory):
        bundles = list_bundles(directory)
        survivors = {b.version for b in bundles[-keep:]} | {b.version for b in bundles
                                                           if b.current}
        removed = []
        for bundle in bundles:
            if bundle.version not in survivors:
                shutil.rmtree(bundle.path)
                removed.append(bundle.version)
        return removed


def rollback(directory: Path, version: str) -> None:
    """Point CURRENT at an existing version after verifying it."""
    with model_lock(directory):
        target = directory / version
        if not VERSION_NAME.match(version) or not target.is_dir():
            known = ", ".join(b.version for b in list_bundles(directory)) or "none"
            raise InvalidInput(f"{directory}: no version {version!r} (versions: {known})")
        check(target)
        set_current(directory, version)


def current_bundle(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The folder and manifest of the version CURRENT names."""
    version = read_current(directory)
    version_dir = directory / version
    if not version_dir.is_dir():
        raise InvalidBundle(f"{directory / CURRENT} names {version!r}, which does not exist")
    return version_dir, read_manifest(version_dir)
