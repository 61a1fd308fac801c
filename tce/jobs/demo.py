"""``tce demo``: start the embedded server on a built repository, score sample
records over HTTP and gRPC, print per task the raw score, the calibrated score and
the decision the calibration's policy takes on it, with per-request latency, and stop
the server."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_client import CalibratedClassifierClient, Prediction

SAMPLE_RECORDS: list[dict[str, Any]] = [
    {"dialogue": "buyer: hi<br>seller: please pay outside the platform by wire transfer 💳",
     "order_amount": 950.0, "account_age_days": 12, "prior_claims": 0, "seller_rating": 3.1, "message_count": 2,
     "payment_method": "wire", "marketplace": "US", "item_category": "luxury"},
    {"dialogue": "buyer: my package never arrived\nbuyer: tracking shows nothing for two weeks 📦",
     "order_amount": 45.5, "account_age_days": 800, "prior_claims": 3, "seller_rating": 2.9, "message_count": 2,
     "payment_method": "card", "marketplace": "UK", "item_category": "electronics"},
    {"dialogue": "buyer: <b>you are an idiot and a scammer</b> 🤬\nseller: please stay polite",
     "order_amount": 20.0, "account_age_days": 40, "prior_claims": 0, "seller_rating": 4.5, "message_count": 2,
     "payment_method": "paypal", "marketplace": "US", "item_category": "toys"},
    {"dialogue": "buyer: hello\nseller: hi, is this still available?\nbuyer: great, thank you!",
     "order_amount": 30.0, "account_age_days": 1500, "prior_claims": 0, "seller_rating": 4.8, "message_count": 3,
     "payment_method": "card", "marketplace": "DE", "item_category": "books"},
    {"dialogue": "", "order_amount": None, "account_age_days": float("nan"), "prior_claims": None,
     "seller_rating": None, "message_count": None, "payment_method": None, "marketplace": "FR", "item_category": None},
    {"dialogue": "buyer: can i change the delivery address?", "order_amount": 60.0, "account_age_days": 300,
     "prior_claims": 1, "seller_rating": 4.0, "message_count": 1,
     "payment_method": "barter", "marketplace": "ZZ", "item_category": "antiques"},
]
NOTES = ["wire-transfer scam", "item not received", "harassment", "benign", "empty text, missing values",
         "unseen categories"]


def _format(prediction: Prediction) -> list[str]:
    """Binary: "raw class-1 score -> calibrated score -> decision"; multiclass: "top raw class
    and score -> top calibrated class and score -> decision"."""
    cells = []
    for name, result in prediction.tasks.items():
        if len(result.classes) == 2:
            cells.append(f"{name}: raw {result.raw_score:.3f} -> cal {result.calibrated_score:.3f} "
                         f"-> {result.decision}")
        else:
            top = int(result.calibrated.argmax())
            cells.append(f"{name}: raw {result.label} {result.raw.max():.3f} -> cal {result.classes[top]} "
                         f"{result.calibrated[top]:.3f} -> {result.decision}")
    return cells


def score_samples(client: CalibratedClassifierClient) -> list[tuple[Prediction, float]]:
    scored = []
    for record in SAMPLE_RECORDS:
        started = time.perf_counter()
        (prediction,) = client.predict([record])
        scored.append((prediction, (time.perf_counter() - started) * 1000))
    return scored


def run_demo(repository: Path, log=print, ports: tuple[int | None, int | None, int | None] = (None, None, None)
             ) -> int:
    """Serve ``repository``, score the sample records over HTTP and gRPC, stop. ``ports``
    (HTTP, gRPC, metrics): None takes a free one."""
    free = iter(free_ports())
    http_port, grpc_port, metrics_port = (port if port is not None else next(free) for port in ports)
    config = ServerConfig(repository, http_port, grpc_port, metrics_port)
    log(f"starting the embedded Triton server on {repository} ...")
    started = time.perf_counter()
    with EmbeddedServer(config) as server:
        log(f"ready in {time.perf_counter() - started:.1f}s (HTTP {config.http_url}, gRPC {config.grpc_url}, "
            f"pid {server.process.pid if server.process else '?'})")
        for protocol, url in (("http", config.http_url), ("grpc", config.grpc_url)):
            with CalibratedClassifierClient(url, protocol=protocol) as client:
                client.predict(SAMPLE_RECORDS[:1])  # warm-up: first call pays lazy initialisation
                scored = score_samples(client)
                started = time.perf_counter()
                client.predict(SAMPLE_RECORDS)
                batch_ms = (time.perf_counter() - started) * 1000
            log(f"\n== {protocol.upper()}  (tasks: {', '.join(scored[0][0].tasks)}; "
                f"calibration version {scored[0][0].calibration_version})")
            for note, (prediction, latency) in zip(NOTES, scored, strict=True):
                log(f"  {note:<28} {latency:7.1f} ms   " + "   ".join(_format(prediction)))
            latencies = sorted(latency for _, latency in scored)
            log(f"  one request per record: median {latencies[len(latencies) // 2]:.1f} ms; "
                f"all {len(SAMPLE_RECORDS)} in one request: {batch_ms:.1f} ms")
    log("\nserver stopped.")
    return 0
