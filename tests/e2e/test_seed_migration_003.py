"""Seed 003's user, migrated: the code they wrote against a SageMaker endpoint works on both
SageMaker paths the project packages, ``tce package-sagemaker --handler pytorch`` (their own
PyTorch serving container, calling the four handler functions) and ``--handler triton``
(served here by ``tce serve --sagemaker``, the gateway's ``/invocations`` in front of Triton).

The consumer below is written from the seed documents only. Seed 003: the model server gets a
request body and its Content-Type and runs ``model_fn(model_dir)`` once, then
``input_fn(request_body, request_content_type)``, ``predict_fn(input_data, model)`` and
``output_fn(prediction, accept)``; bodies are JSON, CSV or NPY (``application/json``,
``text/csv``, ``application/x-npy``) and so are responses. Seed 000 (the handler's output, which
seed 003's ``output_fn`` returns as ``(response_body, content_type)``): ``{"predictions": [...]}``
with ``legacy-score``, ``calibrated-score`` and ``output-label`` per record, as strings. The
model is the demo's single-task binary bundle (``abuse``), the seeds' kind of model. The one
thing the user looks up in the project: the field order of a CSV line or NPY row without
names, from ``tce schema --json``."""
from __future__ import annotations

import base64
import csv
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tce.lib.demo_data import make_dataset
from tce.serving.server import free_ports
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import find_nginx

pytestmark = pytest.mark.e2e
JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"


# --- the seed user's consumer (seed 003 section 0, seed 000's output fields) ---------------------------------------

def json_body(records: list[dict]) -> bytes:
    return json.dumps(records).encode()


def csv_body(records: list[dict], feature_order: list[str]) -> bytes:
    """SageMaker's CSV serializer: one line per record, values in feature order, no header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for record in records:
        writer.writerow(["" if record.get(name) is None else record[name] for name in feature_order])
    return buffer.getvalue().encode()


def npy_body(records: list[dict], feature_order: list[str]) -> bytes:
    rows = [["" if record.get(name) is None else str(record[name]) for name in feature_order] for record in records]
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows))
    return buffer.getvalue()


def read_scores(body: bytes, content_type: str) -> list[tuple[float, float, str]]:
    """(legacy-score, calibrated-score, output-label) per record, from any response type."""
    if content_type.startswith(JSON):
        predictions = json.loads(body)["predictions"]
    elif content_type.startswith(CSV):
        predictions = list(csv.DictReader(io.StringIO(body.decode())))
    else:
        array = np.load(io.BytesIO(body))
        predictions = [{name: array[name][i] for name in array.dtype.names} for i in range(len(array))]
    return [(float(p["legacy-score"]), float(p["calibrated-score"]), str(p["output-label"])) for p in predictions]


def every_request(records: list[dict], feature_order: list[str]) -> list[tuple[bytes, str, str]]:
    """(body, Content-Type, Accept): every request type with every response type."""
    bodies = {JSON: json_body(records), CSV: csv_body(records, feature_order), NPY: npy_body(records, feature_order)}
    return [(body, kind, accept) for kind, body in bodies.items() for accept in (JSON, CSV, NPY)]


# --- the two SageMaker hosts, run as SageMaker runs them -----------------------------------------------------------

MODEL_SERVER = """
import base64, json, sys
sys.path.insert(0, sys.argv[1] + "/code")
import inference
model = inference.model_fn(sys.argv[1])
answers = []
for request in json.loads(sys.stdin.read()):
    data = inference.input_fn(base64.b64decode(request["body"]), request["content_type"])
    body, content_type = inference.output_fn(inference.predict_fn(data, model), request["accept"])
    body = body.encode() if isinstance(body, str) else body
    answers.append({"body": base64.b64encode(body).decode(), "content_type": content_type})
print(json.dumps(answers))
"""


def tce(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tce.cli", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def pytorch_container(model_dir: Path, requests: list[tuple[bytes, str, str]]) -> list[tuple[bytes, str]]:
    """SageMaker's PyTorch model server for a batch of requests: one process, model_fn once."""
    payload = json.dumps([{"body": base64.b64encode(b).decode(), "content_type": c, "accept": a}
                          for b, c, a in requests])
    result = subprocess.run([sys.executable, "-c", MODEL_SERVER, str(model_dir)], input=payload, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [(base64.b64decode(a["body"]), a["content_type"]) for a in json.loads(result.stdout)]


def invoke_endpoint(port: int, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
    """InvokeEndpoint as SageMaker forwards it to the container: POST /invocations."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read(), response.headers["Content-Type"]


def wait_for_ping(port: int, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def user_records() -> list[dict]:
    frame = make_dataset(6, seed=7).drop(columns=["abuse", "reason", "events", "record_id"])
    return json.loads(frame.to_json(orient="records"))  # missing values as null, as the user's JSON has them


def test_the_seed_users_endpoint_code_runs_unchanged_on_both_paths(binary_bundle, user_records, tmp_path):
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    tce("package-sagemaker", str(binary_bundle.root), str(tmp_path / "triton.tar.gz"))
    tce("package-sagemaker", str(binary_bundle.root), str(tmp_path / "pytorch.tar.gz"), "--handler", "pytorch")
    http, grpc, metrics, sagemaker = free_ports(4)
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        serve = subprocess.Popen(
            [sys.executable, "-m", "tce.cli", "serve", "--repository", str(unpack(tmp_path / "triton.tar.gz",
                                                                                 tmp_path / "opt_ml_model")),
             "--sagemaker", "--sagemaker-port", str(sagemaker), "--http-port", str(http), "--grpc-port", str(grpc),
             "--metrics-port", str(metrics)], stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_ping(sagemaker, serve, log)
        feature_order = json.loads(tce("schema", "--url", f"127.0.0.1:{http}", "--json").stdout)
        feature_order = [*feature_order["text_fields"], *feature_order["numeric_features"],
                         *feature_order["categorical_features"]]
        requests = every_request(user_records, feature_order)
        on_triton = [invoke_endpoint(sagemaker, *request) for request in requests]
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(timeout=30)
    on_pytorch = pytorch_container(unpack(tmp_path / "pytorch.tar.gz", tmp_path / "pytorch_model"), requests)
    reference = read_scores(*on_triton[0])
    assert len(reference) == len(user_records)
    assert {label for _, _, label in reference} <= {"class-0", "class-1"}
    assert all(0.0 <= raw <= 1.0 and 0.0 <= calibrated <= 1.0 for raw, calibrated, _ in reference)
    for (_, kind, accept), answer in zip([*requests, *requests], [*on_triton, *on_pytorch], strict=True):
        assert answer[1].startswith(accept), (kind, accept, answer[1])
        scores = read_scores(*answer)
        assert [label for _, _, label in scores] == [label for _, _, label in reference], (kind, accept)
        np.testing.assert_allclose([s[:2] for s in scores], [s[:2] for s in reference], atol=1e-5)
