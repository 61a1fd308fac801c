"""tce_gateway.grpc_codec: a caller's ModelInferRequest is checked like an HTTP request and
rebuilt; Triton's binary HTTP answer becomes the ModelInferResponse its gRPC frontend gives."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.grpc_codec import TritonError, decode_infer, encode_infer, parse_infer, response_from_http
from tests.unit.test_gateway_http_codec import SIGNATURE

LIMITS = Limits(max_elements=64)


def request(**changes) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="ens", id="r1")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    message.raw_input_contents.append(struct.pack("<I", 2) + b"hi")
    message.inputs.add(name="numbers", datatype="FP64", shape=[1, 3])
    message.raw_input_contents.append(np.arange(3, dtype="<f8").tobytes())
    for name, value in changes.items():
        setattr(message, name, value)
    return message


def refused(message: service_pb2.ModelInferRequest, match: str) -> None:
    with pytest.raises(Refusal, match=match):
        parse_infer(message, SIGNATURE, LIMITS)


def test_a_good_request_is_rebuilt_with_only_what_was_checked():
    original = request()
    payload = original.SerializeToString() + bytes([99 << 3 & 0x7F | 0x80, 99 >> 4, 1])  # an unknown field
    rebuilt = service_pb2.ModelInferRequest.FromString(encode_infer(parse_infer(decode_infer(payload), SIGNATURE,
                                                                                LIMITS)))
    assert rebuilt == original
    assert rebuilt.SerializeToString() == original.SerializeToString()  # the unknown field is gone


def test_typed_contents_become_raw_contents():
    message = service_pb2.ModelInferRequest(model_name="ens")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"hi")
    message.inputs.add(name="numbers", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend([0.0, 1.0, 2.0])
    rebuilt = service_pb2.ModelInferRequest.FromString(encode_infer(parse_infer(message, SIGNATURE, LIMITS)))
    assert rebuilt.raw_input_contents == request().raw_input_contents
    assert not rebuilt.inputs[0].HasField("contents")


def test_parameters_and_classification_follow_the_allow_list():
    message = request()
    message.parameters["priority"].uint64_param = 1 << 63
    refused(message, 'parameter "priority" is not accepted')
    message = request()
    message.inputs[0].parameters["shared_memory_region"].string_param = "x"
    refused(message, "input 'text': parameter \"shared_memory_region\"")
    message = request()
    message.outputs.add(name="label").parameters["classification"].int64_param = 1
    refused(message, "only to numeric outputs, 'label' is BYTES")
    message = request()
    message.outputs.add(name="score").parameters["binary_data"].bool_param = True
    refused(message, 'parameter "binary_data" is not accepted')


def test_contents_problems_are_named():
    message = request()
    message.inputs[0].contents.bytes_contents.append(b"x")
    refused(message, "typed contents beside raw_input_contents")
    message = request()
    del message.raw_input_contents[1]
    refused(message, "1 raw_input_contents for 2 inputs")
    message = service_pb2.ModelInferRequest(model_name="ens")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.fp64_contents.append(1.0)
    refused(message, "a BYTES tensor goes in bytes_contents, got fp64_contents")
    refused(request(id="bad\nid"), "'id' must be printable")


def test_an_undecodable_message_is_refused():
    with pytest.raises(Refusal, match="not a valid ModelInferRequest"):
        decode_infer(b"\xff\xff\xff\xff")


def test_tritons_binary_http_answer_becomes_its_grpc_answer():
    header = {"model_name": "ens", "model_version": "1", "id": "r1", "outputs": [
        {"name": "score", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
        {"name": "label", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 7}}]}
    encoded = json.dumps(header).encode()
    body = encoded + np.array([0.25, 0.75], dtype="<f4").tobytes() + struct.pack("<I", 3) + b"yes"
    answer = service_pb2.ModelInferResponse.FromString(
        response_from_http(200, {"Inference-Header-Content-Length": str(len(encoded))}, body))
    assert (answer.model_name, answer.model_version, answer.id) == ("ens", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("score", "FP32", [1, 2]),
                                                                             ("label", "BYTES", [1, 1])]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75]
    assert answer.raw_output_contents[1] == struct.pack("<I", 3) + b"yes"
    with pytest.raises(TritonError) as error:
        response_from_http(503, {}, b'{"error":"Exceeds maximum queue size"}')
    assert (error.value.code, error.value.message) == ("UNAVAILABLE", "Exceeds maximum queue size")
