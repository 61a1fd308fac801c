"""The canary's mark (``CANARY_PARAMETER``) keeps its rows out of the score metrics; a caller
who sets it through the front door would hide its traffic from them. The door refuses it on
every route (HTTP, gRPC, SageMaker's /invocations with a KServe v2 body) and rebuilds what it
forwards from what it checked, so it never reaches Triton."""
from __future__ import annotations

import json

import pytest
from tritonclient.grpc import service_pb2

from tce_backends.contract import CANARY_PARAMETER
from tce_gateway import http_codec
from tce_gateway.errors import Refusal
from tce_gateway.grpc_codec import encode_infer as encode_grpc
from tce_gateway.grpc_codec import parse_infer as parse_grpc
from tce_gateway.invocations import read_invocation
from tests.unit.test_gateway_grpc_codec import request as grpc_request
from tests.unit.test_gateway_http_codec import LIMITS, SIGNATURE, good


@pytest.mark.parametrize("value", [True, "true", 1])
def test_http_callers_cannot_mark_their_requests_as_the_canary(value):
    body = json.dumps(good(parameters={CANARY_PARAMETER: value})).encode()
    with pytest.raises(Refusal, match=f"parameter .{CANARY_PARAMETER}. is not accepted"):
        http_codec.parse_infer("ens", "", body, None, SIGNATURE, LIMITS)
    with pytest.raises(Refusal, match=f"parameter .{CANARY_PARAMETER}. is not accepted"):
        read_invocation(body, "application/json", None, SIGNATURE, LIMITS)


def test_grpc_callers_cannot_mark_their_requests_as_the_canary():
    message = grpc_request()
    message.parameters[CANARY_PARAMETER].bool_param = True
    with pytest.raises(Refusal, match=f"parameter .{CANARY_PARAMETER}. is not accepted"):
        parse_grpc(message, SIGNATURE, LIMITS)


def test_what_the_door_forwards_carries_no_request_parameter_of_the_callers():
    assert CANARY_PARAMETER not in http_codec.REQUEST_PARAMETERS
    body, headers = http_codec.encode_infer(http_codec.parse_infer(
        "ens", "", json.dumps(good(parameters={"binary_data_output": True})).encode(), None, SIGNATURE, LIMITS))
    header = json.loads(body[:int(headers[http_codec.HEADER_LENGTH])])
    assert set(header.get("parameters", {})) <= {"binary_data_output"}
    rebuilt = service_pb2.ModelInferRequest.FromString(encode_grpc(parse_grpc(grpc_request(), SIGNATURE, LIMITS)))
    assert not rebuilt.parameters
