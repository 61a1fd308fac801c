"""A batching Python step, called directly on a real server: bad requests merged into one
execution with good ones fail alone (their own 400 naming the input) and the good ones get
exactly the in-process step's answers (issue 25: batch without losing isolation)."""
from __future__ import annotations

import concurrent.futures
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tce_backends import contract
from tce_backends.graph import CALIBRATOR
from tce_backends.steps import CalibratorStep

pytestmark = pytest.mark.integration


def _calibrator_stats(server) -> tuple[int, int]:
    """(executions, requests) of the calibrator so far, from Triton's statistics."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{CALIBRATOR}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return int(stats["execution_count"]), int(stats["inference_stats"]["success"]["count"])


def test_bad_requests_batched_with_good_ones_fail_alone(bimodal_server):
    step = CalibratorStep.load(bimodal_server.repository / CALIBRATOR / "1", bimodal_server.bundle.manifest)
    width = sum(t.num_classes for t in bimodal_server.bundle.manifest.tasks)
    rng = np.random.default_rng(7)
    goods = [rng.dirichlet(np.ones(width), size=1).astype(np.float32) for _ in range(12)]
    bad = np.full((1, width), 1.5, dtype=np.float32)  # outside [0, 1]: the calibrator refuses it
    expected = [step.run(step.validate({contract.PROBABILITIES: g})) for g in goods]
    names = [n for n in step.output_names if n != contract.CALIBRATION_FALLBACK]

    def call(probabilities: np.ndarray) -> dict[str, np.ndarray] | str:
        client = httpclient.InferenceServerClient(bimodal_server.http_url)
        tensor = httpclient.InferInput(contract.PROBABILITIES, list(probabilities.shape), "FP32")
        tensor.set_data_from_numpy(probabilities)
        try:
            result = client.infer(CALIBRATOR, [tensor])
        except InferenceServerException as error:
            return f"{error.status()} {error.message()}"
        finally:
            client.close()
        return {name: result.as_numpy(name) for name in names}

    merged = False
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(30):  # until the batcher has merged good and bad requests at least once
            before = _calibrator_stats(bimodal_server)
            futures = [pool.submit(call, g) for g in goods] + [pool.submit(call, bad) for _ in range(4)]
            results = [f.result(timeout=60) for f in futures]
            for got, want in zip(results[:len(goods)], expected, strict=True):
                assert isinstance(got, dict), got
                for name in names:
                    if got[name].dtype == np.object_:
                        assert got[name].tolist() == want[name].tolist(), name
                    else:
                        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)
            for error in results[len(goods):]:
                assert isinstance(error, str) and "400" in error and contract.PROBABILITIES in error, error
            after = _calibrator_stats(bimodal_server)
            if after[0] - before[0] < after[1] - before[1]:  # fewer executions than good requests answered
                merged = True
                break
    assert merged, "the calibrator never merged requests: the test proved nothing"
