import asyncio

import pytest

from tce.serving.server import free_ports
from tce_client import (
    AsyncCalibratedClassifierClient,
    CalibratedClassifierClient,
    InferenceError,
    ModelNotReadyError,
    RecordError,
    ServerUnavailableError,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_down(protocol):
    (port,) = free_ports(1)
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}"):
        CalibratedClassifierClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=2)


def test_server_down_async():
    (port,) = free_ports(1)

    async def run():
        async with AsyncCalibratedClassifierClient(f"127.0.0.1:{port}", protocol="grpc"):
            pass

    with pytest.raises(ServerUnavailableError):
        asyncio.run(run())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_not_ready(bimodal_server, protocol):
    url = bimodal_server.http_url if protocol == "http" else bimodal_server.grpc_url
    with pytest.raises(ModelNotReadyError, match="no_such_model"):
        CalibratedClassifierClient(url, protocol=protocol, model="no_such_model")


def test_bad_record_fails_before_sending(bimodal_server):
    with CalibratedClassifierClient(bimodal_server.http_url) as client:
        with pytest.raises(RecordError, match="record 1, field 'order_amount'"):
            client.predict([{"dialogue": "hi"}, {"order_amount": "a lot"}], allow_missing_fields=True)


def test_server_side_rejection_is_an_inference_error(bimodal_server):
    import numpy as np

    with CalibratedClassifierClient(bimodal_server.grpc_url, protocol="grpc") as client:
        inputs = client.schema.encode([{"dialogue": "hi"}], allow_missing_fields=True)
        inputs["dialogue"] = np.array([[b"\xff"]], dtype=object)
        with pytest.raises(InferenceError, match="dialogue"):
            client.infer_arrays(inputs)
