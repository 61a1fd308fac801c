"""Releases against a running server: a candidate answers only when named (SDK ``release=n``),
a candidate that answers wrongly is removed again with the served state as before, retire
unloads, and two publishes at once (two processes) claim distinct versions."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tritonclient.http as httpclient

import tce.jobs.release as release_job
from tce.jobs.release import Server, add, retire
from tce.lib.staging import tree_digest
from tce.repository.builder import write_repository
from tce.repository.releases import Releases
from tce_backends.contract import release_model_name
from tce_backends.errors import UsageError
from tce_backends.reference import ReferencePipeline
from tce_client import DEFAULT_MODEL, CalibratedClassifierClient
from tests.integration.conftest import start_server
from tests.release_bundles import recalibrated_bundle, variant_bundle

pytestmark = pytest.mark.integration
RECORD = {"dialogue": "buyer: my package never arrived", "order_amount": 45.5}


@pytest.fixture(scope="module")
def served(bimodal_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    repository = write_repository(bimodal_bundle, root / "repository")
    server = start_server(repository, explicit=True)
    yield server, repository, variant_bundle(bimodal_bundle, root / "bundle_b")
    server.stop()


def test_a_candidate_that_answers_wrongly_is_removed_and_nothing_changes(served, bimodal_bundle, monkeypatch):
    server, repository, bundle_b = served
    before = (tree_digest(repository), Releases.load(repository))
    # The check compares the served candidate with bundle A's pipeline: B's answers differ.
    monkeypatch.setattr(release_job, "ReferencePipeline", lambda bundle, **_: ReferencePipeline(bimodal_bundle))
    with pytest.raises(UsageError, match=r"answers record 0 differently .*release 2 was removed again"):
        add(bundle_b.root, repository, Server(server.config.http_url, server.admin_key))
    assert (tree_digest(repository), Releases.load(repository)) == before
    client = httpclient.InferenceServerClient(server.config.http_url)
    assert not client.is_model_ready(release_model_name(DEFAULT_MODEL, 2))
    for step in ("preprocessor", "multimodal_model", "calibrator"):
        assert client.is_model_ready(step, "1") and not client.is_model_ready(step, "2")
    with CalibratedClassifierClient(server.config.http_url) as sdk:
        assert sdk.predict([RECORD], allow_missing_fields=True)[0].release == "1"


def test_a_candidate_answers_only_when_named_and_retire_unloads_it(served, bimodal_bundle):
    server, repository, bundle_b = served
    target = Server(server.config.http_url, server.admin_key)
    release = add(bundle_b.root, repository, target)
    assert release.release == 2 and Releases.load(repository).get(2).state == "candidate"
    with CalibratedClassifierClient(server.config.grpc_url, "grpc") as current, \
            CalibratedClassifierClient(server.config.grpc_url, "grpc", release=2) as candidate:
        (a,), (b,) = (client.predict([RECORD], allow_missing_fields=True) for client in (current, candidate))
    assert (a.release, a.calibration_version) == ("1", bimodal_bundle.calibrator.version)
    assert (b.release, b.calibration_version) == ("2", bundle_b.calibrator.version)
    with pytest.raises(UsageError, match="only a release that is neither current nor previous"):
        retire(repository, 1, target)
    retire(repository, 2, target)
    client = httpclient.InferenceServerClient(server.config.http_url)
    assert not client.is_model_ready(release_model_name(DEFAULT_MODEL, 2))
    assert not (repository / "multimodal_model" / "2").exists()
    assert not client.is_model_ready("multimodal_model", "2") and client.is_model_ready(DEFAULT_MODEL)
    with pytest.raises(Exception, match="release 2 is not loaded there"):
        CalibratedClassifierClient(server.config.http_url, release=2)


def test_two_publishes_at_once_claim_distinct_versions(bimodal_bundle, tmp_path):
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    bundles = [recalibrated_bundle(bimodal_bundle, tmp_path / f"tables_{n}", label=f"t{n}") for n in (1, 2)]
    env = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}
    processes = [subprocess.Popen([sys.executable, "-m", "tce.cli", "calibrate", "publish", "--bundle", str(b.root),
                                   "--repository", str(repository)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for b in bundles]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    releases = Releases.load(repository)
    assert sorted(r.steps["calibrator"] for r in releases.releases) == [1, 2, 3]
    assert {r.calibration_version for r in releases.releases[1:]} == {b.calibrator.version for b in bundles}
    assert releases.current in (2, 3) and releases.previous in (2, 3), "each was promoted in turn"
    for r in releases.loaded:
        info = json.loads((repository / "calibrator" / str(r.steps["calibrator"]) / "release.json").read_text())
        assert info["release"] == r.release
    assert sorted(p.name for p in (repository / "calibrator").iterdir() if p.name.isdigit()) == ["2", "3"]
