"""Shared fixtures: the generated sample, a published bundle built from it, CLI helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from svdfaiss.builder import BuildConfig, build
from svdfaiss.cli import app
from svdfaiss.recommender import Recommender
from svdfaiss.synthetic import SampleFiles, SampleSpec, write_sample


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleFiles:
    """The default generated sample (5k users, 2k items, 100k events)."""
    return write_sample(SampleSpec(), tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def sample_index_dir(tmp_path_factory: pytest.TempPathFactory, sample: SampleFiles) -> Path:
    index_dir = tmp_path_factory.mktemp("indexes")
    build(BuildConfig(input=sample.events, model="sample", index_dir=index_dir,
                      catalog=sample.catalog, version="v1"))
    return index_dir


@pytest.fixture(scope="session")
def rec(sample_index_dir: Path) -> Recommender:
    return Recommender.load(sample_index_dir, "sample")


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, args: Sequence[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)
