"""Rolling out a new model under load (issue 24's acceptance): serve bundle A, add bundle B
(other weights, other calibration), promote it, roll back, promote again, with 4 clients
sending requests all along. No request fails; every answer's (release, calibration version)
is one bundle's pair; every answer equals its release's bundle's reference pipeline within
1e-5. The commands are the README's "Rolling out a new model" block, run as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.repository.releases import Releases
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_backends.reference import ReferencePipeline
from tce_client import CalibratedClassifierClient
from tce_client.schema import schema_for
from tests.conftest import REPO_ROOT
from tests.release_bundles import variant_bundle

pytestmark = pytest.mark.e2e

# What the README's "Rolling out a new model" section runs (its block marked
# `readme-test: releases`); used as written while the README has no such block.
COMMANDS = """\
.venv/bin/tce demo-bundle --out artifacts/demo_bundle_v2 --seed 8 --calibration sigmoid
.venv/bin/tce release add artifacts/demo_bundle_v2 --repository model_repository --url localhost:8000
.venv/bin/tce release list --repository model_repository
.venv/bin/tce release promote 2 --repository model_repository --url localhost:8000
.venv/bin/tce release rollback --repository model_repository --url localhost:8000
.venv/bin/tce release promote 2 --repository model_repository --url localhost:8000
"""
README_BLOCK = re.compile(r"<!-- readme-test: releases -->\n```bash\n(?P<code>.*?)```", re.S)


def rollout_commands() -> list[str]:
    found = README_BLOCK.search((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    code = found.group("code") if found else COMMANDS
    lines = [line.strip() for line in code.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "export "))]


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    record: int
    release: str
    calibration_version: str
    calibrated: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]


def _expected(bundle, records) -> dict[str, np.ndarray]:
    inputs = schema_for(bundle.manifest).encode(records)
    return ReferencePipeline(bundle).predict(inputs)


def _clients(url: str, records: list[dict], answers: list[Answer], failures: list[str], stop: threading.Event,
             count: int = 4) -> list[threading.Thread]:
    def work(worker: int) -> None:
        with CalibratedClassifierClient(url, protocol="grpc", retries=0) as client:
            index, deadline = worker, time.monotonic() + 120  # bounded, whatever happens
            while not stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    (prediction,) = client.predict([records[index % len(records)]])
                except Exception as error:  # noqa: BLE001 - every failure counts
                    failures.append(repr(error))
                else:
                    answers.append(Answer(sent, time.monotonic(), index % len(records), prediction.release,
                                          prediction.calibration_version,
                                          {t: r.calibrated for t, r in prediction.tasks.items()},
                                          {t: r.raw for t, r in prediction.tasks.items()}))
                index += count

    return [threading.Thread(target=work, args=(w,), daemon=True) for w in range(count)]


def _run(line: str, paths: dict[str, str], env: dict[str, str]) -> tuple[str, float, float]:
    for written, actual in paths.items():
        line = line.replace(written, actual)
    argv = shlex.split(line)
    if argv[0] == ".venv/bin/tce":
        argv = [sys.executable, "-m", "tce.cli", *argv[1:]]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    finished = time.monotonic()
    assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout, started, finished


def test_promote_and_roll_back_under_load(bimodal_bundle, tmp_path):
    bundle_a = bimodal_bundle
    bundle_b = variant_bundle(bundle_a, tmp_path / "bundle_b")
    repository = write_repository(bundle_a, tmp_path / "repository")
    fields = schema_for(bundle_a.manifest).input_fields
    records = make_dataset(24, seed=11, unseen_rate=0.1)[list(fields)].to_dict(orient="records")
    expected = {"1": _expected(bundle_a, records), "2": _expected(bundle_b, records)}
    pairs = {("1", bundle_a.calibrator.version), ("2", bundle_b.calibrator.version)}
    config = ServerConfig(repository, *free_ports(), model_control_mode="explicit", load_models=("*",))
    with EmbeddedServer(config, log_path=tmp_path / "tritonserver.log") as server:
        env = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": str(server.admin_key_file)}
        paths = {"localhost:8000": server.config.http_url, "artifacts/demo_bundle_v2": str(bundle_b.root),
                 "model_repository": str(repository)}
        answers: list[Answer] = []
        failures: list[str] = []
        stop = threading.Event()
        workers = _clients(server.config.grpc_url, records, answers, failures, stop)
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        steps: list[tuple[str, str, float, float]] = []
        for line in rollout_commands():
            if " demo-bundle " in f" {line} ":
                continue  # bundle B is made above, in a second instead of a training run
            out, started, finished = _run(line, paths, env)
            steps.append((line.split()[2], out, started, finished))
            time.sleep(1.0)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert not failures, failures[:3]
    _check_answers(answers, expected, pairs, steps)
    assert Releases.load(repository).current == 2
    _report(answers, steps)


def _check_answers(answers: list[Answer], expected, pairs, steps) -> None:
    assert len(answers) > 50
    seen = {(a.release, a.calibration_version) for a in answers}
    assert seen <= pairs, seen - pairs
    assert seen == pairs, "both releases answered"
    for answer in answers:  # every answer is its release's bundle, within 1e-5
        want = expected[answer.release]
        for task, calibrated in answer.calibrated.items():
            np.testing.assert_allclose(calibrated, want[f"{task}_calibrated"][answer.record], atol=1e-5, rtol=0)
            np.testing.assert_allclose(answer.raw[task], want[f"{task}_raw"][answer.record], atol=1e-5, rtol=0)
    serving = {"promote": "2", "rollback": "1"}
    for action, _, _, finished in steps:  # once a switch returned, new requests get the release it serves
        if action in serving:
            later = [a.release for a in answers if finished < a.sent < finished + 1.0]
            assert later and set(later) == {serving[action]}, (action, later[:10])


def _report(answers: list[Answer], steps) -> None:
    print("\nrollout timings (4 clients, one record per request):")
    for action, out, started, finished in steps:
        served = sum(1 for a in answers if started <= a.received <= finished)
        switch = re.search(r"switched in (\d+\.\d+) ms", out)
        detail = f" (server switch {switch.group(1)} ms)" if switch else ""
        print(f"  {action:9s} command {finished - started:5.2f} s{detail}; requests answered meanwhile: {served}")
