"""The door's releases: releases.json as it reads it (tce_gateway.releases), the canary and
shadow split and releases by version (tce_gateway.routing), and the shadow comparison
(tce_gateway.shadow), in front of a stand-in for Triton."""
from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from tritonclient.grpc import service_pb2

from tce_backends.contract import RELEASES_FILE, SCHEMA_PARAMETER
from tce_gateway.config import DoorConfig, Replica
from tce_gateway.errors import Refusal
from tce_gateway.grpc_app import GrpcDoor
from tce_gateway.http_app import HttpDoor
from tce_gateway.http_codec import answer_tensors
from tce_gateway.releases import NO_RELEASES, ReleaseState, ReleaseWatcher, Traffic, parse_releases
from tce_gateway.routing import Router
from tce_gateway.shadow import Shadow, agreement
from tce_gateway.signatures import SignatureCache
from tce_gateway.upstream import HttpAnswer

ENSEMBLE = "ens"
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def _releases(traffic: dict | None, ensemble: str = ENSEMBLE, current: int = 1) -> str:
    return json.dumps({"ensemble": ensemble, "current": current, "previous": None, "releases": [
        {"release": 1, "bundle": "a", "fingerprint": "f1", "calibration_version": "v1",
         "steps": {"preprocessor": 1, "multimodal_model": 1, "calibrator": 1}, "state": "current"}],
        "traffic": traffic})


def _write(repository: Path, text: str) -> None:
    """As tce release writes it: a staged file renamed over the old one."""
    staged = repository / f".{RELEASES_FILE}.staging"
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, repository / RELEASES_FILE)


# -- releases.json -------------------------------------------------------------------

def test_a_releases_file_is_read_with_its_traffic():
    state = parse_releases(_releases({"release": 2, "share": 0.25, "mode": "canary"}))
    assert state == ReleaseState(ENSEMBLE, 1, Traffic(2, 0.25, "canary"))
    assert parse_releases(_releases(None)).traffic is None
    assert parse_releases(_releases({"release": 3, "share": 1, "mode": "shadow"})).traffic == Traffic(3, 1, "shadow")


@pytest.mark.parametrize("traffic, expected", [
    ({"release": 2, "share": 1.5, "mode": "canary"}, "share"),
    ({"release": 2, "share": True, "mode": "canary"}, "share"),
    ({"release": 2, "share": float("nan"), "mode": "canary"}, "share"),
    ({"release": 0, "share": 0.1, "mode": "canary"}, "release"),
    ({"release": "2", "share": 0.1, "mode": "canary"}, "release"),
    ({"release": 2, "share": 0.1, "mode": "mirror"}, "mode"),
    ({"release": 2, "share": 0.1}, "traffic"),
    ({"release": 2, "share": 0.1, "mode": "canary", "header": "x-canary"}, "traffic"),
    ([2, 0.1, "canary"], "traffic"),
])
def test_malformed_traffic_is_refused_naming_the_field(traffic, expected):
    with pytest.raises(ValueError, match=expected):
        parse_releases(_releases(traffic))


@pytest.mark.parametrize("text", ["[]", "{", '{"current": 1}', '{"ensemble": "a b", "current": 1}',
                                  '{"ensemble": "e", "current": -1}'])
def test_malformed_documents_are_refused(text):
    with pytest.raises(ValueError):
        parse_releases(text)


def test_the_watcher_rereads_a_changed_file_at_most_once_a_second(tmp_path):
    now, lines = [0.0], []
    watcher = ReleaseWatcher(tmp_path, clock=lambda: now[0], log=lines.append)
    assert watcher.state() == NO_RELEASES  # no file: no split, nothing to say
    _write(tmp_path, _releases({"release": 2, "share": 0.1, "mode": "canary"}))
    now[0] += 0.5
    assert watcher.state() == NO_RELEASES  # not looked at again yet
    now[0] += 0.6
    assert watcher.state().traffic == Traffic(2, 0.1, "canary")
    _write(tmp_path, _releases({"release": 2, "share": 0.5, "mode": "shadow"}))
    now[0] += 1.1
    assert watcher.state().traffic == Traffic(2, 0.5, "shadow")
    assert lines == []


def test_a_malformed_file_means_no_split_and_is_logged_once(tmp_path):
    now, lines = [0.0], []
    watcher = ReleaseWatcher(tmp_path, clock=lambda: now[0], log=lines.append)
    _write(tmp_path, _releases({"release": 2, "share": 2.0, "mode": "canary"}))
    for _ in range(5):
        assert watcher.state() == NO_RELEASES
        now[0] += 1.5
    assert len(lines) == 1 and "malformed" in lines[0] and "share" in lines[0] and "no traffic split" in lines[0]
    _write(tmp_path, "{not json")
    now[0] += 1.5
    assert watcher.state() == NO_RELEASES and len(lines) == 2  # another bad version: said once more
    _write(tmp_path, _releases({"release": 2, "share": 0.2, "mode": "canary"}))
    now[0] += 1.5
    assert watcher.state().traffic == Traffic(2, 0.2, "canary")
    assert "readable again" in lines[-1]


# -- a stand-in for Triton --------------------------------------------------------------

def _config(name: str, schema: bool = True) -> dict:
    config = {"name": name, "max_batch_size": 8,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
              "output": [{"name": "t_label", "data_type": "TYPE_STRING", "dims": [1]},
                         {"name": "t_calibrated", "data_type": "TYPE_FP32", "dims": [2]}]}
    if schema:
        config["parameters"] = {SCHEMA_PARAMETER: {"string_value": "{}"}}
    return config


def _answer(model: str, label: str, calibrated: list[float]) -> bytes:
    return json.dumps({"model_name": model, "model_version": "1", "outputs": [
        {"name": "t_label", "datatype": "BYTES", "shape": [1, 1], "data": [label]},
        {"name": "t_calibrated", "datatype": "FP32", "shape": [1, 2], "data": calibrated}]}).encode()


class FakeTriton:
    """Serves ``ens`` (release 1 answers "no"), its release models, and ``plain`` (no releases)."""

    def __init__(self, releases: tuple[int, ...] = (1, 2)) -> None:
        self.models = {ENSEMBLE: (_config(ENSEMBLE), _answer(ENSEMBLE, "no", [0.9, 0.1])),
                       "plain": (_config("plain", schema=False), _answer("plain", "no", [0.9, 0.1]))}
        for n in releases:
            name = f"{ENSEMBLE}-release-{n}"
            self.models[name] = (_config(name), _answer(name, "no" if n == 1 else "yes", [0.9, 0.1] if n == 1
                                                        else [0.4, 0.6]))
        self.calls: list[tuple[str, str]] = []
        self.grpc_calls: list[tuple[str, bytes]] = []

    async def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                   timeout_s: float | None = None) -> HttpAnswer:
        self.calls.append((method, path))
        parts = path.split("/")  # "", "v2", "models", name, ...
        model = self.models.get(parts[3]) if len(parts) > 3 else None
        if model is None:
            return HttpAnswer(400, {"Content-Type": "application/json"}, b'{"error":"unknown model"}')
        if path.endswith("/infer"):
            return HttpAnswer(200, {"Content-Type": "application/json"}, model[1])
        return HttpAnswer(200, {"Content-Type": "application/json"}, json.dumps(model[0]).encode())

    async def fetch(self, path: str) -> tuple[int, bytes]:
        answer = await self.http("GET", path)
        return answer.status, answer.body

    async def grpc(self, method: str, payload: bytes, timeout_s: float, metadata: tuple = ()) -> bytes:
        self.grpc_calls.append((method, payload))
        return b""

    def inferred(self) -> list[str]:
        return [path for method, path in self.calls if method == "POST"]


class FixedWatcher:
    def __init__(self, state: ReleaseState) -> None:
        self.value = state

    def state(self) -> ReleaseState:
        return self.value


def _door(triton: FakeTriton, traffic: Traffic | None = None, seed: int = 7
          ) -> tuple[HttpDoor, GrpcDoor, Router, Shadow, list[str]]:
    signatures = SignatureCache(triton.fetch)
    lines: list[str] = []
    shadow = Shadow(triton, signatures, timeout_s=5, log=lines.append)  # type: ignore[arg-type]
    watcher = FixedWatcher(ReleaseState(ENSEMBLE, 1, traffic))
    router = Router(signatures, watcher, shadow, rng=random.Random(seed), log=lines.append)  # type: ignore[arg-type]
    config = DoorConfig((Replica("127.0.0.1:1", "127.0.0.1:2"),), 3, 4)
    return (HttpDoor(config, triton, signatures, router), GrpcDoor(config, triton, signatures, router),  # type: ignore
            router, shadow, lines)


def _post(door: HttpDoor, path: str, body: dict | None = None, after=None) -> tuple[int, bytes]:
    async def scenario() -> tuple[int, bytes]:
        async with TestClient(TestServer(door.app())) as client:
            response = await client.request("POST" if body is not None else "GET", path,
                                            data=json.dumps(body).encode() if body is not None else None)
            result = response.status, await response.read()
            if after is not None:
                await after()
            return result
    return asyncio.run(scenario())


# -- the split -------------------------------------------------------------------------

@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_the_canary_share_is_respected(share):
    triton = FakeTriton()
    _, _, router, _, _ = _door(triton, Traffic(2, share, "canary"), seed=2024)
    draws = 20000

    async def count() -> int:
        routes = [await router.route(ENSEMBLE) for _ in range(draws)]
        return sum(r.model == f"{ENSEMBLE}-release-2" for r in routes)
    canary = asyncio.run(count())
    assert abs(canary / draws - share) <= 0.01
    if share in (0.0, 1.0):
        assert canary == share * draws


def test_other_models_and_versioned_requests_are_never_split():
    triton = FakeTriton()
    _, _, router, _, _ = _door(triton, Traffic(2, 1.0, "canary"))

    async def routes() -> list:
        return [await router.route("plain"), await router.route(ENSEMBLE, "1"), await router.route("plain", "3")]
    plain, first, versioned = asyncio.run(routes())
    assert (plain.model, plain.version) == ("plain", "")
    assert (first.model, first.version) == (f"{ENSEMBLE}-release-1", "")
    assert (versioned.model, versioned.version) == ("plain", "3")


def test_canary_sends_the_share_to_the_candidate_and_says_so():
    triton = FakeTriton()
    door, _, _, _, lines = _door(triton, Traffic(2, 1.0, "canary"))
    status, body = _post(door, f"/v2/models/{ENSEMBLE}/infer", BODY)
    assert status == 200 and json.loads(body)["model_name"] == f"{ENSEMBLE}-release-2"
    assert triton.inferred() == [f"/v2/models/{ENSEMBLE}-release-2/infer"]
    assert any("canary" in line for line in lines)


def test_a_candidate_that_is_not_loaded_leaves_the_current_release_answering():
    triton = FakeTriton(releases=(1,))
    door, _, _, _, lines = _door(triton, Traffic(2, 1.0, "canary"))
    for _ in range(3):
        status, body = _post(door, f"/v2/models/{ENSEMBLE}/infer", BODY)
        assert status == 200 and json.loads(body)["model_name"] == ENSEMBLE
    assert len([line for line in lines if "not loaded" in line]) == 1


def test_shadow_answers_from_the_current_release_and_compares_the_candidate():
    triton = FakeTriton()
    door, _, _, shadow, lines = _door(triton, Traffic(2, 1.0, "shadow"))
    expected = triton.models[ENSEMBLE][1]
    status, body = _post(door, f"/v2/models/{ENSEMBLE}/infer", BODY, after=shadow.drain)
    assert status == 200 and body == expected  # byte for byte what the current release said
    assert triton.inferred() == [f"/v2/models/{ENSEMBLE}/infer", f"/v2/models/{ENSEMBLE}-release-2/infer"]
    stats = shadow.stats[f"{ENSEMBLE}-release-2"]
    assert (stats.compared, stats.records, stats.labelled, stats.agreeing) == (1, 1, 1, 0)
    assert stats.max_calibrated_difference == pytest.approx(0.5)
    assert any(line.startswith("shadow of release 2") and "labels agree on 0 of 1" in line for line in lines)


def test_shadow_share_zero_sends_no_copy():
    triton = FakeTriton()
    door, _, _, shadow, _ = _door(triton, Traffic(2, 0.0, "shadow"))
    _post(door, f"/v2/models/{ENSEMBLE}/infer", BODY, after=shadow.drain)
    assert triton.inferred() == [f"/v2/models/{ENSEMBLE}/infer"]


def test_a_shadow_candidate_that_takes_other_inputs_gets_no_copy():
    triton = FakeTriton()
    other = _config(f"{ENSEMBLE}-release-2")
    other["input"][0]["dims"] = [3]
    triton.models[f"{ENSEMBLE}-release-2"] = (other, triton.models[f"{ENSEMBLE}-release-2"][1])
    door, _, _, shadow, _ = _door(triton, Traffic(2, 1.0, "shadow"))
    status, _ = _post(door, f"/v2/models/{ENSEMBLE}/infer", BODY, after=shadow.drain)
    assert status == 200 and triton.inferred() == [f"/v2/models/{ENSEMBLE}/infer"]
    stats = shadow.stats[f"{ENSEMBLE}-release-2"]
    assert stats.skipped == 1 and "other inputs" in next(iter(stats.reasons))


# -- releases by version ------------------------------------------------------------------

def test_a_version_of_an_ensemble_with_releases_is_that_release():
    triton = FakeTriton()
    door, _, _, _, _ = _door(triton)
    status, body = _post(door, f"/v2/models/{ENSEMBLE}/versions/2/infer", BODY)
    assert status == 200 and json.loads(body)["model_name"] == f"{ENSEMBLE}-release-2"
    status, body = _post(door, f"/v2/models/{ENSEMBLE}/versions/3/infer", BODY)
    assert status == 404 and "release 3 of 'ens' is not served here" in json.loads(body)["error"]
    assert triton.inferred() == [f"/v2/models/{ENSEMBLE}-release-2/infer"]
    status, body = _post(door, f"/v2/models/{ENSEMBLE}/versions/2/config")
    assert status == 200 and json.loads(body)["name"] == f"{ENSEMBLE}-release-2"
    assert _post(door, f"/v2/models/{ENSEMBLE}/versions/3/ready")[0] == 404


def test_versions_of_other_models_are_forwarded_as_before():
    triton = FakeTriton()
    door, _, _, _, _ = _door(triton)
    status, _ = _post(door, "/v2/models/plain/versions/2/infer", BODY)
    assert status == 200 and triton.inferred() == ["/v2/models/plain/versions/2/infer"]
    _post(door, "/v2/models/plain/versions/2/ready")
    assert triton.calls[-1] == ("GET", "/v2/models/plain/versions/2/ready")


class _Context:
    def time_remaining(self) -> None:
        return None


def test_grpc_model_version_names_a_release():
    triton = FakeTriton()
    _, grpc_door, _, _, _ = _door(triton)
    message = service_pb2.ModelInferRequest(model_name=ENSEMBLE, model_version="2")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(np.array([[1, 2]], dtype="<f4").tobytes())
    reply = asyncio.run(grpc_door._infer(message.SerializeToString(), _Context()))  # type: ignore[arg-type]
    assert service_pb2.ModelInferResponse.FromString(reply).model_name == f"{ENSEMBLE}-release-2"
    assert triton.inferred() == [f"/v2/models/{ENSEMBLE}-release-2/infer"]
    config = grpc_door._discovery("ModelConfig", "ModelConfigRequest")
    asyncio.run(config(service_pb2.ModelConfigRequest(name=ENSEMBLE, version="2").SerializeToString(),
                       _Context()))  # type: ignore[arg-type]
    method, payload = triton.grpc_calls[-1]
    sent = service_pb2.ModelConfigRequest.FromString(payload)
    assert (method, sent.name, sent.version) == ("ModelConfig", f"{ENSEMBLE}-release-2", "")
    with pytest.raises(Refusal, match="release 4"):
        asyncio.run(config(service_pb2.ModelConfigRequest(name=ENSEMBLE, version="4").SerializeToString(),
                           _Context()))  # type: ignore[arg-type]


# -- the comparison ---------------------------------------------------------------------

def test_agreement_counts_records_whose_labels_all_agree():
    current = {"a_label": np.array([[b"x"], [b"y"], [b"x"]], dtype=object),
               "b_label": np.array([[b"p"], [b"q"], [b"p"]], dtype=object),
               "a_calibrated": np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], dtype=np.float32),
               "calibration_version": np.array([[b"v1"]] * 3, dtype=object)}
    candidate = {"a_label": np.array([[b"x"], [b"y"], [b"y"]], dtype=object),
                 "b_label": np.array([[b"p"], [b"p"], [b"p"]], dtype=object),
                 "a_calibrated": np.array([[0.25, 0.75], [0.6, 0.4], [0.5, 0.5]], dtype=np.float32),
                 "calibration_version": np.array([[b"v2"]] * 3, dtype=object)}
    result = agreement(current, candidate)
    assert (result.records, result.agreeing) == (3, 1)
    assert result.max_calibrated_difference == pytest.approx(0.05, abs=1e-6)
    only_scores = agreement({"a_calibrated": current["a_calibrated"]}, {"a_calibrated": current["a_calibrated"]})
    assert (only_scores.records, only_scores.agreeing, only_scores.max_calibrated_difference) == (3, None, 0.0)


def test_answers_are_read_as_json_or_binary_tensors():
    json_answer = HttpAnswer(200, {}, _answer("m", "yes", [0.4, 0.6]))
    header = json.dumps({"outputs": [
        {"name": "t_label", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 7}},
        {"name": "t_calibrated", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    binary = header + (3).to_bytes(4, "little") + b"yes" + np.array([0.4, 0.6], dtype="<f4").tobytes()
    binary_answer = HttpAnswer(200, {"Inference-Header-Content-Length": str(len(header))}, binary)
    for answer in (json_answer, binary_answer):
        outputs = answer_tensors(answer.headers, answer.body)
        assert outputs["t_label"].tolist() == [[b"yes"]]
        np.testing.assert_allclose(outputs["t_calibrated"], [[0.4, 0.6]])


def test_the_door_log_is_passed_on_in_whole_lines(tmp_path):
    from tce_gateway.launcher import Gateway

    gateway = Gateway((Replica("127.0.0.1:1", "127.0.0.1:2"),))
    assert gateway.door_lines() == []  # not started
    gateway.run_dir = tmp_path
    (tmp_path / "door.log").write_bytes(b"tce_gateway: one\ntce_gateway: tw")
    assert gateway.door_lines() == ["tce_gateway: one"]
    with open(tmp_path / "door.log", "ab") as log:
        log.write(b"o\ntce_gateway: three\n")
    assert gateway.door_lines() == ["tce_gateway: two", "tce_gateway: three"]
    assert gateway.door_lines() == []
