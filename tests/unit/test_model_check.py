"""A model that returns logits (or the wrong width) is stopped at import and at build."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import Tensor, nn

from tce.models.model_check import NotProbabilitiesError, check_probabilities
from tce.repository.builder import write_repository
from tce.seed.importer import import_seed
from tce_backends.bundle import Bundle
from tests.seed_layout import write_seed


class Logits(nn.Module):
    """The seed's usual mistake: the classifier head without its softmax."""

    def __init__(self, num_features: int, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(num_features, width)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tabular: Tensor) -> Tensor:
        return self.head(tabular) * 5.0


def _save(module: nn.Module, path) -> None:
    torch.jit.script(module.eval()).save(str(path))


def test_our_own_model_passes(binary_bundle):
    check_probabilities(torch.jit.load(str(binary_bundle.model_path)), "model.pt", binary_bundle.text,
                        len(binary_bundle.manifest.features.names), binary_bundle.manifest.tasks)


def test_logits_and_a_wrong_width_stop_the_build(binary_bundle, tmp_path):
    features = len(binary_bundle.manifest.features.names)
    for width, message in ((2, "task 'abuse' returns values in .* not probabilities \\(logits\\?\\)"),
                           (3, "outputs have shape \\(1, 3\\), expected \\[records, 2\\]")):
        root = tmp_path / f"bundle{width}"
        shutil.copytree(binary_bundle.root, root)
        _save(Logits(features, width), root / "model.pt")
        # tables fitted for no model in particular: the build takes them
        Bundle.load(root).calibrator.save(root / "calibration", model_fingerprint="")
        with pytest.raises(NotProbabilitiesError, match=message):
            write_repository(Bundle.load(root), tmp_path / f"repository{width}")


def test_logits_stop_the_seed_import(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    _save(Logits(len(binary_bundle.manifest.features.names), 2), tmp_path / "seed" / "model.pt")
    with pytest.raises(NotProbabilitiesError, match="softmax per task"):
        import_seed(tmp_path / "seed", tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "manifest.json").exists()
