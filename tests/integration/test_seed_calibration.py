"""Imported seed artifacts serve the seed's calibrated scores; calibration swaps
live without failed requests; a broken table falls back visibly."""
from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from tce.jobs.calibrate import publish
from tce.repository.builder import write_repository
from tce.seed.importer import import_seed
from tce.serving.server import EmbeddedServer
from tce_backends.bundle import Bundle
from tce_backends.canary import Canary
from tce_client import CalibratedClassifierClient
from tests.integration.conftest import start_server
from tests.prometheus import scrape, value, wait_for
from tests.seed_layout import seed_calibrated, write_seed

pytestmark = pytest.mark.integration


def _served(server: EmbeddedServer, records) -> list:
    with CalibratedClassifierClient(server.config.grpc_url, protocol="grpc") as client:
        return client.predict(records)


def _assert_seed_equal(predictions, kind, tables, tasks):
    raw = np.concatenate([np.stack([p[t.name].raw for p in predictions]) for t in tasks], axis=1)
    expected = seed_calibrated(raw.astype(np.float64), kind, tables, tasks)
    for task in tasks:
        served = np.stack([p[task.name].calibrated for p in predictions])
        assert np.abs(served - expected[task.name]).max() <= 1e-6, task.name


@pytest.mark.parametrize("kind, bundle_fixture", [("multiclass", "multiclass_bundle"),
                                                  ("score_fields", "score_field_bundle")])
def test_imported_seed_serves_seed_calibration(kind, bundle_fixture, request, tmp_path, varied_records):
    bundle = request.getfixturevalue(bundle_fixture)
    tables = write_seed(bundle, tmp_path / "seed", kind)
    imported = Bundle.load(import_seed(tmp_path / "seed", tmp_path / "bundle").bundle)
    server = start_server(write_repository(imported, tmp_path / "repository"))
    try:
        predictions = _served(server, varied_records[:120])
    finally:
        server.stop()
    _assert_seed_equal(predictions, kind, tables, imported.manifest.tasks)


def test_calibration_swaps_live_under_load(binary_bundle, tmp_path, varied_records):
    """Binary seed calibration first, then the percentile one as calibrator version 2."""
    binary_tables = write_seed(binary_bundle, tmp_path / "seed_binary", "binary")
    percentile_tables = write_seed(binary_bundle, tmp_path / "seed_percentile", "percentile")
    first = Bundle.load(import_seed(tmp_path / "seed_binary", tmp_path / "bundle_binary").bundle)
    second = Bundle.load(import_seed(tmp_path / "seed_percentile", tmp_path / "bundle_percentile").bundle)
    assert first.calibrator.version != second.calibrator.version
    repository = write_repository(first, tmp_path / "repository")
    server = start_server(repository, explicit=True)
    records = varied_records[:20]
    tasks = first.manifest.tasks
    try:
        before = _served(server, records)
        _assert_seed_equal(before, "binary", binary_tables, tasks)
        assert {p.calibration_version for p in before} == {first.calibrator.version}

        results: list[tuple[float, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            with CalibratedClassifierClient(server.config.grpc_url, protocol="grpc") as client:
                deadline = time.monotonic() + 60  # bounded, whatever happens
                i = worker
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        # Sent-at time: Triton's ensemble takes every step's model version when a
                        # request starts (ensemble_scheduler.cc), so one sent before the swap may
                        # come back later with the old version, rightly.
                        sent = time.monotonic()
                        (prediction,) = client.predict([records[i % len(records)]])
                        results.append((sent, prediction.calibration_version))
                    except Exception as error:  # noqa: BLE001 - every failure counts
                        failures.append(repr(error))
                    i += 4

        workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.5)
        version = publish(second.root, repository, url=server.config.http_url, admin_key=server.admin_key)
        swapped_at = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for w in workers:
            w.join()

        assert version == 2
        assert not failures, failures[:3]
        seen = [v for _, v in results]
        assert first.calibrator.version in seen and second.calibrator.version in seen
        late = [v for t, v in results if t > swapped_at + 0.5]
        assert late and set(late) == {second.calibrator.version}
        after = _served(server, records)
        _assert_seed_equal(after, "percentile", percentile_tables, tasks)
    finally:
        server.stop()


def test_broken_calibration_falls_back_visibly(binary_bundle, tmp_path, varied_records):
    broken = tmp_path / "bundle"
    shutil.copytree(binary_bundle.root, broken)
    repository = write_repository(Bundle.load(broken), tmp_path / "repository")
    (repository / "calibrator" / "1" / "calibration" / "abuse_class_1.npy").write_bytes(b"corrupt")
    server = start_server(repository)
    try:
        predictions = _served(server, varied_records[:10])
        for p in predictions:
            assert p["abuse"].calibration_fallback
            np.testing.assert_array_equal(p["abuse"].calibrated, p["abuse"].raw)
        assert Canary(server.config.http_url).probe() is None  # the canary's rows count in no fallback

        def counted(name: str, **labels: str) -> float:
            return value(scrape(server.config.host, server.config.metrics_port), name, **labels)

        # the calibrator publishes every second: once the canary's rows show, so do the others
        wait_for(lambda: counted("tce_canary_predictions_total") >= 4, 15, "the canary's rows")
        assert counted("tce_calibration_fallback_total", task="abuse") == 10
        log = server.log_path.read_text(encoding="utf-8")
        assert log.count("calibration for task 'abuse' unavailable") == 1
    finally:
        server.stop()
