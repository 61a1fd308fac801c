"""Adding a task is a manifest change: the builder, the server, the client and the
reference pipeline take a third task with no edit anywhere else."""
from __future__ import annotations

import pytest
import tritonclient.http as httpclient

from tce.repository.builder import write_repository
from tce.trainer.training import TrainingConfig, build_demo_bundle, demo_tasks
from tce_backends.bundle import Bundle
from tce_backends.tasks import TaskSpec
from tce_client import DEFAULT_MODEL, CalibratedClassifierClient
from tests.integration.conftest import RunningServer, start_server
from tests.integration.test_serving import _assert_matches_reference

pytestmark = pytest.mark.integration
THIRD_TASK = TaskSpec("harassment", "binary", ("no", "yes"))


@pytest.fixture(scope="module")
def three_task_server(tmp_path_factory):
    tasks = (*demo_tasks("abuse_reason"), THIRD_TASK)
    out = tmp_path_factory.mktemp("bundle_three_tasks")
    build_demo_bundle(out, TrainingConfig(encoder="tiny", rows=300, epochs=3, seed=11, tasks=tasks),
                      log=lambda *_: None)
    bundle = Bundle.load(out)
    assert [t.name for t in bundle.manifest.tasks] == ["abuse", "reason", "harassment"]
    repository = write_repository(bundle, tmp_path_factory.mktemp("repository_three_tasks"))
    server = start_server(repository)
    try:
        yield RunningServer(server, server.config, bundle, repository)
    finally:
        server.stop()


def test_a_third_task_builds_serves_and_matches_the_reference(three_task_server, varied_records):
    config = httpclient.InferenceServerClient(three_task_server.http_url).get_model_config(DEFAULT_MODEL)
    outputs = {o["name"] for o in config["output"]}
    assert {"harassment_raw", "harassment_calibrated", "harassment_label"} <= outputs
    records = [{k: v for k, v in r.items() if k != "events"} for r in varied_records[:60]]
    with CalibratedClassifierClient(three_task_server.http_url) as client:
        predictions = client.predict(records)
    assert predictions[0]["harassment"].classes == ("no", "yes")
    _assert_matches_reference(three_task_server, records, predictions)
