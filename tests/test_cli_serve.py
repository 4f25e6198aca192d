"""`serve` and `demo` on a busy port: one clear error and its own exit code, before anything
is built or printed (it used to print the curl lines, then fail with exit 3, "unknown id")."""

from __future__ import annotations

import socket

import pytest

from .helpers import free_port, run_cli


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


def test_tables_wrap_long_ids_instead_of_cutting_them(tmp_path):
    """At 40 columns an id and a path wrap; nothing is shortened to an ellipsis."""
    index_dir = tmp_path / "indexes"
    events = tmp_path / "events.csv"
    long_ids = [f"SKU-{n:02d}-" + "x" * 30 for n in range(12)]
    rows = [f"u{u},{long_ids[(u + j) % 12]}" for u in range(60) for j in range(3)]
    events.write_text("user_id,item_id\n" + "\n".join(rows) + "\n")
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "40"}
    built = subprocess.run([sys.executable, "-m", "svdfaiss", "build", str(events),
                            "--index-dir", str(index_dir), "--k", "4"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert built.returncode == 0, built.stderr
    assert "…" not in built.stdout
    query = subprocess.run([sys.executable, "-m", "svdfaiss", "query", "similar", long_ids[0],
                            "--index-dir", str(index_dir), "--k", "3"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert query.returncode == 0, query.stderr
    assert "…" not in query.stdout
    # Rebuild each row's item_id cell from its folded lines: the whole id is there.
    cells: list[str] = []
    for line in query.stdout.splitlines():
        parts = line.split("│")
        if len(parts) < 4:
            continue
        if parts[1].strip():  # a rank: a new row starts
            cells.append("")
        cells[-1] += parts[2].strip()
    assert len(cells) == 3 and all(cell in long_ids for cell in cells), cells


def test_serve_refuses_draining_with_several_workers(tmp_path):
    result = run_cli(["serve", "--drain-seconds", "5", "--workers", "2", "--port",
                      str(free_port()), "--index-dir", str(tmp_path)])
    assert result.returncode == 2, result.stderr
    assert "--drain-seconds needs --workers 1" in result.stderr
