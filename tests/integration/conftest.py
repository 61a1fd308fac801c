"""A real embedded Triton server per bundle, started once per test session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tce.repository import write_repository
from tce.server import EmbeddedServer, ServerConfig, free_ports
from tce_backends.bundle import Bundle

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class RunningServer:
    server: EmbeddedServer
    config: ServerConfig
    bundle: Bundle
    repository: Path

    @property
    def http_url(self) -> str:
        return self.config.http_url

    @property
    def grpc_url(self) -> str:
        return self.config.grpc_url


def _serve(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[RunningServer]:
    repository = write_repository(bundle, tmp_path_factory.mktemp(f"repository_{name}"))
    http_port, grpc_port, metrics_port = free_ports()
    config = ServerConfig(repository, http_port, grpc_port, metrics_port)
    server = EmbeddedServer(config, log_path=repository.parent / f"{name}-tritonserver.log")
    server.start()
    try:
        yield RunningServer(server, config, bundle, repository)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bimodal_server(bimodal_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(bimodal_bundle, tmp_path_factory, "bimodal")


@pytest.fixture(scope="session")
def trimodal_server(trimodal_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(trimodal_bundle, tmp_path_factory, "trimodal")
