"""Decisions served: the demo bundle's policy on both tasks answers as the reference pipeline
over HTTP and gRPC, it is the policy `tce calibrate thresholds` chooses on the demo's
calibration split, and a new policy goes live under load (tce calibrate publish) with no
failed request and every answer decided by the policy of the calibration version it names."""
from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from tce.cli import main
from tce.jobs.calibrate import publish
from tce.jobs.predict import PredictJob, run_predict
from tce.jobs.thresholds import set_policy
from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.trainer.training import CALIBRATION_SPLIT_FILE, DEMO_DECISION_TARGETS
from tce_backends.bundle import Bundle
from tce_backends.calibration import Calibrator
from tce_backends.reference import ReferencePipeline
from tce_client import CalibratedClassifierClient, Prediction
from tce_client.schema import schema_for
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration


def policy_decisions(calibrator: Calibrator, prediction: Prediction) -> dict[str, str]:
    """What ``calibrator``'s policy decides on the calibrated scores a caller received."""
    decided = {}
    for task in calibrator.tasks:
        result = prediction[task.name]
        index = calibrator.decide(task, result.calibrated[None, :], np.array([result.raw.argmax()]))[0]
        decided[task.name] = calibrator.actions[task.name][index]
    return decided


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_policy_on_both_tasks_is_served_as_the_reference_decides(bimodal_server, varied_records, protocol):
    calibrator = bimodal_server.bundle.calibrator
    assert set(calibrator.policy.tasks) == {"abuse", "reason"}  # the demo bundle ships a policy per task
    url = bimodal_server.http_url if protocol == "http" else bimodal_server.grpc_url
    with CalibratedClassifierClient(url, protocol=protocol) as client:
        predictions = client.predict(varied_records)
        assert [t.outputs["decision"] for t in client.schema.tasks] == ["abuse_decision", "reason_decision"]
    reference = ReferencePipeline(bimodal_server.bundle).predict(
        schema_for(bimodal_server.bundle.manifest).encode(varied_records))
    for task in calibrator.tasks:
        served = [p[task.name].decision for p in predictions]
        assert served == [v.decode() for v in reference[f"{task.name}_decision"][:, 0]], task.name
        assert set(served) <= set(calibrator.actions[task.name])
    assert all(policy_decisions(calibrator, p) == {t: p[t].decision for t in p.tasks} for p in predictions)
    assert len({p["abuse"].decision for p in predictions}) > 1  # the records reach more than one action


def test_a_batch_file_gets_a_decision_column_per_task(bimodal_server, tmp_path):
    frame = make_dataset(40, seed=5)[["record_id", *schema_for(bimodal_server.bundle.manifest).input_fields]]
    frame.to_csv(tmp_path / "records.csv", index=False)
    result = run_predict(PredictJob(tmp_path / "records.csv", tmp_path / "out", url=bimodal_server.grpc_url,
                                    id_field="record_id"), note=lambda *_: None)
    scored = pd.read_csv(result.path)
    with CalibratedClassifierClient(bimodal_server.grpc_url, protocol="grpc") as client:
        predictions = client.predict(frame.drop(columns=["record_id"]))
    for task in ("abuse", "reason"):
        assert list(scored.columns).index(f"{task}_decision") == list(scored.columns).index(f"{task}_label") + 1
        assert scored[f"{task}_decision"].tolist() == [p[task].decision for p in predictions]


def test_the_shipped_policy_is_the_one_the_command_chooses_on_the_calibration_split(bimodal_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle)
    argv = ["calibrate", "thresholds", "--bundle", str(bundle), "--predictions", str(bundle / CALIBRATION_SPLIT_FILE),
            "--bootstrap-samples", "0", "--dry-run"]
    for target in DEMO_DECISION_TARGETS:
        argv += ["--target", target]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"it would be calibration version {bimodal_bundle.calibrator.version})" in out, out


@dataclass(frozen=True)
class Answer:
    sent: float
    versions: tuple[str, ...]           # one per record of the response
    predictions: tuple[Prediction, ...]


def _load(url: str, protocol: str, records: list[dict], answers: list[Answer], failures: list[str],
          stop: threading.Event, offset: int) -> None:
    with CalibratedClassifierClient(url, protocol=protocol, retries=0) as client:
        index, deadline = offset, time.monotonic() + 90  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            batch = [records[(index + k) % len(records)] for k in range(3)]
            sent = time.monotonic()
            try:
                predictions = client.predict(batch)
            except Exception as error:  # noqa: BLE001 - every failure counts
                failures.append(repr(error))
            else:
                answers.append(Answer(sent, tuple(p.calibration_version for p in predictions), tuple(predictions)))
            index += 5


def test_a_new_policy_goes_live_under_load_and_every_answer_follows_its_versions_policy(bimodal_bundle, tmp_path):
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    bundles = {}
    for name, rules in (("b", ["abuse=low<0.2<=mid<0.6<=high", "reason=argmax,none>=0.9,unsure"]),
                        ("c", ["abuse=pass<0.4<=stop"])):
        shutil.copytree(bimodal_bundle.root, tmp_path / name)
        set_policy(tmp_path / name, rules, clear=["reason"] if name == "c" else [])  # same tables, new policy
        bundles[name] = Bundle.load(tmp_path / name)
    policies = {b.calibrator.version: b.calibrator for b in (bimodal_bundle, *bundles.values())}
    assert len(policies) == 3  # a changed policy is a new calibration version
    records = make_dataset(30, seed=12, unseen_rate=0.1)[list(schema_for(bimodal_bundle.manifest).input_fields)] \
        .to_dict(orient="records")
    server = start_server(repository, explicit=True)
    answers: list[Answer] = []
    failures: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(url, protocol, records, answers, failures, stop, n), daemon=True)
               for n, (url, protocol) in enumerate([(server.config.grpc_url, "grpc"), (server.config.http_url, "http"),
                                                    (server.config.grpc_url, "grpc")])]
    try:
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        swaps = []
        for name in ("b", "c"):
            publish(bundles[name].root, repository, url=server.config.http_url, admin_key=server.admin_key)
            swaps.append((time.monotonic(), bundles[name].calibrator.version))
            time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        server.stop()
    assert not failures, failures[:3]
    assert len(answers) > 30
    assert all(len(set(a.versions)) == 1 for a in answers), "a response mixed calibration versions"
    seen = {a.versions[0] for a in answers}
    assert seen == set(policies), seen
    for answer in answers:
        calibrator = policies[answer.versions[0]]
        for prediction in answer.predictions:
            assert {t: prediction[t].decision for t in prediction.tasks} == policy_decisions(calibrator, prediction)
    for swapped_at, version in swaps:  # once a publish returned, new requests are decided by its policy
        later = [a.versions[0] for a in answers if swapped_at + 0.3 < a.sent < swapped_at + 1.0]
        assert later and set(later) == {version}, (version, later[:5])
    decisions = {v: {p["abuse"].decision for a in answers if a.versions[0] == v for p in a.predictions}
                 for v in policies}
    assert decisions[bundles["c"].calibrator.version] <= {"pass", "stop"}
    print(f"\n{len(answers)} answers of 3 records, per calibration version: "
          + ", ".join(f"{v}: {sum(a.versions[0] == v for a in answers)}" for v in policies))
