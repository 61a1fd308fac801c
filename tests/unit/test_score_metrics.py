"""tce_backends.score_metrics without a server: the bin layout, what a batch adds to the
tally, what a publish sends (cumulative buckets, only non-zero updates, the canary apart),
the reference a bundle stores, and the publishing thread."""
from __future__ import annotations

import json
import shutil
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce.jobs.calibrate import fit
from tce.lib.demo_data import make_dataset
from tce.repository.builder import schema_for
from tce.trainer.training import task_labels
from tce_backends.bundle import Bundle
from tce_backends.calibration import Calibrator
from tce_backends.errors import BundleError
from tce_backends.reference import ReferencePipeline
from tce_backends.score_metrics import (
    BIN_EDGES,
    BIN_LABELS,
    BINS,
    LE_LABELS,
    REFERENCE_FILE,
    CalibratorMetrics,
    PeriodicFlush,
    ReferenceScores,
    ScoreTally,
    bin_of,
)
from tce_backends.steps import CalibratorStep
from tce_backends.tasks import TaskSpec

TASKS = (TaskSpec("abuse", "binary", ("legit", "abusive")), TaskSpec("reason", "multiclass", ("a", "b", "c")))


class MemorySink:
    """Metric values by (name, labels), and how many updates reached each."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, frozenset], float] = defaultdict(float)
        self.updates = 0

    def counter(self, name: str, description: str, labels: dict):
        return self._metric(name, labels)

    def gauge(self, name: str, description: str, labels: dict):
        return self._metric(name, labels)

    def _metric(self, name: str, labels: dict):
        key = (name, frozenset(labels.items()))
        sink = self

        class Metric:
            def increment(self, value: float) -> None:
                sink.values[key] += value
                sink.updates += 1

            def set(self, value: float) -> None:
                sink.values[key] = value
                sink.updates += 1
        self.values[key] += 0.0
        return Metric()

    def value(self, name: str, **labels: str) -> float:
        matches = [v for (n, ls), v in self.values.items() if n == name and set(labels.items()) <= ls]
        assert len(matches) == 1, (name, labels, len(matches))
        return matches[0]


def probabilities(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    abuse = rng.uniform(size=rows)
    reason = rng.dirichlet([1, 1, 1], size=rows)
    return np.concatenate([np.stack([1 - abuse, abuse], axis=1), reason], axis=1).astype(np.float32)


def step_outputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    return CalibratorStep(Calibrator(TASKS, {}), release="3").run({"probabilities": probabilities(rows, seed)})


def test_one_bin_layout_names_buckets_and_bins():
    assert BIN_EDGES[0] == 0.0 and BIN_EDGES[-1] == 1.0 and BINS == 10
    assert LE_LABELS == ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1", "+Inf")
    assert BIN_LABELS[0] == "0-0.1" and BIN_LABELS[-1] == "0.9-1" and sorted(BIN_LABELS) == list(BIN_LABELS)
    # (low, high]: an edge belongs to the bin below it, 0 to the first, in float32 as in float64
    edges = np.array([0.0, 0.05, 0.1, 0.3, 0.7, 0.9, 1.0])
    assert bin_of(edges).tolist() == [0, 0, 0, 2, 6, 8, 9]
    assert bin_of(edges.astype(np.float32)).tolist() == bin_of(edges).tolist()
    assert bin_of(np.array([1.5, np.nan])).tolist() == [BINS, BINS]


def test_a_published_tally_is_a_prometheus_histogram_without_the_canary_rows():
    outputs = step_outputs(50)
    canary = np.zeros(50, dtype=bool)
    canary[[3, 17, 40]] = True
    tally = ScoreTally(TASKS)
    tally.add(outputs, canary)
    sink = MemorySink()
    metrics = CalibratorMetrics(sink, TASKS, {"model": "calibrator", "version": "2"}, "3", "v@abc", None)
    metrics.publish(tally.take())
    kept = ~canary
    for task in TASKS:
        for kind in ("raw", "calibrated"):
            scores = outputs[f"{task.name}_{kind}"][kept]
            for column, name in enumerate(task.classes):
                series = {"task": task.name, "class": name, "score": kind, "release": "3",
                          "calibration_version": "v@abc"}
                for le, edge in zip(LE_LABELS[:-1], BIN_EDGES[1:], strict=True):
                    assert sink.value("tce_score_bucket", le=le, **series) == np.sum(
                        scores[:, column] <= np.float32(edge))
                assert sink.value("tce_score_bucket", le="+Inf", **series) == 47
                assert sink.value("tce_score_count", **series) == 47
                assert sink.value("tce_score_sum", **series) == pytest.approx(scores[:, column].sum(), rel=1e-6)
        labels = outputs[f"{task.name}_label"][kept, 0]
        for name in task.classes:
            assert sink.value("tce_predicted_label_total", task=task.name, label=name) == np.sum(
                labels == name.encode())
        assert sink.value("tce_calibrated_predictions_total", task=task.name, version="2") == 47
        assert sink.value("tce_calibration_fallback_total", task=task.name) == 0
    assert sink.value("tce_canary_predictions_total", release="3") == 3


def test_only_non_zero_updates_are_sent_and_a_take_starts_over():
    tally = ScoreTally(TASKS)
    sink = MemorySink()
    metrics = CalibratorMetrics(sink, TASKS, {"model": "calibrator", "version": "1"}, "", "v", None)
    created = sink.updates
    outputs = step_outputs(1)
    tally.add(outputs)
    sent = metrics.publish(tally.take())
    assert sink.updates - created == sent
    # one record: per series its bucket and those above it, +Inf, count and sum; one label per
    # task; predictions per task; no fallback, no canary
    scores = np.concatenate([outputs[f"{t.name}_{k}"] for t in TASKS for k in ("raw", "calibrated")], axis=1)[0]
    assert sent == int(sum(BINS - bin_of(scores) + 1 + 2)) + 2 + 2
    assert metrics.publish(tally.take()) == 0
    tally.add(outputs, np.ones(1, dtype=bool))
    assert metrics.publish(tally.take()) == 1  # the canary's row alone


def test_tallies_add_up_across_threads():
    tally = ScoreTally(TASKS)
    outputs = step_outputs(8)
    taken = []

    def add() -> None:
        for _ in range(200):
            tally.add(outputs)

    def take() -> None:
        for _ in range(200):
            taken.append(tally.take().predictions.copy())

    threads = [threading.Thread(target=add), threading.Thread(target=add), threading.Thread(target=take)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken.append(tally.take().predictions)
    assert np.sum(taken, axis=0).tolist() == [2 * 200 * 8] * 2


def test_the_reference_round_trips_and_is_exported_as_fractions(tmp_path: Path):
    rows = probabilities(400, seed=1)
    raw = {"abuse": rows[:, :2], "reason": rows[:, 2:]}
    calibrated = {"abuse": np.clip(rows[:, :2] * 1.0, 0, 1), "reason": rows[:, 2:]}
    reference = ReferenceScores.of_calibrated(raw, calibrated)
    reference.save(tmp_path)
    loaded = ReferenceScores.load(tmp_path, TASKS)
    assert loaded is not None and loaded.to_json() == reference.to_json()
    assert loaded.records("reason") == 400
    np.testing.assert_allclose(loaded.fractions("reason", "raw").sum(axis=1), 1.0)
    np.testing.assert_array_equal(loaded.counts["abuse"]["raw"][1],
                                  np.bincount(bin_of(rows[:, 1]), minlength=BINS)[:BINS])
    sink = MemorySink()
    CalibratorMetrics(sink, TASKS, {"model": "calibrator", "version": "1"}, "1", "v", loaded)
    fractions = loaded.fractions("abuse", "raw")[1]
    for bin_label, fraction in zip(BIN_LABELS, fractions, strict=True):
        assert sink.value("tce_score_reference_fraction", task="abuse", score="raw", bin=bin_label,
                          **{"class": "abusive"}) == pytest.approx(fraction)
    assert ReferenceScores.load(tmp_path / "none", TASKS) is None  # bundles without one still load


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.update(bin_edges=[0, 0.5, 1]), "binned with edges"),
    (lambda d: d["tasks"]["abuse"].update(raw=[[1] * BINS]), "'raw' must hold 2 lists of 10 counts"),
    (lambda d: d["tasks"]["abuse"]["raw"][0].__setitem__(0, -1), "'raw' must hold"),
    (lambda d: d["tasks"].update(other=d["tasks"]["abuse"]), "no task named 'other'"),
])
def test_a_damaged_reference_is_one_error_naming_the_file(tmp_path: Path, change, problem):
    rows = probabilities(20)
    ReferenceScores.of_calibrated({"abuse": rows[:, :2]}, {"abuse": rows[:, :2]}).save(tmp_path)
    data = json.loads((tmp_path / REFERENCE_FILE).read_text())
    change(data)
    (tmp_path / REFERENCE_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"calibration/{REFERENCE_FILE}.*{problem}"):
        ReferenceScores.load(tmp_path, TASKS)


def test_reference_scores_must_be_probabilities():
    with pytest.raises(ValueError, match="task 'abuse', raw: reference scores must be"):
        ReferenceScores.of_scores({"abuse": {"raw": np.array([[0.5, 1.5]]), "calibrated": np.array([[0.5, 0.5]])}})


def test_the_flush_thread_publishes_until_stopped_and_reports_a_failure_once():
    calls, reports = [], []

    def flush() -> None:
        calls.append(1)
        if len(calls) in (2, 3):
            raise RuntimeError("registry gone")

    flusher = PeriodicFlush(flush, 0.01, reports.append).start()
    while len(calls) < 5:
        threading.Event().wait(0.01)
    assert flusher.stop() is True
    stopped_at = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == stopped_at
    assert reports == ["publishing metrics failed (reported once): RuntimeError('registry gone')"]
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        PeriodicFlush(flush, 0, reports.append)


@pytest.mark.filterwarnings("ignore::tce_client.schema.UnusedColumnsWarning")
def test_calibrate_fit_stores_the_files_scores_as_the_reference(bimodal_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    tasks = bimodal_bundle.manifest.tasks
    assert ReferenceScores.load(bundle_dir / "calibration", tasks) is None  # written before it existed
    frame = make_dataset(300, seed=7)
    outputs = ReferencePipeline(bimodal_bundle).predict(schema_for(bimodal_bundle.manifest).encode(frame))
    columns = {f"{t.name}_prob_class_{i}": outputs[f"{t.name}_raw"][:, i].astype(np.float64)
               for t in tasks for i in range(t.num_classes)}
    labels = {f"label_{t.name}": task_labels(t, frame) for t in tasks}
    both, abuse_only = tmp_path / "both.csv", tmp_path / "abuse_only.csv"
    pd.DataFrame({**columns, **labels}).to_csv(both, index=False)
    pd.DataFrame({k: v for k, v in {**columns, **labels}.items() if "abuse" in k}).iloc[:200].to_csv(
        abuse_only, index=False)
    fit(bundle_dir, both)
    first = ReferenceScores.load(bundle_dir / "calibration", tasks)
    assert first is not None and first.records("abuse") == first.records("reason") == 300
    calibrator = fit(bundle_dir, abuse_only, tasks=["abuse"])  # scores of one task: the other keeps its own
    stored = ReferenceScores.load(bundle_dir / "calibration", tasks)
    abuse = np.stack([columns["abuse_prob_class_0"], columns["abuse_prob_class_1"]], axis=1)[:200]
    assert stored.records("abuse") == 200
    np.testing.assert_array_equal(stored.counts["abuse"]["raw"][1], np.bincount(bin_of(abuse[:, 1]), minlength=BINS))
    calibrated = calibrator.apply(np.concatenate([abuse, np.full((200, 4), 0.25)], axis=1)).calibrated["abuse"]
    np.testing.assert_array_equal(stored.counts["abuse"]["calibrated"][1],
                                  np.bincount(bin_of(calibrated[:, 1]), minlength=BINS))
    np.testing.assert_array_equal(stored.counts["reason"]["raw"], first.counts["reason"]["raw"])
    assert Bundle.load(bundle_dir).calibrator.version == calibrator.version


def test_without_score_metrics_only_the_counters_remain(tmp_path: Path):
    rows = probabilities(20)
    reference = ReferenceScores.of_calibrated({"abuse": rows[:, :2]}, {"abuse": rows[:, :2]})
    sink = MemorySink()
    metrics = CalibratorMetrics(sink, TASKS, {"model": "calibrator", "version": "1"}, "1", "v", reference,
                                scores=False)
    assert {name for name, _ in sink.values} == {"tce_calibrated_predictions_total", "tce_calibration_fallback_total",
                                                 "tce_canary_predictions_total"}
    tally = ScoreTally(TASKS, scores=False)
    tally.add(step_outputs(5), np.array([True, False, False, False, False]))
    assert metrics.publish(tally.take()) == 3  # predictions of two tasks, the canary
    assert sink.value("tce_calibrated_predictions_total", task="reason") == 4


def test_the_ensembles_publish_the_reference_of_the_calibrator_they_pin(bimodal_bundle, tmp_path: Path):
    from tce.repository.builder import publish_score_reference, read_config, write_repository
    from tce_backends.contract import SCORE_REFERENCE_PARAMETER

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    rows = probabilities(30)
    reference = ReferenceScores.of_calibrated({"abuse": rows[:, :2], "reason": np.c_[rows[:, 2:], np.zeros(30)]},
                                              {"abuse": rows[:, :2], "reason": np.c_[rows[:, 2:], np.zeros(30)]})
    reference.save(bundle_dir / "calibration")
    repository = write_repository(Bundle.load(bundle_dir), tmp_path / "repository")
    for ensemble in ("calibrated_ensemble", "calibrated_ensemble-release-1"):
        parameters = read_config(repository / ensemble / "config.pbtxt").parameters
        assert parameters[SCORE_REFERENCE_PARAMETER].string_value == reference.to_json()
    config = read_config(repository / "calibrated_ensemble" / "config.pbtxt")
    (repository / "calibrator" / "1" / "calibration" / REFERENCE_FILE).unlink()  # a calibration without one
    assert SCORE_REFERENCE_PARAMETER not in publish_score_reference(config, repository / "calibrator" / "1").parameters
    (bundle_dir / "calibration" / REFERENCE_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(BundleError, match=f"calibration/{REFERENCE_FILE}"):
        write_repository(Bundle.load(bundle_dir), tmp_path / "repository2")


def test_a_calibration_release_publishes_its_own_reference(bimodal_bundle, tmp_path: Path):
    """Release 1 has no reference; a release of new tables with one names it in its ensemble,
    and the ensemble callers reach names it once that release is promoted."""
    from tce.repository.builder import read_config, write_repository
    from tce.repository.release_files import add_release, pin_current
    from tce.repository.releases import Releases
    from tce_backends.contract import SCORE_REFERENCE_PARAMETER

    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    rows = probabilities(30)
    reason = np.c_[rows[:, 2:], np.zeros(30)]
    reference = ReferenceScores.of_calibrated({"abuse": rows[:, :2], "reason": reason},
                                              {"abuse": rows[:, :2], "reason": reason})
    reference.save(bundle_dir / "calibration")
    releases = Releases.load(repository)
    added, _ = add_release(repository, releases, Bundle.load(bundle_dir), base=releases.get(1))

    def published(ensemble: str) -> str | None:
        parameters = read_config(repository / ensemble / "config.pbtxt").parameters
        return parameters[SCORE_REFERENCE_PARAMETER].string_value if SCORE_REFERENCE_PARAMETER in parameters else None

    assert published("calibrated_ensemble-release-2") == reference.to_json()
    assert published("calibrated_ensemble") is None  # still release 1
    promoted, _ = added.promoted(2)
    pin_current(repository, promoted.ensemble, promoted.get(2))
    assert published("calibrated_ensemble") == reference.to_json()
    pin_current(repository, promoted.ensemble, promoted.get(1))  # a rollback
    assert published("calibrated_ensemble") is None
