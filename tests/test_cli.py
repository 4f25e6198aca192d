"""The command line as a user runs it: real subprocesses, exit codes, messages, files."""

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from svdfaiss import bundle
from svdfaiss.synthetic import SampleSpec, write_sample

from .helpers import free_port, run_cli


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A model with one good version, the baseline every bad build must leave alone."""
    root = tmp_path_factory.mktemp("cli")
    data = write_sample(SampleSpec(users=300, items=80, events=3000, categories=5), root / "d")
    index_dir = root / "indexes"
    result = run_cli(["build", str(data.events), "--model", "m", "--out", str(index_dir),
                      "--k", "8", "--items", str(data.catalog), "--version", "good"])
    assert result.returncode == 0, result.stderr
    return data, index_dir


def assert_unchanged(index_dir):
    model_dir = index_dir / "m"
    assert bundle.read_current(model_dir) == "good"
    assert bundle.verify(model_dir / "good") == []
    assert not list(model_dir.glob(".tmp-*"))
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == [
        "CURRENT", "good"]


BAD_INPUTS = {
    "empty": ("", "file is empty"),
    "header_only": ("user_id,item_id,rating\n", "no data rows"),
    "missing_column": ("user_id\nu1\nu2\n", "single column"),
    "non_numeric": ("user,item,rating\nu1,i1,five\nu2,i2,four\n", "non-numeric value: 2"),
    "nan_inf": ("user,item,rating\nu1,i1,nan\nu2,i2,inf\n", "non-finite value"),
    "negative_counts": ("user,item,quantity\nu1,i1,-2\nu2,i2,-1\n", "negative count: 2"),
    "single_user": ("user,item\nu1,i1\nu1,i2\nu1,i3\n", "only 1 user(s) and 3 item(s)"),
    "single_item": ("user,item\nu1,i1\nu2,i1\n", "only 2 user(s) and 1 item(s)"),
    "k_too_large": ("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(5) for i in range(4)),
                    "--k 8 must be smaller than min(users, items)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_clearly_and_changes_nothing(published, tmp_path, case):
    _, index_dir = published
    content, message = BAD_INPUTS[case]
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = run_cli(["build", str(path), "--model", "m", "--out", str(index_dir), "--k", "8"])
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and message in result.stderr
    assert str(path) in result.stderr or case in {"single_user", "single_item", "k_too_large"}
    assert "Traceback" not in result.stderr
    assert_unchanged(index_dir)


def test_unreadable_file(published, tmp_path):
    _, index_dir = published
    path = tmp_path / "locked.csv"
    path.write_text("user,item\nu1,i1\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: use a directory instead
        path = tmp_path / "a_directory.csv"
        path.mkdir()
    result = run_cli(["build", str(path), "--model", "m", "--out", str(index_dir)])
    assert result.returncode == 2
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    assert_unchanged(index_dir)


def test_unknown_format(published, tmp_path):
    _, index_dir = published
    path = tmp_path / "log.xlsx"
    path.write_bytes(b"PK\x03\x04 not a spreadsheet we read")
    result = run_cli(["build", str(path), "--model", "m", "--out", str(index_dir)])
    assert result.returncode == 2 and "unknown format '.xlsx'" in result.stderr
    assert_unchanged(index_dir)


def test_strict_names_the_line(published, tmp_path):
    _, index_dir = published
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{i},i{i % 7},4\n" for i in range(40))
                    + "u1,i2,bad\n")
    ok = run_cli(["build", str(path), "--model", "lenient", "--out", str(index_dir), "--k", "3"])
    assert ok.returncode == 0, ok.stderr
    assert "non-numeric value: 1 (line 42)" in ok.stdout
    strict = run_cli(["build", str(path), "--model", "m", "--out", str(index_dir), "--strict"])
    assert strict.returncode == 2 and "line 42" in strict.stderr
    assert_unchanged(index_dir)


def test_query_json_output_and_unknown_id_exit_code(published):
    _, index_dir = published
    item = run_cli(["query", "recommend", "U001", "--model", "m", "--index-dir",
                              str(index_dir), "--k", "1", "--json"]).stdout
    first_item = json.loads(item)["items"][0]["item_id"]
    result = run_cli(["query", "similar", first_item, "--model", "m", "--index-dir",
                      str(index_dir), "--k", "3", "--json"])
    payload = json.loads(result.stdout)
    assert payload["model"] == "m" and payload["version"] == "good"
    assert len(payload["items"]) == 3
    assert set(payload["items"][0]) == {"item_id", "score", "reason", "title", "category", "price",
                                        "in_stock"}
    missing = run_cli(["query", "similar", "no-such-item", "--model", "m", "--index-dir",
                       str(index_dir)])
    assert missing.returncode == 3 and "unknown item id 'no-such-item'" in missing.stderr


def test_bundles_commands(published):
    _, index_dir = published
    args = ["--model", "m", "--index-dir", str(index_dir)]
    listed = run_cli(["bundles", "list", *args, "--json"])
    assert [b["version"] for b in json.loads(listed.stdout)] == ["good"]
    assert run_cli(["bundles", "verify", *args]).returncode == 0
    shown = json.loads(run_cli(["bundles", "show", *args]).stdout)
    assert shown["version"] == "good" and "files" in shown
    missing = run_cli(["bundles", "verify", "--model", "nothing", "--index-dir",
                       str(index_dir)])
    assert missing.returncode == 4


def test_verify_exits_non_zero_on_a_corrupt_bundle(tmp_path):
    data = write_sample(SampleSpec(users=200, items=60, events=2000, categories=4),
                        tmp_path / "d")
    index_dir = tmp_path / "ix"
    assert run_cli(["build", str(data.events), "--model", "m", "--out", str(index_dir),
                    "--k", "4", "--version", "v1"]).returncode == 0
    target = index_dir / "m" / "v1" / "items_mips.faiss"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    result = run_cli(["bundles", "verify", "--model", "m", "--index-dir", str(index_dir)])
    assert result.returncode == 5 and "items_mips.faiss: sha256" in result.stderr


def test_demo_builds_the_sample_and_prints_working_queries(tmp_path):
    result = run_cli(["demo", "--workdir", str(tmp_path / "data"), "--index-dir",
                      str(tmp_path / "ix"), "--no-serve"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [ln.split() for ln in result.stdout.splitlines() if " query " in ln]
    assert len(lines) == 3
    for words in lines:
        follow = run_cli(words[words.index("query"):], cwd=tmp_path)
        assert follow.returncode == 0, (words, follow.stderr)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_demo_serves_and_its_curl_lines_work(tmp_path):
    """The README's run command: sample, build, a service on 127.0.0.1, the /demo page and
    five curl lines (similar items twice, recommendations, a basket, a live event)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}
    proc = subprocess.Popen([sys.executable, "-m", "svdfaiss", "demo", "--workdir",
                             str(tmp_path / "data"), "--index-dir", str(tmp_path / "ix"),
                             "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while len([ln for ln in lines if ln.strip().startswith("curl ")]) < 5:
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stdout.readline())  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        while True:  # bounded: the deadline above still applies
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.2)
        for line in (ln.strip() for ln in lines if ln.strip().startswith("curl ")):
            done = subprocess.run([*shlex.split(line), "-s", "-f"], capture_output=True,
                                  text=True, timeout=30)
            assert done.returncode == 0, (line, done.stderr)
            answer = json.loads(done.stdout)
            assert answer["applied"] is True if "/events" in line else len(answer["items"]) == 5
        assert any(f"{url}/demo" in line for line in lines), lines
        with urllib.request.urlopen(f"{url}/demo", timeout=5) as page:
            assert b"svdfaiss demo" in page.read()
    finally:
        proc.terminate()
        proc.wait(15)
