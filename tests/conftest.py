"""Shared fixtures: small real bundles (tiny random BERT with the MiniLM
vocabulary, trained on synthetic data) built once per test session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tce.lib.demo_data import make_dataset
from tce.trainer.training import TrainingConfig, build_demo_bundle
from tce_backends.bundle import Bundle

REPO_ROOT = Path(__file__).resolve().parents[1]


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, **settings) -> Bundle:
    out = tmp_path_factory.mktemp(f"bundle_{name}")
    build_demo_bundle(out, TrainingConfig(encoder="tiny", **settings), log=lambda *_: None)
    return Bundle.load(out)


def _build_kind(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Bundle:
    return _build(tmp_path_factory, kind, model_kind=kind, rows=600, epochs=15, seed=3)


def _build_task_set(tmp_path_factory: pytest.TempPathFactory, task_set: str) -> Bundle:
    return _build(tmp_path_factory, task_set, rows=400, epochs=5, seed=5, task_set=task_set)


@pytest.fixture(scope="session")
def bimodal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _build_kind(tmp_path_factory, "bimodal")


@pytest.fixture(scope="session")
def trimodal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _build_kind(tmp_path_factory, "trimodal")


@pytest.fixture(scope="session")
def varied_records() -> list[dict]:
    """200+ records: synthetic ones with missing values and unseen categories,
    plus hand-made edge cases."""
    frame = make_dataset(220, seed=99, unseen_rate=0.1)
    records = frame.drop(columns=["abuse", "reason"]).to_dict(orient="records")
    records += [
        {"dialogue": "", "events": ""},
        {"dialogue": "ünïcödé ✓ 日本語のテキスト", "order_amount": 0.0, "payment_method": "card"},
        {"dialogue": "<div><p>only</p><br/><b>html</b> &amp; &lt;tags&gt;</div>", "seller_rating": 5.0},
        {"dialogue": "😀🙏😡📦" * 20, "marketplace": "US"},
        {"dialogue": "buyer: my package never arrived " * 200, "prior_claims": 12},
        {"dialogue": "\n\n  \r\n", "account_age_days": np.nan},
    ]
    return records


@pytest.fixture(scope="session")
def binary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """One binary task: the seed's single-task binary model."""
    return _build_task_set(tmp_path_factory, "abuse")


@pytest.fixture(scope="session")
def multiclass_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _build_task_set(tmp_path_factory, "reason")


@pytest.fixture(scope="session")
def score_field_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Three binary score fields: the seed's multi-task mode."""
    return _build_task_set(tmp_path_factory, "score_fields")
