"""schemathesis against the live OpenAPI schema of a real server: no 5xx, no response that
breaks the schema, on every endpoint, with valid and with invalid generated requests (a
bounded number of cases per operation and mode)."""

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from svdfaiss.builder import BuildConfig, build

from .helpers import TOKEN, server

EXAMPLES = 40  # per operation and generation mode
CATALOG_TOKEN = "fuzz-catalog-token-0123456789"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory, sample) -> Iterator[str]:
    index_dir: Path = tmp_path_factory.mktemp("fuzzed")
    build(BuildConfig(input=sample.events, model="sample", index_dir=index_dir, k=16,
                      catalog=sample.catalog))
    # The live catalog on, so that its routes are fuzzed past the token check too.
    settings = {"SVDFAISS_CATALOG_TOKEN": CATALOG_TOKEN,
                "SVDFAISS_CATALOG_LOG": str(index_dir / "catalog.jsonl")}
    with server(index_dir, settings=settings) as url:
        yield url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_answer_fits_the_schema(api_url, mode, capsys):
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    cases: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    no_input: set[str] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 20, [op.label for op in operations]  # every endpoint
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            if case.path == "/admin/reload" and mode == GenerationMode.POSITIVE:
                case.headers = {**(case.headers or {}), "authorization": f"Bearer {TOKEN}"}
            if case.method in ("PUT", "DELETE") and mode == GenerationMode.POSITIVE:
                case.headers = {**(case.headers or {}),
                                "authorization": f"Bearer {CATALOG_TOKEN}"}
            response = case.call_and_validate(base_url=api_url, checks=CHECKS)
            cases[case.operation.label] += 1
            statuses[response.status_code] += 1

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # an operation without any input
            no_input.add(operation.label)
    with capsys.disabled():
        print(f"\nschemathesis {mode.value}: {sum(cases.values())} cases over "
              f"{len(cases)} operations, statuses {dict(sorted(statuses.items()))}"
              + (f"; nothing invalid to send to {sorted(no_input)}" if no_input else ""))
    assert set(cases) | no_input == {op.label for op in operations}
    assert not any(status >= 500 for status in statuses)
