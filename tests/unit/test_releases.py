"""Releases in one repository: the rules of releases.json, what the builder writes for
release 1, adding a release's files, and the calibrator's check of the model it serves."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tce.lib.staging import tree_digest
from tce.repository.builder import read_config, write_repository
from tce.repository.release_files import add_release, check_contract, claim_version, remove_release, undo_add
from tce.repository.releases import Release, ReleaseError, Releases, Traffic, first_release, format_table
from tce_backends import graph
from tce_backends.bundle import Bundle
from tce_backends.contract import RELEASE_INFO_FILE, RELEASES_FILE, release_model_name
from tce_backends.errors import BundleError, UsageError
from tce_backends.steps import CalibratorStep
from tce_client import DEFAULT_MODEL
from tests.release_bundles import variant_bundle

STEPS = ("preprocessor", "multimodal_model", "calibrator")


def _release(number: int, state: str = "candidate", version: int | None = None) -> Release:
    return Release(number, "b", f"f{number}", f"c{number}", dict.fromkeys(STEPS, version or number), state)


def _three() -> Releases:
    """current 2, previous 1, candidate 3."""
    return Releases("e", 2, 1, (_release(1, "previous"), _release(2, "current"), _release(3)))


def test_promote_rollback_and_retire_follow_the_rules():
    releases = _three()
    promoted, displaced = releases.promoted()  # the newest candidate
    assert (promoted.current, promoted.previous, displaced.release) == (3, 2, 1)
    assert [r.state for r in promoted.releases] == ["retired", "previous", "current"]
    back = promoted.rolled_back()
    assert (back.current, back.previous) == (2, 3)
    assert back.rolled_back().current == 3, "a second rollback undoes the first"
    assert promoted.versions("calibrator") == (2, 3)
    with pytest.raises(ReleaseError, match="already current"):
        promoted.promoted(3)
    with pytest.raises(ReleaseError, match="retired"):
        promoted.promoted(1)
    with pytest.raises(ReleaseError, match="neither current nor previous"):
        releases.retired(2)
    assert releases.retired(3).get(3).state == "retired"
    with pytest.raises(ReleaseError, match="no release 9"):
        releases.promoted(9)
    with pytest.raises(ReleaseError, match="no previous"):
        Releases("e", 1, None, (_release(1, "current"),)).rolled_back()


def test_traffic_goes_to_a_loaded_candidate_with_a_share_in_the_unit_interval():
    releases = _three()
    split = releases.with_traffic(Traffic(3, 0.1, "canary"))
    assert split.traffic == Traffic(3, 0.1, "canary")
    with pytest.raises(ReleaseError, match="candidate"):
        releases.with_traffic(Traffic(2, 0.1, "canary"))
    for share in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(ReleaseError, match="share"):
            Traffic(3, share, "shadow")
    with pytest.raises(ReleaseError, match="mode"):
        Traffic(3, 0.5, "mirror")
    assert split.promoted(3)[0].traffic is None, "a promoted candidate takes all the traffic"
    assert split.retired(3).traffic is None


def test_releases_json_round_trips_and_a_broken_one_is_one_line(tmp_path):
    releases = _three().with_traffic(Traffic(3, 0.25, "shadow"))
    releases.save(tmp_path)
    assert Releases.load(tmp_path) == releases
    data = json.loads((tmp_path / RELEASES_FILE).read_text())
    assert set(data) == {"ensemble", "current", "previous", "releases", "traffic"}
    assert data["traffic"] == {"release": 3, "share": 0.25, "mode": "shadow"}
    assert not list(tmp_path.glob(".*staging*")), "written by staging and rename"
    data["current"] = 3
    (tmp_path / RELEASES_FILE).write_text(json.dumps(data))
    with pytest.raises(ReleaseError, match="'current' is 3 but the releases in state current are"):
        Releases.load(tmp_path)
    with pytest.raises(ReleaseError, match="rebuild it"):
        Releases.load(tmp_path / "nothing")
    assert "release  state" in format_table(releases) and "candidate (shadow 0.25)" in format_table(releases)


def test_the_build_is_release_one(bimodal_bundle, tmp_path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    releases = Releases.load(out)
    assert (releases.current, releases.previous, releases.ensemble) == (1, None, DEFAULT_MODEL)
    (release,) = releases.releases
    assert release.steps == dict.fromkeys(STEPS, 1) and release.state == "current"
    assert release.calibration_version == bimodal_bundle.calibrator.version
    assert release.model_fingerprint == bimodal_bundle.model_fingerprint()
    info = json.loads((out / "calibrator" / "1" / RELEASE_INFO_FILE).read_text())
    assert info == {"release": 1, "bundle": bimodal_bundle.manifest.name,
                    "model_fingerprint": bimodal_bundle.model_fingerprint()}
    for step in STEPS:
        assert list(read_config(out / step / "config.pbtxt").version_policy.specific.versions) == [1]
    for name in (DEFAULT_MODEL, release_model_name(DEFAULT_MODEL, 1)):
        steps = read_config(out / name / "config.pbtxt").ensemble_scheduling.step
        pins = {s.model_name: s.model_version for s in steps}
        assert pins == dict.fromkeys(STEPS, 1)
    step = CalibratorStep.load(out / "calibrator" / "1", bimodal_bundle.manifest)
    assert step.release == "1"


def test_a_calibrator_refuses_tables_fitted_for_another_model(bimodal_bundle, tmp_path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    version = out / "calibrator" / "1"
    info = json.loads((version / RELEASE_INFO_FILE).read_text())
    (version / RELEASE_INFO_FILE).write_text(json.dumps({**info, "model_fingerprint": "0123456789ab"}))
    with pytest.raises(BundleError, match="fitted for model .* release 1 serves model 0123456789ab"):
        CalibratorStep.load(version, bimodal_bundle.manifest)
    payload = json.loads((version / "calibration" / "calibration.json").read_text())
    del payload["model_fingerprint"]  # tables fitted before the record existed: accepted
    (version / "calibration" / "calibration.json").write_text(json.dumps(payload))
    assert CalibratorStep.load(version, bimodal_bundle.manifest).release == "1"


def test_a_bundle_whose_calibration_is_for_another_model_is_refused(bimodal_bundle, tmp_path):
    root = Path(shutil.copytree(bimodal_bundle.root, tmp_path / "bundle"))
    other = variant_bundle(bimodal_bundle, tmp_path / "other")
    shutil.copyfile(other.model_path, root / "model.pt")
    with pytest.raises(UsageError, match="was fitted for model .* fit it for this model"):
        write_repository(Bundle.load(root), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_adding_a_release_writes_new_versions_and_undo_restores_the_files(bimodal_bundle, tmp_path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    shutil.rmtree(out / "multimodal_model" / "1" / "__pycache__", ignore_errors=True)
    before_digest, before = tree_digest(out), Releases.load(out)
    other = variant_bundle(bimodal_bundle, tmp_path / "b")
    check_contract(out, DEFAULT_MODEL, other)
    new, added = add_release(out, before, other)
    release = added.release
    assert release.steps == dict.fromkeys(STEPS, 2) and new.get(2).state == "candidate"
    assert Releases.load(out) == new
    assert json.loads((out / "calibrator" / "2" / RELEASE_INFO_FILE).read_text())["release"] == 2
    for step in STEPS:
        assert list(read_config(out / step / "config.pbtxt").version_policy.specific.versions) == [1, 2]
    assert list(read_config(out / "multimodal_model" / "configs" / "libtorch.pbtxt")
                .version_policy.specific.versions) == [1, 2]
    pins = read_config(out / release_model_name(DEFAULT_MODEL, 2) / "config.pbtxt").ensemble_scheduling.step
    assert {s.model_name: s.model_version for s in pins} == dict.fromkeys(STEPS, 2)
    undo_add(out, before, added)
    assert tree_digest(out) == before_digest


def test_retiring_keeps_versions_another_loaded_release_pins(bimodal_bundle, tmp_path):
    """A calibration release shares its preprocessor and model versions with its base."""
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    releases = Releases.load(out)
    new, added = add_release(out, releases, bimodal_bundle, base=releases.get(1))
    assert added.release.steps == {"preprocessor": 1, "multimodal_model": 1, "calibrator": 2}
    promoted, _ = new.promoted(2)
    later, third = add_release(out, promoted, bimodal_bundle, base=promoted.get(2))
    assert third.release.steps["calibrator"] == 3
    final = later.retired(3)
    removed = remove_release(out, final, final.get(3))
    assert (out / "calibrator" / "3") in removed and (out / "multimodal_model" / "1").is_dir()
    assert list(read_config(out / "calibrator" / "config.pbtxt").version_policy.specific.versions) == [1, 2]


def test_a_bundle_with_another_contract_cannot_be_a_release(bimodal_bundle, tmp_path):
    out = write_repository(bimodal_bundle, tmp_path / "repo")
    other = Path(shutil.copytree(bimodal_bundle.root, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    manifest["tasks"][1]["classes"] = manifest["tasks"][1]["classes"][:3]
    (other / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    shutil.rmtree(other / "calibration")
    with pytest.raises(UsageError, match=r"cannot be a release .*: the multimodal_model outputs differ"):
        check_contract(out, DEFAULT_MODEL, Bundle.load(other))


def test_a_taken_version_number_is_skipped(tmp_path):
    (tmp_path / "2").mkdir()
    assert claim_version(tmp_path, {1}) == 3
    assert claim_version(tmp_path, {1}) == 4, "the claim itself takes the number"
    assert first_release("e", "b", "f", "c", "m").get(1).state == "current"
    assert graph.CALIBRATOR in STEPS
