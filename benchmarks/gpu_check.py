"""``make gpu-check``: the embedded server with the model step on CUDA, checked and timed.

    .venv/bin/python -m benchmarks.gpu_check [--repository model_repository] [--bundle artifacts/demo_bundle]

1. Refuses at once, in one line and with exit code 2, where torch sees no CUDA device.
2. Serves a copy of the repository whose ``multimodal_model`` config asks for ``device: cuda:0``
   (the Python host of ``model.pt``; the copy is hard links plus that one rewritten config, so the
   built repository is never touched). A model that cannot go to CUDA then fails to load instead
   of quietly running on the CPU, as ``auto`` would.
3. Confirms from the server that the model step runs on CUDA: the served model config says
   ``cuda:0``, and the model step's stub process (a child of ``tritonserver`` whose command line
   names ``multimodal_model``) holds an NVIDIA device file open, which only a CUDA context does;
   ``nvidia-smi --query-compute-apps`` is printed beside it where it lists processes.
4. Checks served == reference within 1e-5 over HTTP and gRPC on a record mix with long threads.
   The reference is the in-process pipeline with ``model.pt`` on CUDA (the same device and
   kernels as the served model step); the gap to the CPU reference (the one ``make test`` uses) is printed separately,
   because CUDA and CPU float32 reductions differ in order and that gap is not the server's.
5. Runs ``tce benchmark`` (``make bench``'s benchmark) against that server, in-process side on
   CUDA, and prints its figures; ``--skip-bench`` leaves it out.

Exit code 0: every check passed; 1: a check failed (the summary says which); 2: no CUDA or a
usage error. Figures go to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

TOLERANCE = 1e-5  # the project's served == reference bound (tests/integration/test_serving.py)
GPU_DEVICE = "cuda:0"
NVIDIA_DEVICE_FILES = ("/dev/nvidia",)  # /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm: opened by a CUDA context


class NoCuda(Exception):
    """This machine cannot run the check: no CUDA device is visible to torch."""


def require_cuda() -> dict[str, str]:
    """The device's facts, or ``NoCuda`` with one line saying why not."""
    from tce_backends.model_runner import torch  # through model_runner: it sets the OpenMP wait policy first

    if not torch.cuda.is_available():
        why = ("torch is a CPU-only build" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
        raise NoCuda(f"gpu-check: no CUDA device: {why}; run it on a machine with an NVIDIA GPU")
    facts = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "torch_cuda": str(torch.version.cuda),
             "gpus": str(torch.cuda.device_count())}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if smi:
        facts["nvidia_smi"] = smi.splitlines()[0]
    return facts


def _run(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --- the served copy -------------------------------------------------------------------------------------------

def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # model.pt is ~90 MB: a hard link costs nothing
    except OSError:
        shutil.copy2(source, target)


def gpu_config_text(config_path: Path, device: str = GPU_DEVICE) -> str:
    """The model step's config with its ``device`` parameter set to ``device``; nothing else changes."""
    from tce.repository.builder import read_config, render_config

    config = read_config(config_path)
    if config.backend != "python":
        raise ValueError(f"{config_path} is not the Python host of model.pt (backend {config.backend!r})")
    config.parameters["device"].string_value = device
    return render_config(config)


def gpu_copy(repository: Path, target: Path, device: str = GPU_DEVICE) -> Path:
    """A copy of ``repository`` at ``target`` whose model step asks for ``device``."""
    from tce_backends.graph import MULTIMODAL_MODEL

    shutil.copytree(repository, target, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / MULTIMODAL_MODEL / "config.pbtxt"
    text = gpu_config_text(config, device)
    config.unlink()  # a hard link: writing through it would change the built repository
    config.write_text(text, encoding="utf-8")
    return target


# --- where the model step runs ---------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from each process's PPid (/proc/<pid>/task/*/children needs a
    kernel option that a VM's kernel may lack)."""
    parents: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            continue  # the process ended meanwhile
        parents.setdefault(ppid, []).append(int(status.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def nvidia_files(pid: int) -> list[str]:
    """The NVIDIA device files a process holds open (empty for a process with no CUDA context)."""
    opened = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(NVIDIA_DEVICE_FILES):
            opened.add(target)
    return sorted(opened)


@dataclass(frozen=True)
class Placement:
    """Where the server says the model step runs, and what its processes hold."""

    config_device: str
    stubs: dict[str, list[str]]  # step stub "pid model" -> NVIDIA device files it holds open
    compute_apps: str

    @property
    def on_cuda(self) -> bool:
        model_stubs = [files for name, files in self.stubs.items() if " multimodal_model" in name]
        return self.config_device.startswith("cuda") and bool(model_stubs) and all(model_stubs)


def placement(server_pid: int, http_url: str) -> Placement:
    import tritonclient.http as httpclient

    from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR

    client = httpclient.InferenceServerClient(http_url)
    try:
        config = client.get_model_config(MULTIMODAL_MODEL)
    finally:
        client.close()
    device = config.get("parameters", {}).get("device", {}).get("string_value", "")
    stubs = {}
    for pid in _children(server_pid):
        command = _cmdline(pid)
        step = next((s for s in (MULTIMODAL_MODEL, PREPROCESSOR, CALIBRATOR) if f"/{s}/" in command), None)
        if step is not None and "stub" in command:
            stubs[f"{pid} {step}"] = nvidia_files(pid)
    apps = _run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"])
    return Placement(device, stubs, apps)


# --- served == reference ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Agreement:
    """Largest absolute differences over all tasks' raw and calibrated scores."""

    served_vs_cuda: dict[str, float]  # protocol -> max |served - CUDA reference|
    served_vs_cpu: dict[str, float]  # protocol -> max |served - CPU reference|
    cuda_vs_cpu: float
    labels_equal: dict[str, bool]  # protocol -> labels equal to the CUDA reference's
    records: int

    @property
    def ok(self) -> bool:
        return all(gap <= TOLERANCE for gap in self.served_vs_cuda.values()) and all(self.labels_equal.values())


def max_gap(predictions: Sequence[Any], reference: dict[str, Any], tasks: Sequence[str]) -> float:
    """max |served - reference| over every task's raw and calibrated probabilities."""
    import numpy as np

    gaps = [0.0]
    for task in tasks:
        raw = np.stack([p[task].raw for p in predictions])
        calibrated = np.stack([p[task].calibrated for p in predictions])
        gaps.append(float(np.abs(raw - reference[f"{task}_raw"]).max()))
        gaps.append(float(np.abs(calibrated - reference[f"{task}_calibrated"]).max()))
    return max(gaps)


def _references(bundle_dir: Path, repository: Path, encoded: dict[str, Any]) -> tuple[dict, dict]:
    """The in-process pipeline on the served release's steps: model.pt on CUDA, then on the CPU."""
    from tce.repository.releases import Releases
    from tce_backends.bundle import MODEL_FILE, Bundle
    from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR
    from tce_backends.model_runner import ModelRunner
    from tce_backends.reference import ReferencePipeline

    releases = Releases.load(repository)
    steps = releases.get(releases.current).steps if releases.current is not None else {}
    roots = {step: repository / step / str(steps.get(step, 1)) for step in (PREPROCESSOR, MULTIMODAL_MODEL, CALIBRATOR)}
    bundle = Bundle.load(bundle_dir)
    cuda = ReferencePipeline(bundle, ModelRunner(roots[MULTIMODAL_MODEL] / MODEL_FILE, device=GPU_DEVICE), roots)
    cpu = ReferencePipeline(bundle, ModelRunner(roots[MULTIMODAL_MODEL] / MODEL_FILE, device="cpu"), roots)
    return cuda.predict(encoded), cpu.predict(encoded)


def agreement(bundle_dir: Path, repository: Path, http_url: str, grpc_url: str, records: int) -> Agreement:
    from tce.jobs.benchmark import record_mix
    from tce_backends.bundle import Manifest
    from tce_client import CalibratedClassifierClient
    from tce_client.schema import schema_for

    manifest = Manifest.load(bundle_dir)
    schema = schema_for(manifest)
    mix = record_mix(schema, records, long_thread_share=0.3, seed=25)  # long threads fill every chunk
    cuda, cpu = _references(bundle_dir, repository, schema.encode(mix))
    tasks = [t.name for t in manifest.tasks]
    served_vs_cuda, served_vs_cpu, labels = {}, {}, {}
    for protocol, url in (("http", http_url), ("grpc", grpc_url)):
        with CalibratedClassifierClient(url, protocol=protocol) as client:
            predictions = client.predict(mix)
        served_vs_cuda[protocol] = max_gap(predictions, cuda, tasks)
        served_vs_cpu[protocol] = max_gap(predictions, cpu, tasks)
        labels[protocol] = all([p[t].label for p in predictions] == [v.decode() for v in cuda[f"{t}_label"][:, 0]]
                               for t in tasks)
    cuda_vs_cpu = max(float(abs(cuda[f"{t}_{kind}"] - cpu[f"{t}_{kind}"]).max())
                      for t in tasks for kind in ("raw", "calibrated"))
    return Agreement(served_vs_cuda, served_vs_cpu, cuda_vs_cpu, labels, len(mix))


# --- the run ---------------------------------------------------------------------------------------------------

@dataclass
class Report:
    facts: dict[str, str]
    placement: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _benchmark(repository: Path, grpc_url: str, out: Path, extra: Sequence[str]) -> tuple[int, dict[str, Any]]:
    """``make bench``'s ``tce benchmark`` against the CUDA server, in this process."""
    from tce.cli import main as tce_main

    code = tce_main(["benchmark", "--repository", str(repository), "--grpc-url", grpc_url, "--device", GPU_DEVICE,
                     "--out", str(out), "--test-results", str(out.parent / "gpu_check_test_results"), *extra])
    figures = json.loads(out.read_text(encoding="utf-8")) if code == 0 and out.is_file() else {}
    return code, figures


def check(args: argparse.Namespace, facts: dict[str, str]) -> Report:
    from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

    report = Report(facts)
    with tempfile.TemporaryDirectory(prefix="tce-gpu-check-") as scratch:
        repository = gpu_copy(args.repository, Path(scratch) / "repository", GPU_DEVICE)
        http_port, grpc_port, metrics_port = free_ports(3)
        config = ServerConfig(repository, http_port, grpc_port, metrics_port)
        with EmbeddedServer(config) as server:
            assert server.process is not None
            where = placement(server.process.pid, config.http_url)
            report.placement = {**asdict(where), "on_cuda": where.on_cuda}
            print(f"model step device (served config): {where.config_device}")
            for stub, files in where.stubs.items():
                print(f"  stub {stub}: {', '.join(files) or 'no NVIDIA device file open'}")
            print(f"  nvidia-smi compute apps: {where.compute_apps or '(none listed)'}")
            if not where.on_cuda:
                report.failures.append("the model step's stub holds no CUDA context")
            agree = agreement(args.bundle, args.repository, config.http_url, config.grpc_url, args.records)
            report.agreement = {**asdict(agree), "ok": agree.ok, "tolerance": TOLERANCE}
            _print_agreement(agree)
            if not agree.ok:
                report.failures.append(f"served != CUDA reference within {TOLERANCE:g}")
            if not args.skip_bench:
                code, report.benchmark = _benchmark(repository, config.grpc_url, args.bench_out, args.bench_arg)
                if code != 0:
                    report.failures.append(f"tce benchmark exited with {code}")
    return report


def _print_agreement(agree: Agreement) -> None:
    print(f"served == reference on {agree.records} records (tolerance {TOLERANCE:g}):")
    for protocol in agree.served_vs_cuda:
        print(f"  {protocol:<5} max |served - CUDA reference| {agree.served_vs_cuda[protocol]:.2e}   "
              f"max |served - CPU reference| {agree.served_vs_cpu[protocol]:.2e}   "
              f"labels equal: {agree.labels_equal[protocol]}")
    print(f"  CUDA reference vs CPU reference (not the server's): {agree.cuda_vs_cpu:.2e}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="built model repository")
    p.add_argument("--bundle", type=Path, default=Path("artifacts/demo_bundle"),
                   help="the bundle the repository was built from (text fields and manifest of the reference)")
    p.add_argument("--records", type=int, default=256, help="records in the served == reference mix")
    p.add_argument("--skip-bench", action="store_true", help="checks only, no tce benchmark")
    p.add_argument("--bench-out", type=Path, default=Path("artifacts/gpu_check_benchmark.json"),
                   help="tce benchmark's JSON figures")
    p.add_argument("--bench-arg", action="append", default=[], metavar="ARG",
                   help="passed to tce benchmark, e.g. --bench-arg=--seconds --bench-arg=5")
    p.add_argument("--out", type=Path, default=Path("artifacts/gpu_check.json"), help="the whole report (JSON)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        facts = require_cuda()  # before anything starts: no server, no copy
    except NoCuda as refusal:
        print(refusal, file=sys.stderr)
        return 2
    print("gpu-check on " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    args.bench_out.parent.mkdir(parents=True, exist_ok=True)
    report = check(args, facts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=1, default=str), encoding="utf-8")
    verdict = "PASSED" if not report.failures else "FAILED: " + "; ".join(report.failures)
    print(f"\ngpu-check {verdict} (report: {args.out})")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
