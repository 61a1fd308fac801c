"""The unit tier's bundles are written directly (tests/bundles.py): the same names as the
trained bundles of tests/conftest.py, which the integration and end-to-end tiers serve."""
from __future__ import annotations

import pytest

from tce_backends.bundle import Bundle
from tests.bundles import write_bundle


def _written(tmp_path_factory: pytest.TempPathFactory, name: str, **settings) -> Bundle:
    return write_bundle(tmp_path_factory.mktemp(f"unit_bundle_{name}"), **settings)


@pytest.fixture(scope="session")
def bimodal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _written(tmp_path_factory, "bimodal")


@pytest.fixture(scope="session")
def trimodal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _written(tmp_path_factory, "trimodal", kind="trimodal")


@pytest.fixture(scope="session")
def binary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _written(tmp_path_factory, "binary", task_set="abuse")


@pytest.fixture(scope="session")
def multiclass_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _written(tmp_path_factory, "multiclass", task_set="reason")


@pytest.fixture(scope="session")
def score_field_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _written(tmp_path_factory, "score_fields", task_set="score_fields")
