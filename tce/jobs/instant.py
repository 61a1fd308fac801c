"""``tce benchmark --instant-model``: what the CPU side of serving delivers when the model costs nothing.

It copies the repository, swaps every ``multimodal_model/<version>/model.pt`` for a constant
TorchScript module of the same signature (the same inputs per text field plus tabular, every
task's probabilities side by side out, constant and valid), and times, in one run:

- **in process, one core**: the same three steps (``PreprocessStep``, ``ModelStep`` on the
  constant module, ``CalibratorStep``) through ``EnsembleGraph.run``, as ``ReferencePipeline``
  runs them, in a child process pinned to one CPU before it imports anything (so neither the
  tokenizer's thread pool nor OpenMP can borrow the other core): a loop over single records,
  a loop over 64-record batches, and the lone-request latency;
- **served**: the embedded Triton on the copy, driven over gRPC by the project's async load
  generator (``tce.jobs.benchmark.ServedEnsemble``, ``tritonclient.grpc.aio``; perf_analyzer's
  binary is not in the wheel): single-record requests at 32 in flight, 64-record requests, and
  sequential lone requests;

and prints the issue's three rows as ratios, the targets, and each step's queue and compute per
request from Triton's statistics. The load generator runs on the same machine and its CPU
seconds per request are printed, since on 2 cores they are taken from the server.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tce_backends import contract
from tce_backends.bundle import MODEL_FILE, TEXT_DIR, Manifest
from tce_backends.errors import UsageError
from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR

MS = 1e3
# (key, what, unit, comparison, target): issue 25's targets, judged on this run's ratios.
INSTANT_TARGETS = (("single_record_ratio", "single-record requests vs one-core loop", "x", ">=", 1.5),
                   ("batch_ratio", "64-record requests vs one-core loop", "x", ">=", 1.5),
                   ("added_p50_ms", "lone request: added p50", " ms", "<=", 1.0))


@dataclass(frozen=True)
class InstantConfig:
    repository: Path
    records: int = 256
    long_thread_share: float = 0.3
    seconds: float = 10.0
    concurrency: int = 32          # single-record requests in flight
    batch_rows: int = 64           # records per request in the batch row
    batch_concurrency: int = 4     # 64-record requests in flight
    lone_calls: int = 300          # sequential single-record calls for the p50 row
    seed: int = 0
    cpu: int | None = None         # the core the in-process loop is pinned to (None: the first allowed)
    preprocessor_batching: bool = False  # serve the copy with a preprocessor that merges requests

    def __post_init__(self) -> None:
        if not (Path(self.repository) / MULTIMODAL_MODEL / "1" / MODEL_FILE).is_file():
            raise UsageError(f"{self.repository} holds no {MULTIMODAL_MODEL}/1/{MODEL_FILE}; build it first "
                             "(make build)")
        if min(self.records, self.concurrency, self.batch_rows, self.batch_concurrency, self.lone_calls) < 1:
            raise UsageError("records, concurrency, batch rows and lone calls must be positive")
        if self.seconds <= 0:
            raise UsageError("--seconds must be positive")


# --- the instant model ------------------------------------------------------------------------------------------

def constant_probabilities(manifest: Manifest) -> np.ndarray:
    """One row of valid probabilities, every task's block side by side: distinct, not uniform,
    so a mix-up of classes shows in the calibrated outputs."""
    blocks = []
    for task in manifest.tasks:
        weights = np.arange(1, task.num_classes + 1, dtype=np.float64)
        blocks.append(weights / weights.sum())
    return np.concatenate(blocks).astype(np.float32)


def write_instant_model(path: Path, manifest: Manifest) -> None:
    """A TorchScript module taking ``model.pt``'s inputs (ids and mask per text field, then
    tabular) and returning the constant row for every record. Traced with ``*inputs`` so one
    module serves any number of text fields; the batch size is read from the ids at run time."""
    import torch

    class Instant(torch.nn.Module):
        def __init__(self, row: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("row", torch.from_numpy(row))

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            # ids[:, 0, :1] * 0 is a [batch, 1] zero column: broadcasting gives [batch, classes].
            return (inputs[0][:, 0, :1] * 0).float() + self.row

    chunks_and_lengths = _token_dims(path.parent)
    examples = []
    for chunks, length in chunks_and_lengths:
        examples += [torch.zeros((2, chunks, length), dtype=torch.int64)] * 2
    examples.append(torch.zeros((2, len(manifest.features.names)), dtype=torch.float32))
    traced = torch.jit.trace(Instant(constant_probabilities(manifest)).eval(), tuple(examples))
    torch.jit.save(traced, str(path))


def _token_dims(version_dir: Path) -> list[tuple[int, int]]:
    from tce_backends.text import TextPreprocessor

    root = version_dir.parent.parent / PREPROCESSOR / version_dir.name
    return [(f.max_chunks, f.max_length) for f in TextPreprocessor.load(root / TEXT_DIR).fields]


def instant_repository(source: Path, destination: Path, preprocessor_batching: bool = False) -> Path:
    """A copy of ``source`` whose model step is the instant model, in every version; with
    ``preprocessor_batching`` its preprocessor merges requests (``tce build --preprocessor-batching``)."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(MODEL_FILE, "__pycache__"))
    for version_dir in sorted(p for p in (destination / MULTIMODAL_MODEL).iterdir() if p.name.isdigit()):
        write_instant_model(version_dir / MODEL_FILE, Manifest.load(version_dir))
    if preprocessor_batching:
        merge_preprocessor_requests(destination)
    return destination


def merge_preprocessor_requests(repository: Path) -> None:
    """The preprocessor's config as ``--preprocessor-batching`` builds it: no ``preferred_batch_size: [1]``."""
    from tce.repository.builder import read_config, render_config

    path = Path(repository) / PREPROCESSOR / "config.pbtxt"
    config = read_config(path)
    del config.dynamic_batching.preferred_batch_size[:]
    path.write_text(render_config(config), encoding="utf-8")


# --- in process, on one core ------------------------------------------------------------------------------------

def _steps(repository: Path) -> tuple[Any, dict[str, Any]]:
    from tce_backends.graph import ensemble_graph
    from tce_backends.steps import CalibratorStep, ModelStep, PreprocessStep
    from tce_backends.text import TextPreprocessor

    def version(step: str) -> Path:
        return repository / step / "1"

    manifest = Manifest.load(version(PREPROCESSOR))
    graph = ensemble_graph(manifest, TextPreprocessor.load(version(PREPROCESSOR) / TEXT_DIR).fields)
    steps = {PREPROCESSOR: PreprocessStep.load(version(PREPROCESSOR), manifest),
             MULTIMODAL_MODEL: ModelStep.load(version(MULTIMODAL_MODEL), manifest, device="cpu", num_threads=1),
             CALIBRATOR: CalibratorStep.load(version(CALIBRATOR), manifest)}
    return graph, steps


def _records(repository: Path, records: int, long_thread_share: float, seed: int) -> list[dict[str, Any]]:
    from tce.jobs.benchmark import record_mix
    from tce_client.schema import schema_for

    schema = schema_for(Manifest.load(repository / PREPROCESSOR / "1"))
    return record_mix(schema, records, long_thread_share, seed)


def measure_in_process(repository: Path, records: int, long_thread_share: float, seed: int, seconds: float,
                       batch_rows: int) -> dict[str, float]:
    """The pipeline in this process: single-record loop (rec/s, and its p50 latency as the lone
    request), and a loop of ``batch_rows``-record batches (rec/s)."""
    from tce_client.schema import schema_for

    repository = Path(repository)
    graph, steps = _steps(repository)
    schema = schema_for(Manifest.load(repository / PREPROCESSOR / "1"))
    mix = _records(repository, records, long_thread_share, seed)
    singles = [schema.encode([r], allow_missing_fields=True) for r in mix]
    batches = [schema.encode([mix[(start + i) % len(mix)] for i in range(batch_rows)], allow_missing_fields=True)
               for start in range(0, len(mix), batch_rows)]
    for inputs in singles[:16] + batches[:1]:  # warm-up: lazy initialisation of tokenizer and torch
        graph.run(steps, inputs)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        call = time.perf_counter()
        graph.run(steps, singles[len(latencies) % len(singles)])
        latencies.append(time.perf_counter() - call)
    single_wall = time.perf_counter() - started
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        graph.run(steps, batches[count % len(batches)])
        count += 1
    batch_wall = time.perf_counter() - started
    return {"single_rps": len(latencies) / single_wall, "single_p50_ms": float(np.median(latencies)) * MS,
            "batch_rps": count * batch_rows / batch_wall}


def run_pinned(config: InstantConfig, repository: Path) -> dict[str, float]:
    """``measure_in_process`` in a child pinned to one core from before its first import."""
    cpu = config.cpu if config.cpu is not None else min(os.sched_getaffinity(0))
    arguments = json.dumps({"repository": str(repository), "records": config.records,
                            "long_thread_share": config.long_thread_share, "seed": config.seed,
                            "seconds": config.seconds, "batch_rows": config.batch_rows})
    code = ("import json, sys; from tce.jobs.instant import measure_in_process; "
            "print(json.dumps(measure_in_process(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True, env=env,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"in-process loop failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- served -----------------------------------------------------------------------------------------------------

async def measure_served(grpc_url: str, config: InstantConfig, repository: Path,
                         log: Callable[[str], None]) -> dict[str, Any]:
    from tce.jobs.benchmark import ServedEnsemble, step_breakdown
    from tce_client.schema import schema_for

    schema = schema_for(Manifest.load(repository / PREPROCESSOR / "1"))
    mix = _records(repository, config.records, config.long_thread_share, config.seed)
    single = ServedEnsemble(grpc_url, contract.DEFAULT_ENSEMBLE, schema, mix)
    batched = ServedEnsemble(grpc_url, contract.DEFAULT_ENSEMBLE, schema, mix, rows=config.batch_rows)
    try:
        for index in range(32):  # warm-up: lazy initialisation in the stubs and the frontends
            await single.one(index)
        await batched.one(0)
        out: dict[str, Any] = {}
        before, cpu = await single.statistics(), time.process_time()
        loop = await single.closed_loop(config.concurrency, config.seconds)
        out["steps_single"] = step_breakdown(before, await single.statistics())
        out["single_rps"], out["single_errors"] = loop.throughput, loop.errors
        out["client_cpu_ms_per_request"] = (time.process_time() - cpu) / max(len(loop.latencies), 1) * MS
        log(f"served, single-record requests, {config.concurrency} in flight: {loop.throughput:.0f} rec/s")
        before = await batched.statistics()
        loop = await batched.closed_loop(config.batch_concurrency, config.seconds)
        out["steps_batch"] = step_breakdown(before, await batched.statistics())
        out["batch_rps"], out["batch_errors"] = loop.throughput, loop.errors
        log(f"served, {config.batch_rows}-record requests, {config.batch_concurrency} in flight: "
            f"{loop.throughput:.0f} rec/s")
        before = await single.statistics()
        latencies = [await single.one(index) for index in range(config.lone_calls)]
        out["steps_lone"] = step_breakdown(before, await single.statistics())
        out["single_p50_ms"] = float(np.median(latencies)) * MS
        return out
    finally:
        await single.close()
        await batched.close()


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstantResult:
    in_process: dict[str, float]
    served: dict[str, Any]

    def ratios(self) -> dict[str, float]:
        return {"single_record_ratio": self.served["single_rps"] / self.in_process["single_rps"],
                "batch_ratio": self.served["batch_rps"] / self.in_process["batch_rps"],
                "added_p50_ms": self.served["single_p50_ms"] - self.in_process["single_p50_ms"]}

    def to_json(self) -> dict[str, Any]:
        return {"in_process_one_core": self.in_process, "served": self.served, "ratios": self.ratios()}


def run_instant(config: InstantConfig, work_dir: Path, log: Callable[[str], None] | None = None) -> InstantResult:
    """Copy the repository with the instant model into ``work_dir``, time in process, then served
    (``log``: where its progress goes; if not given: this module's logger)."""
    log = log or logging.getLogger(__name__).info
    from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

    repository = instant_repository(Path(config.repository), Path(work_dir) / "instant_repository",
                                    config.preprocessor_batching)
    log(f"instant model written into {repository}; in-process loop on one core ({config.seconds:g} s per row)")
    in_process = run_pinned(config, repository)
    log(f"in process: {in_process['single_rps']:.0f} single rec/s, {in_process['batch_rps']:.0f} rec/s in "
        f"{config.batch_rows}-record batches, lone p50 {in_process['single_p50_ms']:.2f} ms")
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        served = asyncio.run(measure_served(server.config.grpc_url, config, repository, log))
    return InstantResult(in_process, served)


def _judge(value: float, comparison: str, target: float) -> str:
    met = value >= target if comparison == ">=" else value <= target
    return "MET" if met else "MISSED"


def format_instant(result: InstantResult, config: InstantConfig) -> str:
    p, s, r = result.in_process, result.served, result.ratios()
    merging = "merges requests" if config.preprocessor_batching else "one request per execution"
    lines = ["instant model: served (embedded Triton, gRPC, async load generator) vs the same steps in process "
             f"on one core; preprocessor: {merging}", f"  {'load':<44}{'served':>14}{'in process':>14}{'ratio':>9}",
             f"  {f'single-record requests, {config.concurrency} in flight':<44}{s['single_rps']:>8.0f} rec/s"
             f"{p['single_rps']:>8.0f} rec/s{r['single_record_ratio']:>8.2f}x",
             f"  {f'{config.batch_rows}-record requests, {config.batch_concurrency} in flight':<44}"
             f"{s['batch_rps']:>8.0f} rec/s{p['batch_rps']:>8.0f} rec/s{r['batch_ratio']:>8.2f}x",
             f"  {'one lone request, p50':<44}{s['single_p50_ms']:>11.2f} ms{p['single_p50_ms']:>11.2f} ms"
             f"{r['added_p50_ms']:>+7.2f}ms",
             f"  errors: {s['single_errors']} single, {s['batch_errors']} batched; load generator CPU "
             f"{s['client_cpu_ms_per_request']:.2f} ms per single-record request (same machine)", "", "targets"]
    for key, name, unit, comparison, target in INSTANT_TARGETS:
        lines.append(f"  {name:<44}{r[key]:7.2f}{unit:<3}  target {comparison} {target:g}{unit}  "
                     f"{_judge(r[key], comparison, target)}")
    from tce.jobs.benchmark import step_table

    for title, key in (("single-record load", "steps_single"), (f"{config.batch_rows}-record load", "steps_batch"),
                       ("lone requests", "steps_lone")):
        lines += step_table(title, s[key], decimals=3)
    return "\n".join(lines)


def write_instant_json(result: InstantResult, config: InstantConfig, path: Path) -> None:
    from tce.jobs.benchmark import write_figures

    write_figures(config, result.to_json(), path)

