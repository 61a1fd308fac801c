"""The prediction log through the real gateway in front of a served repository: requests with
ids over every protocol the door serves (v2 HTTP, gRPC, v1 records, /invocations) are logged
with what was answered, and ``tce evaluate --predictions LOG --labels LABELS.csv`` joins late
labels to them per window."""
from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tce.cli import main
from tce.serving.server import free_ports
from tce_gateway.config import GatewayConfig, PredictionLogConfig, Replica
from tce_gateway.launcher import Gateway
from tce_gateway.prediction_log import ID_HEADER, read_lines
from tests.hostile import json_body, post, post_json
from tests.integration.conftest import nginx_missing

pytestmark = pytest.mark.integration
NGINX = nginx_missing()
RECORD = {"dialogue": "buyer: my package never arrived", "order_amount": 45.5, "account_age_days": 800,
          "prior_claims": 3, "seller_rating": 2.9, "message_count": 2, "payment_method": "card",
          "marketplace": "UK", "item_category": "home"}


def _v2(index: int) -> dict:
    """A one-record v2 request whose scores differ from request to request."""
    return json_body({"dialogue": [f"buyer: order {index} never came, refund now" * (index % 3 + 1)],
                      "numeric_features": [float(index * 7), 100.0 + index, float(index % 4), 4.0 - index / 10, 2.0],
                      "categorical_features": [("card", "paypal")[index % 2], "US", "toys"]})


def _grpc_infer(url: str, body: dict, request_id: str) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        inputs = []
        for entry in body["inputs"]:
            values = np.array(entry["data"], dtype=object if entry["datatype"] == "BYTES" else np.float64)
            tensor = grpcclient.InferInput(entry["name"], entry["shape"], entry["datatype"])
            tensor.set_data_from_numpy(values.reshape(entry["shape"]))
            inputs.append(tensor)
        result = client.infer("calibrated_ensemble", inputs, request_id=request_id)
        return {"abuse_calibrated": result.as_numpy("abuse_calibrated")}


def _grpc_raw(url: str, body: dict, metadata: tuple = ()) -> tuple[list[float], dict[str, str]]:
    """A ModelInfer without a request id: the calibrated abuse scores and the trailing metadata."""
    request = service_pb2.ModelInferRequest(model_name="calibrated_ensemble")
    for entry in body["inputs"]:
        tensor = request.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        if entry["datatype"] == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() for v in entry["data"])
        else:
            tensor.contents.fp64_contents.extend(entry["data"])
    with grpc.insecure_channel(url) as channel:
        response, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=metadata, timeout=60)
    index = [o.name for o in response.outputs].index("abuse_calibrated")
    scores = np.frombuffer(response.raw_output_contents[index], dtype="<f4").tolist()
    return scores, dict(call.trailing_metadata() or ())


def _answered(body: bytes) -> list[float]:
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    return outputs["abuse_calibrated"]["data"]


@pytest.mark.skipif(bool(NGINX), reason=NGINX)
def test_answers_are_logged_with_their_ids_and_late_labels_join_them(bimodal_server, tmp_path, capsys):
    log_dir = tmp_path / "predictions"
    http, grpc_port, sagemaker = free_ports(3)
    config = GatewayConfig(http_port=http, grpc_port=grpc_port, sagemaker_port=sagemaker, door_workers=2,
                           prediction_log=PredictionLogConfig(str(log_dir), rate=1.0, inputs=True))
    answered: dict[str, list[float]] = {}   # id -> abuse calibrated scores the caller got
    with Gateway((Replica(bimodal_server.http_url, bimodal_server.grpc_url),), config) as gateway:
        url = f"127.0.0.1:{gateway.http_port}"
        for index in range(6):
            status, body = post_json(url, {**_v2(index), "id": f"http-{index}"})
            assert status == 200, body
            answered[f"http-{index}"] = _answered(body)
        for index in range(6, 10):
            result = _grpc_infer(f"127.0.0.1:{gateway.grpc_port}", _v2(index), f"grpc-{index}")
            answered[f"grpc-{index}"] = result["abuse_calibrated"][0].tolist()
        grpc_url = f"127.0.0.1:{gateway.grpc_port}"
        answered["grpc-meta"], trailing = _grpc_raw(grpc_url, _v2(13), (("x-request-id", "grpc-meta"),))
        assert trailing["x-request-id"] == "grpc-meta"
        scores, trailing = _grpc_raw(grpc_url, _v2(14))
        grpc_made = trailing["x-request-id"]   # made by the door, for the caller's labels
        answered[grpc_made] = scores
        v1 = urllib.request.Request(f"http://{url}/v1/models/calibrated_ensemble:predict", headers={
            ID_HEADER: "v1-batch", "Content-Type": "application/json"},
            data=json.dumps({"instances": [RECORD, {**RECORD, "order_amount": None}]}).encode())
        with urllib.request.urlopen(v1, timeout=60) as response:
            assert response.headers[ID_HEADER] == "v1-batch"
            for row, prediction in enumerate(json.loads(response.read())["predictions"]):
                answered[f"v1-batch/{row}"] = list(prediction["abuse"]["calibrated"].values())
        status, _ = post(f"127.0.0.1:{gateway.sagemaker_port}", json.dumps(RECORD).encode(), path="/invocations",
                         headers={ID_HEADER: "sm-1"})
        assert status == 200
        no_id = urllib.request.Request(f"http://{url}/v2/models/calibrated_ensemble/infer",
                                       data=json.dumps(_v2(11)).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(no_id, timeout=60) as response:
            made = response.headers[ID_HEADER]   # the id the door logged it under, for the caller's labels
            answered[made] = _answered(response.read())
        status, body = post_json(url, _v2(12), headers={ID_HEADER: "x" * 300})
        assert status == 400 and b"X-Request-Id header must be 1 to 256 printable ASCII" in body
    # The gateway stopped: each worker wrote what it had queued.
    files = sorted(log_dir.glob("*.jsonl"))
    assert files and all(re.fullmatch(r"predictions-[01]\.jsonl", f.name) for f in files)
    entries = {e["id"]: e for f in files for e in map(json.loads, read_lines(f))}
    assert set(entries) == {*answered, "sm-1"}
    for request_id, scores in answered.items():
        logged = entries[request_id]["tasks"]["abuse"]
        np.testing.assert_allclose(list(logged["calibrated"].values()), scores, atol=1e-6)
        assert set(logged) >= {"raw", "calibrated", "label", "calibration_fallback"}
        assert entries[request_id]["calibration_version"] and entries[request_id]["release"] == "1"
    assert entries["v1-batch/1"]["inputs"]["order_amount"] is None
    assert entries["v1-batch/0"]["inputs"]["marketplace"] == "UK" and entries["v1-batch/1"]["record"] == 1
    assert entries[made]["id_source"] == entries[grpc_made]["id_source"] == "gateway"
    assert entries["grpc-6"]["id_source"] == "request" and entries["grpc-meta"]["id_source"] == "header"

    # Labels arrive later: for most logged requests, and for one the log never saw.
    classes = list(entries["http-0"]["tasks"]["abuse"]["calibrated"])
    labelled = sorted(answered)[:10]
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"request": [*labelled, "never-logged"],
                           "label_abuse": [classes[i % 2] for i in range(11)],
                           "label_reason": rng.choice(list(entries["http-0"]["tasks"]["reason"]["raw"]), 11)})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "late"
    assert main(["evaluate", "--predictions", str(log_dir), "--labels", str(tmp_path / "labels.csv"),
                 "--join-on", "request", "--out", str(out), "--window", "day"]) == 0
    printed = capsys.readouterr().out
    days = Counter(entries[i]["timestamp"][:10] for i in labelled)  # one day, unless the test ran over midnight
    day = min(days)
    assert f"{day} abuse" in printed and "10 of 11 labelled ids found" in printed
    metrics = json.loads((out / "log_metrics.json").read_text())
    assert [(w["window"], w["task"], w["records"]) for w in metrics["windows"]] == [
        (d, task, days[d]) for task in ("abuse", "reason") for d in sorted(days)]
    assert metrics["join"]["labels_without_prediction"] == 1
    assert metrics["join"]["predictions_without_label"] == len(entries) - 10
    assert 0 <= metrics["windows"][0]["ece_calibrated"] <= 1 and metrics["windows"][0]["ece_raw"] is not None
    assert (out / "reliability" / "abuse" / f"{day}.png").is_file()
    assert (out / "calibration_over_time_reason.png").is_file()
