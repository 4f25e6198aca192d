"""Helpers for the scripts that start a server: a free port, waiting for it, its RSS."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The baseline the HTTP benchmarks compare with: FastAPI answering a constant JSON.
BARE_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/bare")
async def bare() -> dict:
    return {"model": "bare", "version": "0", "items": [{"item_id": "0", "score": 1.0}]}
"""


def start_bare(work: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """uvicorn serving BARE_APP on 127.0.0.1:port (one worker), its file written in `work`."""
    (work / "bare_app.py").write_text(BARE_APP)
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                             str(port), "--no-access-log", "--log-level", "warning"],
                            env=env, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def free_port() -> int:
    """A port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], limit: float = 120) -> float:
    """Seconds until `url` answers 200; exits the script if the server dies or never does."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit(f"{url} not ready after {limit} s")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_bundle(work: Path, model: str = "bench") -> tuple[Path, list[str], list[str]]:
    """The built-in sample built under `work`: the index folder, its user ids and item ids."""
    from svdfaiss.builder import BuildConfig, build
    from svdfaiss.data import decode_ids
    from svdfaiss.recommender import Recommender
    from svdfaiss.synthetic import SampleSpec, write_sample

    files = write_sample(SampleSpec(), work / "data")
    build(BuildConfig(input=files.events, model=model, index_dir=work / "ix",
                      catalog=files.catalog))
    rec = Recommender.load(work / "ix", model)
    return work / "ix", decode_ids(rec.user_ids), decode_ids(rec.item_ids)
