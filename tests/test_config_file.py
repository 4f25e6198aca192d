"""Settings from a file: ./.env is read, --config FILE names another, and the precedence is
flags > environment > file > defaults (a .env with SVDFAISS_PORT used to be ignored)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .helpers import free_port, run_cli


def _serve_until_ready(args: list[str], cwd: Path, env: dict[str, str], port: int) -> str:
    """Start `svdfaiss serve ARGS` in `cwd`; the /readyz body once it answers on `port`."""
    proc = subprocess.Popen([sys.executable, "-m", "svdfaiss", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if answer.status_code == 200:
                    return answer.text
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"nothing answered on port {port} (exit {proc.poll()})")
    finally:
        proc.terminate()
        proc.wait(10)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SVDFAISS_")}


def test_a_dotenv_in_the_working_folder_is_read(tmp_path, sample_index_dir):
    port = free_port()
    (tmp_path / ".env").write_text(f"SVDFAISS_PORT={port}\nSVDFAISS_MODEL=sample\n"
                                   f"SVDFAISS_INDEX_DIR={sample_index_dir}\n")
    ready = _serve_until_ready(["serve"], tmp_path, _clean_env(), port)
    assert '"model":"sample"' in ready.replace(" ", "")


def test_config_file_flag_and_precedence(tmp_path, sample_index_dir):
    file_port, env_port = free_port(), free_port()
    config = tmp_path / "svdfaiss.env"
    config.write_text(f"SVDFAISS_PORT={file_port}\nSVDFAISS_MODEL=sample\n"
                      f"SVDFAISS_INDEX_DIR={sample_index_dir}\n")
    _serve_until_ready(["--config", str(config), "serve"], tmp_path, _clean_env(), file_port)
    # the environment wins over the file, and a flag over both
    env = {**_clean_env(), "SVDFAISS_PORT": str(env_port)}
    _serve_until_ready(["--config", str(config), "serve"], tmp_path, env, env_port)
    flag_port = free_port()
    _serve_until_ready(["--config", str(config), "serve", "--port", str(flag_port)], tmp_path,
                       env, flag_port)


def test_a_missing_config_file_is_named(tmp_path):
    result = run_cli(["--config", str(tmp_path / "nope.env"), "bundles", "list"])
    assert result.returncode == 2 and "nope.env: no such config file" in result.stderr
