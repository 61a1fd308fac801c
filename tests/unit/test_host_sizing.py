"""Sizing to the host: the rule on injected host facts, detection from cgroup files, the
build's choice and record, and the image's start-up check (the same file run as a script)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from tce.repository import host_sizing
from tce.repository.builder import RepositoryOptions, make_configs, read_config
from tce.repository.host_sizing import (
    SIZING_FILE,
    HostFacts,
    HostSizing,
    SizingError,
    SizingOverrides,
    cgroup_cpu_limit,
    detect_host,
    given_host,
    mismatch,
    write_record,
)
from tce.trainer.training import TrainingConfig, demo_manifest, demo_text_fields
from tce_backends.errors import UsageError
from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR


def sized(cpus: float, gpus: int = 0, **overrides: int) -> HostSizing:
    return HostSizing.for_host(HostFacts(cpus, gpus), SizingOverrides(**overrides))


def counts(sizing: HostSizing) -> tuple[int, int, int, int, int]:
    return (sizing.preprocessor_instances, sizing.calibrator_instances, sizing.model_instances,
            sizing.model_instances_per_gpu, sizing.model_threads)


def test_the_two_core_machine_gets_the_measured_defaults():
    """The rule reproduces what docs/performance.md measured on 2 cores, so `make build` there
    writes the checked-in configs."""
    defaults = RepositoryOptions()
    assert RepositoryOptions().sized_for(sized(2)) == defaults
    assert not sized(2).model_on_gpu


@pytest.mark.parametrize("cpus, expected", [
    (1, (2, 1, 1, 2, 0)),     # fewer cores never means fewer than 2 preprocessors: 1 starves the model
    (2.5, (2, 1, 1, 2, 0)),   # a fractional quota counts whole cores
    (8, (2, 1, 1, 2, 0)),     # one instance with every core up to 8 cores
    (16, (4, 2, 2, 2, 8)),    # one model instance per 8 cores, each with its share of threads
    (64, (16, 8, 4, 2, 16)),  # capped: Python steps by /dev/shm, CPU model instances at 4
    (200, (16, 8, 4, 2, 50)),
])
def test_cpu_hosts(cpus, expected):
    assert counts(sized(cpus)) == expected


@pytest.mark.parametrize("cpus, gpus, expected", [
    (16, 1, (10, 5, 2, 2, 0)),  # 15 cores for Python steps: two thirds preprocessor
    (16, 2, (10, 4, 2, 2, 0)),
    (4, 1, (2, 1, 2, 2, 0)),
    (1, 1, (1, 1, 2, 2, 0)),    # never below one of each
    (96, 8, (16, 8, 2, 2, 0)),  # caps
])
def test_gpu_hosts_feed_every_gpu(cpus, gpus, expected):
    sizing = sized(cpus, gpus)
    assert counts(sizing) == expected
    assert sizing.model_on_gpu


def test_every_override_replaces_one_choice_and_says_so():
    sizing = sized(16, 1, preprocessor_instances=3, model_instances=1)
    assert counts(sizing) == (3, 5, 1, 2, 0)
    assert "overridden: preprocessor-instances 3, model-instances 1" in sizing.describe()
    with pytest.raises(SizingError, match="calibrator-instances must be >= 1"):
        SizingOverrides(calibrator_instances=0)
    with pytest.raises(SizingError, match="cpus must be a positive number"):
        HostFacts(0, 0)


def test_describe_says_what_and_why():
    text = sized(16, 2).describe()
    assert text.startswith("sized for 16 cpus, 2 GPU(s)")
    assert "model 2 per GPU (KIND_GPU)" in text and "4 in all" in text
    assert "why:" in sized(2).describe() and "max(2, ceil(2/4))" in sized(2).describe()


def test_options_render_the_sizing_into_both_model_hosts():
    config = TrainingConfig()
    options = RepositoryOptions().sized_for(sized(16, 2))
    configs = make_configs(demo_manifest(config), demo_text_fields(config), options)
    python, libtorch = configs.model_python.to_proto(), configs.model_libtorch.to_proto()
    assert [(g.kind, g.count) for g in python.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 2)]
    assert [(g.kind, g.count) for g in libtorch.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 2)]
    assert configs.preprocessor.to_proto().instance_group[0].count == 10
    assert configs.calibrator.to_proto().instance_group[0].count == 4
    cpu = make_configs(demo_manifest(config), demo_text_fields(config), RepositoryOptions().sized_for(sized(16)))
    group = cpu.model_python.to_proto().instance_group[0]
    assert (group.kind, group.count) == (pb.ModelInstanceGroup.KIND_CPU, 2)
    assert cpu.model_python.to_proto().parameters["num_threads"].string_value == "8"
    with pytest.raises(UsageError, match="calibrator_instances must be >= 1"):
        RepositoryOptions(calibrator_instances=0)


# -- detection ------------------------------------------------------------------------------------------

def test_cgroup_v2_and_v1_quotas(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    assert cgroup_cpu_limit(v1) == 1.5


def test_detection_caps_affinity_with_the_quota_and_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(host_sizing, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(host_sizing, "visible_gpus", lambda dev, environ, use_torch: 0)
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    host = detect_host({}, cgroup_root=tmp_path)
    assert (host.cpus, host.gpus, host.source) == (3.0, 0, "CPU affinity + cgroup CPU quota")
    (tmp_path / "cpu.max").write_text("1600000 100000\n")  # a quota above the cpuset changes nothing
    assert detect_host({}, cgroup_root=tmp_path).cpus == 8
    pod = detect_host({"TCE_HOST_CPUS": "4", "TCE_HOST_GPUS": "1"}, cgroup_root=tmp_path)
    assert (pod.cpus, pod.gpus) == (4.0, 1)
    assert detect_host({"TCE_HOST_CPUS": "1500m"}, cgroup_root=tmp_path).cpus == 1.5
    with pytest.raises(SizingError, match="TCE_HOST_CPUS"):
        detect_host({"TCE_HOST_CPUS": "four"}, cgroup_root=tmp_path)


def test_gpus_without_torch_are_the_devices_the_runtime_exposed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # the GPU image: no Python torch
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert host_sizing.visible_gpus(tmp_path, {}) == 2
    assert host_sizing.visible_gpus(tmp_path, {"CUDA_VISIBLE_DEVICES": "1"}) == 1
    assert host_sizing.visible_gpus(tmp_path, {"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert host_sizing.visible_gpus(tmp_path, {}, use_torch=False) == 2


def test_this_machine_is_detected():
    host = detect_host({})
    assert 1 <= host.cpus <= (len(__import__("os").sched_getaffinity(0)))
    assert host.gpus >= 0


def test_build_options_for_another_host():
    here = HostFacts(2, 0, "CPU affinity")
    assert given_host(None, None, here) is here
    assert given_host(8, 1, here) == HostFacts(8, 1, "given")
    assert given_host(None, 1, here) == HostFacts(2, 1, "given + CPU affinity")


# -- the record and the image's check --------------------------------------------------------------------

def test_the_check_names_a_repository_sized_for_another_host(tmp_path):
    write_record(tmp_path, sized(2))
    assert mismatch(tmp_path, HostFacts(2, 0)) is None
    assert mismatch(tmp_path, HostFacts(4, 0)) is None  # the rule gives 4 cores the same counts
    line = mismatch(tmp_path, HostFacts(16, 1, "$TCE_HOST_CPUS"))
    assert line is not None and "sized for 2 cpus and 0 GPU(s)" in line
    assert "'tce build BUNDLE --host-cpus 16 --host-gpus 1'" in line
    write_record(tmp_path, sized(2, preprocessor_instances=5))  # fixed by hand: the operator's choice
    assert mismatch(tmp_path, HostFacts(16, 1)) is None
    (tmp_path / SIZING_FILE).unlink()
    assert mismatch(tmp_path, HostFacts(16, 1)) is None  # no record: built by hand, nothing to say
    (tmp_path / SIZING_FILE).write_text("{not json")
    assert mismatch(tmp_path, HostFacts(16, 1)) is None


def test_the_image_runs_the_file_alone_with_the_standard_library(tmp_path):
    """docker/Dockerfile copies host_sizing.py to /opt/tce and the entrypoint runs it: it must
    work isolated (-I: no site-packages, no project on the path)."""
    write_record(tmp_path, sized(2))
    script = Path(host_sizing.__file__)
    env = {"TCE_HOST_CPUS": "32", "TCE_HOST_GPUS": "2", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-I", str(script), "check", str(tmp_path)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0
    assert "--host-cpus 32 --host-gpus 2" in result.stderr
    same = subprocess.run([sys.executable, "-I", str(script), "check", str(tmp_path)], capture_output=True,
                          text=True, env={**env, "TCE_HOST_CPUS": "2", "TCE_HOST_GPUS": "0"})
    assert (same.returncode, same.stderr) == (0, "")
    shown = subprocess.run([sys.executable, "-I", str(script), "show"], capture_output=True, text=True, env=env)
    assert shown.stdout.startswith("sized for 32 cpus, 2 GPU(s) ($TCE_HOST_CPUS + $TCE_HOST_GPUS)")


def test_tce_build_sizes_records_and_prints(bimodal_bundle, tmp_path, capsys):
    from tce.cli import main

    out = tmp_path / "repo"
    assert main(["build", str(bimodal_bundle.root), "--out", str(out), "--host-cpus", "16", "--host-gpus", "1",
                 "--calibrator-instances", "3"]) == 0
    printed = capsys.readouterr().out
    assert "sized for 16 cpus, 1 GPU(s) (given): preprocessor 10, calibrator 3" in printed
    assert read_config(out / PREPROCESSOR / "config.pbtxt").instance_group[0].count == 10
    assert read_config(out / CALIBRATOR / "config.pbtxt").instance_group[0].count == 3
    model = read_config(out / MULTIMODAL_MODEL / "config.pbtxt").instance_group[0]
    assert (model.kind, model.count) == (pb.ModelInstanceGroup.KIND_GPU, 2)
    record = json.loads((out / SIZING_FILE).read_text())
    assert record["host"]["cpus"] == 16 and record["counts"]["calibrator_instances"] == 3
    from tce.jobs.build import build

    build(bimodal_bundle.root, out)  # a build without sizing: the record no longer holds
    assert not (out / SIZING_FILE).exists()
    assert read_config(out / PREPROCESSOR / "config.pbtxt").instance_group[0].count == 2


def test_tce_serve_says_when_the_repository_was_sized_for_another_host(tmp_path, monkeypatch, caplog):
    from tce.commands.serve import _say_if_sized_for_another_host

    write_record(tmp_path, sized(2))
    monkeypatch.setenv("TCE_HOST_CPUS", "32")
    monkeypatch.setenv("TCE_HOST_GPUS", "0")
    _say_if_sized_for_another_host(tmp_path)
    [warning] = caplog.records  # logged (tce.lib.logs: stderr)
    assert warning.levelname == "WARNING"
    assert "rebuild with 'tce build BUNDLE --host-cpus 32 --host-gpus 0'" in warning.getMessage()
    caplog.clear()
    monkeypatch.setenv("TCE_HOST_CPUS", "2")
    _say_if_sized_for_another_host(tmp_path)
    assert not caplog.records
