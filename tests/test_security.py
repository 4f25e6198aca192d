"""What a client may not do: oversized bodies and ids, cross-origin calls, code in data."""

import ast
from pathlib import Path

import httpx
import pytest

from svdfaiss.builder import BuildConfig, build
from svdfaiss.config import Settings

from .helpers import server

SRC = Path(__file__).resolve().parents[1] / "src" / "svdfaiss"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, sample) -> Path:
    target = tmp_path_factory.mktemp("secure")
    build(BuildConfig(input=sample.events, model="sample", index_dir=target, k=16))
    return target


@pytest.fixture(scope="module")
def url(index_dir):
    with server(index_dir, settings={"SVDFAISS_MAX_BODY_BYTES": "4096",
                                     "SVDFAISS_MAX_ID_LENGTH": "32"}) as url:
        yield url


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(url):
    huge = {"item_ids": ["x" * 20] * 400}  # about 9 kB against a 4 kB limit
    response = httpx.post(f"{url}/recommendations", json=huge)
    assert response.status_code == 413
    chunked = httpx.post(f"{url}/batch/similar", content=iter([b'{"item_ids": ["'] +
                                                             [b"y" * 1000] * 8 + [b'"]}']),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413  # no Content-Length: counted while streaming
    assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/items/{long}/similar", {}),
    ("GET", "/items/{long}/similar", {"params": {"k": 5}}),  # the fast path's shape
    ("GET", "/users/{long}/recommendations", {}),
    ("GET", "/items/I/similar", {"params": {"filter_items": ["{long}"]}}),
    ("POST", "/recommendations", {"json": {"item_ids": ["{long}"]}}),
    ("POST", "/batch/similar", {"json": {"item_ids": ["ok", "{long}"]}}),
])
def test_an_id_over_the_length_limit_is_422(url, method, path, kwargs):
    long = "z" * 33
    request = httpx.Request(method, url + path.replace("{long}", long), **{
        key: _fill(value, long) for key, value in kwargs.items()})
    response = httpx.Client().send(request)
    assert response.status_code == 422
    assert "at most 32 characters" in response.text


def _fill(value, long):
    if isinstance(value, dict):
        return {k: _fill(v, long) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, long) for v in value]
    return value.replace("{long}", long) if isinstance(value, str) else value


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(f"{url}/items/I/similar", headers={
        "origin": origin, "access-control-request-method": "GET"})


def test_cors_is_off_by_default_and_allows_only_configured_origins(url, index_dir):
    assert "access-control-allow-origin" not in preflight(url, "https://shop.example").headers
    with server(index_dir, settings={
            "SVDFAISS_CORS_ORIGINS": '["https://shop.example"]'}) as cors_url:
        allowed = preflight(cors_url, "https://shop.example")
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        assert "access-control-allow-origin" not in preflight(cors_url,
                                                              "https://evil.example").headers


def test_the_service_binds_loopback_unless_told_otherwise():
    assert Settings().host == "127.0.0.1"


def test_no_pickle_eval_or_exec_in_the_package():
    """Bundles and requests are data: nothing in the package can turn them into code."""
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                assert node.id not in {"eval", "exec", "compile", "__import__"}, path
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any(n.split(".")[0] in {"pickle", "marshal", "shelve", "dill"}
                               for n in names), path
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path
