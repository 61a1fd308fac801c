"""Bundles written directly, for the unit tier: the demo's manifest, tokenizer and text
pipeline, hand-made imputation values, risk tables and calibration tables, and a tiny
BERT with random weights, exported as the real builder exports it. No data is made and
nothing is trained (the integration tier serves trained bundles: tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tce.lib import demo_data
from tce.models.encoders import minilm_dir
from tce.trainer.modeling import BertConfig, BertEncoder, MultimodalClassifier, export_torchscript
from tce.trainer.training import TaskSet, TrainingConfig, demo_manifest, demo_text_fields
from tce_backends.bundle import Bundle
from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tce_backends.tabular import RiskTable, TabularPreprocessor
from tce_backends.tasks import TaskSpec
from tce_backends.text import TextPreprocessor

# A gently bent, monotone table: calibrated differs from raw everywhere but at the ends.
BENT = LookupTable.from_points([(0.0, 0.0), (0.2, 0.1), (0.5, 0.35), (0.8, 0.7), (1.0, 1.0)])
CATEGORIES = {"payment_method": demo_data.PAYMENT, "marketplace": demo_data.MARKETPLACE,
              "item_category": demo_data.CATEGORY}


def calibration_for(task: TaskSpec) -> TaskCalibration:
    if task.kind == "binary":
        return TaskCalibration.of("binary", {1: BENT})
    return TaskCalibration.of("multiclass", dict.fromkeys(range(task.num_classes), BENT))


def write_bundle(out: Path, kind: str = "bimodal", task_set: TaskSet = "abuse_reason", seed: int = 0) -> Bundle:
    config = TrainingConfig(model_kind=kind, encoder="tiny", task_set=task_set)  # type: ignore[arg-type]
    manifest = demo_manifest(config)
    layout = manifest.features
    rng = np.random.default_rng(seed)
    tabular = TabularPreprocessor(
        layout, {name: float(index + 1) for index, name in enumerate(layout.numeric_names)},
        {name: RiskTable({value: round(float(rng.uniform(0.05, 0.6)), 6) for value in CATEGORIES[name]},
                         default_bin=0.2) for name in layout.categorical_names})
    fields = demo_text_fields(config)
    text = TextPreprocessor(fields, (minilm_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    core = MultimodalClassifier(BertEncoder(BertConfig.tiny(text.vocab_size)), len(fields), len(layout.names),
                                [task.num_classes for task in manifest.tasks],
                                tabular_mean=torch.zeros(len(layout.names)), tabular_std=torch.ones(len(layout.names)))
    core.eval()
    out.mkdir(parents=True, exist_ok=True)
    export_torchscript(core, out / "model.pt")
    calibrator = Calibrator(manifest.tasks, {task.name: calibration_for(task) for task in manifest.tasks})
    Bundle.write(out, manifest, out / "model.pt", text, tabular, calibrator)
    return Bundle.load(out)
