"""Triton's tracing options: tce serve's (tce.serving.tracing) and the image entrypoint's
environment give tritonserver the arguments Triton 2.51 takes, and refuse the rest in one line."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tce.cli import main
from tce.serving.server import EmbeddedServer, ServerConfig, replica_configs
from tce.serving.tracing import TraceConfig, TraceError
from tests.conftest import REPO_ROOT

ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"


def test_a_trace_file_and_an_otel_collector_become_tritons_arguments(tmp_path):
    to_file = TraceConfig(file=tmp_path / "trace.json", rate=10, settings=("triton,log-frequency=50", "count=100"))
    assert to_file.args() == [f"--trace-config=triton,file={tmp_path / 'trace.json'}",
                              "--trace-config=level=TIMESTAMPS", "--trace-config=rate=10",
                              "--trace-config=triton,log-frequency=50", "--trace-config=count=100"]
    otel = TraceConfig(otel_url="collector:4318/v1/traces", settings=("opentelemetry,resource=service.name=tce",))
    assert otel.args()[:2] == ["--trace-config=mode=opentelemetry",
                               "--trace-config=opentelemetry,url=collector:4318/v1/traces"]
    assert "--trace-config=rate=1000" in otel.args()
    config = ServerConfig(tmp_path, trace=to_file)
    command = EmbeddedServer(config).command(tmp_path)
    assert command[-5:] == to_file.args()
    second = replica_configs(config, 2)[1]
    assert second.trace.file == tmp_path / "trace-replica1.json", "replicas write their own files"


@pytest.mark.parametrize("settings, words", [
    ({"file": None}, "a trace file (--trace-file) or an OpenTelemetry collector (--trace-otel), not both"),
    ({"otel_url": "localhost:4318/v1/traces"}, "not both"),
    ({"rate": 0}, "the trace rate must be >= 1"),
    ({"level": "ALL"}, "TIMESTAMPS, TENSORS"),
    ({"settings": ("verbose=1",)}, "a global setting is one of rate, level, count, mode"),
    ({"settings": ("opentelemetry,url=x:1",)}, "a setting of opentelemetry mode"),
    ({"settings": ("triton,log-frequency=often",)}, "log-frequency must be an integer"),
    ({"settings": ("triton,file=/tmp/x",)}, "give it with --trace-file or --trace-otel"),
])
def test_settings_triton_would_refuse_are_one_line(settings, words, tmp_path):
    with pytest.raises(TraceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        TraceConfig(**{"file": tmp_path / "trace.json", **settings})


def test_tce_serve_says_which_trace_options_need_a_place(capsys, tmp_path):
    assert main(["serve", "--repository", str(tmp_path), "--trace-rate", "5"]) == 2
    assert capsys.readouterr().err.strip() == ("tce serve: error: --trace-rate, --trace-level and --trace-config "
                                               "need --trace-file or --trace-otel")


def _entrypoint(tmp_path: Path, **environment: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The entrypoint with a stand-in tritonserver that writes down its arguments and exits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "tritonserver").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
    (bin_dir / "tritonserver").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TCE_ADMIN_KEY": "a-proper-admin-key-of-32-chars!!",
           "TCE_WATCH_INTERVAL": "0", "TCE_SIZING_CHECK": "0", "TCE_MAX_RESTARTS": "0", **environment}
    result = subprocess.run(["sh", str(ENTRYPOINT), "--model-repository=/models"], env=env, capture_output=True,
                            text=True, timeout=60)
    args = (tmp_path / "args").read_text().splitlines() if (tmp_path / "args").exists() else []
    return result, args


def test_the_image_turns_tracing_on_from_its_environment(tmp_path):
    _, args = _entrypoint(tmp_path, TCE_TRACE_FILE="/var/log/tce/trace.json", TCE_TRACE_RATE="100")
    assert {"--trace-config=triton,file=/var/log/tce/trace.json", "--trace-config=rate=100",
            "--trace-config=level=TIMESTAMPS"} <= set(args)
    _, args = _entrypoint(tmp_path, TCE_TRACE_OTEL_URL="collector:4318/v1/traces")
    assert {"--trace-config=mode=opentelemetry", "--trace-config=opentelemetry,url=collector:4318/v1/traces",
            "--trace-config=rate=1000"} <= set(args)
    (tmp_path / "args").unlink()
    _, args = _entrypoint(tmp_path)
    assert args and not any(a.startswith("--trace-config") for a in args), "off unless asked for"
    for environment, words in (({"TCE_TRACE_FILE": "/t.json", "TCE_TRACE_OTEL_URL": "c:4318"}, "not both"),
                               ({"TCE_TRACE_FILE": "/t.json", "TCE_TRACE_RATE": "often"}, "TCE_TRACE_RATE must be"),
                               ({"TCE_TRACE_OTEL_URL": "c:4318", "TCE_TRACE_LEVEL": "ALL"}, "TCE_TRACE_LEVEL must be")):
        result, _ = _entrypoint(tmp_path, **environment)
        assert result.returncode == 64 and words in result.stderr
