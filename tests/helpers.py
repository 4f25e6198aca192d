"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

TOKEN = "test-token-0123456789abcdef"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(args: Sequence[str], cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m svdfaiss` in a real subprocess (exit codes and streams as a user sees)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "svdfaiss", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or a skip when this clone has none."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data is not part of a user's clone)")
    return path


def free_port() -> int:
    """A port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(index_dir: Path, model: str = "sample", token: str | None = TOKEN,
           poll: float = 0.0, log: Path | None = None,
           settings: dict[str, str] | None = None,
           extra_args: Sequence[str] = (), port: int | None = None,
           start_seconds: float = 60) -> Iterator[str]:
    """Start `svdfaiss serve` (on `port`, else a free one) and wait (at most
    `start_seconds`) until /healthz answers."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    env.update(settings or {})
    if token:
        env["SVDFAISS_ADMIN_TOKEN"] = token
    out = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "svdfaiss", "serve", "--index-dir", str(index_dir), "--model",
         model, "--host", "127.0.0.1", "--port", str(port), "--poll-seconds", str(poll),
         *extra_args],
        env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


def factor_ranked(rec) -> list[int]:  # type: ignore[no-untyped-def]
    """Positions of the items whose cf neighbours the SVD factors rank (enough co-users,
    svdfaiss.evidence); the others answer mode cf by co-occurrence."""
    return [i for i in range(rec.n_items)
            if rec.evidence.has_evidence(i) and rec.evidence.factors_speak(i)]
