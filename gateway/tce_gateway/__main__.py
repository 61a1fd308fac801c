"""``python -m tce_gateway``: the gateway in the foreground, as the images run it.

    python -m tce_gateway --triton triton:8000,triton:8001 --address 0.0.0.0 \\
        --http-port 8000 --grpc-port 8001 [--sagemaker-port 8080] [--admin-key-file F] \\
        [--repository /models] [--prediction-log DIR --prediction-log-rate 0.1 [--prediction-log-inputs]]

The prediction log's options default to $TCE_PREDICTION_LOG, $TCE_PREDICTION_LOG_RATE and
$TCE_PREDICTION_LOG_INPUTS (1: on), so an image turns it on with its environment.
It restarts a door worker or nginx that dies, and stops everything on SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from tce_gateway.config import DEFAULT_MODEL, GatewayConfig, Limits, Replica
from tce_gateway.launcher import Gateway, GatewayError
from tce_gateway.options import add_prediction_log_options, prediction_log_config


def _replica(text: str) -> Replica:
    http, _, grpc = text.partition(",")
    try:
        return Replica(http, grpc)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (give HTTP,GRPC, e.g. triton:8000,triton:8001)") from None


def _port(text: str) -> int | None:
    return None if text in ("", "0", "off") else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tce_gateway", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--triton", type=_replica, action="append", required=True, metavar="HTTP,GRPC",
                   help="a Triton replica's HTTP and gRPC addresses; repeat for several")
    p.add_argument("--address", default="127.0.0.1", help="address callers connect to")
    p.add_argument("--http-port", type=_port, default=8000, help="HTTP/REST port ('off': none)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port ('off': none)")
    p.add_argument("--sagemaker-port", type=_port, default=None, help="SageMaker /ping and /invocations port")
    p.add_argument("--default-model", default=DEFAULT_MODEL, help="the model /invocations runs")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="key administrative calls must carry, checked here too (else Triton alone checks it)")
    p.add_argument("--repository", type=Path, default=None,
                   help="the model repository Triton serves (read-only is enough): its releases.json sets canary "
                        "and shadow traffic (if not given: no traffic split)")
    p.add_argument("--door-workers", type=int, default=2, help="door processes")
    p.add_argument("--nginx-workers", type=int, default=0, help="nginx workers (0: one per core)")
    p.add_argument("--max-connections-per-client", type=int, default=GatewayConfig.max_connections_per_client)
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes,
                   help="largest request body after decompression")
    p.add_argument("--max-elements", type=int, default=Limits.max_elements,
                   help="most elements of all inputs of one request together")
    add_prediction_log_options(p, os.environ)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        key = args.admin_key_file.read_text(encoding="utf-8").strip() if args.admin_key_file else None
        config = GatewayConfig(args.address, args.http_port, args.grpc_port, args.sagemaker_port,
                               nginx_workers=args.nginx_workers, door_workers=args.door_workers,
                               max_connections_per_client=args.max_connections_per_client,
                               limits=Limits(max_body_bytes=args.max_body_bytes, max_elements=args.max_elements),
                               prediction_log=prediction_log_config(args))
        gateway = Gateway(tuple(args.triton), config, default_model=args.default_model, admin_key=key or None,
                          repository=args.repository)
        gateway.start()
    except (OSError, ValueError, GatewayError) as error:
        print(f"tce_gateway: error: {error}", file=sys.stderr)
        return 2
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    ports = ", ".join(f"{n} {config.address}:{p}" for n, p in (("HTTP", config.http_port),
                      ("gRPC", config.grpc_port), ("SageMaker", config.sagemaker_port)) if p)
    print(f"tce_gateway: serving {ports} for {', '.join(r.http for r in gateway.replicas)}", flush=True)
    try:
        while not stopping:
            time.sleep(0.5)
            for part in gateway.check():
                print(f"tce_gateway: restarted {part}", file=sys.stderr, flush=True)
            for line in gateway.door_lines():  # the door workers' log, in the container's
                print(line, file=sys.stderr, flush=True)
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
