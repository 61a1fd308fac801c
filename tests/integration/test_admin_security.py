"""The administrative endpoints need the admin key: without it nobody can load code,
unload the ensemble, register shared memory or change logging; with it, publishing
calibration works. Publishing checks what it writes before writing it."""
from __future__ import annotations

import base64
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tce.jobs.calibrate import publish
from tce.repository.builder import write_repository
from tce.serving.security import ADMIN_KEY_HEADER, grpc_headers, http_headers
from tce_backends.bundle import Bundle
from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tests.attacks import EVIL_CONFIG, EVIL_MODEL_PY
from tests.hostile import post
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def explicit_server(bimodal_bundle, tmp_path_factory):
    repository = write_repository(bimodal_bundle, tmp_path_factory.mktemp("explicit") / "repository")
    server = start_server(repository, explicit=True)
    yield server
    server.stop()


def _load_code_body(marker: Path) -> bytes:
    source = EVIL_MODEL_PY.format(marker=str(marker)).encode()
    return json.dumps({"parameters": {"config": EVIL_CONFIG,
                                      "file:1/model.py": base64.b64encode(source).decode()}}).encode()


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_code_upload_and_unload_are_refused_without_the_key(explicit_server, tmp_path, content_type):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    url = explicit_server.config.http_url
    status, body = post(url, _load_code_body(marker), path="/v2/repository/models/evil/load",
                        headers={"Content-Type": content_type})
    assert status == 403 and ADMIN_KEY_HEADER.encode() in body, (status, body)
    status, body = post(url, b"{}", path="/v2/repository/models/calibrated_ensemble/unload")
    assert status == 403, (status, body)
    status, _ = post(url, b"{}", path="/v2/logging", headers={"Content-Type": content_type})
    assert status == 403
    assert not marker.exists()
    assert httpclient.InferenceServerClient(url).is_model_ready("calibrated_ensemble")


def test_grpc_model_control_is_refused_without_the_key(explicit_server):
    client = grpcclient.InferenceServerClient(explicit_server.config.grpc_url)
    for call in (lambda h: client.unload_model("calibrated_ensemble", headers=h),
                 lambda h: client.load_model("calibrator", headers=h),
                 lambda h: client.update_log_settings({"log_verbose_level": 1}, headers=h)):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
        with pytest.raises(InferenceServerException, match="restricted"):
            call(grpc_headers("not-the-key-but-long-enough"))
    client.load_model("calibrator", headers=grpc_headers(explicit_server.admin_key))  # the key opens it
    assert client.is_model_ready("calibrated_ensemble")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_stranger_cannot_register_shared_memory(explicit_server, protocol):
    """Registering any /dev/shm object would let a caller feed it to a step and read it back."""
    name = f"/tce-foreign-{uuid.uuid4().hex[:8]}"
    region = Path("/dev/shm") / name.lstrip("/")
    region.write_bytes(b"secret of another process".ljust(64, b"\0"))
    try:
        if protocol == "http":
            client = httpclient.InferenceServerClient(explicit_server.config.http_url)
            register = lambda h: client.register_system_shared_memory("stolen", name, 64, headers=h)  # noqa: E731
            status = lambda h: client.get_system_shared_memory_status(headers=h)  # noqa: E731
            key_headers = http_headers(explicit_server.admin_key)
        else:
            client = grpcclient.InferenceServerClient(explicit_server.config.grpc_url)
            register = lambda h: client.register_system_shared_memory("stolen", name, 64, headers=h)  # noqa: E731
            status = lambda h: client.get_system_shared_memory_status(headers=h)  # noqa: E731
            key_headers = grpc_headers(explicit_server.admin_key)
        with pytest.raises(InferenceServerException, match="restricted"):
            register(None)
        with pytest.raises(InferenceServerException, match="restricted"):
            status(None)
        assert not status(key_headers) or "stolen" not in json.dumps(status(key_headers), default=str)
    finally:
        region.unlink()


def _bundle_with(tmp_path: Path, source: Bundle, calibrations: dict, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(source.root, target)
    shutil.rmtree(target / "calibration")
    Calibrator(source.manifest.tasks, calibrations).save(target / "calibration")
    return target


def test_publish_with_the_key_loads_a_new_version(explicit_server, bimodal_bundle, tmp_path):
    identity = LookupTable.from_points([(0.0, 0.0), (1.0, 1.0)])
    recalibrated = _bundle_with(tmp_path, bimodal_bundle, {"abuse": TaskCalibration.of("binary", {1: identity})}, "new")
    repository = explicit_server.config.model_repository
    with pytest.raises(ValueError, match="refused the admin key"):
        publish(recalibrated, repository, url=explicit_server.config.http_url, admin_key=None)
    assert not (repository / "calibrator" / "2").exists(), "nothing is written before the server agrees"
    version = publish(recalibrated, repository, url=explicit_server.config.http_url,
                      admin_key=explicit_server.admin_key)
    assert (repository / "calibrator" / str(version)).is_dir()
    client = httpclient.InferenceServerClient(explicit_server.config.http_url)
    assert client.is_model_ready("calibrator", str(version))


def test_publish_refuses_other_classes_and_tables_outside_the_unit_interval(explicit_server, bimodal_bundle,
                                                                            tmp_path):
    repository = explicit_server.config.model_repository
    before = sorted(p.name for p in (repository / "calibrator").iterdir())
    other = tmp_path / "other_classes"
    shutil.copytree(bimodal_bundle.root, other)
    manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    manifest["tasks"][1]["classes"] = manifest["tasks"][1]["classes"][:3]  # a 3-class table for a 4-class task
    (other / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    shutil.rmtree(other / "calibration")
    with pytest.raises(ValueError, match=r"task 'reason': the bundle has multiclass classes .* served model"):
        publish(other, repository, url=explicit_server.config.http_url, admin_key=explicit_server.admin_key)
    out_of_range = _bundle_with(tmp_path, bimodal_bundle, {}, "out_of_range")
    np.save(out_of_range / "calibration" / "abuse_class_1.npy", np.array([[0.0, -0.5], [1.0, 1.5]]))
    payload = json.loads((out_of_range / "calibration" / "calibration.json").read_text(encoding="utf-8"))
    payload["tasks"]["abuse"] = {"method": "binary", "tables": {"1": "abuse_class_1.npy"}}
    (out_of_range / "calibration" / "calibration.json").write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        publish(out_of_range, repository, url=explicit_server.config.http_url, admin_key=explicit_server.admin_key)
    # a multiclass task with a table missing: that class would be served raw with no fallback flag
    incomplete = Path(shutil.copytree(bimodal_bundle.root, tmp_path / "incomplete"))
    payload = json.loads((incomplete / "calibration" / "calibration.json").read_text(encoding="utf-8"))
    del payload["tasks"]["reason"]["tables"]["2"]
    (incomplete / "calibration" / "calibration.json").write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=r"task 'reason': the bundle's calibration has no table for classes"):
        publish(incomplete, repository, url=explicit_server.config.http_url, admin_key=explicit_server.admin_key)
    # a table path that leaves the bundle
    escaping = Path(shutil.copytree(bimodal_bundle.root, tmp_path / "escaping"))
    payload = json.loads((escaping / "calibration" / "calibration.json").read_text(encoding="utf-8"))
    payload["tasks"]["abuse"]["tables"]["1"] = "../../" + payload["tasks"]["abuse"]["tables"]["1"]
    (escaping / "calibration" / "calibration.json").write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match="inside the calibration directory"):
        publish(escaping, repository, url=explicit_server.config.http_url, admin_key=explicit_server.admin_key)
    assert sorted(p.name for p in (repository / "calibrator").iterdir()) == before


def test_a_version_the_server_cannot_load_is_removed_again(explicit_server, bimodal_bundle, tmp_path, monkeypatch):
    """The server refuses it (here: a model.py that fails to start); the next start must not trip on it."""
    import tce.repository.release_files as release_files

    real = release_files.write_step_version

    def broken(bundle, step, version_dir, release=None):
        real(bundle, step, version_dir, release)
        (version_dir / "model.py").write_text("raise RuntimeError('broken on purpose')\n", encoding="utf-8")

    monkeypatch.setattr(release_files, "write_step_version", broken)
    repository = explicit_server.config.model_repository
    before = sorted(p.name for p in (repository / "calibrator").iterdir())
    with pytest.raises(ValueError, match="removed again"):
        publish(bimodal_bundle.root, repository, url=explicit_server.config.http_url,
                admin_key=explicit_server.admin_key)
    assert sorted(p.name for p in (repository / "calibrator").iterdir()) == before
    assert httpclient.InferenceServerClient(explicit_server.config.http_url).is_model_ready("calibrated_ensemble")
