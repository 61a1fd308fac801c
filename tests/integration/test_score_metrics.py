"""The calibrator's score metrics on a real server: the histograms count exactly the scores it
served, binned as the bundle's reference, which the ensemble config and the reference gauges
publish; the health canary's requests are counted apart and nowhere else."""
from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from tce_backends.bundle import CALIBRATION_DIR
from tce_backends.canary import Canary, canary_body
from tce_backends.contract import CANARY_PARAMETER, SCHEMA_PARAMETER, SCORE_REFERENCE_PARAMETER
from tce_backends.score_metrics import BIN_LABELS, LE_LABELS, SCORE_KINDS, ReferenceScores, bin_of
from tce_client import CalibratedClassifierClient
from tests.prometheus import scrape, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::tce_client.schema.UnusedColumnsWarning")]


def _metrics(server):
    return scrape(server.config.host, server.config.metrics_port)


def _counted(server) -> float:
    """Records the calibrator has published (each task's first class counts every record)."""
    return value(_metrics(server), "tce_calibrated_predictions_total", task="abuse")


def _quiet(server) -> list:
    """The metrics once nothing is left to publish: two reads a publish interval apart agree."""
    def unchanged():
        first = _counted(server)
        time.sleep(1.2)
        return _metrics(server) if _counted(server) == first else None
    return wait_for(unchanged, 30, "the calibrator to publish what it tallied")


def _settled(server, expected: float) -> list:
    """The metrics once the calibrator published ``expected`` records (it publishes every second)."""
    wait_for(lambda: _counted(server) >= expected, 15, f"{expected} published records")
    return _metrics(server)


def test_the_ensemble_and_the_gauges_publish_the_bundles_reference(bimodal_server):
    tasks = bimodal_server.bundle.manifest.tasks
    reference = ReferenceScores.load(bimodal_server.bundle.root / CALIBRATION_DIR, tasks)
    assert reference is not None and {t.name for t in tasks} == set(reference.counts)
    with urllib.request.urlopen(f"http://{bimodal_server.http_url}/v2/models/calibrated_ensemble/config") as r:
        parameters = json.loads(r.read())["parameters"]
    assert parameters[SCORE_REFERENCE_PARAMETER]["string_value"] == reference.to_json()
    samples = _metrics(bimodal_server)
    for task in tasks:
        for kind in SCORE_KINDS:
            for name, fractions in zip(task.classes, reference.fractions(task.name, kind), strict=True):
                gauges = [value(samples, "tce_score_reference_fraction", task=task.name, score=kind, bin=b,
                                release="1", **{"class": name}) for b in BIN_LABELS]
                np.testing.assert_allclose(gauges, fractions)


def test_histograms_count_the_served_scores_and_not_the_canarys(bimodal_server, varied_records):
    server, tasks = bimodal_server, bimodal_server.bundle.manifest.tasks
    before = _quiet(server)
    before_records = value(before, "tce_calibrated_predictions_total", task="abuse")
    canary_before = value(before, "tce_canary_predictions_total")
    assert Canary(server.http_url).probe() is None  # 4 marked requests of one record
    with CalibratedClassifierClient(server.grpc_url, protocol="grpc") as client:
        predictions = client.predict(varied_records[:40])
    after = _settled(server, before_records + 40)
    wait_for(lambda: value(_metrics(server), "tce_canary_predictions_total") >= canary_before + 4, 15,
             "the canary's rows")
    after = _metrics(server)
    assert value(after, "tce_canary_predictions_total") == canary_before + 4
    for task in tasks:
        assert value(after, "tce_calibrated_predictions_total", task=task.name) - value(
            before, "tce_calibrated_predictions_total", task=task.name) == 40  # not 44: the canary's apart
        labels = [p[task.name].label for p in predictions]
        for name in task.classes:
            delta = value(after, "tce_predicted_label_total", task=task.name, label=name) - value(
                before, "tce_predicted_label_total", task=task.name, label=name)
            assert delta == labels.count(name)
        for kind in SCORE_KINDS:
            served = np.stack([getattr(p[task.name], kind) for p in predictions]).astype(np.float32)
            for column, name in enumerate(task.classes):
                series = {"task": task.name, "score": kind, "class": name}
                cumulative = np.cumsum(np.bincount(bin_of(served[:, column]), minlength=len(LE_LABELS)))
                got = [value(after, "tce_score_bucket", le=le, **series) - value(before, "tce_score_bucket", le=le,
                                                                                   **series) for le in LE_LABELS]
                assert got == cumulative.tolist(), series
                assert value(after, "tce_score_count", **series) - value(before, "tce_score_count", **series) == 40
                assert value(after, "tce_score_sum", **series) - value(before, "tce_score_sum", **series) == \
                    pytest.approx(served[:, column].astype(np.float64).sum(), rel=1e-5, abs=1e-5)


def test_only_a_true_canary_mark_is_counted_apart(bimodal_server):
    """Over Triton's own HTTP port a caller may send any parameter (the front door refuses them
    all: tests/unit/test_gateway_canary_parameter.py): only ``true`` marks the canary."""
    server = bimodal_server
    before = _quiet(server)
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/calibrated_ensemble/config") as r:
        schema = json.loads(json.loads(r.read())["parameters"][SCHEMA_PARAMETER]["string_value"])
    for mark in (True, "true", 1):
        request = json.loads(canary_body(schema))
        request["parameters"] = {CANARY_PARAMETER: mark}
        urllib.request.urlopen(urllib.request.Request(
            f"http://{server.http_url}/v2/models/calibrated_ensemble/infer", data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"})).read()
    after = _settled(server, value(before, "tce_calibrated_predictions_total", task="abuse") + 2)
    wait_for(lambda: value(_metrics(server), "tce_canary_predictions_total") >= value(
        before, "tce_canary_predictions_total") + 1, 15, "the canary's row")
    after = _metrics(server)
    assert value(after, "tce_canary_predictions_total") - value(before, "tce_canary_predictions_total") == 1
    assert value(after, "tce_calibrated_predictions_total", task="abuse") - value(
        before, "tce_calibrated_predictions_total", task="abuse") == 2
