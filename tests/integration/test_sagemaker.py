"""SageMaker's protocol through the gateway: /ping, and /invocations running the ensemble
with raw and calibrated outputs equal to seed 003's in-process handler. Triton's own
SageMaker listener (every interface, model management without a key) is never started.

/invocations speaks KServe v2 and seed 003's formats (JSON records, CSV with or without a
header, application/x-npy), answering the latter in seed 000's formats per Accept: the same
answers the PyTorch handler gives for the same records."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tce.lib.demo_data import make_dataset
from tce.serving.server import free_ports
from tce_client.schema import schema_for
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import Gateway, find_nginx
from tce_sagemaker import handler as sagemaker_handler

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sagemaker_port(bimodal_server):
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    (port,) = free_ports(1)
    with Gateway.for_server(bimodal_server.http_url, bimodal_server.grpc_url, http_port=None, grpc_port=None,
                            sagemaker_port=port):
        yield port


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return make_dataset(4, seed=41).drop(columns=["abuse", "reason", "events", "record_id"])


@pytest.fixture(scope="module")
def in_process(bimodal_bundle):
    return sagemaker_handler.model_fn(str(bimodal_bundle.root))


def invoke(port: int, body: bytes, content_type: str, accept: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def kserve_body(inputs: dict[str, np.ndarray]) -> bytes:
    tensors = []
    for name, array in inputs.items():
        if array.dtype == object:
            data = [v.decode("utf-8") for v in array.reshape(-1)]
            datatype = "BYTES"
        else:
            data = [None if np.isnan(v) else float(v) for v in array.reshape(-1)]
            datatype = "FP64"
        tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype, "data": data})
    return json.dumps({"inputs": tensors}).encode()


def test_ping_and_kserve_v2_invocations_answer_for_the_ensemble(sagemaker_port, bimodal_bundle, records, in_process):
    with urllib.request.urlopen(f"http://127.0.0.1:{sagemaker_port}/ping", timeout=10) as response:
        assert response.status == 200
    schema = schema_for(bimodal_bundle.manifest)
    inputs = schema.encode(records)
    inputs = {k: v for k, v in inputs.items() if not (v.dtype != object and np.isnan(v).all())}
    status, _, answer = invoke(sagemaker_port, kserve_body(inputs), "application/json", accept="text/csv")
    assert status == 200, answer
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in json.loads(answer)["outputs"]}
    expected = sagemaker_handler.predict_fn(records, in_process)
    for task in schema.tasks:
        raw, calibrated = outputs[task.outputs["raw"]], outputs[task.outputs["calibrated"]]
        assert raw.shape == (len(records), len(task.classes))
        np.testing.assert_allclose(raw, [p[task.name].raw for p in expected], atol=1e-5)
        np.testing.assert_allclose(calibrated, [p[task.name].calibrated for p in expected], atol=1e-5)


def _plain_npy(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]))
    return buffer.getvalue()


def _assert_same_scores(got: list[dict], expected: list[dict]) -> None:
    """Seed records of two hosts: labels equal, scores equal up to float32 rounding."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for task in a:
            assert a[task]["output-label"] == b[task]["output-label"]
            for field, value in a[task].items():
                if field != "output-label":
                    assert float(value) == pytest.approx(float(b[task][field]), abs=1e-5), (task, field)


def test_seed_003_formats_get_the_pytorch_handlers_answers(sagemaker_port, records, in_process):
    ordered = records[list(in_process.schema.input_fields)]
    clean = json.loads(records.to_json(orient="records"))  # NaN as null, as a caller sends it
    bodies = [(json.dumps(clean).encode(), "application/json"),
              (json.dumps({"instances": clean}).encode(), "application/json"),
              (records.to_csv(index=False).encode(), "text/csv"),
              (ordered.to_csv(index=False, header=False).encode(), "text/csv"),
              (_plain_npy(ordered), "application/x-npy")]
    expected = json.loads(sagemaker_handler.output_fn(
        sagemaker_handler.predict_fn(sagemaker_handler.input_fn(*bodies[0]), in_process), "application/json")[0])
    for body, content_type in bodies:
        status, answer_type, answer = invoke(sagemaker_port, body, content_type)
        assert status == 200 and answer_type.startswith("application/json"), answer
        _assert_same_scores(json.loads(answer)["predictions"], expected["predictions"])
    status, answer_type, answer = invoke(sagemaker_port, bodies[3][0], "text/csv", accept="text/csv")
    assert status == 200 and answer_type.startswith("text/csv")
    lines = answer.decode().splitlines()
    assert lines[0].startswith("abuse.legacy-score,abuse.calibrated-score,abuse.output-label,reason.prob_01")
    assert len(lines) == len(records) + 1
    status, answer_type, answer = invoke(sagemaker_port, bodies[0][0], "application/json", "application/x-npy")
    assert status == 200 and answer_type.startswith("application/x-npy")
    array = np.load(io.BytesIO(answer), allow_pickle=False)
    assert array["abuse.output-label"].tolist() == [p["abuse"]["output-label"] for p in expected["predictions"]]


@pytest.mark.parametrize("body, content_type, accept, status, words", [
    (b'[{"dialogue": "hi", "order_amount": "lots"}]', "application/json", None, 400,
     ["record 0", "'order_amount'", "'lots'"]),
    (b'{"dialogue": "hi", "ordr_amount": 3}', "application/json", None, 400, ["ordr_amount", "order_amount"]),
    (b"hi,1,2\n", "text/csv", None, 400, ["record 0", "3 values", "dialogue, order_amount"]),
    (b"dialogue,amount\nhi,1\n", "text/csv", None, 400, ["line 1", "'amount'"]),
    (None, "application/x-npy", None, 400, ["Python objects"]),  # a pickled object array
    (b'{"dialogue": "hi"}', "application/json", "application/xml", 406, ["Accept 'application/xml'"]),
    (json.dumps([{"dialogue": "hi"}] * 65).encode(), "application/json", None, 400, ["65 records", "at most 64"]),
])
def test_bad_seed_bodies_get_a_4xx_naming_the_problem(sagemaker_port, records, body, content_type, accept, status,
                                                     words):
    if body is None:
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"dialogue": "hi"}], dtype=object), allow_pickle=True)
        body = buffer.getvalue()
    got, _, answer = invoke(sagemaker_port, body, content_type, accept)
    message = json.loads(answer)["error"]
    assert got == status and all(word in message for word in words), (got, message)
    # the door is still there for the next caller
    assert invoke(sagemaker_port, records.iloc[:1].to_json(orient="records").encode(), "application/json")[0] == 200
