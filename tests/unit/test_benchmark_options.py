"""``tce benchmark`` takes seed 004's command line: its flags map onto the project's options,
values it would not take are one clear line."""
from __future__ import annotations

from pathlib import Path

import pytest

from tce.cli import main, parser
from tce.commands.benchmark import configs
from tce.jobs.benchmark import check_device_present, served_device
from tce_backends.errors import UsageError


@pytest.fixture
def repository(tmp_path) -> Path:
    """Enough of a built repository for the options' checks (nothing is run)."""
    model = tmp_path / "repo" / "multimodal_model" / "1" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    return tmp_path / "repo"


def parse(*args: str):
    return configs(parser().parse_args(["benchmark", *args]))


def test_the_seed_flags_map_onto_the_project_options(repository, tmp_path):
    config, layout = parse("--checkpoint", str(repository / "multimodal_model" / "1" / "model.pt"),
                           "--model_name", "resnet50", "--batch_size", "64", "--image_size", "224",
                           "--split", "test", "--fold", "2", "--num_folds", "3", "--device", "cpu",
                           "--num_inference_samples", "1000", "--test-results", str(tmp_path / "outputs"))
    assert config.repository == repository
    assert config.batch_sizes == (64,) and config.records == 1000 and config.device == "cpu"
    assert layout.path == tmp_path / "outputs" / "fold_2" / "test" / "test_metrics.json"
    assert layout.model_name == "resnet50"


def test_without_seed_flags_the_project_defaults_hold(repository):
    config, layout = parse("--repository", str(repository))
    assert config.repository == repository and config.batch_sizes == (1, 2, 4, 8, 16, 32, 64)
    assert config.records == 256 and config.device == "auto" and config.labelled is None
    assert layout.path == Path("artifacts/test_results/fold_0/val/test_metrics.json")


def test_label_overrides_and_a_labelled_file_reach_the_job(repository, tmp_path):
    labelled = tmp_path / "val.csv"
    labelled.write_text("label\n1\n")
    config, _ = parse("--repository", str(repository), "--labelled", str(labelled), "--label", "reason=y")
    assert config.labelled == labelled and dict(config.label_columns) == {"reason": "y"}


@pytest.mark.parametrize(("args", "words"), [
    (("--device", "tpu"), ("--device 'tpu' is not a device", "cuda, cuda:N or mps")),
    (("--split", "train"), ("--split must be one of val, test",)),
    (("--fold", "5"), ("--fold must be in 0..4",)),
    (("--labelled", "nowhere.csv"), ("--labelled nowhere.csv is not a file",)),
    (("--label", "reason"), ("--label takes TASK=COLUMN",)),
])
def test_a_value_the_benchmark_cannot_use_is_one_line_and_exit_2(repository, capsys, args, words):
    assert main(["benchmark", "--repository", str(repository), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err


def test_a_seed_checkpoint_file_is_named_as_not_a_repository(tmp_path, capsys):
    checkpoint = tmp_path / "outputs" / "checkpoints" / "fold_0" / "best_model.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert main(["benchmark", "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a model repository" in err and "tce build" in err


def test_a_named_device_must_be_on_this_machine():
    import torch

    check_device_present("cpu")
    if torch.cuda.is_available():
        check_device_present("cuda")
    else:
        with pytest.raises(UsageError, match="no CUDA GPU"):
            check_device_present("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(UsageError, match="MPS is not available"):
            check_device_present("mps")


def test_the_served_device_is_the_servers_not_the_in_process_one():
    import torch

    python_host = {"backend": "python", "instance_group": [{"kind": "KIND_CPU"}],
                   "parameters": {"device": {"string_value": "auto"}}}
    assert served_device({"backend": "pytorch", "instance_group": [{"kind": "KIND_GPU"}]}, local=False) == "cuda"
    assert served_device(python_host, local=False) == "auto"  # a server elsewhere resolves auto itself
    assert served_device(python_host, local=True) == ("cuda" if torch.cuda.is_available() else "cpu")
    pinned = {**python_host, "parameters": {"device": {"string_value": "cpu"}}}
    assert served_device(pinned, local=True) == "cpu"
