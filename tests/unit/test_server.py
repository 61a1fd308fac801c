"""The embedded-server launcher's configuration and clean-up, without starting Triton."""
from pathlib import Path

import pytest

from tce.serving.server import EmbeddedServer, ServerConfig, ServerError, free_ports, remove_shared_memory, triton_root


def test_missing_repository_is_refused(tmp_path):
    with pytest.raises(ServerError, match="does not exist; build it first"):
        ServerConfig(tmp_path / "absent")


def test_ports_must_be_distinct(tmp_path):
    with pytest.raises(ServerError, match="distinct"):
        ServerConfig(tmp_path, 8000, 8000, 8002)


def test_model_control_mode_is_checked(tmp_path):
    with pytest.raises(ServerError, match="model_control_mode"):
        ServerConfig(tmp_path, model_control_mode="poll")


def test_command_line_carries_ports_shm_prefix_and_control_mode(tmp_path):
    config = ServerConfig(tmp_path, 9000, 9001, 9002, model_control_mode="explicit", load_models=("*",),
                          model_config_name="libtorch")
    server = EmbeddedServer(config)
    command = server.command(tmp_path / "backends")
    assert command[0] == str(triton_root() / "bin" / "tritonserver")
    assert "--http-port=9000" in command and "--grpc-port=9001" in command and "--metrics-port=9002" in command
    assert f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}" in command
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    assert "--model-config-name=libtorch" in command
    assert EmbeddedServer(config).shm_prefix != server.shm_prefix  # every server its own prefix


def test_shared_memory_clean_up_removes_only_its_prefix(tmp_path):
    for name in ("tce1_abc_region1", "tce1_abc_region2", "tce1_other", "unrelated"):
        (tmp_path / name).write_bytes(b"")
    removed = remove_shared_memory("tce1_abc_", shm_dir=tmp_path)
    assert sorted(removed) == ["tce1_abc_region1", "tce1_abc_region2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tce1_other", "unrelated"]


def test_free_ports_are_distinct():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)


def test_stub_exists_for_this_python():
    import sys

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (triton_root() / "python_backend_stubs" / version / "triton_python_backend_stub").is_file()
    assert isinstance(triton_root(), Path)
