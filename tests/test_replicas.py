"""Two replicas of the service behind nginx (deploy/nginx/svdfaiss.conf), on 127.0.0.1:
reloaded one by one under a bounded load, without a failed or a wrong answer. Skips when
nginx is not installed (Debian: apt-get install nginx).

A rolling restart is not tested here: with the same loop it lost 4 of ~900 requests (502)
in 1 of 7 runs on the loaded 2-core VM, for a reason not found yet (see the README)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.data import decode_ids
from svdfaiss.recommender import Recommender

from .helpers import TOKEN, free_port, server

ROOT = Path(__file__).resolve().parents[1]
NGINX_SITE = ROOT / "deploy" / "nginx" / "svdfaiss.conf"
MAX_REQUESTS = 20_000  # the load loop stops at this many requests or when told, whichever first
N_ITEMS = 40


def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


@pytest.fixture(scope="module")
def versions(tmp_path_factory, sample) -> Path:
    """A model with versions v1 and v2 (CURRENT: v1), which answer differently."""
    index_dir = tmp_path_factory.mktemp("replicas")
    for version, k in (("v2", 24), ("v1", 16)):
        build(BuildConfig(input=sample.events, model="sample", index_dir=index_dir, k=k,
                          tune=False, version=version))
    return index_dir


def site_config(upstreams: list[int], listen: int) -> str:
    """The shipped nginx site with its replica addresses and listen port replaced."""
    text = NGINX_SITE.read_text()
    servers = re.findall(r"^ *server \S+:\d+( [^;]*);\n", text, flags=re.MULTILINE)
    assert len(servers) == 2, "the shipped upstream lists two replicas"
    ours = "".join(f"    server 127.0.0.1:{port}{servers[0]};\n" for port in upstreams)
    text = re.sub(r"(^ *server \S+:\d+ [^;]*;\n)+", ours, text, count=1, flags=re.MULTILINE)
    text, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1
    return text


@contextlib.contextmanager
def nginx(work: Path, upstreams: list[int]) -> Iterator[str]:
    """nginx with the shipped site, in the foreground, its files under `work`."""
    binary = nginx_binary()
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "svdfaiss.conf").write_text(site_config(upstreams, port))
    # Debian's compiled-in temporary folders are root's: every one goes under `work`, and
    # responses are never buffered to a file (workers may run as nobody).
    temp = ""
    for directive in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / directive).mkdir(parents=True, exist_ok=True)
        temp += f"    {directive}_temp_path {work / directive};\n"
    (work / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n{temp}    proxy_max_temp_file_size 0;\n"
        f"    include {work / 'svdfaiss.conf'};\n}}\n")
    test = subprocess.run([binary, "-t", "-e", str(work / "error.log"), "-p", str(work), "-c",
                           str(work / "nginx.conf")], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen([binary, "-e", str(work / "error.log"), "-p", str(work), "-c",
                             str(work / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                (work / "error.log").read_text() if (work / "error.log").exists() else "")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Tally:
    """What the load loop saw: right answers by version, failures, send times of each."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (sent at, version)


async def load(url: str, expected: dict[str, dict[str, list[str]]], items: list[str],
               stop: asyncio.Event) -> Tally:
    """8 clients asking similar items through the proxy until `stop` or MAX_REQUESTS; an
    answer counts as right when its ids are the ones its version gives."""
    tally = Tally()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def worker(n: int) -> None:
            i = n
            while not stop.is_set() and tally.ok + len(tally.failures) < MAX_REQUESTS:
                item = items[i % len(items)]
                i += 7
                sent = time.monotonic()
                try:
                    r = await client.get(f"/items/{item}/similar", params={"k": 5})
                except httpx.TransportError as exc:
                    tally.failures.append(f"{item}: {exc!r}")
                    continue
                body = r.json() if r.status_code == 200 else {}
                version = body.get("version", "")
                ids = [x["item_id"] for x in body.get("items", [])]
                if r.status_code == 200 and ids == expected.get(version, {}).get(item):
                    tally.ok += 1
                    tally.answers.append((sent, version))
                else:
                    tally.failures.append(f"{item}: {r.status_code} {r.text[:120]}")

        await asyncio.gather(*(worker(n) for n in range(8)))
    return tally


def served_requests(url: str) -> float:
    """Similar-items requests a replica counted (its own /metrics)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("svdfaiss_requests_total{") and "/similar" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def admin_reload(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                   timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


class Replica:
    """One `svdfaiss serve` on a fixed port."""

    def __init__(self, index_dir: Path, port: int, logs: Path) -> None:
        self.index_dir, self.port, self.logs = index_dir, port, logs
        self.url = f"http://127.0.0.1:{port}"
        self.starts = 0
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        self.starts += 1
        self._stack.enter_context(server(
            self.index_dir, port=self.port,
            log=self.logs / f"replica-{self.port}-{self.starts}.log"))

    def stop(self) -> None:
        """SIGTERM: uvicorn stops accepting and finishes the requests it holds."""
        self._stack.close()


def test_replicas_reload_one_by_one_without_a_failed_request(versions, tmp_path):
    nginx_binary()
    index_dir = tmp_path / "indexes"
    shutil.copytree(versions, index_dir)
    model_dir = index_dir / "sample"
    items = decode_ids(Recommender.load(index_dir, "sample").item_ids[:N_ITEMS])
    expected = {}
    for version in ("v1", "v2"):
        rec = Recommender.open(model_dir / version)
        expected[version] = {item: rec.similar_items(item, 5).ids for item in items}
    assert expected["v1"] != expected["v2"]
    replicas = [Replica(index_dir, free_port(), tmp_path), Replica(index_dir, free_port(),
                                                                   tmp_path)]
    with contextlib.ExitStack() as stack:
        for replica in replicas:
            replica.start()
            stack.callback(replica.stop)
        proxy = stack.enter_context(nginx(tmp_path / "nginx", [r.port for r in replicas]))

        async def scenario() -> tuple[Tally, list[dict[str, str]], list[float], float]:
            stop = asyncio.Event()
            task = asyncio.create_task(load(proxy, expected, items, stop))
            await asyncio.sleep(0.7)
            bundle.set_current(model_dir, "v2")
            results = []
            for replica in replicas:  # one by one; the other one serves v1 meanwhile
                results.append(await asyncio.to_thread(admin_reload, replica.url))
                await asyncio.sleep(0.7)
            all_v2 = time.monotonic()
            await asyncio.sleep(0.7)
            served = [await asyncio.to_thread(served_requests, r.url) for r in replicas]
            stop.set()
            return await asyncio.wait_for(task, timeout=60), results, served, all_v2

        tally, results, served, all_v2 = asyncio.run(scenario())
    assert tally.failures == []
    assert [(r["result"], r["version"]) for r in results] == [("loaded", "v2")] * 2
    assert min(served) > 50, f"the proxy did not spread the load: {served}"
    assert {v for _, v in tally.answers} == {"v1", "v2"}
    assert all(v == "v2" for sent, v in tally.answers if sent > all_v2)
    assert sum(sent > all_v2 for sent, _ in tally.answers) > 20
    assert tally.ok > 200
