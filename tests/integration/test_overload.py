"""Overload is refused fast with a clear status, not queued without end."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio

from tce.repository.builder import RepositoryOptions, write_repository
from tce_client import CalibratedClassifierClient, ServerBusyError
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_queue_server(bimodal_bundle, tmp_path_factory):
    options = RepositoryOptions(max_queue_size=4, model_max_queue_size=2, queue_timeout_ms=500,
                                preprocessor_instances=1)
    repository = write_repository(bimodal_bundle, tmp_path_factory.mktemp("overload") / "repository", options)
    server = start_server(repository)
    yield server
    server.stop()


def _inputs(client: CalibratedClassifierClient, rows: int) -> list:
    encoded = client.schema.encode([{"dialogue": "buyer: my parcel never came " * 20, "order_amount": 5.0}] * rows,
                                    allow_missing_fields=True)
    tensors = []
    for name, array in encoded.items():
        tensor = grpcaio.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def test_a_burst_beyond_the_queues_is_refused_at_once_and_the_rest_is_served(small_queue_server):
    with CalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc") as sdk:
        tensors = _inputs(sdk, rows=64)

    async def burst() -> list[tuple[float, str]]:
        client = grpcaio.InferenceServerClient(small_queue_server.config.grpc_url)

        async def one() -> tuple[float, str]:
            started = time.monotonic()
            try:
                await client.infer("calibrated_ensemble", tensors)
                outcome = "ok"
            except Exception as error:  # noqa: BLE001 - the status is the verdict
                outcome = str(error)
            return time.monotonic() - started, outcome

        try:
            return await asyncio.gather(*(one() for _ in range(120)))
        finally:
            await client.close()

    results = asyncio.run(burst())
    served = [seconds for seconds, outcome in results if outcome == "ok"]
    refused = [(seconds, outcome) for seconds, outcome in results if outcome != "ok"]
    assert served, "some requests must still be served"
    assert refused, "a burst beyond the queues must be refused"
    for _seconds, outcome in refused:
        assert "StatusCode.UNAVAILABLE" in outcome, outcome
        assert "Exceeds maximum queue size" in outcome or "Request timeout expired" in outcome, outcome
    # refusals come from the bounded queues: none waits much longer than the queue timeout
    assert max(seconds for seconds, _ in refused) < 0.5 * 3 + max(served)
    with CalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc") as client:
        (prediction,) = client.predict([{"dialogue": "hello"}], allow_missing_fields=True)
    assert np.isfinite(prediction["abuse"].calibrated).all()


def test_the_sdk_retries_refusals_then_says_the_server_is_busy(small_queue_server):
    """Requests the server never ran are retried; when it stays full, a clear error."""
    import concurrent.futures

    with CalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc", retries=1) as probe:
        encoded = probe.schema.encode([{"dialogue": "buyer: my parcel never came " * 20}] * 64,
                                      allow_missing_fields=True)

    def one(_: int) -> str:
        with CalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc", retries=1,
                                        timeout_s=60) as client:
            try:
                client.infer_arrays(encoded)
                return "ok"
            except ServerBusyError as error:
                return f"busy: {error}"

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(64)))
    busy = [o for o in outcomes if o.startswith("busy")]
    assert "ok" in outcomes
    assert busy and all("overloaded" in o and "retried 1 time" in o for o in busy), busy[:2]


def test_the_async_client_slows_down_instead_of_failing(small_queue_server):
    """32 requests of 64 records at once against queues that hold 2-4: before, the job
    failed with ServerBusyError; now the refused requests wait for room and go again."""
    from tce.lib.demo_data import make_dataset
    from tce_client import AsyncCalibratedClassifierClient
    from tce_client.concurrency import AdaptiveLimit

    records = make_dataset(32 * 64, seed=8).drop(columns=["abuse", "reason", "events", "record_id"])

    async def run():
        async with AsyncCalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc",
                                                   max_concurrency=32) as client:
            assert client.limit is not None and client.limit.ceiling == 2  # what the server's queues publish
            client.limit = AdaptiveLimit(32, 32)  # as if it published nothing (or a fleet shared the address)
            predictions = await client.predict(records)
            return predictions, client.limit

    predictions, limit = asyncio.run(run())
    assert len(predictions) == len(records)
    assert limit.refusals > 0 and limit.lowest < 32, "the server refused nothing: the test proves nothing"
    with CalibratedClassifierClient(small_queue_server.config.grpc_url, protocol="grpc") as sdk:
        expected = sdk.predict(records.iloc[:64])
    np.testing.assert_allclose([p["abuse"].calibrated for p in predictions[:64]],
                               [p["abuse"].calibrated for p in expected], atol=1e-5)


def test_a_batch_job_asking_for_far_more_than_the_server_queues_finishes_every_row_once(small_queue_server,
                                                                                        tmp_path):
    import subprocess
    import sys

    import pandas as pd

    from tce.lib.demo_data import make_dataset

    frame = make_dataset(2000, seed=9).drop(columns=["abuse", "reason", "events"])
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = subprocess.run([sys.executable, "-m", "tce.cli", "predict", "--input", str(tmp_path / "in.csv"),
                             "--output", str(tmp_path / "out"), "--url", small_queue_server.config.grpc_url,
                             "--id-field", "record_id", "--max-in-flight", "32", "--chunk-rows", str(32 * 64)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    scored = pd.read_csv(tmp_path / "out" / "inference_predictions.csv")
    assert scored["record_id"].tolist() == frame["record_id"].tolist()
