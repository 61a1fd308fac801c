"""The drift screenshot of the README (docs/img/prometheus_drift.png), from a real run.

A small demo bundle (tiny encoder, its calibration split as the drift reference) is served by
the embedded Triton; a real Prometheus (Debian's) scrapes it every second with the shipped rules
rendered with a 30 s window (tce.lib.prometheus_rules); records of the demo data's distribution
are sent for ``--calm`` seconds, then records of one abuse reason only (payment_fraud) for
``--shift`` seconds; headless Chromium then photographs Prometheus' graph page: the PSI per
task over the run, and the drift alerts firing at its end. About four minutes on two cores::

    .venv/bin/python -m benchmarks.drift_screenshot --out docs/img/prometheus_drift.png
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from tce.lib.demo_data import make_dataset
from tce.lib.prometheus_rules import RuleSettings, render_rules
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce.trainer.training import TrainingConfig, build_demo_bundle
from tce_backends.bundle import Bundle
from tce_client import CalibratedClassifierClient
from tests.prometheus import Prometheus, wait_for

SETTINGS = RuleSettings(psi_window="30s", psi_min_scores=100, drift_for="10s", rate_window="15s", alert_for="10s")


def send_for(client: CalibratedClassifierClient, records: list[dict], seconds: float, per_second: int) -> int:
    """Send ``records`` (cycling) at about ``per_second`` for ``seconds``; returns how many."""
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        start = sent % (len(records) - per_second)
        client.predict(records[start:start + per_second])
        sent += per_second
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return sent


def graph_url(prometheus: Prometheus, minutes: int) -> str:
    panels = {"g0.expr": 'tce:task_psi{score="raw"}', "g0.tab": "0", "g0.range_input": f"{minutes}m",
              "g0.show_exemplars": "0",
              "g1.expr": 'ALERTS{alertname=~"TceScoreDrift.*"}', "g1.tab": "1"}  # the alerts as a table
    return f"{prometheus.url}/graph?{urllib.parse.urlencode(panels)}"


def screenshot(url: str, out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no headless Chromium (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1150", "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/prometheus_drift.png"))
    parser.add_argument("--calm", type=float, default=90.0, help="seconds of in-distribution records")
    parser.add_argument("--shift", type=float, default=90.0, help="seconds of the shifted mix")
    parser.add_argument("--rate", type=int, default=40, help="records per second")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tce-drift-") as scratch:
        work = Path(scratch)
        print("training a small demo bundle (its calibration split is the drift reference)", flush=True)
        build_demo_bundle(work / "bundle", TrainingConfig(encoder="tiny", rows=3000, epochs=5, seed=3),
                          log=lambda *_: None)
        repository = write_repository(Bundle.load(work / "bundle"), work / "repository")
        server = EmbeddedServer(ServerConfig(repository, *free_ports())).start()
        prometheus = None
        try:
            (work / "prometheus").mkdir()
            prometheus = Prometheus(work / "prometheus", f"{server.config.host}:{server.config.metrics_port}",
                                    render_rules(SETTINGS)).start()
            wait_for(lambda: prometheus.query('up{job="tce-triton"} == 1'), 30, "the first scrape")
            frame = make_dataset(6000, seed=41)
            calm = frame.drop(columns=["abuse", "reason"]).to_dict(orient="records")
            shifted = frame[frame["reason"] == 2].drop(columns=["abuse", "reason"]).to_dict(orient="records")
            with CalibratedClassifierClient(server.config.grpc_url, protocol="grpc") as client:
                print(f"calm: {send_for(client, calm, args.calm, args.rate)} records", flush=True)
                print(f"shifted: {send_for(client, shifted, args.shift, args.rate)} records", flush=True)
            time.sleep(3)
            print({r["metric"]["task"]: r["value"][1] for r in prometheus.query('tce:task_psi{score="raw"}')})
            minutes = math.ceil((args.calm + args.shift) / 60) + 1
            screenshot(graph_url(prometheus, minutes), args.out)
            print(f"wrote {args.out}")
        finally:
            if prometheus is not None:
                prometheus.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
