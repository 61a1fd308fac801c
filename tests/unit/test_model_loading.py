"""A damaged or foreign model.pt is one line naming the file and what is wrong, wherever a
bundle's model is first loaded (build, seed import), before anything is written."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tce.jobs.build import build
from tce.models.loading import load_torchscript
from tce.seed.errors import SeedImportError
from tce.seed.importer import import_seed
from tce_backends.bundle import MODEL_FILE
from tce_backends.errors import BundleError
from tests.seed_layout import write_seed


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    return path


DAMAGE = {
    "cut short": (lambda data: data[: len(data) // 2], "failed finding central directory"),
    "empty": (lambda data: b"", "not a ZIP archive"),
    "not a model at all": (lambda data: b"<html>404 Not Found</html>" * 10, "failed finding central directory"),
}


def test_a_good_model_loads(good: Path) -> None:
    assert load_torchscript(good)(torch.ones(1, 2)).shape == (1, 2)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_one_line_naming_it(good: Path, damage: str) -> None:
    change, problem = DAMAGE[damage]
    good.write_bytes(change(good.read_bytes()))
    with pytest.raises(BundleError) as raised:
        load_torchscript(good)
    message = str(raised.value)
    assert message.startswith(f"bundle part 'model': {good} is not a loadable TorchScript model (")
    assert problem in message and "copy or export it again" in message
    assert "\n" not in message and "internal miniz error" not in message


def test_weights_instead_of_a_model_say_how_to_export(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(BundleError, match="holds weights, not a TorchScript model: export it with torch.jit"):
        load_torchscript(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"missing {tmp_path / 'absent.pt'}"):
        load_torchscript(tmp_path / "absent.pt")


def test_build_stops_before_writing_anything(binary_bundle, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(binary_bundle.root, bundle)
    (bundle / MODEL_FILE).write_bytes((bundle / MODEL_FILE).read_bytes()[:1000])
    with pytest.raises(BundleError, match="not a loadable TorchScript model"):
        build(bundle, tmp_path / "out" / "model_repository")
    assert not (tmp_path / "out").exists()


def test_seed_import_names_the_damaged_model(binary_bundle, tmp_path: Path) -> None:
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    model = tmp_path / "seed" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(SeedImportError) as raised:
        import_seed(tmp_path / "seed", tmp_path / "bundle")
    assert "model.pt" in str(raised.value) and "not a loadable TorchScript model" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "bundle" / "manifest.json").exists()
