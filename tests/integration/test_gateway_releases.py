"""Two releases behind a real gateway: a release by version (HTTP path, gRPC model_version),
canary and shadow traffic set in releases.json, a malformed releases.json, and
``tce evaluate --compare-release`` comparing the two releases on the same records.

Release 1 is the bimodal demo bundle; release 2 is the same model with other calibration
tables (abuse's table squared, label "release-two"), so both the ``release`` output and the
``calibration_version`` say which release answered."""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.repository.release_files import add_release
from tce.repository.releases import Releases
from tce.serving.server import free_ports
from tce_backends.bundle import Bundle
from tce_backends.contract import RELEASES_FILE, release_model_name
from tce_client import DEFAULT_MODEL
from tce_gateway.config import GatewayConfig, Replica
from tce_gateway.launcher import Gateway
from tests.hostile import GOOD_RECORD, json_body, post_json
from tests.integration.conftest import nginx_missing, start_server

pytestmark = pytest.mark.integration
NGINX = nginx_missing()
LABEL_TWO = "release-two"
CANDIDATE = release_model_name(DEFAULT_MODEL, 2)


def _recalibrated(bundle: Bundle, out: Path) -> Bundle:
    """``bundle`` with abuse's calibration table squared and labelled ``LABEL_TWO``."""
    shutil.copytree(bundle.root, out, dirs_exist_ok=True)
    calibration = out / "calibration" / "calibration.json"
    payload = json.loads(calibration.read_text(encoding="utf-8"))
    payload["label"] = LABEL_TWO
    calibration.write_text(json.dumps(payload), encoding="utf-8")
    table = np.load(out / "calibration" / "abuse_class_1.npy")
    table[:, 1] = table[:, 1] ** 2
    np.save(out / "calibration" / "abuse_class_1.npy", table)
    return Bundle.load(out)


@pytest.fixture(scope="module")
def releases(bimodal_bundle, tmp_path_factory):
    """(repository, server, gateway): releases 1 (current) and 2 (candidate), no traffic split."""
    if NGINX:
        pytest.skip(NGINX)
    repository = write_repository(bimodal_bundle, tmp_path_factory.mktemp("repository_releases"))
    second = _recalibrated(bimodal_bundle, tmp_path_factory.mktemp("bundle_release_two"))
    add_release(repository, Releases.load(repository), second)
    server = start_server(repository)
    try:
        http_port, grpc_port = free_ports(2)
        gateway = Gateway((Replica(server.config.http_url, server.config.grpc_url),),
                          GatewayConfig(http_port=http_port, grpc_port=grpc_port, door_workers=1),
                          repository=repository)
        with gateway:
            yield repository, server, gateway
    finally:
        server.stop()


def _set_traffic(repository: Path, traffic: dict | None, text: str | None = None) -> None:
    """releases.json with this traffic (or ``text`` as it is), by staging and rename; then
    wait for the door's next look (at most once a second)."""
    path = repository / RELEASES_FILE
    if text is None:
        document = json.loads(path.read_text(encoding="utf-8"))
        document["traffic"] = traffic
        text = json.dumps(document)
    staged = path.with_name(".releases.json.test-staging")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)
    time.sleep(1.3)


def _who(body: bytes) -> tuple[str, str]:
    outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    return outputs["release"][0], outputs["calibration_version"][0]


def _http(gateway: Gateway, path: str = f"/v2/models/{DEFAULT_MODEL}/infer") -> tuple[str, str]:
    status, body = post_json(f"{gateway.address}:{gateway.http_port}", json_body(), path=path)
    assert status == 200, body
    return _who(body)


def _grpc(gateway: Gateway, version: str = "") -> tuple[str, str]:
    client = grpcclient.InferenceServerClient(f"{gateway.address}:{gateway.grpc_port}")
    inputs = []
    for name, values in GOOD_RECORD.items():
        array = np.array([values], dtype=np.float64 if name == "numeric_features" else object)
        tensor = grpcclient.InferInput(name, list(array.shape), "FP64" if array.dtype == np.float64 else "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        result = client.infer(DEFAULT_MODEL, inputs, model_version=version)
    finally:
        client.close()
    return result.as_numpy("release")[0, 0].decode(), result.as_numpy("calibration_version")[0, 0].decode()


def _v1(gateway: Gateway) -> dict:
    row = make_dataset(1, seed=5).drop(columns=["abuse", "reason", "events", "record_id"], errors="ignore")
    record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.to_dict("records")[0].items()}
    status, body = post_json(f"{gateway.address}:{gateway.http_port}", {"instances": [record]},
                             path=f"/v1/models/{DEFAULT_MODEL}:predict")
    assert status == 200, body
    return json.loads(body)["predictions"][0]


def _inferences(server, model: str) -> int:
    with urllib.request.urlopen(f"http://{server.config.http_url}/v2/models/{model}/stats", timeout=10) as answer:
        return int(json.loads(answer.read())["model_stats"][0]["inference_count"])


def test_a_release_by_version_answers_from_that_release(releases):
    _, _, gateway = releases
    assert _http(gateway) == _http(gateway, f"/v2/models/{DEFAULT_MODEL}/versions/1/infer")
    assert _http(gateway)[0] == "1"
    release, version = _http(gateway, f"/v2/models/{DEFAULT_MODEL}/versions/2/infer")
    assert release == "2" and version.startswith(f"{LABEL_TWO}@")
    assert _grpc(gateway, "2")[0] == "2" and _grpc(gateway, "1")[0] == "1"
    status, body = post_json(f"{gateway.address}:{gateway.http_port}", json_body(),
                             path=f"/v2/models/{DEFAULT_MODEL}/versions/7/infer")
    assert status == 404 and "release 7" in json.loads(body)["error"]
    url = f"http://{gateway.address}:{gateway.http_port}/v2/models/{DEFAULT_MODEL}/versions/2"
    with urllib.request.urlopen(url, timeout=10) as answer:  # metadata of release 2's own model
        assert json.loads(answer.read())["name"] == CANDIDATE


def test_canary_share_one_sends_every_unversioned_request_to_the_candidate(releases):
    repository, _, gateway = releases
    _set_traffic(repository, {"release": 2, "share": 1.0, "mode": "canary"})
    try:
        assert {_http(gateway)[0] for _ in range(5)} == {"2"}
        assert _grpc(gateway)[0] == "2"
        record = _v1(gateway)
        assert record["release"] == "2" and record["calibration_version"].startswith(f"{LABEL_TWO}@")
        assert _http(gateway, f"/v2/models/{DEFAULT_MODEL}/versions/1/infer")[0] == "1"  # a named release stays
        _set_traffic(repository, {"release": 2, "share": 0.0, "mode": "canary"})
        assert {_http(gateway)[0] for _ in range(5)} | {_grpc(gateway)[0], _v1(gateway)["release"]} == {"1"}
    finally:
        _set_traffic(repository, None)


def test_shadow_answers_from_the_current_release_and_counts_the_candidate(releases):
    repository, server, gateway = releases
    before = _inferences(server, CANDIDATE)
    _set_traffic(repository, {"release": 2, "share": 1.0, "mode": "shadow"})
    try:
        answers = [_http(gateway) for _ in range(4)] + [_grpc(gateway)]
        assert {release for release, _ in answers} == {"1"}
        assert not any(version.startswith(LABEL_TWO) for _, version in answers)
        deadline = time.monotonic() + 10
        while _inferences(server, CANDIDATE) < before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _inferences(server, CANDIDATE) == before + 5  # every request, copied once
        log = gateway.log_tail(20000)
        assert "shadow of release 2 beside 'calibrated_ensemble'" in log and "labels agree on" in log
    finally:
        _set_traffic(repository, None)


def test_a_malformed_releases_file_is_logged_and_splits_nothing(releases):
    repository, _, gateway = releases
    good = (repository / RELEASES_FILE).read_text(encoding="utf-8")
    _set_traffic(repository, None, text=good.replace('"traffic": null', '"traffic": {"release": 2, "share": 7}'))
    try:
        assert {_http(gateway)[0] for _ in range(3)} == {"1"}
        assert "malformed" in gateway.log_tail(20000)
    finally:
        _set_traffic(repository, None, text=good)


def test_evaluate_compares_the_current_release_with_another(releases, tmp_path):
    from tce.cli import main

    _, server, _ = releases
    frame = make_dataset(60, seed=11)
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    code = main(["evaluate", "--input", str(tmp_path / "labelled.csv"), "--out", str(tmp_path / "eval"),
                 "--url", server.config.grpc_url, "--compare-release", "2", "--id-field", "record_id",
                 "--label", "abuse=abuse", "--label", "reason=reason", "--bootstrap-samples", "20",
                 "--comparison-plots", "false"])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    comparison = report["comparison"]
    assert comparison["task"] == "abuse" and comparison["previous_score_field"] == "release_2_score"
    # the same model and a squared table: the same calibrated ranking, other calibrated scores
    assert comparison["delta_calibrated"]["auroc"] == pytest.approx(0.0, abs=1e-9)
    assert abs(comparison["delta_calibrated"]["ece"]) > 1e-3
    predictions = pd.read_csv(tmp_path / "eval" / "eval_predictions.csv")
    current, other = predictions["abuse_calibrated_prob_class_1"], predictions["release_2_score"]
    assert (other <= current + 1e-6).all() and (other < current - 1e-3).any()  # release 2's table is squared
    np.testing.assert_allclose(predictions["release_2_raw_score"], predictions["abuse_prob_class_1"], atol=1e-6)
    assert not (tmp_path / "eval" / ".scoring-release-2").exists()
