"""SageMaker's protocol through the gateway: /ping, and /invocations running the ensemble
with raw and calibrated outputs equal to seed 003's in-process handler. Triton's own
SageMaker listener (every interface, model management without a key) is never started."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_client.schema import schema_for
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import Gateway, find_nginx
from tce_sagemaker import handler as sagemaker_handler

pytestmark = pytest.mark.integration


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


def test_ping_and_invocations_answer_for_the_ensemble(bimodal_bundle, tmp_path):
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    http, grpc, metrics, sagemaker = free_ports(4)
    config = ServerConfig(repository, http, grpc, metrics)
    records = make_dataset(4, seed=41).drop(columns=["abuse", "reason", "events", "record_id"])
    schema = schema_for(bimodal_bundle.manifest)
    inputs = schema.encode(records)
    inputs = {k: v for k, v in inputs.items() if not (v.dtype != object and np.isnan(v).all())}
    with EmbeddedServer(config), Gateway.for_server(config.http_url, config.grpc_url, http_port=None, grpc_port=None,
                                                    sagemaker_port=sagemaker):
        with urllib.request.urlopen(f"http://127.0.0.1:{sagemaker}/ping", timeout=10) as response:
            assert response.status == 200
        request = urllib.request.Request(f"http://127.0.0.1:{sagemaker}/invocations", data=kserve_body(inputs),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    model = sagemaker_handler.model_fn(str(bimodal_bundle.root))
    expected = sagemaker_handler.predict_fn(records, model)
    for task in schema.tasks:
        raw, calibrated = outputs[task.outputs["raw"]], outputs[task.outputs["calibrated"]]
        assert raw.shape == (len(records), len(task.classes))
        np.testing.assert_allclose(raw, [p[task.name].raw for p in expected], atol=1e-5)
        np.testing.assert_allclose(calibrated, [p[task.name].calibrated for p in expected], atol=1e-5)
