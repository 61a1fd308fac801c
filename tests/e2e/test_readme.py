"""Every code block of the README runs, or says why it cannot here.

Each ```bash or ```python block is preceded by ``<!-- readme-test: HOW -->``:

- ``served``: run against the demo repository that ``make build`` makes, served on free
  ports (``localhost:8000``/``8001`` in the block become those ports); ``gateway``: the same
  through the gateway;
- ``here``: shell commands run as written in a scratch directory holding a copy of the demo
  bundle (``.venv/bin/tce`` is this interpreter's ``tce``);
- ``walkthrough``: the batch walkthrough, run by tests/e2e/test_walkthrough.py;
- ``not here: <why>``: needs what these machines lack (Docker, a server in the foreground,
  the reader's own files), with the test that covers it instead.

A python block followed by ``<!-- readme-output -->`` must print that output (digits may
differ: the figures come from the demo bundle built here)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import Gateway, find_nginx
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<how>[^>]*) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```"
                   r"(?:\n+[^\n`<]*\n*<!-- readme-output -->\n```\n(?P<output>.*?)```)?", re.S)
ENV = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}


def blocks(how: str | None = None) -> list[re.Match]:
    found = list(BLOCK.finditer(README))
    return [m for m in found if how is None or (m.group("how") or "").split(":")[0] == how]


def test_every_block_says_how_it_runs():
    found = blocks()
    assert len(found) >= 12
    for match in found:
        how = match.group("how")
        first = match.group("code").splitlines()[0]
        assert how is not None, f"README block without a readme-test marker: {first!r}"
        kind, _, why = how.partition(":")
        assert kind in ("served", "gateway", "here", "walkthrough", "releases", "not here"), how
        if kind == "not here":
            assert len(why.strip()) > 20 and "test" in why, f"say why and what tests it instead: {how!r}"
    assert len(blocks("walkthrough")) == 1 and (REPO_ROOT / "tests/e2e/test_walkthrough.py").is_file()
    assert len(blocks("releases")) == 1 and (REPO_ROOT / "tests/e2e/test_releases.py").is_file()
    assert len(blocks("served")) >= 3 and len(blocks("here")) >= 2


def _built() -> None:
    repository, bundle = REPO_ROOT / "model_repository", REPO_ROOT / "artifacts" / "demo_bundle"
    if not (repository / "multimodal_model" / "1" / "model.pt").is_file() or not bundle.is_dir():
        pytest.skip("the demo repository is not built (make build)")


def _masked(text: str) -> list[str]:
    return [re.sub(r"\d", "0", line.rstrip()) for line in text.strip().splitlines()]


def test_the_served_blocks_run_against_the_demo_repository(tmp_path):
    _built()
    with EmbeddedServer(ServerConfig(REPO_ROOT / "model_repository", *free_ports())) as server:
        _run_blocks(blocks("served"), server.config.http_url, server.config.grpc_url, tmp_path)
        try:
            find_nginx()
        except GatewayError:
            return
        http, grpc = free_ports(2)
        with Gateway.for_server(server.config.http_url, server.config.grpc_url, http_port=http, grpc_port=grpc):
            _run_blocks(blocks("gateway"), f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", tmp_path)


def _run_blocks(found: list[re.Match], http_url: str, grpc_url: str, tmp_path) -> None:
    for match in found:
        code = match.group("code").replace("localhost:8001", grpc_url).replace("localhost:8000", http_url)
        if match.group("lang") == "python":
            command = [sys.executable, "-c", code]
        elif code.lstrip().startswith("curl") and shutil.which("curl") is None:
            continue
        else:
            command = ["bash", "-c", code.replace(".venv/bin/tce", f"{sys.executable} -m tce.cli")]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
        first = match.group("code").splitlines()[0]
        assert result.returncode == 0, f"{first}\n{result.stderr}"
        assert result.stdout.strip() and '"error"' not in result.stdout, f"{first}\n{result.stdout[:500]}"
        if match.group("output"):
            assert _masked(result.stdout) == _masked(match.group("output")), result.stdout


def test_the_here_blocks_run_as_written(tmp_path):
    _built()
    shutil.copytree(REPO_ROOT / "artifacts" / "demo_bundle", tmp_path / "artifacts" / "demo_bundle")
    for match in blocks("here"):
        code = match.group("code").replace("\\\n", " ")
        for line in code.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            argv = shlex.split(line, comments=True)
            if argv[0] == ".venv/bin/tce":
                argv = [sys.executable, "-m", "tce.cli", *argv[1:]]
            result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV)
            assert result.returncode == 0, f"{line}\n{result.stderr}"
    assert (tmp_path / "model_repository" / "calibrated_ensemble" / "config.pbtxt").is_file()
    assert (tmp_path / "model.tar.gz").is_file()


def test_the_first_python_example_uses_a_complete_record():
    """Before: it left out 4 of the 8 features, and strict columns refuse that."""
    from tce_backends.bundle import Manifest

    (first,) = [m for m in blocks("served") if m.group("lang") == "python"][:1]
    manifest = Manifest.load(REPO_ROOT / "artifacts" / "demo_bundle") if \
        (REPO_ROOT / "artifacts" / "demo_bundle" / "manifest.json").is_file() else None
    if manifest is None:
        pytest.skip("the demo bundle is not built (make build)")
    fields = {*manifest.text_fields, *manifest.features.names}
    for field in fields:
        assert f'"{field}"' in first.group("code"), field
