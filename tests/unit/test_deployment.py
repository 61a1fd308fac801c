"""docker-compose.yml and docker/Dockerfile, validated statically (no Docker engine here)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from tce.cli import DEFAULT_REPOSITORY
from tce.repository import LIBTORCH_CONFIG_NAME
from tce.server import NGC_RELEASE
from tests.conftest import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
DOCKERFILE = (REPO_ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
SERVICES = COMPOSE["services"]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _stages() -> dict[str, str]:
    stages, current = {}, None
    for line in DOCKERFILE.splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line)
        if match:
            current = match.group(2)
            stages[current] = ""
        if current:
            stages[current] += line + "\n"
    return stages


def test_services_and_profiles():
    assert set(SERVICES) == {"triton", "triton-cpu", "locust"}
    assert "profiles" not in SERVICES["triton"], "`docker compose up` must start the GPU server"
    assert SERVICES["triton-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["locust"]["profiles"] == ["loadtest"]


@pytest.mark.parametrize("name", ["triton", "triton-cpu"])
def test_triton_services_ports_health_shm_and_repository(name):
    service = SERVICES[name]
    assert service["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
    health = " ".join(service["healthcheck"]["test"])
    assert "/v2/health/ready" in health and "localhost:8000" in health
    assert service["shm_size"] in ("1gb", "2gb", "4gb")
    (volume,) = service["volumes"]
    source, target, mode = volume.split(":")
    assert source == f"./{DEFAULT_REPOSITORY}" and mode == "ro"
    assert f"--model-repository={target}" in service["command"]
    # the mounted directory is the one `make build` / `tce build` writes, and it exists in the checkout
    assert (REPO_ROOT / DEFAULT_REPOSITORY / "multimodal_model" / "config.pbtxt").is_file()
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"REPOSITORY := {DEFAULT_REPOSITORY}" in makefile
    assert service["build"]["dockerfile"] == "docker/Dockerfile"


def test_gpu_variant_serves_the_libtorch_host_on_a_reserved_gpu():
    service = SERVICES["triton"]
    assert service["build"]["target"] == "server"
    assert f"--model-config-name={LIBTORCH_CONFIG_NAME}" in service["command"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    libtorch = (REPO_ROOT / DEFAULT_REPOSITORY / "multimodal_model" / "configs" / f"{LIBTORCH_CONFIG_NAME}.pbtxt")
    text = libtorch.read_text(encoding="utf-8")
    assert 'backend: "pytorch"' in text and "KIND_GPU" in text and "dynamic_batching" in text
    assert "model_warmup" in text


def test_cpu_variant_uses_the_python_host_without_a_gpu():
    service = SERVICES["triton-cpu"]
    assert service["build"]["target"] == "server-cpu"
    assert "deploy" not in service
    assert not any(arg.startswith("--model-config-name") for arg in service["command"])
    python_host = (REPO_ROOT / DEFAULT_REPOSITORY / "multimodal_model" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'backend: "python"' in python_host


def test_explicit_model_control_for_live_calibration_updates():
    for name in ("triton", "triton-cpu"):
        command = SERVICES[name]["command"]
        assert "--model-control-mode=explicit" in command and "--load-model=*" in command


def test_locust_service_targets_triton_and_keeps_reports():
    service = SERVICES["locust"]
    assert service["build"]["target"] == "loadtest"
    command = " ".join(service["command"])
    assert "--headless" in command and ":8000" in command and ":8001" in command
    assert any(v.startswith("./load_tests/reports:") for v in service["volumes"])
    assert "triton" in service["depends_on"]


def test_dockerfile_uses_the_embedded_servers_release():
    stages = _stages()
    assert set(stages) == {"server", "server-cpu", "loadtest"}
    assert f"tritonserver:{NGC_RELEASE}-py3" in DOCKERFILE
    assert "FROM ${TRITON_IMAGE} AS server" in stages["server"]
    assert "COPY python_backends" in stages["server"] and "PYTHONPATH=/opt/tce/python_backends" in stages["server"]


def test_dockerfile_adds_only_what_the_python_steps_need():
    stages = _stages()
    lock = _lock()
    assert "torch" not in stages["server"], "the GPU image runs model.pt on libtorch: no Python torch"
    assert "requirements-server.txt" in stages["server"]
    pins = {}
    for line in (REPO_ROOT / "docker" / "requirements-server.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert pins == {"numpy": lock["numpy"], "tokenizers": lock["tokenizers"]}
    torch_version = re.search(r"ARG TORCH_VERSION=(\S+)", stages["server-cpu"]).group(1)
    assert lock["torch"].startswith(torch_version)


def test_serving_code_imports_only_numpy_and_tokenizers():
    """What the image provides is enough: import the Triton glue with torch, pandas, sklearn
    and transformers blocked and a stand-in for Triton's pb_utils module."""
    script = textwrap.dedent(f"""
        import sys, types, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "pandas", "sklearn", "transformers", "tce", "tce_client"}}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
        sys.path.insert(0, {str(REPO_ROOT / "python_backends")!r})
        import tce_backends.triton.models, tce_backends.bundle, tce_backends.steps
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_serving_code_parses_as_python_3_10():
    """The 24.10 NGC image runs the Python steps on its Python 3.10."""
    import ast

    for path in (REPO_ROOT / "python_backends").rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
