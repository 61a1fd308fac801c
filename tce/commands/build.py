"""``tce build``: a bundle becomes a Triton model repository, whole or not at all
(``tce.jobs.build``), with instance counts sized to the host (``tce.repository.host_sizing``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command
from tce_client import DEFAULT_MODEL

log = logging.getLogger(__name__)


def _build(args: argparse.Namespace) -> int:
    from tce.jobs.build import build
    from tce.repository.builder import RepositoryOptions
    from tce.repository.host_sizing import HostSizing, SizingError, SizingOverrides, detect_host, given_host
    from tce_backends.errors import UsageError

    try:
        host = given_host(args.host_cpus, args.host_gpus, detect_host())
        sizing = HostSizing.for_host(host, SizingOverrides(
            preprocessor_instances=args.preprocessor_instances, calibrator_instances=args.calibrator_instances,
            model_instances=args.model_instances, model_instances_per_gpu=args.model_instances_per_gpu,
            model_threads=args.model_threads))
    except SizingError as error:
        raise UsageError(str(error)) from None
    print(sizing.describe())  # what the build decided for this host: part of its result
    options = RepositoryOptions(ensemble_name=args.ensemble_name, max_batch_size=args.max_batch_size,
                                preprocessor_batching=args.preprocessor_batching)
    if options.preprocessor_batching:
        log.warning("preprocessor: merges requests; serve it behind the gateway only (a request with broken BYTES "
                    "framing sent to Triton directly would fail the requests merged with it)")
    bundle, out = build(args.bundle, args.out, options, say=log.info, lock_timeout_s=args.lock_timeout, sizing=sizing)
    print(f"model repository for bundle '{bundle.manifest.name}' written to {out} "
          f"(ensemble '{options.ensemble_name}'; libtorch host: --model-config-name=libtorch)")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "build", "turn a bundle into a Triton model repository", _build)
    p.add_argument("bundle", type=Path, help="bundle directory (tce demo-bundle, tce import-seed)")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository to write")
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL, help="name clients call the ensemble by")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per request and per batch, every step")
    p.add_argument("--preprocessor-batching", action="store_true",
                   help="let the preprocessor merge requests into one execution (faster under load); only for "
                        "a Triton that callers reach through the gateway alone (compose, Kubernetes, SageMaker)")
    p.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait while another tce command changes the same repository")
    sizing = p.add_argument_group(
        "instance counts", "chosen from the host's cores and GPUs by the rule in tce/repository/host_sizing.py "
        "(printed with the reasons); each option below replaces one choice")
    sizing.add_argument("--host-cpus", type=float, default=None,
                        help="size for a host with this many cores (a deploy target; default: this host's, "
                             "CPU affinity capped by the cgroup quota, or $TCE_HOST_CPUS)")
    sizing.add_argument("--host-gpus", type=int, default=None,
                        help="size for a host with this many GPUs (default: this host's, or $TCE_HOST_GPUS)")
    sizing.add_argument("--preprocessor-instances", type=int, default=None, help="instances of the preprocessor")
    sizing.add_argument("--calibrator-instances", type=int, default=None, help="instances of the calibrator")
    sizing.add_argument("--model-instances", type=int, default=None,
                        help="instances of the model step's Python host (per GPU on a GPU host: Triton counts a "
                             "KIND_GPU group per device)")
    sizing.add_argument("--model-instances-per-gpu", type=int, default=None,
                        help="instances per GPU of the libtorch host (the GPU image)")
    sizing.add_argument("--model-threads", type=int, default=None,
                        help="torch threads per CPU model instance (0: torch's default, every core)")
