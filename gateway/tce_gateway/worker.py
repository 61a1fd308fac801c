"""One door worker process: the HTTP and gRPC sides in one event loop, on loopback
ports that only nginx connects to. Several workers share the ports (SO_REUSEPORT).

    python -m tce_gateway.worker CONFIG_FILE [WORKER]   (JSON of a DoorConfig; it holds keys: mode 0600)

``WORKER`` names this worker's prediction log file (``predictions-<WORKER>.jsonl``); a
worker started again in its place takes the same name.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import grpc
from aiohttp import web

from tce_gateway.config import DoorConfig, Limits, PredictionLogConfig, Replica
from tce_gateway.grpc_app import GrpcDoor
from tce_gateway.http_app import HttpDoor
from tce_gateway.prediction_log import PredictionLog, PredictionLogError
from tce_gateway.releases import ReleaseWatcher
from tce_gateway.routing import Router
from tce_gateway.shadow import Shadow
from tce_gateway.signatures import SignatureCache
from tce_gateway.upstream import Triton


def config_to_json(config: DoorConfig) -> str:
    return json.dumps(asdict(config))


def config_from_json(text: str) -> DoorConfig:
    data = json.loads(text)
    log = data.pop("prediction_log", None)
    return DoorConfig(replicas=tuple(Replica(**r) for r in data.pop("replicas")),
                      limits=Limits(**data.pop("limits")),
                      prediction_log=PredictionLogConfig(**log) if log is not None else None, **data)


async def serve(config: DoorConfig, stop: asyncio.Event, worker: str = "0") -> None:
    predictions = PredictionLog(config.prediction_log, worker).start() if config.prediction_log else None
    try:
        await _serve(config, stop, predictions)
    finally:
        if predictions is not None:
            predictions.close()


async def _serve(config: DoorConfig, stop: asyncio.Event, predictions: PredictionLog | None) -> None:
    triton = Triton(config.replicas, config.limits)
    await triton.start()
    signatures = SignatureCache(triton.fetch)
    shadow = Shadow(triton, signatures, config.limits.timeout_s)
    watcher = ReleaseWatcher(config.repository) if config.repository is not None else None
    router = Router(signatures, watcher, shadow)
    runner = web.AppRunner(HttpDoor(config, triton, signatures, router, predictions).app(), auto_decompress=False,
                           access_log=None, keepalive_timeout=75, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.http_port, reuse_port=True, backlog=1024).start()
    limit = config.limits.max_body_bytes
    # The receive limit counts decompressed bytes: a gzip bomb ends here, not in Triton.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", 256 << 20), ("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((GrpcDoor(config, triton, signatures, router, predictions).handler(),))
    server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=5)
        await runner.cleanup()
        await shadow.close()
        await triton.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = config_from_json(Path(args[0]).read_text(encoding="utf-8"))
    worker = args[1] if len(args) > 1 else "0"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop, worker)

    try:
        asyncio.run(run())
    except PredictionLogError as error:  # one line in the door's log, for the launcher to show
        print(f"tce_gateway: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
