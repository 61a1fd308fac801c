"""Write seed-layout artifacts (real pickles) from a bundle's parts, for import tests."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np

from tce_backends.bundle import Bundle

KINDS = ("binary", "percentile", "multiclass", "score_fields", "none")


def lookup_table(seed: int, points: int = 50) -> list[tuple[float, float]]:
    """A monotone (raw, calibrated) table with duplicate raw values and inner ends, as a list of tuples."""
    rng = np.random.default_rng(seed)
    x = np.sort(np.round(rng.uniform(0.02, 0.98, points), 2))
    y = np.sort(rng.uniform(0.0, 1.0, points))
    return [(float(a), float(b)) for a, b in zip(x, y, strict=True)]


def write_seed(bundle: Bundle, directory: Path, calibration: str) -> dict[str, list[tuple[float, float]]]:
    """Seed layout for ``bundle``; returns the calibration tables written, by seed file key."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = bundle.manifest
    tasks = manifest.tasks
    hyper: dict = {"model_class": f"{manifest.model_kind}_bert",
                   "tab_field_list": list(manifest.features.numeric_names),
                   "cat_field_list": list(manifest.features.categorical_names),
                   "max_sen_len": bundle.text.fields[0].max_length,
                   "max_total_chunks": bundle.text.fields[0].max_chunks}
    fields = bundle.text.fields
    if manifest.model_kind == "trimodal":
        hyper.update(primary_text_name=fields[0].name, primary_text_processing_steps=list(fields[0].steps),
                     secondary_text_name=fields[1].name, secondary_text_processing_steps=list(fields[1].steps))
    else:
        hyper.update(text_name=fields[0].name, text_processing_steps=list(fields[0].steps))
    if len(tasks) > 1:
        hyper["score_fields"] = [t.name for t in tasks]
    else:
        hyper.update(label_name=tasks[0].name, is_binary=tasks[0].kind == "binary",
                     num_classes=tasks[0].num_classes, multiclass_categories=list(tasks[0].classes))
    (directory / "hyperparameters.json").write_text(json.dumps(hyper), encoding="utf-8")
    risk = {name: {"bins": dict(table.bins), "default_bin": table.default_bin}
            for name, table in bundle.tabular.risk_tables.items()}
    (directory / "risk_table_map.pkl").write_bytes(pickle.dumps(risk))
    (directory / "impute_dict.pkl").write_bytes(pickle.dumps(dict(bundle.tabular.imputation)))
    (directory / "feature_columns.txt").write_text("\n".join(manifest.features.names) + "\n", encoding="utf-8")
    (directory / "tokenizer.json").write_text(bundle.text.tokenizer_json, encoding="utf-8")
    shutil.copyfile(bundle.model_path, directory / "model.pt")

    tables: dict[str, list[tuple[float, float]]] = {}
    calibration_dir = directory / "calibration"
    calibration_dir.mkdir(exist_ok=True)
    if calibration == "binary":
        tables["regular"] = lookup_table(1)
        (calibration_dir / "calibration_model.pkl").write_bytes(pickle.dumps(tables["regular"]))
    elif calibration == "percentile":
        tables["percentile"] = lookup_table(2)
        (calibration_dir / "percentile_score.pkl").write_bytes(pickle.dumps(tables["percentile"]))
    elif calibration == "multiclass":
        (calibration_dir / "calibration_models").mkdir()
        for c in range(tasks[0].num_classes - 1):  # the last class keeps raw, as the seed allows
            tables[str(c)] = lookup_table(10 + c)
            (calibration_dir / "calibration_models" / f"calibration_model_class_{c}.pkl").write_bytes(
                pickle.dumps(tables[str(c)]))
    elif calibration == "score_fields":
        for index, task in enumerate(tasks[:-1]):  # the last score field has no table: raw pass-through
            tables[task.name] = lookup_table(20 + index)
            table = np.array(tables[task.name])  # one as a numpy array, as some pipelines save them
            (calibration_dir / f"calibration_model_{task.name}.pkl").write_bytes(
                pickle.dumps(table if index == 0 else tables[task.name]))
    return tables


def seed_calibrated(raw: np.ndarray, kind: str, tables: dict, tasks) -> dict[str, np.ndarray]:
    """What seed 000's reference functions return for raw probabilities (task -> array)."""
    from tests import seed_reference as seed

    raw = np.asarray(raw, dtype=np.float64)
    if kind == "binary":
        return {tasks[0].name: seed.apply_regular_binary_calibration(raw, tables["regular"])}
    if kind == "percentile":
        return {tasks[0].name: seed.apply_percentile_calibration(raw, tables["percentile"])}
    if kind == "multiclass":
        return {tasks[0].name: seed.apply_regular_multiclass_calibration(raw, tables)}
    out, start = {}, 0
    for task in tasks:
        block = raw[:, start:start + 2]
        start += 2
        out[task.name] = (seed.apply_regular_binary_calibration(block, tables[task.name])
                          if task.name in tables else block)
    return out
