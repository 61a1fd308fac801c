"""A real Prometheus against the embedded server: the shipped drift rules, rendered with
windows of seconds (tce.lib.prometheus_rules, one template), see in-distribution traffic as
no drift and a shifted record mix as drift, and the page alert fires."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tce.lib.demo_data import make_dataset
from tce.lib.prometheus_rules import RuleSettings, render_rules
from tce_client import CalibratedClassifierClient
from tests.prometheus import PROMETHEUS, Prometheus, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason=f"no Prometheus at {PROMETHEUS}"),
              pytest.mark.filterwarnings("ignore::tce_client.schema.UnusedColumnsWarning")]
# The shipped rules with a 10 s window, 50 scores per PSI and no waiting before an alert fires.
# The test bundle's reference holds only 120 scores (its calibration split), so two samples of
# the same distribution already differ by a PSI of 0.1-0.2 here: the test pages at 0.6, where the
# shifted mix lands near 1.4 (production references hold thousands: 0.25).
SETTINGS = RuleSettings(psi_window="10s", psi_min_scores=50, drift_for="0s", psi_page=0.6, rate_window="10s",
                        alert_for="0s")


def _records(rows: int, seed: int, reason: int | None = None) -> list[dict]:
    frame = make_dataset(rows, seed=seed)
    if reason is not None:  # the shifted mix: one abuse reason only (payment_fraud)
        frame = frame[frame["reason"] == reason]
    return frame.drop(columns=["abuse", "reason"]).to_dict(orient="records")


def _psi(prometheus: Prometheus) -> dict[str, float]:
    return {r["metric"]["task"]: float(r["value"][1]) for r in prometheus.query('tce:task_psi{score="raw"}')}


def test_a_shifted_record_mix_fires_the_drift_alert(bimodal_server, tmp_path: Path):
    server = bimodal_server
    prometheus = Prometheus(tmp_path, f"{server.config.host}:{server.config.metrics_port}",
                            render_rules(SETTINGS)).start()
    try:
        wait_for(lambda: prometheus.query('up{job="tce-triton"} == 1'), 20, "the first scrape")
        tasks = {t.name for t in server.bundle.manifest.tasks}
        with CalibratedClassifierClient(server.grpc_url, protocol="grpc") as client:
            client.predict(_records(300, seed=21))  # the calibration data's distribution
            wait_for(lambda: prometheus.query("min(tce:score_count:increase) >= 295"), 20, "all 300 in the window")
            calm = wait_for(lambda: (psi := _psi(prometheus)).keys() == tasks and psi, 20, "PSI of every task")
            assert all(value < SETTINGS.psi_page for value in calm.values()), calm
            assert not prometheus.firing("TceScoreDriftPage")
            shifted = _records(1000, seed=22, reason=2)
            sent = []

            def drifted():
                start = 80 * len(sent) % (len(shifted) - 80)
                sent.append(client.predict(shifted[start:start + 80]))  # the window fills with the shifted mix
                return prometheus.firing("TceScoreDriftPage")

            started = time.monotonic()
            alerts = wait_for(drifted, 40, "TceScoreDriftPage to fire", every_s=0.5)
        assert {a["metric"]["task"] for a in alerts} <= tasks
        assert all(a["metric"]["severity"] == "page" and a["metric"]["release"] == "1" for a in alerts)
        drift = _psi(prometheus)
        assert max(drift.values()) > SETTINGS.psi_page > max(calm.values()), (calm, drift)
        assert prometheus.firing("TceScoreDriftWarning")
        print(f"calm PSI {calm}, shifted PSI {drift}, fired {time.monotonic() - started:.1f} s into the shift")
    finally:
        prometheus.stop()
