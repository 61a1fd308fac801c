"""How many instances each step gets, from the host's cores and GPUs: one rule, written here.

``tce build`` sizes the repository it writes with ``HostSizing.for_host(detect_host())``
(each number overridable), prints what it chose and why, and records it in
``host_sizing.json`` at the repository's root. The server image runs this same file as a
script (``docker/Dockerfile`` copies it; it imports only the standard library) to compare
that record with the container it starts in, so a repository built for another shape of
host is named at start, with the ``tce build`` command that fits::

    python3 host_sizing.py check /models      # in docker/entrypoint.sh
    python3 host_sizing.py show               # what this host would get

Host facts come from the process's own view, which is what a container is allowed:
``os.sched_getaffinity`` (cpusets, ``docker --cpuset-cpus``) capped by the cgroup CPU quota
(``docker --cpus``, a pod's ``limits.cpu``); GPUs from ``torch.cuda.device_count()`` where
torch is installed, else the ``/dev/nvidiaN`` devices the container runtime exposed.
``TCE_HOST_CPUS`` / ``TCE_HOST_GPUS`` (or ``tce build --host-cpus/--host-gpus``) replace
them: a Kubernetes pod without a CPU limit sees the whole node, so the manifests pass the
pod's CPU request through the downward API.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

SIZING_FILE = "host_sizing.json"
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEV_ROOT = Path("/dev")
CPUS_ENV = "TCE_HOST_CPUS"
GPUS_ENV = "TCE_HOST_GPUS"
# Each Python-step instance is a process with its own shared-memory region (64 MiB at start,
# growing under load) in /dev/shm, which compose and the pods size at 2 GiB: these caps keep
# the Python steps under about 1.6 GiB of it however many cores the host has.
MAX_PREPROCESSORS = 16
MAX_CALIBRATORS = 8
MAX_CPU_MODEL_INSTANCES = 4
# One CPU forward of the demo's MiniLM stops gaining from more intra-op threads well before a
# big host's core count (it is a batch of 64-token chunks); past this many cores per instance,
# another instance is worth more than more threads. Not measured here beyond 2 cores.
CORES_PER_CPU_MODEL_INSTANCE = 8


class SizingError(ValueError):
    """A host fact or an override that cannot size a repository (one line, for the command)."""


@dataclass(frozen=True)
class HostFacts:
    """What the host offers the server: usable cores (may be fractional under a CPU quota) and GPUs."""

    cpus: float
    gpus: int
    source: str = "given"

    def __post_init__(self) -> None:
        if not (self.cpus > 0 and math.isfinite(self.cpus)):
            raise SizingError(f"host cpus must be a positive number, got {self.cpus}")
        if self.gpus < 0:
            raise SizingError(f"host gpus must be >= 0, got {self.gpus}")

    @property
    def cores(self) -> int:
        """Whole cores: a quota of 2.5 CPUs runs two steps' worth of work at once, not three."""
        return max(1, math.floor(self.cpus + 1e-9))


@dataclass(frozen=True)
class SizingOverrides:
    """Numbers the caller fixes; ``None`` leaves the rule's choice."""

    preprocessor_instances: int | None = None
    calibrator_instances: int | None = None
    model_instances: int | None = None  # the Python host's: per GPU on a GPU host, else in all
    model_instances_per_gpu: int | None = None  # the libtorch host's KIND_GPU count (per GPU)
    model_threads: int | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < (0 if name == "model_threads" else 1):
                raise SizingError(f"{name.replace('_', '-')} must be >= {0 if name == 'model_threads' else 1}, "
                                  f"got {value}")


@dataclass(frozen=True)
class HostSizing:
    """Instance counts for one host. The rule (``for_host``), with c whole cores and g GPUs:

    GPU host (g >= 1): the model step runs on the GPUs and the CPU must feed them.
      - model: ``model_instances_per_gpu`` = 2 instances per GPU (Triton counts a KIND_GPU group
        per device, so g GPUs run 2g): while one instance's host side copies inputs and runs
        Python, the other's kernels keep the GPU busy. The Python host's group is KIND_GPU too,
        so each instance gets its own ``cuda:N``.
      - Python steps: one core per GPU is left to the model instances' host side and Triton's
        frontends; the other p = max(1, c - g) cores go to the Python steps, two thirds to the
        preprocessor (one request per execution: instances are its only parallelism, and its
        tokenizer is the costliest per-record CPU work), the rest to the calibrator (it batches,
        so one instance merges many requests): preprocessor = max(1, ceil(2p/3)), calibrator =
        max(1, p - preprocessor).
    CPU host (g = 0): the model step is the slow step and takes the cores with torch's intra-op
      threads; the Python steps need only enough instances to keep it fed.
      - model: one instance per 8 cores (at most 4), each with c / instances threads; a single
        instance keeps torch's default (every core). On 2 cores 2 instances lost to 1
        (71.4 vs 74.4 rec/s saturated, docs/performance.md).
      - preprocessor = max(2, ceil(c/4)): on 2 cores 1 instance starved the model (59.5 rec/s,
        mean model batch 1.7); calibrator = max(1, c // 8).
      The libtorch host (the GPU image) still gets the GPU rule's 2 per GPU.
    Caps: 16 preprocessors, 8 calibrators (a /dev/shm region each; 2 GiB in compose and pods).
    On the 2-core development machine this gives the measured defaults of ``RepositoryOptions``.
    """

    host: HostFacts
    preprocessor_instances: int
    calibrator_instances: int
    model_instances: int
    model_instances_per_gpu: int
    model_threads: int  # 0: torch's default (every core)
    reasons: tuple[str, ...] = ()

    @property
    def model_on_gpu(self) -> bool:
        return self.host.gpus > 0

    @classmethod
    def for_host(cls, host: HostFacts, overrides: SizingOverrides = SizingOverrides()) -> HostSizing:
        c, g = host.cores, host.gpus
        per_gpu = 2
        if g:
            python_cores = max(1, c - g)
            preprocessors = max(1, math.ceil(2 * python_cores / 3))
            calibrators = max(1, python_cores - preprocessors)
            models, threads = per_gpu, 0
            why = [f"{g} GPU(s): model step on the GPUs, {per_gpu} instances per GPU ({per_gpu * g} in all); "
                   f"{python_cores} of {c} cores for the Python steps (one per GPU feeds the model)",
                   f"preprocessor ceil(2*{python_cores}/3), calibrator the rest"]
        else:
            models = min(MAX_CPU_MODEL_INSTANCES, max(1, c // CORES_PER_CPU_MODEL_INSTANCE))
            threads = 0 if models == 1 else c // models
            preprocessors, calibrators = max(2, math.ceil(c / 4)), max(1, c // 8)
            why = [f"no GPU: model step on the CPU, {models} instance(s) of "
                   f"{'every core' if not threads else f'{threads} threads'} (one per 8 cores)",
                   f"preprocessor max(2, ceil({c}/4)), calibrator max(1, {c}//8); libtorch host "
                   f"(GPU image): {per_gpu} per GPU"]
        preprocessors, calibrators = min(preprocessors, MAX_PREPROCESSORS), min(calibrators, MAX_CALIBRATORS)
        sizing = cls(host, preprocessors, calibrators, models, per_gpu, threads, tuple(why))
        return sizing.overridden(overrides)

    def overridden(self, overrides: SizingOverrides) -> HostSizing:
        given = {name: value for name, value in asdict(overrides).items() if value is not None}
        if not given:
            return self
        said = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in given.items())
        return replace(self, **given, reasons=(*self.reasons, f"overridden: {said}"))

    def counts(self) -> dict[str, int]:
        return {"preprocessor_instances": self.preprocessor_instances,
                "calibrator_instances": self.calibrator_instances, "model_instances": self.model_instances,
                "model_instances_per_gpu": self.model_instances_per_gpu, "model_threads": self.model_threads,
                "model_on_gpu": int(self.model_on_gpu)}

    def describe(self) -> str:
        """What the build prints: the host, the counts, and why."""
        host = f"{self.host.cpus:g} cpus, {self.host.gpus} GPU(s) ({self.host.source})"
        model = (f"{self.model_instances} per GPU (KIND_GPU)" if self.model_on_gpu
                 else f"{self.model_instances} on the CPU" + (f", {self.model_threads} threads each"
                                                             if self.model_threads else ""))
        return (f"sized for {host}: preprocessor {self.preprocessor_instances}, calibrator "
                f"{self.calibrator_instances}, model {model}, libtorch host {self.model_instances_per_gpu} per GPU"
                f"\n  why: " + "; ".join(self.reasons))

    def record(self) -> dict[str, object]:
        """``host_sizing.json``: the host it was sized for and the counts, for the image's check."""
        return {"host": asdict(self.host), "counts": self.counts(), "reasons": list(self.reasons)}


# -- host facts --------------------------------------------------------------------------------------------

def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, else v1 CFS quota); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus(dev: Path = DEV_ROOT, environ: Mapping[str, str] = os.environ, use_torch: bool = True) -> int:
    """CUDA devices: torch's count where torch is importable (the Python host) and wanted, else
    the ``/dev/nvidiaN`` nodes (the GPU image has no Python torch; its runtime exposes only the
    container's GPUs), fewer where ``CUDA_VISIBLE_DEVICES`` names fewer."""
    if use_torch:
        try:
            import torch
        except ImportError:
            pass
        else:
            return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    nodes = sum(1 for p in dev.glob("nvidia[0-9]*") if p.name[6:].isdigit())
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return nodes
    return min(nodes, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def _number(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        # The downward API may give millicores ("1500m") where a divisor is set.
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise SizingError(f"${name}={text!r} is not a number") from None


def detect_host(environ: Mapping[str, str] = os.environ, cgroup_root: Path = CGROUP_ROOT,
                dev: Path = DEV_ROOT, use_torch: bool = True) -> HostFacts:
    """This process's cores (affinity capped by the cgroup quota) and GPUs; ``TCE_HOST_CPUS`` /
    ``TCE_HOST_GPUS`` replace what they name. ``use_torch=False``: count GPUs without importing
    torch (a long-running supervisor need not carry it)."""
    cpus_env, gpus_env = _number(environ, CPUS_ENV), _number(environ, GPUS_ENV)
    sources = []
    if cpus_env is not None:
        cpus, sources = cpus_env, [f"${CPUS_ENV}"]
    else:
        cpus = float(affinity_cpus())
        quota = cgroup_cpu_limit(cgroup_root)
        sources.append("CPU affinity")
        if quota is not None and quota < cpus:
            cpus = quota
            sources.append("cgroup CPU quota")
    if gpus_env is not None:
        gpus = int(gpus_env)
        sources.append(f"${GPUS_ENV}")
    else:
        gpus = visible_gpus(dev, environ, use_torch)
    return HostFacts(cpus, gpus, " + ".join(sources))


def given_host(cpus: float | None, gpus: int | None, detected: HostFacts) -> HostFacts:
    """``--host-cpus/--host-gpus``: size for another host (a deploy target) than this one."""
    if cpus is None and gpus is None:
        return detected
    return HostFacts(detected.cpus if cpus is None else cpus, detected.gpus if gpus is None else gpus,
                     "given" if None not in (cpus, gpus) else f"given + {detected.source}")


# -- the record and the image's check -----------------------------------------------------------------------

def write_record(repository: Path, sizing: HostSizing) -> Path:
    path = Path(repository) / SIZING_FILE
    path.write_text(json.dumps(sizing.record(), indent=1) + "\n", encoding="utf-8")
    return path


def mismatch(repository: Path, host: HostFacts) -> str | None:
    """One line when the repository was sized for another host than ``host`` (its counts differ
    from what the rule gives ``host``); None when it fits or carries no record (built by hand)."""
    try:
        record = json.loads((Path(repository) / SIZING_FILE).read_text(encoding="utf-8"))
        built_for = HostFacts(float(record["host"]["cpus"]), int(record["host"]["gpus"]))
        counts = record["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "overridden" in " ".join(record.get("reasons", [])):
        return None  # numbers fixed by hand are the operator's choice
    wanted = HostSizing.for_host(host).counts()
    if wanted == counts:
        return None
    return (f"tce: the model repository was sized for {built_for.cpus:g} cpus and {built_for.gpus} GPU(s); "
            f"this host has {host.cpus:g} cpus and {host.gpus} GPU(s) ({host.source}). To fit it, rebuild with "
            f"'tce build BUNDLE --host-cpus {host.cores} --host-gpus {host.gpus}'")


def main(argv: Sequence[str]) -> int:
    """``check REPOSITORY``: warn (stderr, exit 0) when it was sized for another host; ``show``."""
    try:
        host = detect_host()
    except SizingError as error:
        print(f"tce: {error}", file=sys.stderr)
        return 0 if argv[:1] == ["check"] else 2
    if argv[:1] == ["check"] and len(argv) == 2:
        line = mismatch(Path(argv[1]), host)
        if line:
            print(line, file=sys.stderr)
        return 0  # a warning: a repository sized for another host still serves
    if argv[:1] == ["show"]:
        print(HostSizing.for_host(host).describe())
        return 0
    print("usage: host_sizing.py check REPOSITORY | show", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
