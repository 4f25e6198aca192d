"""docker-compose.yml and the Dockerfile, validated by a compose client (no engine needed)."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from .helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose client on this machine (CI installs docker-compose)")


def compose_config(settings: dict[str, str]) -> dict:  # type: ignore[type-arg]
    """`docker compose config` of the compose file with these SVDFAISS_* settings."""
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **settings}
    done = subprocess.run([*compose_command(), "-f", str(ROOT / "docker-compose.yml"),
                           "config"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    config: dict = yaml.safe_load(done.stdout)  # type: ignore[type-arg]
    return config


def mounts(service: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """Container path -> source (a named volume's name, or a host path) of a service."""
    out = {}
    for volume in service["volumes"]:
        if isinstance(volume, dict):
            out[volume["target"]] = str(volume["source"])
        else:
            source, target = volume.split(":")[:2]
            out[target] = source
    return out


def test_quick_start_generates_the_sample_in_the_image_and_builds_it_with_its_catalog(
        tmp_path):
    config = compose_config({})  # `docker compose up --build`, nothing set on the host
    sample, builder = config["services"]["sample"], config["services"]["builder"]
    # synth runs in the image, into the sample volume, which the builder then reads
    assert sample["command"] == ["synth", "--out", "/sample"]
    assert mounts(sample) == {"/sample": "sample"} and "sample" in config["volumes"]
    assert mounts(builder)["/data"] == "sample"
    assert builder["depends_on"]["sample"]["condition"] == "service_completed_successfully"
    # ... and builds with the catalog synth writes beside the events, so /demo can search
    assert builder["command"][:4] == ["build", "/data/events.csv", "--items",
                                      "/data/items.csv"]
    from svdfaiss.synthetic import SampleSpec, write_sample

    written = write_sample(SampleSpec(users=20, items=10, events=60, categories=3),
                           tmp_path / "sample")
    assert {written.events.name, written.catalog.name} == {"events.csv", "items.csv"}


def test_compose_file_is_valid_and_wires_builder_then_api(tmp_path):
    config = compose_config({"SVDFAISS_DATA_DIR": str(tmp_path), "SVDFAISS_INPUT": "log.csv",
                             "SVDFAISS_ITEMS": "/data/catalog.csv", "SVDFAISS_MODEL": "shop"})
    builder, api = config["services"]["builder"], config["services"]["api"]
    assert builder["command"][:4] == ["build", "/data/log.csv", "--items",
                                      "/data/catalog.csv"]
    assert mounts(builder)["/data"] == str(tmp_path)
    assert "shop" in builder["command"] and "shop" in api["command"]
    assert api["command"][0] == "serve"
    assert api["depends_on"]["builder"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert all(str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1")
               for p in api["ports"])
    volumes = {str(v.get("source", v)) if isinstance(v, dict) else v.split(":")[0]
               for service in (builder, api) for v in service["volumes"]}
    assert any("indexes" in v for v in volumes)
    assert "indexes" in config["volumes"] and "events" in config["volumes"]
    assert api["environment"]["SVDFAISS_EVENTS_LOG"] == "/events/shop.jsonl"


def test_dockerfile_runs_svdfaiss_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["svdfaiss"]' in text
    assert "USER svdfaiss" in text
    assert "/readyz" in text


def test_dockerfile_installs_the_dependencies_before_it_copies_the_source(tmp_path):
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    order = {key: next(n for n, line in enumerate(lines) if line.startswith(key))
             for key in ("COPY pyproject.toml", "RUN python -c", "COPY src",
                         "RUN pip install --no-deps .")}
    assert (order["COPY pyproject.toml"] < order["RUN python -c"] < order["COPY src"]
            < order["RUN pip install --no-deps ."])
    assert "&& pip install -r requirements.txt" in lines[order["RUN python -c"] + 1]
    # The dependency layer's command, run here, lists exactly pyproject's dependencies.
    command = lines[order["RUN python -c"]].removeprefix("RUN python -c ").split(" > ")[0]
    script = command.strip('"')  # inside double quotes the shell leaves \n to Python
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    listed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, check=True).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"] and listed


def test_build_takes_items_none_for_a_log_without_a_catalog(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + j) % 15}\n"
                                           for u in range(40) for j in range(4)))
    result = run_cli(["build", str(log), "--items", "none", "--out", str(tmp_path / "ix"),
                      "--k", "4", "--no-tune", "--json"])
    assert result.returncode == 0, result.stderr
    assert "catalog.parquet" not in json.loads(result.stdout)["files"]


def test_replicas_profile_puts_nginx_before_replicas_of_the_api(tmp_path):
    cmd = compose_command()
    env = {"PATH": "/usr/bin:/bin", "SVDFAISS_DATA_DIR": str(tmp_path), "SVDFAISS_MODEL": "shop"}
    done = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "--profile",
                           "replicas", "config"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    api, replica, proxy = services["api"], services["replica"], services["proxy"]
    for key in ("command", "environment", "volumes", "healthcheck", "depends_on"):
        assert replica[key] == api[key], key
    assert "ports" not in replica  # reached through the proxy only (and scalable)
    # a rolling restart may stop the next replica once the previous one is healthy
    assert api["command"][api["command"].index("--drain-seconds") + 1] == "5"
    assert replica["profiles"] == proxy["profiles"] == ["replicas"]
    assert "profiles" not in api  # `docker compose up` alone still serves one api
    assert {str(v.get("target", v)) if isinstance(v, dict) else v.split(":")[1]
            for v in proxy["volumes"]} == {"/etc/nginx/conf.d/svdfaiss.conf"}
    assert {name: dep["condition"] for name, dep in proxy["depends_on"].items()} == {
        "api": "service_healthy", "replica": "service_healthy"}
    published = [p if isinstance(p, str) else f"{p['host_ip']}:{p['published']}:{p['target']}"
                 for p in proxy["ports"]]
    assert [p.split("/")[0] for p in published] == ["127.0.0.1:8080:8080"]
    # The nginx site names exactly these services and ports.
    site = (ROOT / "deploy" / "nginx" / "svdfaiss.conf").read_text()
    assert re.findall(r"^\s*server (\S+):(\d+)", site, flags=re.MULTILINE) == [
        ("api", "8000"), ("replica", "8000")]
    assert re.findall(r"listen (\d+);", site) == ["8080"]
    assert "FROM debian" in (ROOT / "deploy" / "nginx" / "Dockerfile").read_text()
