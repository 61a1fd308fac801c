"""Bad requests get a clear error (or a documented default) and the server keeps serving."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tce_client import DEFAULT_MODEL, CalibratedClassifierClient

pytestmark = pytest.mark.integration
ENSEMBLE = DEFAULT_MODEL


def _tensor(name, array, datatype):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _good_inputs(rows=1, text=b"buyer: hello", numeric=None, categorical=None):
    numeric = np.full((rows, 5), 1.0) if numeric is None else numeric
    categorical = np.array([[b"card", b"US", b"toys"]] * rows, dtype=object) if categorical is None else categorical
    return [_tensor("dialogue", np.array([[text]] * rows, dtype=object), "BYTES"),
            _tensor("numeric_features", numeric, "FP64"),
            _tensor("categorical_features", categorical, "BYTES")]


def _infer(server, inputs):
    return httpclient.InferenceServerClient(server.http_url).infer(ENSEMBLE, inputs)


def _assert_healthy(server):
    result = _infer(server, _good_inputs())
    assert np.isfinite(result.as_numpy("abuse_calibrated")).all()


@pytest.mark.parametrize("case, expected", [
    ("missing input", "categorical_features"),
    ("wrong dtype", "numeric_features"),
    ("wrong shape", "numeric_features"),
    ("non-UTF-8 text", "dialogue"),
    ("non-UTF-8 category", "categorical_features"),
    ("infinite numeric", "numeric_features"),
    ("batch above the maximum", "batch"),
])
def test_bad_request_gets_a_clear_error_and_server_stays_healthy(bimodal_server, case, expected):
    if case == "missing input":
        inputs = _good_inputs()[:2]
    elif case == "wrong dtype":
        inputs = _good_inputs()
        inputs[1] = _tensor("numeric_features", np.ones((1, 5), dtype=np.float32), "FP32")
    elif case == "wrong shape":
        inputs = _good_inputs(numeric=np.ones((1, 4)))
    elif case == "non-UTF-8 text":
        inputs = _good_inputs(text=b"\xff\xfe bad bytes")
    elif case == "non-UTF-8 category":
        inputs = _good_inputs(categorical=np.array([[b"\xc3\x28", b"US", b"toys"]], dtype=object))
    elif case == "infinite numeric":
        inputs = _good_inputs(numeric=np.array([[1.0, np.inf, 1.0, 1.0, 1.0]]))
    else:
        inputs = _good_inputs(rows=65)
    with pytest.raises(InferenceServerException) as error:
        _infer(bimodal_server, inputs)
    assert expected in str(error.value), str(error.value)
    _assert_healthy(bimodal_server)


def test_documented_defaults_for_empty_text_nan_and_unseen_categories(bimodal_server):
    numeric = np.array([[np.nan] * 5, [1.0] * 5])
    categorical = np.array([[b"never-seen", b"", b"antiques"], [b"card", b"US", b"toys"]], dtype=object)
    result = _infer(bimodal_server, _good_inputs(rows=2, text=b"", numeric=numeric, categorical=categorical))
    for name in ("abuse_raw", "abuse_calibrated", "reason_raw", "reason_calibrated"):
        values = result.as_numpy(name)
        assert np.isfinite(values).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-5)


def test_a_bad_request_does_not_disturb_its_batch_neighbours(bimodal_server, varied_records):
    """Good and bad requests in flight together: the good ones still match."""
    import concurrent.futures

    with CalibratedClassifierClient(bimodal_server.http_url) as client:
        expected = client.predict(varied_records[:8])
        encoded = client.schema.encode(varied_records[:8])

    def good(i):
        with CalibratedClassifierClient(bimodal_server.http_url) as c:
            return c.infer_arrays(encoded, slice(i, i + 1))[0]

    def bad(_):
        try:
            _infer(bimodal_server, _good_inputs(text=b"\xff"))
        except InferenceServerException as error:
            return str(error)
        return "accepted"

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        goods = [pool.submit(good, i) for i in range(8)]
        bads = [pool.submit(bad, i) for i in range(8)]
        got = [f.result() for f in goods]
        errors = [f.result() for f in bads]
    assert all("dialogue" in e for e in errors)
    for a, b in zip(got, expected, strict=True):
        assert np.abs(a["abuse"].calibrated - b["abuse"].calibrated).max() <= 1e-5


def test_plain_kserve_json_request(bimodal_server):
    """The README's curl example, sent with urllib."""
    body = {
        "inputs": [
            {"name": "dialogue", "shape": [1, 1], "datatype": "BYTES", "data": ["buyer: my package never arrived"]},
            {"name": "numeric_features", "shape": [1, 5], "datatype": "FP64", "data": [45.5, 800, 3, 2.9, 2]},
            {"name": "categorical_features", "shape": [1, 3], "datatype": "BYTES", "data": ["card", "UK", "home"]},
        ]
    }
    request = urllib.request.Request(f"http://{bimodal_server.http_url}/v2/models/{ENSEMBLE}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    assert {"abuse_raw", "abuse_calibrated", "reason_raw", "reason_calibrated", "abuse_label"} <= set(outputs)
    assert len(outputs["abuse_calibrated"]["data"]) == 2
    assert outputs["reason_label"]["data"][0] in ("none", "item_not_received", "payment_fraud", "harassment")
