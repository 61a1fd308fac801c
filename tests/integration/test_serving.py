"""The served ensemble equals the in-process reference pipeline."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tce.models.length_trim import run_numpy
from tce_backends import graph
from tce_backends.reference import ReferencePipeline
from tce_client import DEFAULT_MODEL, AsyncCalibratedClassifierClient, CalibratedClassifierClient
from tce_client.schema import schema_for

pytestmark = pytest.mark.integration
STEPS = (graph.PREPROCESSOR, graph.MULTIMODAL_MODEL, graph.CALIBRATOR, DEFAULT_MODEL)


def _assert_matches_reference(server, records, predictions, model=None):
    reference = ReferencePipeline(server.bundle, model).predict(schema_for(server.bundle.manifest).encode(records))
    assert len(predictions) == len(records)
    for task in server.bundle.manifest.tasks:
        raw = np.stack([p[task.name].raw for p in predictions])
        calibrated = np.stack([p[task.name].calibrated for p in predictions])
        assert np.abs(raw - reference[f"{task.name}_raw"]).max() <= 1e-5
        assert np.abs(calibrated - reference[f"{task.name}_calibrated"]).max() <= 1e-5
        labels = [p[task.name].label for p in predictions]
        assert labels == [v.decode() for v in reference[f"{task.name}_label"][:, 0]]
    versions = {p.calibration_version for p in predictions}
    assert versions == {server.bundle.calibrator.version}


def test_every_step_is_ready(bimodal_server):
    client = httpclient.InferenceServerClient(bimodal_server.http_url)
    assert client.is_server_ready()
    for step in STEPS:
        assert client.is_model_ready(step), step


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_equals_reference_pipeline(bimodal_server, varied_records, protocol):
    assert len(varied_records) >= 200
    url = bimodal_server.http_url if protocol == "http" else bimodal_server.grpc_url
    with CalibratedClassifierClient(url, protocol=protocol) as client:
        predictions = client.predict(varied_records)  # split into max_batch_size requests
    _assert_matches_reference(bimodal_server, varied_records, predictions)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_async_client_equals_reference_pipeline(bimodal_server, varied_records, protocol):
    url = bimodal_server.http_url if protocol == "http" else bimodal_server.grpc_url

    async def run():
        async with AsyncCalibratedClassifierClient(url, protocol=protocol, max_concurrency=4) as client:
            client.max_batch_size = 16  # many concurrent requests
            return await client.predict(varied_records[:96])

    _assert_matches_reference(bimodal_server, varied_records[:96], asyncio.run(run()))


def _untrimmed_model(bundle):
    """``model.pt`` computing every padded position: what the served, trimming model must equal."""
    module = torch.jit.load(str(bundle.model_path)).eval()
    module.trim_padding = False
    return functools.partial(run_numpy, module)


TRIMMING_TEXTS = [  # (dialogue, events): empty text, one short chunk, both chunks full, and between
    ("", ""),
    ("buyer: where is my order", "login"),
    ("buyer: the parcel never arrived and tracking is stuck " * 30, "login view pay " * 20),
    ("seller: refund sent, please confirm " * 4, ""),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("server_name", ["bimodal_server", "trimodal_server"])
def test_trimmed_serving_equals_the_untrimmed_model(server_name, protocol, varied_records, request):
    server = request.getfixturevalue(server_name)
    schema = schema_for(server.bundle.manifest)
    tabular = {name: varied_records[0][name] for name in schema.feature_order}
    # zip stops at the server's text fields: the bimodal model reads the dialogue only
    records = [{**tabular, **dict(zip(schema.text_fields, texts, strict=False))} for texts in TRIMMING_TEXTS]
    preprocess = ReferencePipeline(server.bundle).steps[graph.PREPROCESSOR]
    masks = preprocess.run(preprocess.validate(schema.encode(records)))["dialogue_attention_mask"]
    chunks_used = (masks.sum(axis=2) > 0).sum(axis=1)
    assert masks.shape[1] == 2 and list(chunks_used) == [1, 1, 2, 1]  # an empty text keeps [CLS][SEP]
    assert masks[2].all() and 0 < masks[1].sum() < masks[3].sum() < masks.shape[2]
    url = server.http_url if protocol == "http" else server.grpc_url
    with CalibratedClassifierClient(url, protocol=protocol) as client:
        together = client.predict(records)  # one request: mixed lengths in one batch
        alone = [client.predict([record])[0] for record in records]
    for predictions in (together, alone):
        _assert_matches_reference(server, records, predictions, model=_untrimmed_model(server.bundle))


def test_trimodal_bundle_serves_and_matches_reference(trimodal_server, varied_records):
    with CalibratedClassifierClient(trimodal_server.grpc_url, protocol="grpc") as client:
        assert client.schema.text_fields == ("dialogue", "events")
        predictions = client.predict(varied_records[:80])
    _assert_matches_reference(trimodal_server, varied_records[:80], predictions)


def test_a_record_gets_the_same_answer_alone_and_in_a_batch(bimodal_server, varied_records):
    with CalibratedClassifierClient(bimodal_server.grpc_url, protocol="grpc") as client:
        batch = client.predict(varied_records[:32])
        for index in (0, 5, 31):
            (alone,) = client.predict([varied_records[index]])
            for task in alone.tasks:
                assert np.abs(alone[task].raw - batch[index][task].raw).max() <= 1e-5
                assert np.abs(alone[task].calibrated - batch[index][task].calibrated).max() <= 1e-5


def _statistics(url: str, model: str) -> tuple[int, int]:
    stats = httpclient.InferenceServerClient(url).get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_dynamic_batching_batches_concurrent_requests_after_the_entry_step(bimodal_server, varied_records):
    before = {step: _statistics(bimodal_server.http_url, step) for step in STEPS[:3]}
    with CalibratedClassifierClient(bimodal_server.grpc_url, protocol="grpc") as client:
        encoded = client.schema.encode(varied_records[:64])

        def one(i: int):
            return client.infer_arrays(encoded, slice(i, i + 1))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(64)))
    assert len(results) == 64
    for step in STEPS[:3]:
        now = _statistics(bimodal_server.http_url, step)
        inferences, executions = (a - b for a, b in zip(now, before[step], strict=True))
        assert inferences == 64, step
        if step == graph.PREPROCESSOR:  # isolation: one caller request per execution
            assert executions == inferences, f"{step}: {executions} executions for {inferences} inferences"
        else:
            assert executions < inferences, f"{step}: {executions} executions for {inferences} inferences"


def test_config_publishes_schema_for_clients(bimodal_server):
    config = grpcclient.InferenceServerClient(bimodal_server.grpc_url).get_model_config(
        DEFAULT_MODEL, as_json=True)["config"]
    assert "tce_schema" in config["parameters"]
    names = [o["name"] for o in config["output"]]
    assert "abuse_raw" in names and "abuse_calibrated" in names
