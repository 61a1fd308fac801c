"""``tce serve``: the embedded Triton server in the foreground, optionally behind the gateway."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command
from tce_client import DEFAULT_MODEL

if TYPE_CHECKING:
    from tce.serving.tracing import TraceConfig

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import ipaddress

    from tce.serving.security import read_admin_key
    from tce.serving.server import ServerConfig, ServerError, Watchdog, free_ports, serve_forever
    from tce_gateway.config import GatewayConfig
    from tce_gateway.launcher import GatewayError, find_nginx
    from tce_gateway.options import prediction_log_config

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise ServerError(f"--host {args.host!r} is not an IP address") from None
    gateway = None
    use_gateway = args.gateway or args.sagemaker or args.replicas > 1 or args.prediction_log is not None
    if use_gateway:
        try:
            find_nginx()  # fail before Triton starts
            gateway = GatewayConfig(args.host, args.http_port, args.grpc_port,
                                    args.sagemaker_port if args.sagemaker else None, door_workers=args.gateway_workers,
                                    prediction_log=prediction_log_config(args))
        except (GatewayError, ValueError) as error:
            raise ServerError(str(error)) from None
        http_port, grpc_port, host = *free_ports(2), "127.0.0.1"
    elif not loopback:
        raise ServerError(f"refusing to expose Triton itself on {args.host}: one HTTP request can crash Triton "
                          "2.51 (docs/security.md); add --gateway to serve through the checking gateway")
    else:
        http_port, grpc_port, host = args.http_port, args.grpc_port, args.host
    _say_if_sized_for_another_host(args.repository)
    operator_key = read_admin_key(args.admin_key_file)
    trace = _trace(args)
    config = ServerConfig(args.repository, http_port, grpc_port, args.metrics_port, host=host,
                          model_control_mode=args.model_control_mode, load_models=tuple(args.load_model),
                          model_config_name=args.model_config_name, admin_key=operator_key, trace=trace)
    if trace is not None:
        log.info(trace.describe())
    watchdog = Watchdog(interval_s=args.watch_interval, max_restarts=args.max_restarts)
    return serve_forever(config, log_path=args.log, watchdog=watchdog, gateway=gateway, replicas=args.replicas,
                         operator_key=operator_key, default_model=args.model)


def _trace(args: argparse.Namespace) -> "TraceConfig | None":
    """Triton's tracing from the --trace-* options; None when none is given."""
    from tce.serving.tracing import DEFAULT_RATE, TraceConfig, TraceError

    if args.trace_file is None and args.trace_otel is None:
        if args.trace_rate is not None or args.trace_config or args.trace_level is not None:
            raise TraceError("--trace-rate, --trace-level and --trace-config need --trace-file or --trace-otel")
        return None
    return TraceConfig(file=args.trace_file, otel_url=args.trace_otel, rate=args.trace_rate or DEFAULT_RATE,
                       level=args.trace_level or "TIMESTAMPS", settings=tuple(args.trace_config))


def _say_if_sized_for_another_host(repository: Path) -> None:
    """One line when ``tce build`` sized the repository for another host (it still serves)."""
    from tce.repository.host_sizing import SizingError, detect_host, mismatch

    try:
        line = mismatch(repository, detect_host(use_torch=False))
    except SizingError as error:
        line = f"tce: {error}"
    if line:
        log.warning(line)


def add(commands: Commands) -> None:
    from tce_gateway.options import add_prediction_log_options

    p = add_command(commands, "serve", "run the embedded Triton server in the foreground", _serve)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --gateway")
    p.add_argument("--gateway", action="store_true",
                   help="serve through the gateway that checks and rebuilds every request (needs nginx); Triton "
                        "then listens on 127.0.0.1 only (--prediction-log, --sagemaker and --replicas imply it)")
    p.add_argument("--replicas", type=int, default=1,
                   help="Triton processes behind the gateway (implies --gateway): a request one of them dropped by "
                        "dying is sent to another")
    p.add_argument("--gateway-workers", type=int, default=2, help="door processes of the gateway")
    add_prediction_log_options(p, {})  # the gateway writes it: --prediction-log implies --gateway
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none",
                   help="explicit: models are loaded and unloaded through the (admin-key) repository API")
    p.add_argument("--load-model", action="append", default=[],
                   help="with explicit control, a model to load at start; '*' loads all")
    p.add_argument("--model-config-name", default="", help="alternative config name, e.g. libtorch")
    p.add_argument("--sagemaker", action="store_true",
                   help="also answer SageMaker's protocol (GET /ping, POST /invocations for --model) on "
                        "--sagemaker-port of --host, through the gateway (implies --gateway)")
    p.add_argument("--sagemaker-port", type=int, default=8080, help="port of the SageMaker protocol")
    p.add_argument("--model", default=DEFAULT_MODEL, help="with --sagemaker: the model /invocations runs")
    p.add_argument("--log", type=Path, default=None, help="server log file (if not given: a temporary file)")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="file holding the admin key for model control, shared memory, logging and trace "
                        "(if not given: $TCE_ADMIN_KEY_FILE, $TCE_ADMIN_KEY, else a new random key per run)")
    p.add_argument("--watch-interval", type=float, default=5.0,
                   help="seconds between canary inferences; 0 turns the canary off (a Triton that exits is still "
                        "restarted)")
    trace = p.add_argument_group("tracing", "Triton's own request traces: each step's queue and compute times per "
                                           "request (read a trace file with tce trace FILE)")
    trace.add_argument("--trace-file", type=Path, default=None, metavar="PATH",
                       help="write traces to this JSON file (Triton writes it when it stops; with --trace-config "
                            "triton,log-frequency=N every N traces to PATH.<n>)")
    trace.add_argument("--trace-otel", default=None, metavar="URL",
                       help="export traces as OpenTelemetry spans to this OTLP/HTTP collector, e.g. "
                            "localhost:4318/v1/traces")
    trace.add_argument("--trace-rate", type=int, default=None, metavar="N",
                       help="trace one request in N (if not given: 1000)")
    trace.add_argument("--trace-level", choices=("TIMESTAMPS", "TENSORS"), default=None,
                       help="TENSORS also records each step's tensors (if not given: TIMESTAMPS)")
    trace.add_argument("--trace-config", action="append", default=[], metavar="[MODE,]SETTING=VALUE",
                       help="any other Triton trace setting, checked against those Triton 2.51 knows (e.g. "
                            "count=100, triton,log-frequency=50, opentelemetry,resource=service.name=tce)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="restarts of one Triton allowed within 10 minutes before tce serve gives up with exit code 3")
