"""Padding costs no compute: the model trims it, outputs agree with the untrimmed
forward, and a model.pt from elsewhere is wrapped only when that changes nothing."""
import shutil

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tce.models.length_trim import TOLERANCE, is_length_aware, make_length_aware, run_numpy, sample_batches


@pytest.mark.parametrize("bundle_name", ["bimodal_bundle", "trimodal_bundle"])
def test_trimmed_forward_equals_the_fixed_padding_forward(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    trimmed = torch.jit.load(str(bundle.model_path)).eval()
    padded = torch.jit.load(str(bundle.model_path)).eval()
    assert is_length_aware(trimmed)
    padded.trim_padding = False
    batches = sample_batches(bundle.text, len(bundle.manifest.features.names))
    for batch in batches:  # empty text, one chunk, both chunks full, mixed lengths in one batch
        a, b = run_numpy(trimmed, batch), run_numpy(padded, batch)
        assert np.isfinite(a).all() and np.abs(a - b).max() <= TOLERANCE
    mixed = batches[-1]
    for i in range(mixed[0].shape[0]):  # a record scores the same alone as beside longer ones
        assert np.abs(run_numpy(trimmed, [a[i:i + 1] for a in mixed]) - run_numpy(trimmed, mixed)[i]).max() <= TOLERANCE


class MaskedMean(nn.Module):
    """A model from elsewhere that ignores padding: trimming it changes nothing."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(40000, 4)
        self.head = nn.Linear(4 + num_features, 6)  # the bimodal bundle's tasks: abuse (2), reason (4)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.cat([torch.softmax(logits[:, :2], dim=1), torch.softmax(logits[:, 2:], dim=1)], dim=1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tabular: Tensor) -> Tensor:
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1.0)
        return self.probabilities(self.head(torch.cat([pooled, tabular], dim=1)))


class PaddingSensitive(MaskedMean):
    """Divides by the padded length: trimming would change its scores."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tabular: Tensor) -> Tensor:
        pooled = (self.embedding(input_ids) * attention_mask.unsqueeze(-1).float()).sum(dim=(1, 2))
        pooled = pooled / float(input_ids.shape[1] * input_ids.shape[2])
        return self.probabilities(self.head(torch.cat([pooled, tabular], dim=1)))


@pytest.mark.parametrize("model_class, trimmed", [(MaskedMean, True), (PaddingSensitive, False)])
def test_a_model_from_elsewhere_is_wrapped_only_when_outputs_stay_the_same(
        model_class, trimmed, bimodal_bundle, tmp_path):
    features = len(bimodal_bundle.manifest.features.names)
    path = tmp_path / "model.pt"
    torch.jit.script(model_class(features).eval()).save(str(path))
    original = path.read_bytes()
    decision = make_length_aware(path, bimodal_bundle.text, features)
    assert decision.trimmed is trimmed
    served = torch.jit.load(str(path))
    assert is_length_aware(served) is trimmed
    if trimmed:
        assert "max difference" in decision.describe()
        untouched = torch.jit.load(str(tmp_path / "model.pt"))
        for batch in sample_batches(bimodal_bundle.text, features):
            assert np.abs(run_numpy(untouched.inner, batch) - run_numpy(served, batch)).max() <= TOLERANCE
    else:
        assert "served untrimmed" in decision.describe() and "differ by up to" in decision.describe()
        assert path.read_bytes() == original


def test_our_own_model_is_left_as_it_is(bimodal_bundle, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(bimodal_bundle.model_path.read_bytes())
    assert make_length_aware(path, bimodal_bundle.text, 8).reason == "the model trims its own padding"
    assert path.read_bytes() == bimodal_bundle.model_path.read_bytes()


@pytest.mark.parametrize("model_class, message", [
    (MaskedMean, "model.pt: padding trimmed (wrapper checked on sample inputs"),
    (PaddingSensitive, "model.pt: served untrimmed ("),
])
def test_the_build_says_how_a_model_from_elsewhere_is_served(model_class, message, bimodal_bundle, tmp_path):
    from tce.repository.builder import write_repository
    from tce_backends.bundle import Bundle

    root = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, root)
    torch.jit.script(model_class(len(bimodal_bundle.manifest.features.names)).eval()).save(str(root / "model.pt"))
    Bundle.load(root).calibrator.save(root / "calibration", model_fingerprint="")  # tables fitted for no model in
    said: list[str] = []                                                           # particular: the build takes them
    repository = write_repository(Bundle.load(root), tmp_path / "repository", say=said.append)
    assert [line for line in said if line.startswith("model.pt:")] == [said[0]] and said[0].startswith(message)
    served = torch.jit.load(str(repository / "multimodal_model" / "1" / "model.pt"))
    assert is_length_aware(served) is (model_class is MaskedMean)
