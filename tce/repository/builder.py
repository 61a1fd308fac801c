"""Bundle -> Triton model repository.

Every config is generated from the bundle's manifest and text settings. The
ensemble is a chain, and only its first step sees what a caller sends:

    preprocessor/          python   validates every caller input; text pipeline and
                                    tokenizer per text field, tabular features;
                                    one request per execution
    multimodal_model/      python host (config.pbtxt) and libtorch host
                           (configs/libtorch.pbtxt, selected with
                           ``tritonserver --model-config-name=libtorch``), one model.pt
    calibrator/            python   probabilities -> raw, calibrated, label per task, and
                                    the release that answered (release.json per version)
    <ensemble>/            ensemble wiring every input and output; pins the current release;
                           publishes the schema (tce_schema) and, when the bundle stores one,
                           its reference score distribution (tce_score_reference)
    <ensemble>-release-1/  the same, named for release 1 (callers may name a release)
    releases.json          the repository's releases (tce.repository.releases)

The repository is built as release 1: each step's version 1, listed in its
``version_policy`` (``specific``), and ensembles that pin those versions
(``model_version``). ``tce release add`` adds releases beside it
(``tce.repository.release_files``).

Both hosts of ``model.pt`` are rendered from one ``StepConfig`` that differs only in
backend, instance kind and warm-up, so they cannot drift apart. Every step's queue is
bounded (size and wait), so overload is refused at once with UNAVAILABLE instead of
queueing without end.
"""
from __future__ import annotations

import json
import py_compile
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from tce.repository.host_sizing import HostSizing
from tce.repository.releases import first_release
from tce_backends.bundle import CALIBRATION_DIR, MANIFEST_FILE, MODEL_FILE, Bundle, Manifest
from tce_backends.contract import (
    RELEASE_INFO_FILE,
    SCHEMA_PARAMETER,
    SCORE_REFERENCE_PARAMETER,
    TensorSpec,
    release_model_name,
)
from tce_backends.errors import UsageError
from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR, STEP_KINDS, EnsembleGraph, ensemble_graph
from tce_backends.score_metrics import ReferenceScores
from tce_backends.tasks import TaskSpec
from tce_backends.text import TextFieldConfig
from tce_client import DEFAULT_MODEL
from tce_client.schema import schema_for

LIBTORCH_CONFIG_NAME = "libtorch"
MODEL_PY: Mapping[str, str] = {name: kind.model_class for name, kind in STEP_KINDS.items()}
# What each Python-backend step's version directory holds beside model.py and manifest.json.
STEP_ARTIFACTS: Mapping[str, tuple[str, ...]] = {name: kind.parts for name, kind in STEP_KINDS.items()}
HEADER = "# Written by 'tce build' from the bundle's manifest; edit the builder, not this file.\n"


@dataclass(frozen=True)
class Batching:
    """One step's dynamic batcher and its bounded queue.

    ``one_request_per_execution`` sets ``preferred_batch_size: [1]`` with no queue
    delay: Triton's batcher then closes every batch after its first request, whatever
    its row count, so the step gets the batcher's queue policy without ever merging
    two callers' requests (see ``docs/security.md``). Requests beyond the queue's size
    or wait are refused (``REJECT``, Triton's default timeout action) with UNAVAILABLE.
    """

    max_queue_delay_us: int
    max_queue_size: int
    queue_timeout_us: int
    one_request_per_execution: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()  # rows the batcher closes a batch at, when the queue holds them

    def fill(self, config: pb.ModelConfig) -> None:
        batching = config.dynamic_batching
        if self.one_request_per_execution:
            batching.preferred_batch_size.append(1)
        else:
            batching.preferred_batch_size.extend(sorted(set(self.preferred_batch_sizes)))
        batching.max_queue_delay_microseconds = self.max_queue_delay_us
        policy = batching.default_queue_policy
        policy.timeout_action = pb.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = self.queue_timeout_us
        policy.max_queue_size = self.max_queue_size


def _add_tensors(field: object, specs: Sequence[TensorSpec]) -> None:
    for spec in specs:
        tensor = field.add()  # type: ignore[attr-defined]
        tensor.name = spec.name
        tensor.data_type = pb.DataType.Value(spec.data_type)
        tensor.dims.extend(spec.dims)


def _render(config: pb.ModelConfig) -> str:
    return HEADER + text_format.MessageToString(config)


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
    versions: tuple[int, ...] = ()  # version_policy specific: the versions loaded releases pin

    def to_proto(self) -> pb.ModelConfig:
        """Triton's own schema: a misspelt field or enum fails here, at build time."""
        config = pb.ModelConfig(name=self.name, backend=self.backend, max_batch_size=self.max_batch_size)
        if self.versions:
            set_versions(config, self.versions)
        _add_tensors(config.input, self.inputs)
        _add_tensors(config.output, self.outputs)
        self.batching.fill(config)
        config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(self.instance_kind),
                                  count=self.instance_count)
        for key, value in self.parameters:
            config.parameters[key].string_value = value
        if self.warmup:  # one zero-filled batch of 1 (masks of zeros are valid: empty chunks)
            warmup = config.model_warmup.add(name="zeros", batch_size=1)
            for spec in self.inputs:
                warmup.inputs[spec.name].data_type = pb.DataType.Value(spec.data_type)
                warmup.inputs[spec.name].dims.extend(spec.dims)
                warmup.inputs[spec.name].zero_data = True
        return config

    def render(self) -> str:
        return _render(self.to_proto())


@dataclass(frozen=True)
class EnsembleConfig:
    name: str
    graph: EnsembleGraph
    max_batch_size: int
    parameters: tuple[tuple[str, str], ...] = ()
    pins: tuple[tuple[str, int], ...] = ()  # step -> model_version (-1, the latest, for a step not named)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.outputs

    def to_proto(self) -> pb.ModelConfig:
        config = pb.ModelConfig(name=self.name, platform="ensemble", max_batch_size=self.max_batch_size)
        _add_tensors(config.input, self.inputs)
        _add_tensors(config.output, self.outputs)
        pins = dict(self.pins)
        for node in self.graph.steps:
            step = config.ensemble_scheduling.step.add(model_name=node.name, model_version=pins.get(node.name, -1))
            step.input_map.update(node.input_map)
            step.output_map.update(node.output_map)
        for key, value in self.parameters:
            config.parameters[key].string_value = value
        return config

    def render(self) -> str:
        return _render(self.to_proto())


@dataclass(frozen=True)
class RepositoryOptions:
    ensemble_name: str = DEFAULT_MODEL
    max_batch_size: int = 64
    # Chosen by `tce benchmark` on the demo (2-core CPU, docs/performance.md), model queue
    # delay 0 / 500 / 2000 us: c1 p50 16.1 / 16.5 / 18.0 ms, saturation 74.4 / 71.1 / 69.2 rec/s.
    # Waiting buys nothing: requests that arrive while the model runs queue up and are merged
    # anyway (mean batch 13 at saturation with no delay). Python steps 0 vs 100 us: calibrator
    # queue 0.12 vs 0.19 ms at c1, same mean batch (9) at saturation.
    python_queue_delay_us: int = 0
    model_queue_delay_us: int = 0
    # The model's batches close at 8 rows when 8 single-row requests are queued (issue 25). `tce
    # benchmark --records 128 --batch-sizes 8,16,32 --concurrency 32 --seconds 15`, 30% long
    # threads, served saturation / fixed-padding best, pairs run back to back on the shared 2-core
    # machine: none 0.89 / 1.10 / 1.24x, [2, 4, 8] 1.44 / 1.21 / 1.33x (two more runs: 1.52,
    # 1.47x; [4, 8, 16]: 1.32, 1.55x). The model step's own compute per record at saturation
    # (Triton's statistics) fell from 23 to 14 ms (mean batch 12.4 -> 7.9), what batch 8 costs
    # in process. A 64-row request still runs whole: preferred sizes never split a request.
    model_preferred_batch_sizes: tuple[int, ...] = (2, 4, 8)
    # Instance counts: these defaults are the 2-core measurements below; `tce build` replaces them
    # with what tce.repository.host_sizing's rule gives the host (HostSizing, via sized_for).
    model_instances: int = 1  # 2 instances split 2 cores between two forwards: 71.4 vs 74.4 rec/s saturated
    model_threads: int = 0  # 0: torch's default; 1 thread: 38.8 vs 53.1 rec/s at c1, 44.0 vs 74.4 saturated
    # The preprocessor takes one request per execution (error isolation), so instances are its
    # only parallelism: 1 instance saturates at 59.5 rec/s with the model starved (mean batch 1.7).
    preprocessor_instances: int = 2
    # Let the preprocessor merge requests (issue 25). Only for a Triton that callers reach through
    # the door alone (compose, Kubernetes, SageMaker): Triton 2.51's Python backend checks BYTES
    # framing for the whole batch before execute(), so on a directly reachable port one request
    # with a broken length prefix fails the requests merged with it. The door re-encodes every
    # tensor it forwards, so no broken framing reaches Triton through it. Instant model, 2 shared
    # cores, `tce benchmark --instant-model --seconds 5` back to back: single records at 32 in
    # flight 774 -> 995 rec/s (preprocessor queue 28.7 -> 2.2 ms per request, mean batch 1 -> 4).
    preprocessor_batching: bool = False
    calibrator_instances: int = 1
    # The GPU hosts: the libtorch host's KIND_GPU count (Triton places that many on each GPU), and
    # whether the Python host's group is KIND_GPU too (model_instances then also counts per GPU).
    model_instances_per_gpu: int = 2
    model_on_gpu: bool = False
    # Overload is refused, not queued: requests beyond these wait limits or queue sizes
    # fail at once with UNAVAILABLE ("Exceeds maximum queue size" / "Request timeout expired").
    queue_timeout_ms: int = 5000
    max_queue_size: int = 128        # requests, per Python step
    model_max_queue_size: int = 32   # requests; the model is the slow step

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise UsageError(f"max_batch_size must be in [1, 4096], got {self.max_batch_size}")
        if self.python_queue_delay_us < 0 or self.model_queue_delay_us < 0:
            raise UsageError("queue delays must be >= 0")
        if self.model_threads < 0:
            raise UsageError(f"model_threads must be >= 0, got {self.model_threads}")
        if any(size < 1 or size > self.max_batch_size for size in self.model_preferred_batch_sizes):
            raise UsageError(f"model_preferred_batch_sizes must lie in [1, max_batch_size {self.max_batch_size}], "
                             f"got {list(self.model_preferred_batch_sizes)}")
        for name in ("model_instances", "preprocessor_instances", "calibrator_instances", "model_instances_per_gpu",
                     "queue_timeout_ms", "max_queue_size", "model_max_queue_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ensemble_name or self.ensemble_name in MODEL_PY:
            raise UsageError(f"ensemble_name {self.ensemble_name!r} is empty or names a step")

    def sized_for(self, sizing: HostSizing) -> RepositoryOptions:
        """These options with the instance counts ``sizing`` chose for its host."""
        return replace(self, preprocessor_instances=sizing.preprocessor_instances,
                       calibrator_instances=sizing.calibrator_instances, model_instances=sizing.model_instances,
                       model_instances_per_gpu=sizing.model_instances_per_gpu, model_threads=sizing.model_threads,
                       model_on_gpu=sizing.model_on_gpu)


@dataclass(frozen=True)
class RepositoryConfigs:
    preprocessor: StepConfig
    model_python: StepConfig
    model_libtorch: StepConfig
    calibrator: StepConfig
    ensemble: EnsembleConfig
    release_ensembles: tuple[EnsembleConfig, ...] = ()

    def files(self) -> dict[str, str]:
        """Relative path -> config text."""
        return {
            f"{PREPROCESSOR}/config.pbtxt": self.preprocessor.render(),
            f"{MULTIMODAL_MODEL}/config.pbtxt": self.model_python.render(),
            f"{MULTIMODAL_MODEL}/configs/{LIBTORCH_CONFIG_NAME}.pbtxt": self.model_libtorch.render(),
            f"{CALIBRATOR}/config.pbtxt": self.calibrator.render(),
            f"{self.ensemble.name}/config.pbtxt": self.ensemble.render(),
            **{f"{e.name}/config.pbtxt": e.render() for e in self.release_ensembles},
        }


# -- configs of releases: version policies and pins ------------------------------------

def set_versions(config: pb.ModelConfig, versions: Sequence[int]) -> pb.ModelConfig:
    """``config`` serves exactly ``versions`` (Triton's version_policy ``specific``)."""
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    return config


def pin_ensemble(config: pb.ModelConfig, name: str, steps: Mapping[str, int]) -> pb.ModelConfig:
    """A copy of the ensemble ``config`` named ``name``, each step pinned to ``steps[step]``."""
    pinned = pb.ModelConfig()
    pinned.CopyFrom(config)
    pinned.name = name
    for step in pinned.ensemble_scheduling.step:
        step.model_version = steps[step.model_name]
    return pinned


def score_reference_json(version_dir: Path, tasks: Sequence[TaskSpec]) -> str:
    """The reference score distribution stored in ``version_dir/calibration`` (a bundle or a
    calibrator version) as the ensemble publishes it; "" when it stores none."""
    reference = ReferenceScores.load(Path(version_dir) / CALIBRATION_DIR, tasks)
    return reference.to_json() if reference is not None else ""


def publish_score_reference(config: pb.ModelConfig, calibrator_version_dir: Path) -> pb.ModelConfig:
    """``config`` (an ensemble) publishes the reference of the calibrator version it pins."""
    version_dir = Path(calibrator_version_dir)
    reference = score_reference_json(version_dir, Manifest.load(version_dir).tasks)
    if reference:
        config.parameters[SCORE_REFERENCE_PARAMETER].string_value = reference
    elif SCORE_REFERENCE_PARAMETER in config.parameters:
        del config.parameters[SCORE_REFERENCE_PARAMETER]
    return config


def read_config(path: Path) -> pb.ModelConfig:
    return text_format.Parse(Path(path).read_text(encoding="utf-8"), pb.ModelConfig())


def render_config(config: pb.ModelConfig) -> str:
    return _render(config)


def make_configs(manifest: Manifest, text_fields: Sequence[TextFieldConfig],
                 options: RepositoryOptions = RepositoryOptions(), version: int = 1,
                 score_reference: str = "") -> RepositoryConfigs:
    """Every config of the repository as release 1 (each step's ``version``), from the one
    ``EnsembleGraph`` of this bundle; the ensembles publish ``score_reference`` (JSON of the
    bundle's ``ReferenceScores``) when given."""
    graph = ensemble_graph(manifest, text_fields)
    batch = options.max_batch_size
    timeout_us = options.queue_timeout_ms * 1000

    def step(name: str, batching: Batching, **settings: object) -> StepConfig:
        node = graph.node(name)
        return StepConfig(name, "python", node.inputs, node.outputs, batch, batching,  # type: ignore[arg-type]
                          versions=(version,), **settings)

    preprocessor = step(PREPROCESSOR, Batching(options.python_queue_delay_us, options.max_queue_size, timeout_us,
                                               one_request_per_execution=not options.preprocessor_batching),
                        instance_count=options.preprocessor_instances)
    model_python = step(MULTIMODAL_MODEL, Batching(options.model_queue_delay_us, options.model_max_queue_size,
                                                   timeout_us,
                                                   preferred_batch_sizes=options.model_preferred_batch_sizes),
                        instance_count=options.model_instances,
                        instance_kind="KIND_GPU" if options.model_on_gpu else "KIND_CPU",
                        parameters=(("device", "auto"), ("num_threads", str(options.model_threads))))
    model_libtorch = replace(model_python, backend="pytorch", instance_kind="KIND_GPU", warmup=True,
                             instance_count=options.model_instances_per_gpu,
                             parameters=(("INFERENCE_MODE", "true"), ("DISABLE_OPTIMIZED_EXECUTION", "false")))
    calibrator = step(CALIBRATOR, Batching(options.python_queue_delay_us, options.max_queue_size, timeout_us),
                      instance_count=options.calibrator_instances)
    pins = tuple((name, version) for name in STEP_KINDS)
    parameters = ((SCHEMA_PARAMETER, schema_for(manifest).to_json()),
                  *(((SCORE_REFERENCE_PARAMETER, score_reference),) if score_reference else ()))
    ensemble = EnsembleConfig(options.ensemble_name, graph, batch, parameters=parameters, pins=pins)
    first = replace(ensemble, name=release_model_name(options.ensemble_name, 1))
    return RepositoryConfigs(preprocessor, model_python, model_libtorch, calibrator, ensemble, (first,))


SHELL_MARKER = "from tce_backends.triton.models import"


def model_py_source(step: str) -> str:
    return (f'"""Triton Python model for the {step} step: a thin shell over tce_backends."""\n'
            f"{SHELL_MARKER} {MODEL_PY[step]} as TritonPythonModel  # noqa: F401\n")


def write_step_version(bundle: Bundle, step: str, version_dir: Path, release: Mapping[str, object] | None = None
                       ) -> None:
    """One step's version directory: the model.py shell, the manifest and the step's bundle parts;
    the calibrator's also ``release.json`` (``release``: its release number and model fingerprint)."""
    version_dir.mkdir(parents=True)
    if step == CALIBRATOR and release is not None:
        write_release_info(version_dir, release)
    (version_dir / "model.py").write_text(model_py_source(step), encoding="utf-8")
    # Compiled now, so that the stub's import writes nothing: Triton takes a changed file time in a
    # model's directory for a changed model and would reload it at the next explicit load.
    py_compile.compile(str(version_dir / "model.py"), doraise=True)
    shutil.copyfile(bundle.root / MANIFEST_FILE, version_dir / MANIFEST_FILE)
    for part in STEP_ARTIFACTS[step]:
        source = bundle.root / part
        if source.is_dir():
            shutil.copytree(source, version_dir / part)
        elif source.exists():
            shutil.copyfile(source, version_dir / part)


def write_release_info(version_dir: Path, release: Mapping[str, object]) -> None:
    (version_dir / RELEASE_INFO_FILE).write_text(json.dumps(dict(release), indent=1) + "\n", encoding="utf-8")


def release_info(number: int, bundle: str, model_fingerprint: str) -> dict[str, object]:
    return {"release": number, "bundle": bundle, "model_fingerprint": model_fingerprint}


def calibration_problem(bundle: Bundle) -> None:
    """Refuse (one line) a bundle whose calibration records another model than its model.pt."""
    problem = bundle.calibration_model_problem()
    if problem:
        raise UsageError(problem)


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


def prepare_model(bundle: Bundle, model_path: Path, say: Callable[[str], None]) -> None:
    """Check the copied ``model.pt`` returns probabilities, and wrap it to trim padding when a
    check shows the same outputs (``tce.models.length_trim``); ``say`` hears how."""
    import torch  # only here: building the configs needs no torch

    from tce.models.length_trim import make_length_aware
    from tce.models.model_check import check_probabilities

    check_probabilities(torch.jit.load(str(model_path), map_location="cpu"), MODEL_FILE, bundle.text,
                        len(bundle.manifest.features.names), bundle.manifest.tasks)
    say(make_length_aware(model_path, bundle.text, len(bundle.manifest.features.names)).describe())


def write_repository(bundle: Bundle, out: Path | str, options: RepositoryOptions = RepositoryOptions(),
                     version: int = 1, say: Callable[[str], None] = lambda _: None) -> Path:
    """Write configs, model.py shells and each step's artifacts, so that the repository
    serves exactly this bundle: other versions of its steps (an earlier model's published
    calibration) and models an earlier ``tce build`` wrote are removed; models of anyone
    else are left alone. A ``model.pt`` that does not trim its own padding is wrapped
    when a check shows the same outputs (``tce.models.length_trim``); ``say`` hears how."""
    out = Path(out)
    calibration_problem(bundle)
    configs = make_configs(bundle.manifest, bundle.text.fields, options, version,
                           score_reference_json(bundle.root, bundle.manifest.tasks))
    _remove_stale(out, {*STEP_ARTIFACTS, options.ensemble_name}, version)
    for relative, text in configs.files().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    model_fingerprint = bundle.model_fingerprint()
    for step in STEP_ARTIFACTS:
        version_dir = out / step / str(version)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        write_step_version(bundle, step, version_dir, release_info(1, bundle.manifest.name, model_fingerprint))
    prepare_model(bundle, out / MULTIMODAL_MODEL / str(version) / MODEL_FILE, say)
    for ensemble in (configs.ensemble, *configs.release_ensembles):
        (out / ensemble.name / "1").mkdir(parents=True, exist_ok=True)
        (out / ensemble.name / "1" / ".gitkeep").touch()
    first_release(options.ensemble_name, bundle.manifest.name, bundle.fingerprint(), bundle.calibrator.version,
                  model_fingerprint, version).save(out)
    return out
