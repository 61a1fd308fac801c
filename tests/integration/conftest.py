"""A real embedded Triton server per bundle, started once per test session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_backends.bundle import Bundle
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import find_nginx

pytestmark = pytest.mark.integration


def nginx_missing() -> str:
    """'' where nginx is installed, else why the gateway cannot start here (a skip reason)."""
    try:
        find_nginx()
    except GatewayError as missing:
        return str(missing)
    return ""


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


def start_server(repository: Path, explicit: bool = False) -> EmbeddedServer:
    """An embedded server on free ports (explicit model control loads every model at start)."""
    config = ServerConfig(repository, *free_ports(), model_control_mode="explicit" if explicit else "none",
                          load_models=("*",) if explicit else ())
    return EmbeddedServer(config, log_path=repository.parent / f"{repository.name}-tritonserver.log").start()


def serve_bundle(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory, name: str,
                 explicit: bool = False) -> Iterator[RunningServer]:
    """A server of ``bundle``'s repository for as long as the generator runs."""
    repository = write_repository(bundle, tmp_path_factory.mktemp(f"repository_{name}"))
    server = start_server(repository, explicit=explicit)
    try:
        yield RunningServer(server, server.config, bundle, repository)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bimodal_server(bimodal_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_bundle(bimodal_bundle, tmp_path_factory, "bimodal")


@pytest.fixture(scope="session")
def trimodal_server(trimodal_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_bundle(trimodal_bundle, tmp_path_factory, "trimodal")
