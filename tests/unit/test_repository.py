"""The builder: checked-in configs equal what it writes; both model hosts agree."""
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from tce.repository.builder import (
    LIBTORCH_CONFIG_NAME,
    MODEL_PY,
    RepositoryOptions,
    make_configs,
    model_py_source,
    read_config,
    render_config,
    score_reference_json,
    write_repository,
)
from tce.repository.host_sizing import SIZING_FILE
from tce.trainer.training import TrainingConfig, demo_manifest, demo_text_fields
from tce_backends import graph
from tce_backends.bundle import Manifest
from tce_backends.contract import SCORE_REFERENCE_PARAMETER
from tce_client import DEFAULT_MODEL
from tests.conftest import REPO_ROOT

CHECKED_IN = REPO_ROOT / "model_repository"


def demo_configs(options: RepositoryOptions | None = None):
    config = TrainingConfig()
    return make_configs(demo_manifest(config), demo_text_fields(config), options or RepositoryOptions())


def checked_in_options() -> RepositoryOptions:
    """What `make build` wrote model_repository/ with: the defaults (the 2-core sizing), or the
    counts it chose for this host when it recorded one (host_sizing.json, not committed)."""
    record = CHECKED_IN / SIZING_FILE
    if not record.is_file():
        return RepositoryOptions()
    counts = json.loads(record.read_text(encoding="utf-8"))["counts"]
    return RepositoryOptions(**{**counts, "model_on_gpu": bool(counts["model_on_gpu"])})


def _without_score_reference(text: str) -> str:
    """A config's text less the ensemble's ``tce_score_reference``: the demo bundle's calibration
    data fills it at build time, so it is not the manifest's to decide (checked on its own below)."""
    config = text_format.Parse(text, pb.ModelConfig())
    config.parameters.pop(SCORE_REFERENCE_PARAMETER, None)
    return render_config(config)


def test_checked_in_configs_equal_the_builder_output():
    for relative, text in demo_configs(checked_in_options()).files().items():
        path = CHECKED_IN / relative
        assert path.is_file(), f"{relative} is missing from model_repository/: run 'make build' and commit it"
        assert _without_score_reference(path.read_text(encoding="utf-8")) == _without_score_reference(text), \
            f"{relative} drifted from the builder: rebuild it"


def test_checked_in_ensemble_publishes_the_demo_bundles_score_reference():
    bundle = REPO_ROOT / "artifacts" / "demo_bundle"
    if not (bundle / "manifest.json").is_file():
        pytest.skip("the demo bundle is not built (make build)")
    config = read_config(CHECKED_IN / DEFAULT_MODEL / "config.pbtxt")
    published = config.parameters[SCORE_REFERENCE_PARAMETER].string_value
    assert published == score_reference_json(bundle, Manifest.load(bundle).tasks)


def test_checked_in_model_py_files_are_the_thin_shells():
    for step in MODEL_PY:
        assert (CHECKED_IN / step / "1" / "model.py").read_text(encoding="utf-8") == model_py_source(step)


def test_python_and_libtorch_hosts_agree_on_everything_but_the_host():
    configs = demo_configs()
    python, libtorch = configs.model_python, configs.model_libtorch
    assert (python.inputs, python.outputs, python.max_batch_size, python.batching) == \
           (libtorch.inputs, libtorch.outputs, libtorch.max_batch_size, libtorch.batching)
    assert (python.backend, libtorch.backend) == ("python", "pytorch")
    assert libtorch.instance_kind == "KIND_GPU" and libtorch.warmup
    # libtorch maps tensors to forward() arguments by the __<index> suffix, in order.
    indices = [int(t.name.rsplit("__", 1)[1]) for t in libtorch.inputs]
    assert indices == list(range(len(indices)))
    assert all("__" in t.name for t in libtorch.outputs)


def test_ensemble_wires_every_input_and_output():
    configs = demo_configs()
    ensemble = configs.ensemble
    produced = {name for step in ensemble.graph.steps for _, name in step.output_map}
    consumed = {name for step in ensemble.graph.steps for _, name in step.input_map}
    inputs = {t.name for t in ensemble.inputs}
    outputs = {t.name for t in ensemble.outputs}
    assert consumed <= produced | inputs, "a step reads a tensor nobody produces"
    assert outputs <= produced
    assert inputs <= consumed, "an ensemble input feeds no step"
    assert {"abuse_raw", "abuse_calibrated", "reason_raw", "reason_calibrated"} <= outputs
    assert all(step.name in MODEL_PY for step in ensemble.graph.steps)
    # every step config's inputs and outputs are exactly what the ensemble maps
    by_name = {c.name: c for c in (configs.preprocessor, configs.model_python, configs.calibrator)}
    for step in ensemble.graph.steps:
        config = by_name[step.name]
        assert {k for k, _ in step.input_map} == {t.name for t in config.inputs}
        assert {k for k, _ in step.output_map} == {t.name for t in config.outputs}


def test_the_ensemble_is_a_chain_whose_first_step_takes_every_caller_input():
    """Triton 2.51's ensemble misbehaves when one of two parallel steps fails (deadlock,
    leaked request, inputs freed early): no step may run beside the one that validates."""
    ensemble = demo_configs().ensemble
    caller_inputs = {t.name for t in ensemble.inputs}
    first, *rest = ensemble.graph.steps
    assert first.name == graph.PREPROCESSOR
    assert {value for _, value in first.input_map} == caller_inputs
    previous = {value for _, value in first.output_map}
    for step in rest:
        assert {value for _, value in step.input_map} <= previous, f"{step.name} reads past its predecessor"
        previous = {value for _, value in step.output_map}


def test_every_step_has_a_bounded_queue_and_the_entry_step_never_merges_requests():
    configs = demo_configs()
    for relative, text in configs.files().items():
        config = text_format.Parse(text, pb.ModelConfig())  # Triton's own schema
        assert config.max_batch_size == 64, relative
        if not config.HasField("ensemble_scheduling"):
            policy = config.dynamic_batching.default_queue_policy
            assert config.HasField("dynamic_batching") and policy.timeout_action == pb.ModelQueuePolicy.REJECT
            assert policy.max_queue_size > 0 and policy.default_timeout_microseconds > 0, relative
    entry = configs.preprocessor.batching
    assert entry.one_request_per_execution and entry.max_queue_delay_us == 0
    assert list(configs.preprocessor.to_proto().dynamic_batching.preferred_batch_size) == [1]
    assert not configs.model_python.batching.one_request_per_execution


def test_preprocessor_batching_lets_the_entry_step_merge_requests_and_nothing_else_changes():
    isolated, merged = demo_configs(), demo_configs(RepositoryOptions(preprocessor_batching=True))
    config = merged.preprocessor.to_proto()
    assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == []
    assert not merged.preprocessor.batching.one_request_per_execution
    assert config.dynamic_batching.default_queue_policy == isolated.preprocessor.to_proto(
    ).dynamic_batching.default_queue_policy
    changed = [path for path, text in merged.files().items() if isolated.files()[path] != text]
    assert changed == ["preprocessor/config.pbtxt"]


def test_the_model_steps_batcher_settings_reach_both_hosts_and_only_the_model():
    options = RepositoryOptions(model_preferred_batch_sizes=(16, 4, 8), model_queue_delay_us=700)
    configs = demo_configs(options)
    for host in (configs.model_python, configs.model_libtorch):
        batching = host.to_proto().dynamic_batching
        assert (list(batching.preferred_batch_size), batching.max_queue_delay_microseconds) == ([4, 8, 16], 700)
    assert list(configs.preprocessor.to_proto().dynamic_batching.preferred_batch_size) == [1]
    assert list(configs.calibrator.to_proto().dynamic_batching.preferred_batch_size) == []


def test_write_repository_lays_out_artifacts(bimodal_bundle, tmp_path: Path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    assert (out / graph.MULTIMODAL_MODEL / "1" / "model.pt").is_file()
    assert (out / graph.MULTIMODAL_MODEL / "configs" / f"{LIBTORCH_CONFIG_NAME}.pbtxt").is_file()
    assert (out / graph.PREPROCESSOR / "1" / "text" / "tokenizer.json").is_file()
    assert (out / graph.PREPROCESSOR / "1" / "tabular" / "tabular.json").is_file()
    assert (out / graph.CALIBRATOR / "1" / "calibration" / "calibration.json").is_file()
    assert (out / DEFAULT_MODEL / "1").is_dir()
    assert not list(out.rglob("*.pkl"))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"ensemble_name": "calibrator"}, "names a step"),
    ({"model_instances": 0}, "model_instances"),
    ({"preprocessor_instances": 0}, "preprocessor_instances"),
    ({"queue_timeout_ms": 0}, "queue_timeout_ms"),
    ({"model_max_queue_size": 0}, "model_max_queue_size"),
    ({"calibrator_instances": 0}, "calibrator_instances"),
    ({"model_instances_per_gpu": 0}, "model_instances_per_gpu"),
    ({"model_threads": -1}, "model_threads"),
    ({"model_preferred_batch_sizes": (8, 128)}, "model_preferred_batch_sizes"),
    ({"model_preferred_batch_sizes": (0,)}, "model_preferred_batch_sizes"),
])
def test_options_are_validated_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RepositoryOptions(**kwargs)


def test_a_rebuild_serves_exactly_the_new_bundle(bimodal_bundle, tmp_path: Path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    import shutil

    shutil.copytree(out / graph.CALIBRATOR / "1", out / graph.CALIBRATOR / "2")  # a published calibration
    for legacy in ("text_tokenizer", "tabular_preprocessor"):  # steps of the earlier layout
        (out / legacy / "1").mkdir(parents=True)
        (out / legacy / "1" / "model.py").write_text(model_py_source(graph.PREPROCESSOR), encoding="utf-8")
    (out / "someone_elses_model" / "1").mkdir(parents=True)
    (out / "someone_elses_model" / "config.pbtxt").write_text('name: "someone_elses_model"', encoding="utf-8")
    write_repository(bimodal_bundle, out)
    assert sorted(p.name for p in (out / graph.CALIBRATOR).iterdir()) == ["1", "config.pbtxt"]
    assert not (out / "text_tokenizer").exists() and not (out / "tabular_preprocessor").exists()
    assert (out / "someone_elses_model" / "config.pbtxt").is_file()
