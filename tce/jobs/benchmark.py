"""``tce benchmark`` / ``make bench``: the served ensemble against the bare model, in one run.

On one realistic record mix (short chats and long threads) it times

(a) ``model.pt`` in process at each batch size: the ceiling;
(b) the same weights with fixed full padding (``trim_padding`` off): the naive forward;
(c) the served ensemble over gRPC with an async load generator: interleaved pairs of
    single calls against the in-process batch-1 forward (concurrency 1), then a
    closed loop at each concurrency level for a fixed time.

It prints records/s and p50/p99 for each, the ratios the project targets and each
step's queue and compute per request from Triton's statistics API, and writes seed
004's ``speed_metrics`` fields for (a), (b) and (c) to a JSON file.

Seed 004's own file, ``test_metrics.json`` (``tce.lib.seed_test_metrics``), is written too:
its flat ``speed_metrics`` are the served ensemble's at saturation (``SEED_SPEED_MODE``: what
a deployment delivers), and its quality ``metrics`` (``tce.lib.seed_benchmark_metrics``) come
from a labelled file scored through the same server, after the timings; without one they are
all ``"NaN"``. The served figures carry the server's device (its model config), the
in-process ones the ``device`` asked for.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from tce.lib.demo_data import make_dataset
from tce.lib.labels import label_column, true_labels
from tce.lib.seed_benchmark_metrics import json_ready, tasks_metrics, undefined_metrics
from tce.lib.seed_test_metrics import SeedLayout, seed_document, write_test_metrics
from tce.lib.tables import read_frame
from tce_backends import contract
from tce_backends.bundle import MODEL_FILE, Manifest
from tce_backends.errors import UsageError
from tce_backends.graph import MULTIMODAL_MODEL, PREPROCESSOR
from tce_backends.steps import PreprocessStep
from tce_client.schema import EnsembleSchema

MS = 1e3
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?|mps")  # the seed's cuda, cpu, mps; auto and cuda:N as pick_device
SEED_SPEED_MODE = "served_saturation"  # which of speed_metrics fills test_metrics.json's flat speed_metrics


@dataclass(frozen=True)
class BenchmarkConfig:
    repository: Path
    records: int = 256
    long_thread_share: float = 0.3
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    single_pairs: int = 100
    concurrency: tuple[int, ...] = (8, 32)
    seconds_per_level: float = 10.0
    device: str = "auto"
    model: str = contract.DEFAULT_ENSEMBLE
    seed: int = 0
    labelled: Path | None = None  # labelled records for the quality metrics (seed 004's split)
    label_columns: Mapping[str, str] = field(default_factory=dict)  # task -> true-label column

    def __post_init__(self) -> None:
        _check_repository(Path(self.repository))
        if not DEVICES.fullmatch(self.device):
            raise UsageError(f"--device {self.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        if self.labelled is not None and not Path(self.labelled).is_file():
            raise UsageError(f"--labelled {self.labelled} is not a file (labelled records: CSV, TSV or Parquet, "
                             "e.g. from 'tce demo-data --labels')")
        if self.records < 1 or self.single_pairs < 1 or self.seconds_per_level <= 0:
            raise UsageError("records, single_pairs and seconds_per_level must be positive")
        if not 0 <= self.long_thread_share <= 1:
            raise UsageError(f"long_thread_share must be in [0, 1], got {self.long_thread_share}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.concurrency or min(self.concurrency) < 1:
            raise UsageError("batch sizes and concurrency levels must be positive integers")


def _check_repository(repository: Path) -> None:
    if repository.is_file():
        raise UsageError(f"{repository} is a file, not a model repository: tce benchmark times a built repository "
                         f"(tce import-seed, then tce build), or give its {MULTIMODAL_MODEL}/1/{MODEL_FILE}")
    if not (repository / MULTIMODAL_MODEL / "1" / MODEL_FILE).is_file():
        raise UsageError(f"{repository} holds no {MULTIMODAL_MODEL}/1/{MODEL_FILE}; build it first (make build)")


def repository_of(path: Path) -> Path:
    """A repository, or the ``multimodal_model/1/model.pt`` inside one (seed 004's ``--checkpoint``)."""
    parts = path.parts
    if len(parts) >= 4 and tuple(parts[-3:]) == (MULTIMODAL_MODEL, "1", MODEL_FILE):
        return path.parents[2]
    return path


def check_device_present(device: str) -> None:
    """A device asked for by name must exist here: one line now, not a torch traceback later."""
    from tce_backends.model_runner import torch  # through model_runner: it sets the OpenMP wait policy first

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA GPU (use --device cpu or auto)")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available on this machine (use --device cpu or auto)")


# --- labelled records (the quality metrics) ---------------------------------------------------------------------

@dataclass(frozen=True)
class LabelledRecords:
    """Seed 004's split: records to score and each task's true class indices, in the model's task order."""

    path: Path
    records: pd.DataFrame
    labels: tuple[tuple[str, np.ndarray], ...]


def load_labelled(path: Path, manifest: Manifest, overrides: Mapping[str, str]) -> LabelledRecords:
    """Read and check the labels before anything is timed: a wrong column found afterwards would
    waste the whole run."""
    unknown = sorted(set(overrides) - {t.name for t in manifest.tasks})
    if unknown:
        raise UsageError(f"--label names unknown tasks {unknown}; the tasks are {[t.name for t in manifest.tasks]}")
    frame = read_frame(path)
    if frame.empty:
        raise UsageError(f"--labelled {path} holds no records")
    columns = {t.name: label_column(t, manifest.tasks, overrides) for t in manifest.tasks}
    labels = tuple((t.name, true_labels(frame, t, columns[t.name])) for t in manifest.tasks)
    return LabelledRecords(Path(path), frame.drop(columns=list(set(columns.values()))), labels)


def score_labelled(grpc_url: str, model: str, labelled: LabelledRecords
                   ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(task, labels, raw probabilities)`` per task: the model's scores, as the seed's softmax."""
    from tce_client import CalibratedClassifierClient, UnusedColumnsWarning

    with CalibratedClassifierClient(grpc_url, protocol="grpc", model=model) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedColumnsWarning)  # a split carries ids and other columns; a missing
        predictions = client.predict(labelled.records)         # model input is still an error
    return [(task, labels, np.stack([p[task].raw for p in predictions]).astype(np.float64))
            for task, labels in labelled.labels]


# --- the record mix ---------------------------------------------------------------------------------------------

def record_mix(schema: EnsembleSchema, count: int, long_thread_share: float, seed: int) -> list[dict[str, Any]]:
    """The demo's synthetic records; a share of them carry a long thread (several chats
    joined, filling both chunks) in every text field."""
    frame = make_dataset(count * 2, seed=seed)
    chats = frame["dialogue"].tolist()
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        source = frame.iloc[index]
        long_thread = rng.random() < long_thread_share
        record: dict[str, Any] = {}
        for text_field in schema.text_fields:
            parts = rng.choice(len(chats), size=int(rng.integers(6, 14))) if long_thread else [index]
            record[text_field] = "\n".join(chats[i] for i in parts)
        for name in (*schema.numeric_features, *schema.categorical_features):
            record[name] = source[name] if name in source else None
        records.append(record)
    return records


def model_inputs(repository: Path, schema: EnsembleSchema, records: list[dict[str, Any]]) -> list[np.ndarray]:
    """What the preprocessor step hands the model, in ``model.pt``'s argument order."""
    version_dir = repository / PREPROCESSOR / "1"
    manifest = Manifest.load(version_dir)
    step = PreprocessStep.load(version_dir, manifest)
    tensors = step.run(step.validate(schema.encode(records, allow_missing_fields=True)))
    return [tensors[name] for name in contract.model_input_names(manifest.text_fields)]


def real_token_share(inputs: Sequence[np.ndarray]) -> float:
    masks = inputs[1:-1:2]  # (ids, mask) per text field, then tabular
    return float(sum(m.sum() for m in masks) / sum(m.size for m in masks))


# --- timing helpers ---------------------------------------------------------------------------------------------

@dataclass
class Timings:
    """Per-sample times (seconds) as seed 004 measures them, plus request latencies."""

    per_sample: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    samples: int = 0
    wall: float = 0.0
    errors: int = 0

    def add(self, latency: float, per_sample: float, samples: int = 1) -> None:
        """One timed call: its latency, the time per record it stands for, its records."""
        self.latencies.append(latency)
        self.per_sample.append(per_sample)
        self.samples += samples

    @property
    def throughput(self) -> float:
        return self.samples / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * MS if self.latencies else float("nan")

    def speed_metrics(self, device: str) -> dict[str, Any]:
        """Seed 004's ``speed_metrics`` fields; throughput is records over wall time."""
        times = np.asarray(self.per_sample) * MS
        return {"samples_tested": self.samples, "avg_time_per_sample_ms": float(times.mean()),
                "std_time_per_sample_ms": float(times.std()), "min_time_per_sample_ms": float(times.min()),
                "max_time_per_sample_ms": float(times.max()), "median_time_per_sample_ms": float(np.median(times)),
                "throughput_samples_per_sec": self.throughput, "device": device}


class InProcessModel:
    """``model.pt`` on ``device``, timed the way seed 004 times a model."""

    def __init__(self, path: Path, device: str, trim_padding: bool = True) -> None:
        from tce_backends.model_runner import pick_device  # noqa: I001 - first: it sets torch's OpenMP wait policy

        import torch

        from tce.models.length_trim import TRIM_ATTRIBUTE, is_length_aware

        self.torch = torch
        self.device = pick_device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        if is_length_aware(self.module):  # a model without trimming is its own fixed-padding baseline
            setattr(self.module, TRIM_ATTRIBUTE, trim_padding)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, arrays: Sequence[np.ndarray]) -> float:
        """One forward; returns its seconds."""
        tensors = [self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        self._sync()
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.module(*tensors).cpu()
        self._sync()
        return time.perf_counter() - started

    def time_batches(self, inputs: Sequence[np.ndarray], batch_size: int) -> Timings:
        rows = inputs[0].shape[0]
        self([a[:batch_size] for a in inputs])  # warm-up (shape specialisation, allocator)
        timings = Timings()
        for start in range(0, rows, batch_size):
            batch = [a[start:start + batch_size] for a in inputs]
            seconds = self(batch)
            size = batch[0].shape[0]
            timings.add(seconds, seconds / size, size)
            timings.wall += seconds
        return timings


# --- the served ensemble ----------------------------------------------------------------------------------------

class ServedEnsemble:
    """Raw ``tritonclient.grpc.aio`` requests, built before timing starts."""

    def __init__(self, grpc_url: str, model: str, schema: EnsembleSchema, records: list[dict[str, Any]],
                 rows: int = 1) -> None:
        """``rows`` records per request: request ``i`` carries records ``i*rows ..`` of the mix, wrapping."""
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import np_to_triton_dtype

        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.model = model
        self.rows = rows
        self.requests = []
        for start in range(0, len(records), rows):
            inputs = []
            chunk = [records[(start + i) % len(records)] for i in range(rows)]
            for name, array in schema.encode(chunk, allow_missing_fields=True).items():
                tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(np.ascontiguousarray(array))
                inputs.append(tensor)
            self.requests.append(inputs)

    async def one(self, index: int) -> float:
        started = time.perf_counter()
        await self.client.infer(self.model, self.requests[index % len(self.requests)])
        return time.perf_counter() - started

    async def closed_loop(self, concurrency: int, seconds: float) -> Timings:
        timings = Timings()
        counter = iter(range(10 ** 12))
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    latency = await self.one(next(counter))
                except Exception:  # noqa: BLE001 - refused or failed requests are counted, not fatal
                    timings.errors += 1
                    continue
                # Little's law: time per record at this load
                timings.add(latency, latency / concurrency / self.rows, self.rows)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        timings.wall = time.perf_counter() - started
        return timings

    async def statistics(self) -> dict[str, dict[str, float]]:
        body = await self.client.get_inference_statistics(as_json=True)
        return {s["name"]: _stat_totals(s) for s in body.get("model_stats", [])}

    async def model_config(self) -> dict[str, Any]:
        body = await self.client.get_model_config(MULTIMODAL_MODEL, as_json=True)
        return body.get("config", body)

    async def close(self) -> None:
        await self.client.close()


def served_device(model_config: Mapping[str, Any], local: bool) -> str:
    """Where the server runs ``model.pt``, from its model config: a GPU instance is ``cuda``; the
    Python host follows its ``device`` parameter, whose ``auto`` this machine resolves when the
    server is local (the embedded one) and stays ``auto`` on a server elsewhere."""
    groups = model_config.get("instance_group") or [{}]
    if any(group.get("kind") == "KIND_GPU" for group in groups):
        return "cuda"
    if model_config.get("backend") != "python":
        return "cpu"
    device = model_config.get("parameters", {}).get("device", {}).get("string_value", "auto")
    if device == "auto" and local:
        from tce_backends.model_runner import torch  # through model_runner: it sets the OpenMP wait policy first

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def _stat_totals(stats: dict[str, Any]) -> dict[str, float]:
    inference = stats.get("inference_stats", {})
    totals = {part: float(inference.get(part, {}).get("ns", 0)) for part in (*STAT_PARTS, "success")}
    totals["requests"] = float(inference.get("success", {}).get("count", 0))
    totals["executions"] = float(stats.get("execution_count", 0))
    totals["inferences"] = float(stats.get("inference_count", 0))
    return totals


def step_breakdown(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per model, between two snapshots: ms per request of each part, and the mean batch."""
    breakdown = {}
    for name, end in after.items():
        start = before.get(name, {})
        delta = {key: value - start.get(key, 0.0) for key, value in end.items()}
        if delta["requests"] <= 0:
            continue
        per_request = {part: delta[part] / delta["requests"] / 1e6 for part in (*STAT_PARTS, "success")}
        per_request["mean_batch"] = delta["inferences"] / delta["executions"] if delta["executions"] else 0.0
        per_request["requests"] = delta["requests"]
        breakdown[name] = per_request
    return breakdown


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass
class ServedRun:
    """What the server phase measured, and the quality of its scores on the labelled records."""

    single_bare: Timings
    single_served: Timings
    levels: dict[int, Timings]
    steps_single: dict[str, dict]
    steps_saturation: dict[str, dict]
    device: str
    quality: list[tuple[str, np.ndarray, np.ndarray]] | None = None  # (task, labels, raw probabilities)


@dataclass
class BenchmarkResult:
    device: str
    real_token_share: float
    in_process: dict[int, Timings]
    fixed_padding: dict[int, Timings]
    single_bare: Timings
    single_served: Timings
    served: dict[int, Timings]
    steps_single: dict[str, dict]
    steps_saturation: dict[str, dict]
    served_device: str = ""
    model_name: str = ""
    tasks: tuple[tuple[str, int], ...] = ()  # (task, classes), the model's order
    quality_metrics: dict[str, float] | None = None  # seed 004's names; None: no labelled records
    labelled_records: int = 0

    @staticmethod
    def _best(runs: dict[int, Timings]) -> tuple[int, Timings]:
        return max(runs.items(), key=lambda item: item[1].throughput)

    def ratios(self) -> dict[str, float]:
        _, ceiling = self._best(self.in_process)
        _, naive = self._best(self.fixed_padding)
        _, served = self._best(self.served)
        return {"served_vs_in_process_best": served.throughput / ceiling.throughput,
                "served_vs_fixed_padding_best": served.throughput / naive.throughput,
                "added_p50_ms_at_concurrency_1": self.single_served.percentile(50) - self.single_bare.percentile(50)}

    def speed_metrics(self) -> dict[str, Any]:
        (ceiling_batch, ceiling), (naive_batch, naive) = self._best(self.in_process), self._best(self.fixed_padding)
        saturation_level, saturation = self._best(self.served)
        served_device = self.served_device or self.device
        return {
            "in_process": {**ceiling.speed_metrics(self.device), "batch_size": ceiling_batch},
            "fixed_padding": {**naive.speed_metrics(self.device), "batch_size": naive_batch},
            "served_saturation": {**saturation.speed_metrics(served_device), "concurrency": saturation_level},
            "served_concurrency_1": self.single_served.speed_metrics(served_device),
        }

    def seed_metrics(self) -> dict[str, float]:
        """test_metrics.json's ``metrics``: measured, or every name ``"NaN"`` without labelled records."""
        return self.quality_metrics if self.quality_metrics is not None else undefined_metrics(self.tasks)

    def to_json(self) -> dict[str, Any]:
        def table(runs: dict[int, Timings]) -> dict[str, dict]:
            return {str(k): {"records_per_s": t.throughput, "p50_ms": t.percentile(50), "p99_ms": t.percentile(99),
                             "errors": t.errors} for k, t in runs.items()}

        return {"speed_metrics": self.speed_metrics(), "ratios": self.ratios(), "device": self.device,
                "served_device": self.served_device, "quality_metrics": json_ready(self.quality_metrics),
                "labelled_records": self.labelled_records, "real_token_share": self.real_token_share,
                "in_process_by_batch": table(self.in_process),
                "fixed_padding_by_batch": table(self.fixed_padding), "served_by_concurrency": table(self.served),
                "steps_concurrency_1": self.steps_single, "steps_saturation": self.steps_saturation}


async def _serve_phases(config: BenchmarkConfig, grpc_url: str, schema: EnsembleSchema, records: list[dict],
                        inputs: list[np.ndarray], bare: InProcessModel, log: Callable[[str], None],
                        local: bool) -> ServedRun:
    served = ServedEnsemble(grpc_url, config.model, schema, records)
    try:
        device = served_device(await served.model_config(), local)
        if config.device != "auto":
            log(f"note: --device {config.device} places model.pt in process, (a) and (b); the served ensemble, "
                f"(c), runs where the server puts it: {device}")
        for index in range(min(16, len(records))):  # warm-up: first calls pay lazy initialisation
            await served.one(index)
        single_bare, single_served = Timings(), Timings()
        before = await served.statistics()
        for pair in range(config.single_pairs):  # interleaved, so drift and noise hit both alike
            index = pair % len(records)
            seconds = bare([a[index:index + 1] for a in inputs])
            single_bare.add(seconds, seconds)
            latency = await served.one(index)
            single_served.add(latency, latency)
        for timings in (single_bare, single_served):
            timings.wall = float(sum(timings.latencies))
        steps_single = step_breakdown(before, await served.statistics())
        log(f"(c) served, concurrency 1: {config.single_pairs} interleaved pairs done")
        levels: dict[int, Timings] = {}
        steps_saturation: dict[str, dict] = {}
        for level in config.concurrency:
            before = await served.statistics()
            levels[level] = await served.closed_loop(level, config.seconds_per_level)
            steps = step_breakdown(before, await served.statistics())
            if not steps_saturation or levels[level].throughput >= max(t.throughput for t in levels.values()):
                steps_saturation = steps
            log(f"(c) served, concurrency {level}: {levels[level].throughput:.1f} records/s")
        return ServedRun(single_bare, single_served, levels, steps_single, steps_saturation, device)
    finally:
        await served.close()


def run_benchmark(config: BenchmarkConfig, grpc_url: str | None = None,
                  log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Time (a) and (b) in process, then (c) against ``grpc_url`` or an embedded server; ``log``:
    where its progress goes (if not given: this module's logger)."""
    log = log or logging.getLogger(__name__).info
    from tce_client.schema import schema_for

    repository = Path(config.repository)
    manifest = Manifest.load(repository / MULTIMODAL_MODEL / "1")
    labelled = load_labelled(config.labelled, manifest, config.label_columns) if config.labelled else None
    check_device_present(config.device)
    schema = schema_for(manifest)
    records = record_mix(schema, config.records, config.long_thread_share, config.seed)
    inputs = model_inputs(repository, schema, records)
    share = real_token_share(inputs)
    model_path = repository / MULTIMODAL_MODEL / "1" / MODEL_FILE
    trimmed = InProcessModel(model_path, config.device)
    padded = InProcessModel(model_path, config.device, trim_padding=False)
    device = str(trimmed.device)
    log(f"{len(records)} records ({config.long_thread_share:.0%} long threads), {share:.0%} of token positions "
        f"real; device {device}")
    in_process, fixed_padding = {}, {}
    for batch_size in config.batch_sizes:
        in_process[batch_size] = trimmed.time_batches(inputs, batch_size)
        fixed_padding[batch_size] = padded.time_batches(inputs, batch_size)
        log(f"(a) in process, batch {batch_size:>2}: {in_process[batch_size].throughput:8.1f} records/s   "
            f"(b) fixed padding: {fixed_padding[batch_size].throughput:8.1f} records/s")

    def phases(url: str, local: bool) -> ServedRun:
        run = asyncio.run(_serve_phases(config, url, schema, records, inputs, trimmed, log, local))
        if labelled is not None:  # after the timings, so scoring never disturbs them
            run.quality = score_labelled(url, config.model, labelled)
            log(f"quality: {len(labelled.records)} labelled records of {labelled.path} scored")
        return run

    if grpc_url:
        served = phases(grpc_url, local=False)
    else:
        from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

        with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
            served = phases(server.config.grpc_url, local=True)
    return BenchmarkResult(device, share, in_process, fixed_padding, served.single_bare, served.single_served,
                           served.levels, served.steps_single, served.steps_saturation, served_device=served.device,
                           model_name=manifest.name, tasks=tuple((t.name, t.num_classes) for t in manifest.tasks),
                           quality_metrics=tasks_metrics(served.quality) if served.quality is not None else None,
                           labelled_records=len(labelled.records) if labelled is not None else 0)


def _row(name: str, timings: Timings) -> str:
    return (f"  {name:<34} {timings.throughput:9.1f} rec/s   p50 {timings.percentile(50):7.2f} ms   "
            f"p99 {timings.percentile(99):7.2f} ms" + (f"   errors {timings.errors}" if timings.errors else ""))


# (ratio key, what it measures, unit, comparison, target)
TARGETS = (("served_vs_in_process_best", "served saturation / in-process best", "x", ">=", 0.95),
           ("served_vs_fixed_padding_best", "served saturation / fixed-padding best", "x", ">=", 1.3),
           ("added_p50_ms_at_concurrency_1", "added p50 at concurrency 1", " ms", "<=", 2.0))


def target_lines(ratios: dict[str, float]) -> list[str]:
    """Each target with its figure and whether this run MET or MISSED it."""
    lines = []
    for key, name, unit, comparison, target in TARGETS:
        value = ratios[key]
        met = value >= target if comparison == ">=" else value <= target
        lines.append(f"  {name:<40}{value:7.2f}{unit:<3}  target {comparison} {target:g}{unit}  "
                     f"{'MET' if met else 'MISSED'}")
    return lines


def format_report(result: BenchmarkResult) -> str:
    lines = [f"device {result.device}; {result.real_token_share:.0%} of padded token positions are real", "",
             "records/s and latency per call (in process: per batch; served: per single-record request)"]
    lines += [_row(f"(a) model.pt in process, batch {b}", t) for b, t in result.in_process.items()]
    lines += [_row(f"(b) fixed padding, batch {b}", t) for b, t in result.fixed_padding.items()]
    lines += [_row("(a) batch-1 forward, paired", result.single_bare),
              _row("(c) served, concurrency 1, paired", result.single_served)]
    lines += [_row(f"(c) served, concurrency {c}", t) for c, t in result.served.items()]
    lines += ["", "targets", *target_lines(result.ratios())]
    for title, steps in (("concurrency 1", result.steps_single), ("saturation", result.steps_saturation)):
        lines += step_table(title, steps)
    return "\n".join(lines)


# Triton's statistics per step, in the order the tables print them (ms per request).
STEP_TIMES = ("queue", "compute_input", "compute_infer", "compute_output", "success")


def step_table(title: str, steps: Mapping[str, Mapping[str, float]], decimals: int = 2) -> list[str]:
    """Lines of one table of per-step statistics (``step_breakdown``'s figures), after a blank line."""
    lines = ["", f"server statistics per request, {title} (ms)",
             f"  {'model':<22}{'queue':>8}{'input':>8}{'infer':>8}{'output':>8}{'total':>8}{'batch':>7}"]
    for name, step in steps.items():
        times = "".join(f"{step[key]:8.{decimals}f}" for key in STEP_TIMES)
        lines.append(f"  {name:<22}{times}{step['mean_batch']:7.1f}")
    return lines


def write_figures(config: Any, figures: Mapping[str, Any], path: Path) -> None:
    """A benchmark's JSON: its config (a dataclass; paths as text), then its figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}, **figures}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def write_json(result: BenchmarkResult, path: Path, config: BenchmarkConfig) -> None:
    write_figures(config, result.to_json(), path)


def write_seed_layout(result: BenchmarkResult, config: BenchmarkConfig, layout: SeedLayout) -> Path:
    """Seed 004's ``test_metrics.json``: the served ensemble's figures at saturation as its flat
    ``speed_metrics``, the quality metrics under the seed's names, ``checkpoint`` the served weights."""
    checkpoint = Path(config.repository) / MULTIMODAL_MODEL / "1" / MODEL_FILE
    document = seed_document(layout, str(checkpoint), result.model_name, result.seed_metrics(),
                             result.speed_metrics()[SEED_SPEED_MODE])
    return write_test_metrics(layout, document)


def format_quality(result: BenchmarkResult) -> str:
    """The quality metrics, one line each, or why there are none."""
    if result.quality_metrics is None:
        return "quality metrics: none (no --labelled records); test_metrics.json says \"NaN\" for each"
    lines = [f"quality metrics on {result.labelled_records} labelled records (seed 004's names, raw scores)"]
    lines += [f"  {name:<40}{value:8.4f}" for name, value in result.quality_metrics.items()]
    return "\n".join(lines)
