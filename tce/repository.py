"""Bundle -> Triton model repository.

Every config is generated from the bundle's manifest and text settings. The
ensemble is a chain, and only its first step sees what a caller sends:

    preprocessor/          python   validates every caller input; text pipeline and
                                    tokenizer per text field, tabular features;
                                    one request per execution
    multimodal_model/      python host (config.pbtxt) and libtorch host
                           (configs/libtorch.pbtxt, selected with
                           ``tritonserver --model-config-name=libtorch``), one model.pt
    calibrator/            python   probabilities -> raw, calibrated, label per task
    <ensemble>/            ensemble wiring every input and output

Both hosts of ``model.pt`` are rendered from one ``StepConfig`` that differs only in
backend, instance kind and warm-up, so they cannot drift apart. Every step's queue is
bounded (size and wait), so overload is refused at once with UNAVAILABLE instead of
queueing without end.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from tce_backends import contract
from tce_backends.bundle import CALIBRATION_DIR, MANIFEST_FILE, MODEL_FILE, TABULAR_DIR, TEXT_DIR, Bundle, Manifest
from tce_backends.tasks import total_classes
from tce_backends.text import TextFieldConfig
from tce_client.schema import SCHEMA_PARAMETER, EnsembleSchema, TaskInfo

LIBTORCH_CONFIG_NAME = "libtorch"
MODEL_PY = {
    contract.PREPROCESSOR: "PreprocessorModel",
    contract.MULTIMODAL_MODEL: "MultimodalModel",
    contract.CALIBRATOR: "CalibratorModel",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Batching:
    """One step's dynamic batcher and its bounded queue.

    ``one_request_per_execution`` sets ``preferred_batch_size: [1]`` with no queue
    delay: Triton's batcher then closes every batch after its first request, whatever
    its row count, so the step gets the batcher's queue policy without ever merging
    two callers' requests (see ``docs/security.md``).
    """

    max_queue_delay_us: int
    max_queue_size: int
    queue_timeout_us: int
    one_request_per_execution: bool = False

    def render(self) -> list[str]:
        lines = ["dynamic_batching {"]
        if self.one_request_per_execution:
            lines.append("  preferred_batch_size: [ 1 ]")
        lines += [f"  max_queue_delay_microseconds: {self.max_queue_delay_us}",
                  "  default_queue_policy {", "    timeout_action: REJECT",
                  f"    default_timeout_microseconds: {self.queue_timeout_us}",
                  f"    max_queue_size: {self.max_queue_size}", "  }", "}"]
        return lines


@dataclass(frozen=True)
class StepConfig:
    name: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    batching: Batching
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    parameters: tuple[tuple[str, str], ...] = ()
    warmup: bool = False

    def render(self) -> str:
        lines = [f'name: "{self.name}"', f'backend: "{self.backend}"', f"max_batch_size: {self.max_batch_size}"]
        lines += _tensors("input", self.inputs) + _tensors("output", self.outputs)
        lines += self.batching.render()
        lines += ["instance_group [", f"  {{ kind: {self.instance_kind} count: {self.instance_count} }}", "]"]
        lines += _parameters(self.parameters)
        if self.warmup:
            lines += _warmup(self.inputs)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: tuple[tuple[str, str], ...]   # (step input, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]  # (step output, ensemble tensor)


@dataclass(frozen=True)
class EnsembleConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    steps: tuple[EnsembleStep, ...]
    parameters: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        lines = [f'name: "{self.name}"', 'platform: "ensemble"', f"max_batch_size: {self.max_batch_size}"]
        lines += _tensors("input", self.inputs) + _tensors("output", self.outputs)
        lines.append("ensemble_scheduling {")
        lines.append("  step [")
        for index, step in enumerate(self.steps):
            lines.append("    {")
            lines.append(f'      model_name: "{step.model_name}"')
            lines.append("      model_version: -1")
            for key, value in step.input_map:
                lines.append(f'      input_map {{ key: "{key}" value: "{value}" }}')
            for key, value in step.output_map:
                lines.append(f'      output_map {{ key: "{key}" value: "{value}" }}')
            lines.append("    }" + ("," if index < len(self.steps) - 1 else ""))
        lines += ["  ]", "}"]
        lines += _parameters(self.parameters)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RepositoryOptions:
    ensemble_name: str = contract.DEFAULT_ENSEMBLE
    max_batch_size: int = 64
    python_queue_delay_us: int = 100
    model_queue_delay_us: int = 2000
    model_instances: int = 1
    model_threads: int = 0  # 0: torch's default
    preprocessor_instances: int = 2
    # Overload is refused, not queued: requests beyond these wait limits or queue sizes
    # fail at once with UNAVAILABLE ("Exceeds maximum queue size" / "Request timeout expired").
    queue_timeout_ms: int = 5000
    max_queue_size: int = 128        # requests, per Python step
    model_max_queue_size: int = 32   # requests; the model is the slow step

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"max_batch_size must be in [1, 4096], got {self.max_batch_size}")
        if self.python_queue_delay_us < 0 or self.model_queue_delay_us < 0:
            raise ValueError("queue delays must be >= 0")
        for name in ("model_instances", "preprocessor_instances", "queue_timeout_ms", "max_queue_size",
                     "model_max_queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ensemble_name or self.ensemble_name in MODEL_PY:
            raise ValueError(f"ensemble_name {self.ensemble_name!r} is empty or names a step")


def _tensors(kind: str, specs: Sequence[TensorSpec]) -> list[str]:
    if not specs:
        return []
    lines = [f"{kind} ["]
    for index, spec in enumerate(specs):
        dims = ", ".join(str(d) for d in spec.dims)
        comma = "," if index < len(specs) - 1 else ""
        lines.append(f'  {{ name: "{spec.name}" data_type: {spec.data_type} dims: [ {dims} ] }}{comma}')
    lines.append("]")
    return lines


def _parameters(parameters: Sequence[tuple[str, str]]) -> list[str]:
    return [f"parameters {{ key: \"{key}\" value: {{ string_value: {json.dumps(value)} }} }}"
            for key, value in parameters]


def _warmup(inputs: Sequence[TensorSpec]) -> list[str]:
    """One zero-filled batch-of-1 warm-up (masks of zeros are valid: empty chunks)."""
    lines = ["model_warmup [", "  {", '    name: "zeros"', "    batch_size: 1"]
    for spec in inputs:
        dims = " ".join(f"dims: {d}" for d in spec.dims)
        lines.append(f'    inputs {{ key: "{spec.name}" value: {{ data_type: {spec.data_type} {dims} zero_data: true }} }}')
    lines += ["  }", "]"]
    return lines


# -- step configs from a manifest ----------------------------------------------

def _token_specs(fields: Sequence[TextFieldConfig]) -> list[TensorSpec]:
    specs = []
    for config, (ids, mask) in zip(fields, contract.token_tensor_names([f.name for f in fields])):
        dims = (config.max_chunks, config.max_length)
        specs += [TensorSpec(ids, "TYPE_INT64", dims), TensorSpec(mask, "TYPE_INT64", dims)]
    return specs


def _task_output_specs(manifest: Manifest) -> list[TensorSpec]:
    specs = []
    for task in manifest.tasks:
        specs += [TensorSpec(contract.raw_output(task.name), "TYPE_FP32", (task.num_classes,)),
                  TensorSpec(contract.calibrated_output(task.name), "TYPE_FP32", (task.num_classes,)),
                  TensorSpec(contract.label_output(task.name), "TYPE_STRING", (1,))]
    specs += [TensorSpec(contract.CALIBRATION_VERSION, "TYPE_STRING", (1,)),
              TensorSpec(contract.CALIBRATION_FALLBACK, "TYPE_BOOL", (len(manifest.tasks),))]
    return specs


def _raw_input_specs(manifest: Manifest) -> list[TensorSpec]:
    specs = [TensorSpec(name, "TYPE_STRING", (1,)) for name in manifest.text_fields]
    if manifest.features.numeric_names:
        specs.append(TensorSpec(contract.NUMERIC_FEATURES, "TYPE_FP64", (len(manifest.features.numeric_names),)))
    if manifest.features.categorical_names:
        specs.append(TensorSpec(contract.CATEGORICAL_FEATURES, "TYPE_STRING",
                                (len(manifest.features.categorical_names),)))
    return specs


def schema_for(manifest: Manifest) -> EnsembleSchema:
    """What the client learns from the server: published in the ensemble config."""
    return EnsembleSchema(
        text_fields=manifest.text_fields,
        numeric_features=manifest.features.numeric_names,
        categorical_features=manifest.features.categorical_names,
        feature_order=manifest.features.names,
        tasks=tuple(TaskInfo(t.name, t.kind, t.classes) for t in manifest.tasks),
    )


@dataclass(frozen=True)
class RepositoryConfigs:
    preprocessor: StepConfig
    model_python: StepConfig
    model_libtorch: StepConfig
    calibrator: StepConfig
    ensemble: EnsembleConfig

    def files(self) -> dict[str, str]:
        """Relative path -> config text."""
        return {
            f"{contract.PREPROCESSOR}/config.pbtxt": self.preprocessor.render(),
            f"{contract.MULTIMODAL_MODEL}/config.pbtxt": self.model_python.render(),
            f"{contract.MULTIMODAL_MODEL}/configs/{LIBTORCH_CONFIG_NAME}.pbtxt": self.model_libtorch.render(),
            f"{contract.CALIBRATOR}/config.pbtxt": self.calibrator.render(),
            f"{self.ensemble.name}/config.pbtxt": self.ensemble.render(),
        }


def make_configs(manifest: Manifest, text_fields: Sequence[TextFieldConfig],
                 options: RepositoryOptions = RepositoryOptions()) -> RepositoryConfigs:
    if tuple(f.name for f in text_fields) != manifest.text_fields:
        raise ValueError("text field settings do not match the manifest's text fields")
    batch = options.max_batch_size
    timeout_us = options.queue_timeout_ms * 1000
    python_batching = Batching(options.python_queue_delay_us, options.max_queue_size, timeout_us)
    raw_inputs = _raw_input_specs(manifest)
    token_specs = _token_specs(text_fields)
    tabular_spec = TensorSpec(contract.tabular_tensor_name(manifest.text_fields), "TYPE_FP32",
                              (len(manifest.features.names),))
    probabilities = TensorSpec(contract.PROBABILITIES, "TYPE_FP32", (total_classes(manifest.tasks),))
    task_outputs = _task_output_specs(manifest)

    preprocessor = StepConfig(
        contract.PREPROCESSOR, "python", tuple(raw_inputs), (*token_specs, tabular_spec), batch,
        Batching(0, options.max_queue_size, timeout_us, one_request_per_execution=True),
        instance_count=options.preprocessor_instances)
    model_python = StepConfig(
        contract.MULTIMODAL_MODEL, "python", (*token_specs, tabular_spec), (probabilities,), batch,
        Batching(options.model_queue_delay_us, options.model_max_queue_size, timeout_us),
        instance_count=options.model_instances,
        parameters=(("device", "auto"), ("num_threads", str(options.model_threads))))
    model_libtorch = replace(model_python, backend="pytorch", instance_kind="KIND_GPU", warmup=True,
                             parameters=(("INFERENCE_MODE", "true"), ("DISABLE_OPTIMIZED_EXECUTION", "false")))
    calibrator = StepConfig(contract.CALIBRATOR, "python", (probabilities,), tuple(task_outputs), batch,
                            python_batching)

    steps = tuple(EnsembleStep(step.name, tuple((t.name, t.name) for t in step.inputs),
                               tuple((t.name, t.name) for t in step.outputs))
                  for step in (preprocessor, model_python, calibrator))
    ensemble = EnsembleConfig(options.ensemble_name, tuple(raw_inputs), tuple(task_outputs), batch, steps,
                              parameters=((SCHEMA_PARAMETER, schema_for(manifest).to_json()),))
    return RepositoryConfigs(preprocessor, model_python, model_libtorch, calibrator, ensemble)


SHELL_MARKER = "from tce_backends.triton.models import"


def model_py_source(step: str) -> str:
    return (f'"""Triton Python model for the {step} step: a thin shell over tce_backends."""\n'
            f"{SHELL_MARKER} {MODEL_PY[step]} as TritonPythonModel  # noqa: F401\n")


# What each Python-backend step's version directory holds beside model.py and manifest.json.
STEP_ARTIFACTS: Mapping[str, tuple[str, ...]] = {
    contract.PREPROCESSOR: (TEXT_DIR, TABULAR_DIR),
    contract.MULTIMODAL_MODEL: (MODEL_FILE,),
    contract.CALIBRATOR: (CALIBRATION_DIR,),
}


def write_step_version(bundle: Bundle, step: str, version_dir: Path) -> None:
    """One step's version directory: the model.py shell, the manifest and the step's bundle parts."""
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(model_py_source(step), encoding="utf-8")
    shutil.copyfile(bundle.root / MANIFEST_FILE, version_dir / MANIFEST_FILE)
    for part in STEP_ARTIFACTS[step]:
        source = bundle.root / part
        if source.is_dir():
            shutil.copytree(source, version_dir / part)
        elif source.exists():
            shutil.copyfile(source, version_dir / part)


def _written_by_tce(model_dir: Path) -> bool:
    """A step or ensemble an earlier ``tce build`` wrote (another layout or ensemble name)."""
    shells = any(SHELL_MARKER in p.read_text(encoding="utf-8", errors="replace")
                 for p in model_dir.glob("[0-9]*/model.py"))
    config = model_dir / "config.pbtxt"
    return shells or (config.is_file() and SCHEMA_PARAMETER in config.read_text(encoding="utf-8", errors="replace"))


def _remove_stale(out: Path, models: set[str], version: int) -> list[str]:
    """What would make the server serve something else than the bundle: other versions
    of the steps written now (published calibrations), and models of earlier builds."""
    removed = []
    for model_dir in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else ():
        if model_dir.name in models:
            for old in model_dir.iterdir():
                if old.is_dir() and old.name.isdigit() and old.name != str(version):
                    shutil.rmtree(old)
                    removed.append(f"{model_dir.name}/{old.name}")
        elif _written_by_tce(model_dir):
            shutil.rmtree(model_dir)
            removed.append(model_dir.name)
    return removed


def write_repository(bundle: Bundle, out: Path | str, options: RepositoryOptions = RepositoryOptions(),
                     version: int = 1) -> Path:
    """Write configs, model.py shells and each step's artifacts, so that the repository
    serves exactly this bundle: other versions of its steps (an earlier model's published
    calibration) and models an earlier ``tce build`` wrote are removed; models of anyone
    else are left alone."""
    out = Path(out)
    configs = make_configs(bundle.manifest, bundle.text.fields, options)
    _remove_stale(out, {*STEP_ARTIFACTS, options.ensemble_name}, version)
    for relative, text in configs.files().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for step in STEP_ARTIFACTS:
        version_dir = out / step / str(version)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        write_step_version(bundle, step, version_dir)
    (out / options.ensemble_name / str(version)).mkdir(parents=True, exist_ok=True)
    (out / options.ensemble_name / str(version) / ".gitkeep").touch()
    return out
