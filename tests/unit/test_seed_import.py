"""Seed artifacts with real pickles -> bundles whose calibration equals seed 000's."""
import os
import pickle
import tarfile

import numpy as np
import pandas as pd
import pytest

from tce.jobs.calibrate import apply as apply_calibration
from tce.jobs.calibrate import report
from tce.seed.errors import SeedImportError
from tce.seed.importer import import_seed
from tce_backends.bundle import Bundle
from tests.seed_layout import seed_calibrated, write_seed

CASES = [("binary", "binary_bundle"), ("percentile", "binary_bundle"), ("multiclass", "multiclass_bundle"),
         ("score_fields", "score_field_bundle"), ("none", "binary_bundle")]


def _raw(tasks, rows=400, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [rng.dirichlet(np.ones(t.num_classes), size=rows) for t in tasks]
    for block in blocks:  # scores at 0 and 1: beyond every table's ends
        block[0] = np.eye(block.shape[1])[0]
        block[1] = np.eye(block.shape[1])[-1]
    return np.concatenate(blocks, axis=1)


@pytest.mark.parametrize("kind, bundle_fixture", CASES)
def test_imported_calibration_equals_seed_reference(kind, bundle_fixture, request, tmp_path):
    bundle = request.getfixturevalue(bundle_fixture)
    tables = write_seed(bundle, tmp_path / "seed", kind)
    report_ = import_seed(tmp_path / "seed", tmp_path / "bundle")
    imported = Bundle.load(report_.bundle)
    tasks = imported.manifest.tasks
    assert [t.name for t in tasks] == [t.name for t in bundle.manifest.tasks]
    raw = _raw(tasks)
    ours = imported.calibrator.apply(raw)
    expected = seed_calibrated(raw, kind, tables, tasks) if kind != "none" else {tasks[0].name: raw}
    for task in tasks:
        assert np.abs(ours.calibrated[task.name] - expected[task.name]).max() <= 1e-9, task.name
    assert not list((tmp_path / "bundle").rglob("*.pkl")), "pickles must not reach the bundle"


def test_model_tar_gz_is_accepted(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in (tmp_path / "seed").iterdir():
            tar.add(item, arcname=item.name)
    bundle = Bundle.load(import_seed(archive, tmp_path / "bundle").bundle)
    assert bundle.calibrator.calibrations["abuse"].method == "binary"


def test_unknown_and_missing_pieces_are_named(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    (tmp_path / "seed" / "notes.docx").write_text("?", encoding="utf-8")
    (tmp_path / "seed" / "calibration" / "mystery.pkl").write_bytes(pickle.dumps([1]))
    notes = import_seed(tmp_path / "seed", tmp_path / "bundle").notes
    assert any("notes.docx" in n for n in notes)
    assert any("calibration/mystery.pkl" in n for n in notes)
    os.remove(tmp_path / "seed" / "impute_dict.pkl")
    with pytest.raises(SeedImportError, match="missing impute_dict.pkl"):
        import_seed(tmp_path / "seed", tmp_path / "bundle2")


def test_pickle_with_code_is_refused(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/tce-pwned",))

    (tmp_path / "seed" / "calibration" / "calibration_model.pkl").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(SeedImportError, match="calibration_model.pkl.*refusing to load"):
        import_seed(tmp_path / "seed", tmp_path / "bundle")
    assert not os.path.exists("/tmp/tce-pwned")


def test_vocab_txt_is_turned_into_a_fast_tokenizer(binary_bundle, tmp_path):
    from tce.models.encoders import minilm_dir

    write_seed(binary_bundle, tmp_path / "seed", "none")
    os.remove(tmp_path / "seed" / "tokenizer.json")
    (tmp_path / "seed" / "vocab.txt").write_bytes((minilm_dir() / "vocab.txt").read_bytes())
    with pytest.raises(SeedImportError, match="cannot tell whether the tokenizer lowercases"):
        import_seed(tmp_path / "seed", tmp_path / "refused")
    (tmp_path / "seed" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = Bundle.load(import_seed(tmp_path / "seed", tmp_path / "cased").bundle)
    assert cased.text.encode(binary_bundle.text.fields[0].name, ["PARCEL"]).input_ids.tolist() != \
        binary_bundle.text.encode(binary_bundle.text.fields[0].name, ["PARCEL"]).input_ids.tolist()
    (tmp_path / "seed" / "tokenizer_config.json").write_bytes((minilm_dir() / "tokenizer_config.json").read_bytes())
    imported = Bundle.load(import_seed(tmp_path / "seed", tmp_path / "bundle").bundle)
    texts = ["buyer: Where is my PARCEL?", "ünïcödé"]
    for field in binary_bundle.text.fields:
        a = imported.text.encode(field.name, texts).input_ids
        b = binary_bundle.text.encode(field.name, texts).input_ids
        assert (a == b).all()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_calibrate_apply_on_a_seed_directory_matches_seed(binary_bundle, tmp_path, suffix):
    tables = write_seed(binary_bundle, tmp_path / "seed", "percentile")
    raw = _raw(binary_bundle.manifest.tasks, rows=200)
    frame = pd.DataFrame({"id": range(200), "prob_class_0": raw[:, 0], "prob_class_1": raw[:, 1]})
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    {".csv": lambda: frame.to_csv(source, index=False), ".tsv": lambda: frame.to_csv(source, sep="\t", index=False),
     ".parquet": lambda: frame.to_parquet(source)}[suffix]()
    out, _ = apply_calibration(tmp_path / "seed" / "calibration", source, target)
    written = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
               ".tsv": lambda p: pd.read_csv(p, sep="\t")}[suffix](target)
    assert list(written.columns) == ["id", "prob_class_0", "prob_class_1", "calibrated_prob_class_0",
                                     "calibrated_prob_class_1", "calibration_version"]
    expected = seed_calibrated(raw, "percentile", tables, binary_bundle.manifest.tasks)["abuse"]
    got = written[["calibrated_prob_class_0", "calibrated_prob_class_1"]].to_numpy()
    assert np.abs(got - expected).max() <= 1e-9


def test_calibrate_apply_over_an_earlier_calibration_says_so_and_writes_its_version(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    raw = _raw(binary_bundle.manifest.tasks, rows=50)
    frame = pd.DataFrame({"prob_class_0": raw[:, 0], "prob_class_1": raw[:, 1],
                          "calibrated_prob_class_0": 0.5, "calibrated_prob_class_1": 0.5,
                          "calibration_version": "old-tables"})
    frame.to_csv(tmp_path / "scored.csv", index=False)
    out, notes = apply_calibration(binary_bundle.root, tmp_path / "scored.csv", tmp_path / "recalibrated.csv")
    assert any("replaced the columns of an earlier calibration (version old-tables)" in n
               and "calibrated_prob_class_1" in n for n in notes), notes
    assert set(out["calibration_version"]) == {binary_bundle.calibrator.version}
    assert not np.allclose(out["calibrated_prob_class_1"], 0.5)


def test_calibrate_apply_score_fields_adds_field_calibrated_columns(score_field_bundle, tmp_path):
    tables = write_seed(score_field_bundle, tmp_path / "seed", "score_fields")
    tasks = score_field_bundle.manifest.tasks
    raw = _raw(tasks, rows=100)
    frame = pd.DataFrame({t.name: raw[:, 2 * i + 1] for i, t in enumerate(tasks)})
    frame.to_csv(tmp_path / "in.csv", index=False)
    out, _ = apply_calibration(tmp_path / "seed" / "calibration", tmp_path / "in.csv", tmp_path / "out.csv")
    calibrated_tasks = [t for t in tasks if t.name in tables]
    assert [f"{t.name}_calibrated" for t in calibrated_tasks] == [c for c in out.columns if c.endswith("_calibrated")]
    expected = seed_calibrated(raw, "score_fields", tables, tasks)
    for task in calibrated_tasks:
        assert np.abs(out[f"{task.name}_calibrated"].to_numpy() - expected[task.name][:, 1]).max() <= 1e-9


def test_calibrate_report_writes_metrics_and_diagrams(multiclass_bundle, tmp_path):
    raw = _raw(multiclass_bundle.manifest.tasks, rows=300)
    labels = np.random.default_rng(1).integers(0, 4, 300)
    frame = pd.DataFrame({f"prob_class_{i}": raw[:, i] for i in range(4)} | {"label": labels})
    frame.to_parquet(tmp_path / "in.parquet")
    results = report(multiclass_bundle.root, tmp_path / "in.parquet", tmp_path / "report")
    assert set(results["reason"]) == {"raw", "calibrated"}
    assert (tmp_path / "report" / "reliability_reason.png").stat().st_size > 1000
    assert (tmp_path / "report" / "calibration_report.json").is_file()


def _tar_bomb(path, members: int, size: int) -> None:
    """Many members of zeros: tiny compressed, huge unpacked."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        for index in range(members):
            info = tarfile.TarInfo(f"padding_{index}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))


def test_an_archive_that_unpacks_too_big_is_stopped_before_extraction(tmp_path):
    from tce.seed.importer import ExtractionLimits

    archive = tmp_path / "model.tar.gz"
    _tar_bomb(archive, members=4, size=3 << 20)
    with pytest.raises(SeedImportError, match=r"unpacks to more than 8 MiB"):
        import_seed(archive, tmp_path / "out", limits=ExtractionLimits(max_bytes=8 << 20))
    _tar_bomb(archive, members=30, size=1)
    with pytest.raises(SeedImportError, match="more than 20 files"):
        import_seed(archive, tmp_path / "out", limits=ExtractionLimits(max_files=20))
    assert not (tmp_path / "out").exists()


def test_unsafe_archive_members_are_refused_in_one_line(tmp_path):
    import io

    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(SeedImportError, match=r"model.tar.gz.*unsafe member refused") as error:
        import_seed(archive, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_links_out_of_the_seed_directory_are_refused(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    outside = tmp_path / "elsewhere.pkl"
    (tmp_path / "seed" / "impute_dict.pkl").rename(outside)
    (tmp_path / "seed" / "impute_dict.pkl").symlink_to(outside)
    with pytest.raises(SeedImportError, match=r"impute_dict.pkl.*link out of the seed directory"):
        import_seed(tmp_path / "seed", tmp_path / "out")
    inside = tmp_path / "seed" / "moved.pkl"  # a link that stays inside is fine
    outside.rename(inside)
    (tmp_path / "seed" / "impute_dict.pkl").unlink()
    (tmp_path / "seed" / "impute_dict.pkl").symlink_to(inside)
    assert import_seed(tmp_path / "seed", tmp_path / "out").bundle == tmp_path / "out"


def test_a_tokenizer_named_by_its_hub_name_is_found_locally_never_downloaded(binary_bundle, tmp_path):
    import json

    from tce.models.encoders import minilm_dir

    write_seed(binary_bundle, tmp_path / "seed", "none")
    os.remove(tmp_path / "seed" / "tokenizer.json")
    hyper_path = tmp_path / "seed" / "hyperparameters.json"
    hyper = json.loads(hyper_path.read_text())
    hyper_path.write_text(json.dumps({**hyper, "tokenizer": "sentence-transformers/all-MiniLM-L6-v2"}))
    imported = Bundle.load(import_seed(tmp_path / "seed", tmp_path / "installed").bundle)
    assert imported.text.tokenizer_json == (minilm_dir() / "tokenizer.json").read_text()
    hyper_path.write_text(json.dumps({**hyper, "tokenizer": str(minilm_dir())}))  # a local directory
    assert Bundle.load(import_seed(tmp_path / "seed", tmp_path / "local").bundle).text.tokenizer_json == \
        imported.text.tokenizer_json
    hyper_path.write_text(json.dumps({**hyper, "tokenizer": "nobody/not-a-real-tokenizer-xyz"}))
    with pytest.raises(SeedImportError, match="'nobody/not-a-real-tokenizer-xyz' is neither a local directory nor "
                                              "installed.*nothing is downloaded"):
        import_seed(tmp_path / "seed", tmp_path / "missing")


def test_a_multi_task_seed_with_a_multiclass_field_imports_once_its_classes_are_named(bimodal_bundle, tmp_path):
    """Before: every score field was taken for binary, and the import failed with "outputs
    (1, 6), expected [records, 4]" and no hint."""
    import json

    from tce_backends.reference import ReferencePipeline

    seed = tmp_path / "seed"
    write_seed(bimodal_bundle, seed, "none")  # abuse (binary) and reason (4 classes) as score fields
    with pytest.raises(SeedImportError, match=r"score fields are read as binary .* score_field_classes"):
        import_seed(seed, tmp_path / "refused")
    hyper = json.loads((seed / "hyperparameters.json").read_text(encoding="utf-8"))
    reason = next(t for t in bimodal_bundle.manifest.tasks if t.name == "reason")
    hyper["score_field_classes"] = {"reason": list(reason.classes)}
    (seed / "hyperparameters.json").write_text(json.dumps(hyper), encoding="utf-8")
    import_seed(seed, tmp_path / "imported")
    imported = Bundle.load(tmp_path / "imported")
    assert [(t.name, t.kind, t.classes) for t in imported.manifest.tasks] == \
        [("abuse", "binary", ("0", "1")), ("reason", "multiclass", reason.classes)]
    from tce_client.schema import schema_for

    records = [{"dialogue": "buyer: my parcel never came", "order_amount": 12.0, "payment_method": "card"}]
    inputs = schema_for(bimodal_bundle.manifest).encode(records, allow_missing_fields=True)
    ours, theirs = ReferencePipeline(imported).predict(inputs), ReferencePipeline(bimodal_bundle).predict(inputs)
    np.testing.assert_allclose(ours["reason_raw"], theirs["reason_raw"], atol=1e-6)
