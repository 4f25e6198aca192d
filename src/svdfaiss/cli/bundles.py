"""`svdfaiss bundles ...`: list, show, verify, garbage-collect and roll back a model's
published versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from svdfaiss import bundle
from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import DEFAULT_INDEX_DIR, IndexDirOpt, JsonOpt, ModelOpt
from svdfaiss.cli.printing import fmt_int, out, show
from svdfaiss.errors import NoBundle

bundles_app = typer.Typer(help="List, show, verify, garbage-collect and roll back bundles.",
                          no_args_is_help=True)


@bundles_app.command("list")
@clean_errors
def bundles_list(model: ModelOpt = "default", index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
                 json_out: JsonOpt = False) -> None:
    """Every version of a model, oldest first; * marks CURRENT."""
    directory = bundle.model_dir(index_dir, model)
    infos = bundle.list_bundles(directory)
    if json_out:
        out.print_json(json.dumps([{"version": b.version, "current": b.current,
                                    "created_at": b.created_at, "size_bytes": b.size_bytes,
                                    "error": b.error} for b in infos]))
        return
    if not infos:
        raise NoBundle(f"{directory}: no bundles; {bundle.models_hint(directory.parent)}")
    table = Table("", "version", "created at", "users", "items", "size")
    for b in infos:
        c = (b.manifest or {}).get("counts", {})
        table.add_row("*" if b.current else "", b.version, b.created_at or (b.error or ""),
                      fmt_int(c.get("users", 0)), fmt_int(c.get("items", 0)),
                      f"{b.size_bytes / 1e6:.1f} MB")
    show(table)


def _version_dir(index_dir: Path, model: str, version: str | None) -> Path:
    """A named version's folder, or CURRENT's."""
    directory = bundle.model_dir(index_dir, model)
    return directory / (version or bundle.read_current(directory))


@bundles_app.command("show")
@clean_errors
def bundles_show(
    version: Annotated[str | None, typer.Argument(help="Default: CURRENT.")] = None,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Print a version's manifest (JSON)."""
    out.print_json(json.dumps(bundle.read_manifest(_version_dir(index_dir, model, version))))


@bundles_app.command("verify")
@clean_errors
def bundles_verify(
    version: Annotated[str | None, typer.Argument(help="Default: CURRENT.")] = None,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    stamp: Annotated[bool, typer.Option(
        "--stamp", help="Also record the verified files (their inode, size and times), so "
        "that services with SVDFAISS_TRUST_HASH_STAMP (the default) load them without "
        "hashing them again: for a bundle copied here.")] = False,
) -> None:
    """Check every file of a version against the manifest's size and sha256."""
    path = _version_dir(index_dir, model, version)
    bundle.check(path, stamp)
    out.print(f"{path}: ok" + (f" (stamped: {path / bundle.STAMP})" if stamp else ""))


@bundles_app.command("gc")
@clean_errors
def bundles_gc(
    keep: Annotated[int, typer.Option(min=1, help="Newest versions to keep.")] = 3,
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Delete old versions, keeping the newest N and always CURRENT."""
    removed = bundle.garbage_collect(bundle.model_dir(index_dir, model), keep)
    out.print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed
                                                      else ""))


@bundles_app.command("rollback")
@clean_errors
def bundles_rollback(
    version: Annotated[str, typer.Argument(help="Version to make CURRENT.")],
    model: ModelOpt = "default",
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
) -> None:
    """Point CURRENT at an older (verified) version."""
    directory = bundle.model_dir(index_dir, model)
    bundle.rollback(directory, version)
    out.print(f"{model}: CURRENT is now {version}")
