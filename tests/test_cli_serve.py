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


def test_one_default_model_and_a_missing_one_lists_what_exists(tmp_path):
    """demo builds the model every bare command reads ("default"); asking for a model that
    is not there names the ones that are."""
    index_dir = tmp_path / "indexes"
    built = run_cli(["demo", "--no-serve", "--workdir", str(tmp_path / "data"),
                     "--index-dir", str(index_dir)], cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    assert (index_dir / "default" / "CURRENT").is_file()
    listed = run_cli(["bundles", "list", "--index-dir", str(index_dir)])
    assert listed.returncode == 0, listed.stderr
    missing = run_cli(["bundles", "list", "--index-dir", str(index_dir), "--model", "shop"])
    assert missing.returncode == 4
    assert "models in" in missing.stderr and "default" in missing.stderr
    assert "--model NAME" in missing.stderr
