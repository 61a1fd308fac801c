"""tce import-seed of seed 001's model.pth (a Lightning checkpoint) with --model-class."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tce.cli import main
from tce.models.length_trim import run_numpy, sample_batches
from tce.seed.errors import SeedImportError
from tce.seed.importer import import_seed
from tce_backends.bundle import Bundle
from tests.seed_layout import write_seed
from tests.seed_models import DialogueClassifier, LightningDialogueClassifier

MODULE = "tests.seed_models"


def _config(bundle, num_logits: int = 2) -> dict:
    features = bundle.manifest.features
    return {"model_class": "bimodal_bert", "text_name": bundle.text.fields[0].name,
            "tab_field_list": list(features.numeric_names), "cat_field_list": list(features.categorical_names),
            "vocab_size": 40000, "num_logits": num_logits, "tokenizer": "sentence-transformers/all-MiniLM-L6-v2"}


def _lightning_seed(bundle, directory, num_logits: int = 2, lightning_prefix: bool = True):
    """The seed 001 layout with model.pth + model_artifacts.pth instead of model.pt."""
    write_seed(bundle, directory, "none")
    os.remove(directory / "model.pt")
    config = _config(bundle, num_logits)
    torch.manual_seed(0)
    network = (LightningDialogueClassifier if lightning_prefix else DialogueClassifier)(config)
    torch.save({"state_dict": network.state_dict(), "epoch": 3, "global_step": 120,
                "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 1e-3}}, directory / "model.pth")
    torch.save({"config": config, "embedding_mat": np.zeros((4, 3), dtype=np.float32), "vocab": {"[PAD]": 0}},
               directory / "model_artifacts.pth")
    return network


def _probabilities(network, bundle, batch) -> np.ndarray:
    """What the served model must return: softmax (or sigmoid) of the eager network's logits."""
    features = list(bundle.manifest.features.numeric_names) + list(bundle.manifest.features.categorical_names)
    field = bundle.text.fields[0].name
    tabular = torch.from_numpy(batch[-1])
    named = {name: tabular[:, i] for i, name in enumerate(features)}
    with torch.no_grad():
        logits = network({f"{field}_input_ids": torch.from_numpy(batch[0]),
                          f"{field}_attention_mask": torch.from_numpy(batch[1]), **named})
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1).numpy()
    return torch.softmax(logits, dim=1).numpy()


@pytest.mark.parametrize("num_logits, lightning_prefix", [(2, True), (1, False)])
def test_a_lightning_checkpoint_is_exported_to_the_forward_contract(binary_bundle, tmp_path, num_logits,
                                                                    lightning_prefix):
    network = _lightning_seed(binary_bundle, tmp_path / "seed", num_logits, lightning_prefix)
    report = import_seed(tmp_path / "seed", tmp_path / "bundle",
                         model_class=f"{MODULE}:{type(network).__name__}")
    assert any("exported to TorchScript" in note for note in report.notes)
    bundle = Bundle.load(tmp_path / "bundle")
    model = torch.jit.load(str(bundle.model_path))
    assert bundle.manifest.features.names == binary_bundle.manifest.features.names
    for batch in sample_batches(bundle.text, len(bundle.manifest.features.names)):
        np.testing.assert_allclose(run_numpy(model, batch), _probabilities(network.eval(), bundle, batch), atol=1e-5)


def test_the_checkpoint_is_never_unpickled_beyond_weights(binary_bundle, tmp_path):
    _lightning_seed(binary_bundle, tmp_path / "seed")
    hostile = {"state_dict": {}, "callback": SeedImportError("x", "arbitrary object")}  # a pickled class instance
    torch.save(hostile, tmp_path / "seed" / "model.pth")
    with pytest.raises(SeedImportError, match="model.pth.*cannot be read as weights only"):
        import_seed(tmp_path / "seed", tmp_path / "bundle", model_class=f"{MODULE}:LightningDialogueClassifier")


def test_model_pth_is_not_silently_ignored(binary_bundle, tmp_path, capsys):
    _lightning_seed(binary_bundle, tmp_path / "seed")
    with pytest.raises(SeedImportError, match="model.pth.*Lightning checkpoint.*--model-class"):
        import_seed(tmp_path / "seed", tmp_path / "bundle")
    (tmp_path / "seed" / "model.pt").write_bytes(binary_bundle.model_path.read_bytes())
    report = import_seed(tmp_path / "seed", tmp_path / "bundle")
    assert "model.pth ignored: model.pt (TorchScript) is imported; --model-class imports the checkpoint instead" \
        in report.notes
    for wrong, message in (("tests.seed_models", "expected package.module:Class"),
                           ("tests.no_such_module:X", "cannot import 'tests.no_such_module'"),
                           ("tests.seed_models:torch", "is not an nn.Module class")):
        assert main(["import-seed", str(tmp_path / "seed"), str(tmp_path / "b2"), "--model-class", wrong]) == 2
        assert message in capsys.readouterr().err
    os.remove(tmp_path / "seed" / "model.pt")
    assert main(["import-seed", str(tmp_path / "seed"), str(tmp_path / "b3"), "--model-class",
                 f"{MODULE}:LightningDialogueClassifier"]) == 0
    assert "exported to TorchScript" in capsys.readouterr().err  # a note: logged on stderr


def test_weights_or_outputs_that_do_not_fit_are_named(binary_bundle, tmp_path):
    seed = tmp_path / "seed"
    _lightning_seed(binary_bundle, seed)
    model_class = f"{MODULE}:LightningDialogueClassifier"
    other = LightningDialogueClassifier(_config(binary_bundle, num_logits=3)).state_dict()
    torch.save({"state_dict": other}, seed / "model.pth")
    with pytest.raises(SeedImportError, match="weights do not fit the class: .*size mismatch"):
        import_seed(seed, tmp_path / "a", model_class=model_class)
    renamed = {k.replace("head", "classifier"): v for k, v in other.items()}
    torch.save({"state_dict": renamed}, seed / "model.pth")
    with pytest.raises(SeedImportError, match="missing \\['model.head.bias'"):
        import_seed(seed, tmp_path / "b", model_class=model_class)
    _lightning_seed(binary_bundle, seed, num_logits=3)
    with pytest.raises(SeedImportError, match="output 0 has 3 logits for a task of 2 classes"):
        import_seed(seed, tmp_path / "c", model_class=model_class)
