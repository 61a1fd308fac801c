"""docker-compose.yml and docker/Dockerfile, validated statically (no Docker engine here)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tce.cli import DEFAULT_REPOSITORY
from tce.repository.builder import LIBTORCH_CONFIG_NAME
from tce.serving.server import NGC_RELEASE
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
    assert set(SERVICES) == {"triton", "triton-cpu", "triton-sagemaker", "gateway", "locust", "prometheus", "grafana"}
    assert "profiles" not in SERVICES["triton"], "`docker compose up` must start the GPU server"
    assert "profiles" not in SERVICES["gateway"]
    assert SERVICES["triton-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["locust"]["profiles"] == ["loadtest"]
    assert SERVICES["triton-sagemaker"]["profiles"] == ["sagemaker"]
    assert SERVICES["prometheus"]["profiles"] == SERVICES["grafana"]["profiles"] == ["monitoring"]


def _published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of every published port."""
    out = []
    for spec in service.get("ports", []):
        address, host, container = spec.rsplit(":", 2)
        out.append((address, host, container))
    return out


def test_only_the_gateway_faces_callers_and_everything_binds_loopback_by_default():
    gateway = _published(SERVICES["gateway"])
    assert {(h, c) for _, h, c in gateway} == {("8000", "8000"), ("8001", "8001")}
    for name in ("triton", "triton-cpu", "gateway"):
        for address, _, _container in _published(SERVICES[name]):
            assert address.startswith("${") and address.endswith(":-127.0.0.1}"), (name, address)
    for name in ("triton", "triton-cpu"):
        assert [c for _, _, c in _published(SERVICES[name])] == ["8002"], "Triton publishes metrics only"
    host_ports = [h for name in ("triton", "triton-cpu", "gateway") for _, h, _ in _published(SERVICES[name])]
    assert len(host_ports) == len(set(host_ports)), "two services would bind the same host port"


def test_gateway_is_the_front_door_image_in_front_of_triton():
    gateway = SERVICES["gateway"]
    assert gateway["build"]["target"] == "gateway" and gateway["image"].startswith("tce-gateway:")
    from tce_gateway.__main__ import parser

    args = parser().parse_args([re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", a) for a in gateway["command"]])
    assert [(r.http, r.grpc) for r in args.triton] == [("triton:8000", "triton:8001")]
    assert (args.http_port, args.grpc_port, args.address) == (8000, 8001, "0.0.0.0")
    # nothing from outside its image but the repository Triton serves, read-only, for releases.json,
    # and the volume its prediction log is written to (off unless TCE_PREDICTION_LOG names it)
    assert gateway["volumes"] == [f"{SERVICES['triton']['volumes'][0].split(':')[0]}:{args.repository}:ro",
                                  "prediction-log:/var/log/tce/predictions"]
    assert args.prediction_log is None and "prediction-log" in COMPOSE["volumes"]
    environment = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in gateway["environment"].items()}
    assert environment == {"TCE_PREDICTION_LOG": "", "TCE_PREDICTION_LOG_RATE": "1", "TCE_PREDICTION_LOG_INPUTS": "0"}


@pytest.mark.parametrize("name", ["triton", "triton-cpu"])
def test_triton_services_health_shm_secret_and_repository(name):
    service = SERVICES[name]
    health = " ".join(service["healthcheck"]["test"])
    assert "tce_backends.canary" in health and "localhost:8000" in health, "health must mean the ensemble answers"
    assert service["secrets"] == ["tce_admin_key"]
    assert service["shm_size"] in ("1gb", "2gb", "4gb")
    (volume,) = service["volumes"]
    source, target, mode = volume.split(":")
    assert source == f"./{DEFAULT_REPOSITORY}" and mode == "ro"
    assert f"--model-repository={target}" in service["command"]
    assert "tritonserver" not in service["command"], "the image's entrypoint starts tritonserver with the key"
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


def test_locust_service_goes_through_the_gateway_and_keeps_reports():
    service = SERVICES["locust"]
    assert service["build"]["target"] == "loadtest"
    command = " ".join(service["command"])
    assert "--headless" in command and "gateway:8000" in command and "gateway:8001" in command
    assert "--slo-report=/opt/tce/load_tests/reports/slo_verdict.json" in command
    assert any(v.startswith("./load_tests/reports:") for v in service["volumes"])
    assert "gateway" in service["depends_on"]


def test_the_admin_key_comes_from_a_secret_file_never_committed():
    assert COMPOSE["secrets"]["tce_admin_key"]["file"] == "${TCE_ADMIN_KEY_FILE:-./secrets/admin-key}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "secrets/admin-key"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "secrets/ must be ignored by git"


def test_entrypoint_restricts_what_tce_serve_restricts():
    from tce.serving.security import ADMIN_KEY_HEADER, RESTRICTED_APIS

    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    assert f'restricted="{",".join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}=$key"' in entrypoint
    assert '"--http-restricted-api=$restricted" "--grpc-restricted-protocol=$restricted"' in entrypoint


def test_dockerfile_uses_the_embedded_servers_release():
    stages = _stages()
    assert set(stages) == {"server", "server-cpu", "gateway", "batch", "loadtest"}
    assert f"tritonserver:{NGC_RELEASE}-py3" in DOCKERFILE
    assert "FROM ${TRITON_IMAGE} AS server" in stages["server"]
    assert "COPY python_backends" in stages["server"] and "PYTHONPATH=/opt/tce/python_backends" in stages["server"]


def test_servers_run_unprivileged_behind_the_entrypoint():
    stages = _stages()
    for name in ("server", "server-cpu"):
        users = re.findall(r"^USER\s+(\S+)", stages[name], re.MULTILINE)
        assert users and users[-1] == "triton-server", f"{name} must end as the unprivileged user"
    assert 'ENTRYPOINT ["/opt/tce/entrypoint.sh"]' in stages["server"]
    assert "tce_backends.canary" in stages["server"]  # HEALTHCHECK


def test_cpu_server_installs_the_cpu_only_torch_build():
    assert "--index-url https://download.pytorch.org/whl/cpu" in _stages()["server-cpu"]


def _extra(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra of pyproject.toml asks for, its own extras followed."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names: set[str] = set()
    for requirement in project["optional-dependencies"][name]:
        base = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        if base == project["name"]:
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                if inner not in seen:
                    names |= _extra(inner, seen | {name})
        else:
            names.add(base)
    return names


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("extra, requirements", [("steps", "requirements-server.txt"),
                                                 ("gateway", "requirements-gateway.txt")])
def test_image_requirements_are_the_projects_extras_pinned_by_the_lock(extra, requirements):
    pins = _pins(REPO_ROOT / "docker" / requirements)
    assert set(pins) == _extra(extra)
    lock = _lock()
    assert all(lock[name] == version for name, version in pins.items())


def test_the_client_extra_needs_neither_torch_nor_the_test_tools():
    client = _extra("client")
    assert client == {"numpy", "tritonclient"}
    for heavy in ("torch", "pytest", "locust", "pandas", "ruff", "kubernetes-validate"):
        assert heavy not in client | _extra("steps") | _extra("gateway")
    assert {"pytest", "ruff", "kubernetes-validate"} <= _extra("dev") and not {"pytest", "ruff"} & _extra("server")
    # the lock installs everything make test needs: every distribution of every extra is pinned
    lock = _lock()
    missing = sorted(n for n in _extra("dev") if n.replace("_", "-") not in lock and n not in lock)
    assert not missing, missing


def test_dockerfile_adds_only_what_the_python_steps_need():
    stages = _stages()
    lock = _lock()
    assert "torch" not in stages["server"], "the GPU image runs model.pt on libtorch: no Python torch"
    assert "requirements-server.txt" in stages["server"]
    for stage in ("server", "gateway"):
        assert "requirements-gateway.txt -c /opt/tce/requirements.lock" in stages[stage]
        assert "nginx-light" in stages[stage]
    assert '".[loadtest]" -c requirements.lock' in stages["loadtest"]
    assert '".[batch]" -c requirements.lock' in stages["batch"]
    torch_version = re.search(r"ARG TORCH_VERSION=(\S+)", stages["server-cpu"]).group(1)
    assert lock["torch"].startswith(torch_version)


def _import_with_blocked(modules: str, blocked: set[str]) -> str:
    script = textwrap.dedent(f"""
        import sys, types, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
        for folder in ("python_backends", "client", "gateway"):
            sys.path.insert(0, {str(REPO_ROOT)!r} + "/" + folder)
        import {modules}
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return result.stdout.strip() or result.stderr


def test_serving_code_imports_only_numpy_and_tokenizers():
    """What the images provide is enough: the Triton glue with torch, pandas, sklearn,
    transformers and the client blocked (and a stand-in for Triton's pb_utils module); the
    gateway with the heavy packages and the tce command blocked."""
    heavy = {"torch", "pandas", "sklearn", "transformers", "tce"}
    assert _import_with_blocked("tce_backends.triton.models, tce_backends.bundle, tce_backends.steps",
                                heavy | {"tce_client", "tce_gateway"}) == "ok"
    assert _import_with_blocked("tce_gateway.__main__, tce_gateway.worker, tce_gateway.v1", heavy) == "ok"


def test_serving_code_parses_as_python_3_10():
    """The 24.10 NGC image runs the Python steps and, for SageMaker, the gateway on its Python 3.10."""
    import ast

    for path in (p for folder in ("python_backends", "gateway", "client") for p in (REPO_ROOT / folder).rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_the_lock_pins_only_versions_public_pypi_has():
    """A local version label (torch 2.13.0+cpu) exists only on PyTorch's own index; `make
    check-lock` (run by CI) proves the whole lock resolves from PyPI alone."""
    for line in (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line:
            assert "+" not in line.split("==")[1], f"{line}: local builds are not on PyPI"


def test_the_entrypoint_names_a_repository_sized_for_another_host(tmp_path):
    """docker/entrypoint.sh runs the builder's rule (the file the Dockerfile copies) on the
    repository before it starts Triton: a repository sized for 2 cores in a 32-core, 2-GPU
    container still starts, with the `tce build` that fits. (tritonserver is a stand-in that
    exits at once: what is checked here is the entrypoint's shell, not Triton.)"""
    from tce.repository import host_sizing
    from tce.repository.host_sizing import HostFacts, HostSizing, write_record

    assert "COPY tce/repository/host_sizing.py /opt/tce/host_sizing.py" in _stages()["server"]
    repository = tmp_path / "repository"
    repository.mkdir()
    write_record(repository, HostSizing.for_host(HostFacts(2, 0)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (bin_dir / "tritonserver").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "TCE_ADMIN_KEY": "k" * 32,
           "TCE_ADMIN_KEY_FILE": str(tmp_path / "none"), "TCE_WATCH_INTERVAL": "0", "TCE_MAX_RESTARTS": "0",
           "TCE_SIZING_SCRIPT": host_sizing.__file__, "TCE_HOST_CPUS": "32", "TCE_HOST_GPUS": "2"}

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(REPO_ROOT / "docker" / "entrypoint.sh"), f"--model-repository={repository}"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)

    result = run()
    assert "sized for 2 cpus and 0 GPU(s)" in result.stderr
    assert "--host-cpus 32 --host-gpus 2" in result.stderr
    assert "gave up after 0 restarts" in result.stderr  # the server was started all the same
    assert "sized for" not in run(TCE_HOST_CPUS="2", TCE_HOST_GPUS="0").stderr
    assert "sized for" not in run(TCE_SIZING_CHECK="0").stderr
