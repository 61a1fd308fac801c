import json
import shutil
from pathlib import Path

import pytest

from tce_backends.bundle import Bundle, Manifest
from tce_backends.errors import BundleError
from tce_backends.features import FeatureLayout
from tce_backends.tasks import TaskSpec


@pytest.fixture()
def bundle_copy(bimodal_bundle: Bundle, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, target)
    return target


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_valid_bundle_loads(bundle_copy):
    bundle = Bundle.load(bundle_copy)
    assert bundle.manifest.model_kind == "bimodal"
    assert [t.name for t in bundle.manifest.tasks] == ["abuse", "reason"]


@pytest.mark.parametrize("remove, part", [
    ("model.pt", "model"),
    ("manifest.json", "manifest"),
    ("text/tokenizer.json", "text"),
    ("tabular/tabular.json", "tabular"),
])
def test_missing_part_is_named(bundle_copy, remove, part):
    (bundle_copy / remove).unlink()
    with pytest.raises(BundleError) as error:
        Bundle.load(bundle_copy)
    assert error.value.part == part
    assert remove.split("/")[-1] in str(error.value)


def test_text_fields_inconsistent_with_manifest(bundle_copy):
    _edit_json(bundle_copy / "text" / "text.json", lambda d: d["fields"][0].update(name="chat"))
    with pytest.raises(BundleError, match=r"bundle part 'text'.*\['chat'\].*\['dialogue'\]"):
        Bundle.load(bundle_copy)


def test_feature_order_inconsistent_with_manifest(bundle_copy):
    _edit_json(bundle_copy / "tabular" / "tabular.json", lambda d: d["features"].reverse())
    with pytest.raises(BundleError, match="bundle part 'tabular': feature order"):
        Bundle.load(bundle_copy)


def test_calibration_for_unknown_task(bundle_copy):
    _edit_json(bundle_copy / "calibration" / "calibration.json",
               lambda d: d["tasks"].update(ghost={"method": "none", "tables": {}}))
    with pytest.raises(BundleError, match="calibration/ghost"):
        Bundle.load(bundle_copy)


def test_missing_calibration_table(bundle_copy):
    (bundle_copy / "calibration" / "reason_class_2.npy").unlink()
    with pytest.raises(BundleError, match="calibration/reason.*reason_class_2.npy"):
        Bundle.load(bundle_copy)


def test_missing_risk_table(bundle_copy):
    _edit_json(bundle_copy / "tabular" / "tabular.json", lambda d: d["risk_tables"].pop("marketplace"))
    with pytest.raises(BundleError, match=r"risk_tables.*marketplace"):
        Bundle.load(bundle_copy)


def test_unsupported_format_version(bundle_copy):
    _edit_json(bundle_copy / "manifest.json", lambda d: d.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99"):
        Bundle.load(bundle_copy)


def test_manifest_rules():
    layout = FeatureLayout.from_lists(["a"], [])
    task = TaskSpec("t", "binary", ("n", "y"))
    with pytest.raises(BundleError, match="trimodal model has 2"):
        Manifest("m", "trimodal", ("text",), layout, (task,))
    with pytest.raises(BundleError, match="reserved"):
        Manifest("m", "bimodal", ("numeric_features",), layout, (task,))
    with pytest.raises(BundleError, match="at least one task"):
        Manifest("m", "bimodal", ("text",), layout, ())
    with pytest.raises(BundleError, match="exactly 2 classes"):
        TaskSpec("t", "binary", ("a", "b", "c"))
