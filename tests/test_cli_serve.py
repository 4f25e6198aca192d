"""`serve` and `demo` on a busy port: one clear error and its own exit code, before anything
is built or printed (it used to print the curl lines, then fail with exit 3, "unknown id")."""

from __future__ import annotations

import socket

import pytest

from .helpers import run_cli


@pytest.fixture
def busy_port():  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_demo_on_a_busy_port_says_so_before_building(tmp_path, busy_port):
    result = run_cli(["demo", "--port", str(busy_port), "--workdir", str(tmp_path / "data"),
                      "--index-dir", str(tmp_path / "indexes")], cwd=tmp_path)
    assert result.returncode == 8
    assert f"127.0.0.1:{busy_port} is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Serving on" not in result.stdout and "curl" not in result.stdout
    assert not (tmp_path / "indexes").exists()  # nothing was built


def test_serve_on_a_busy_port_says_so(tmp_path, busy_port):
    result = run_cli(["serve", "--port", str(busy_port), "--index-dir", str(tmp_path)])
    assert result.returncode == 8 and "already in use" in result.stderr
