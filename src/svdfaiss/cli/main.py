"""The root Typer app: its callback (--version), the mapping of domain errors to exit codes
that every command wears, and `run`, the console script."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from svdfaiss import __version__
from svdfaiss.cli import printing
from svdfaiss.cli.printing import err, out
from svdfaiss.config import load_config_file
from svdfaiss.errors import (
    InvalidBundle,
    InvalidInput,
    NoBundle,
    PortInUse,
    UnknownItem,
    UnknownUser,
)

app = typer.Typer(
    help="SVD embeddings of an interaction log, served from persisted FAISS indexes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CODES: dict[type[Exception], int] = {
    InvalidInput: 2,
    UnknownItem: 3,
    UnknownUser: 3,
    NoBundle: 4,
    InvalidBundle: 5,
    PortInUse: 8,
}

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Domain errors end the command with their message and a distinct exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except tuple(EXIT_CODES) as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            code = next(c for t, c in EXIT_CODES.items() if isinstance(exc, t))
            raise typer.Exit(code) from None
        except MemoryError:
            err.print("[bold red]error:[/] out of memory; lower --k or filter more rows")
            raise typer.Exit(6) from None
        except OSError as exc:  # a full disk, a file size limit, a permission
            err.print(f"[bold red]error:[/] {escape(str(exc))}; nothing was published")
            raise typer.Exit(7) from None

    return wrapper  # type: ignore[return-value]


def version_callback(value: bool) -> None:
    if value:
        out.print(f"svdfaiss {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Print the version.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress lines (stages, tuning trials); errors, warnings "
        "and results still print.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="SVDFAISS_CONFIG",
        help="A file of SVDFAISS_*=value lines (default: ./.env when there is one). Flags "
        "win over the environment, the environment over this file, the file over the "
        "defaults.")] = None,
) -> None:
    """svdfaiss: from an interaction log to similar items and recommendations."""
    printing.QUIET = quiet
    path = config if config is not None else Path(".env") if Path(".env").is_file() else None
    if path is None:
        return
    try:
        _, ignored = load_config_file(path)
    except InvalidInput as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if ignored:
        err.print(f"[yellow]note:[/] {escape(str(path))}: ignored {', '.join(ignored)} "
                  "(only SVDFAISS_* settings are read)")


def run() -> None:
    """The `svdfaiss` command. An error exit skips the interpreter's teardown: threads that
    a failed threaded CSV read leaves in pyarrow's pool can abort it (apache/arrow#34314),
    which turned 1 in 40 "exit 2, not UTF-8" answers into SIGABRT. Nothing is pending by
    then: a failed build has already removed its temporary folder and released its lock."""
    try:
        app()
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise

