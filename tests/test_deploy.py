"""docker-compose.yml and the Dockerfile, validated by a compose client (no engine needed)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose client on this machine (CI installs docker-compose)")


def test_compose_file_is_valid_and_wires_builder_then_api(tmp_path):
    cmd = compose_command()
    env = {"PATH": "/usr/bin:/bin", "SVDFAISS_DATA_DIR": str(tmp_path),
           "SVDFAISS_INPUT": "log.csv", "SVDFAISS_MODEL": "shop"}
    done = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    builder, api = config["services"]["builder"], config["services"]["api"]
    assert builder["command"][:2] == ["build", "/data/log.csv"]
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
    assert "pip install ." in text


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
