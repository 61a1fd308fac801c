"""Seed 003's handler contract, called exactly as SageMaker's PyTorch container calls it,
on the archive ``tce package-sagemaker --handler pytorch`` writes."""
from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest

from tce.jobs.sagemaker import package_sagemaker
from tce.lib.demo_data import make_dataset
from tce_backends.errors import UsageError
from tce_sagemaker import handler


@pytest.fixture(scope="module")
def extracted(binary_bundle, bimodal_bundle, tmp_path_factory):
    """model_dir of a one-task (binary) and a two-task archive."""
    roots = {}
    for name, bundle in (("binary", binary_bundle), ("two_tasks", bimodal_bundle)):
        out = tmp_path_factory.mktemp(f"sagemaker_{name}")
        package_sagemaker(bundle.root, out / "model.tar.gz", handler="pytorch")
        with tarfile.open(out / "model.tar.gz") as archive:
            archive.extractall(out / "model", filter="data")
        roots[name] = out / "model"
    return roots


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return make_dataset(5, seed=31).drop(columns=["abuse", "reason", "events", "record_id"])


def serve(model_dir, body, content_type: str, accept: str):
    model = handler.model_fn(str(model_dir))
    return handler.output_fn(handler.predict_fn(handler.input_fn(body, content_type), model), accept)


def _npy(frame: pd.DataFrame) -> bytes:
    columns = {c: (np.array(frame[c].fillna("").astype(str).tolist(), dtype=str) if frame[c].dtype == object
                   or str(frame[c].dtype).startswith("str") else frame[c].to_numpy(dtype=np.float64))
               for c in frame.columns}
    array = np.empty(len(frame), dtype=[(c, v.dtype) for c, v in columns.items()])
    for c, v in columns.items():
        array[c] = v
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _plain_npy(frame: pd.DataFrame) -> bytes:
    """A 2-D text array in the schema's field order, as numpy.save writes one ("" = missing)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]))
    return buffer.getvalue()


def test_the_archive_holds_the_bundle_and_the_handler(extracted):
    root = extracted["binary"]
    assert (root / "manifest.json").is_file() and (root / "model.pt").is_file()
    assert (root / "code" / "inference.py").is_file() and (root / "code" / "tce_backends").is_dir()
    requirements = (root / "code" / "requirements.txt").read_text().split()
    assert all("==" in pin for pin in requirements) and any(p.startswith("tokenizers==") for p in requirements)
    assert not any(p.startswith("pandas==") for p in requirements)  # the handler no longer needs it


def test_every_request_type_gives_the_same_seed_000_answer(extracted, records):
    root = extracted["binary"]
    plain = records.to_dict(orient="records")
    clean = json.loads(records.to_json(orient="records"))  # NaN as null, as a caller sends it
    in_order = records[list(handler.model_fn(str(root)).schema.input_fields)]
    bodies = [(json.dumps(clean), "application/json"),
              (json.dumps({"instances": clean}).encode(), "application/json; charset=utf-8"),
              (records.to_csv(index=False), "text/csv"),
              (in_order.to_csv(index=False, header=False).encode(), "text/csv"),  # SageMaker's CSV serializer
              (_npy(records), "application/x-npy"),
              (_plain_npy(in_order), "application/x-npy")]
    answers = [json.loads(serve(root, body, kind, "application/json")[0]) for body, kind in bodies]
    assert all(answer == answers[0] for answer in answers), answers
    first = answers[0]["predictions"]
    assert len(first) == len(plain) and set(first[0]) == {"legacy-score", "calibrated-score", "output-label"}
    (one,) = json.loads(serve(root, json.dumps(clean[0]), "application/json", "*/*")[0])["predictions"]
    # alone, the record is padded to its own length: equal up to float32 rounding
    assert one["output-label"] == first[0]["output-label"]
    for key in ("legacy-score", "calibrated-score"):
        assert float(one[key]) == pytest.approx(float(first[0][key]), abs=1e-6)


def test_csv_responses_and_several_tasks(extracted, records):
    body, kind = serve(extracted["binary"], records.to_csv(index=False), "text/csv", "text/csv")
    assert kind == "text/csv" and body.splitlines()[0] == "legacy-score,calibrated-score,output-label"
    assert len(body.splitlines()) == len(records) + 1
    body, kind = serve(extracted["two_tasks"], records.to_csv(index=False), "text/csv", "application/json")
    (first, *_) = json.loads(body)["predictions"]
    assert set(first) == {"abuse", "reason"} and "calibrated_prob_04" in first["reason"]
    csv_body, _ = serve(extracted["two_tasks"], records.to_csv(index=False), "text/csv", "text/csv")
    assert "abuse.legacy-score" in csv_body.splitlines()[0] and "reason.prob_01" in csv_body.splitlines()[0]


def test_npy_responses_load_without_pickle(extracted, records):
    body, kind = serve(extracted["binary"], records.to_csv(index=False), "text/csv", "application/x-npy")
    assert kind == "application/x-npy" and isinstance(body, bytes)
    array = np.load(io.BytesIO(body), allow_pickle=False)
    expected = json.loads(serve(extracted["binary"], records.to_csv(index=False), "text/csv", "*/*")[0])
    assert array.shape == (len(records),)
    assert array["legacy-score"].tolist() == [float(p["legacy-score"]) for p in expected["predictions"]]
    assert array["output-label"].tolist() == [p["output-label"] for p in expected["predictions"]]
    body, _ = serve(extracted["two_tasks"], records.to_csv(index=False), "text/csv", "application/x-npy")
    assert {"abuse.legacy-score", "reason.calibrated_prob_04"} <= set(np.load(io.BytesIO(body)).dtype.names)


def _pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"dialogue": "hi"}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_unsupported_types_and_bad_bodies_are_named(extracted, records):
    with pytest.raises(handler.UnsupportedContentType, match="request content type 'image/png'.*application/json"):
        handler.input_fn(b"...", "image/png")
    model = handler.model_fn(str(extracted["binary"]))
    prediction = handler.predict_fn(handler.input_fn(records.to_csv(index=False), "text/csv"), model)
    with pytest.raises(handler.UnsupportedContentType, match="Accept 'application/xml'"):
        handler.output_fn(prediction, "application/xml")
    with pytest.raises(UsageError, match="Python objects"):
        handler.input_fn(_pickled_npy(), "application/x-npy")
    with pytest.raises(UsageError, match="not valid JSON"):
        handler.input_fn("{", "application/json")
    with pytest.raises(UsageError, match="a record, a list of records"):
        handler.input_fn("[1, 2]", "application/json")
    fields = ", ".join(model.schema.input_fields)
    for body, kind, words in [
            (np.zeros((2, 3)), "application/x-npy", ["record 0", "3 values", fields]),
            ("hi,1,2\n", "text/csv", ["record 0", "3 values", fields]),
            ('[{"dialogue": "hi"}, {"dialogue": "hi", "order_amount": "lots"}]', "application/json",
             ["record 1", "'order_amount'", "'lots'"]),
            ('{"dialogue": "hi", "ordr_amount": 3}', "application/json", ["ordr_amount", "order_amount"])]:
        if isinstance(body, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, body)
            body = buffer.getvalue()
        with pytest.raises(UsageError) as error:
            handler.predict_fn(handler.input_fn(body, kind), model)
        assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("damage", ["calibration.json", "table"])
def test_broken_calibration_serves_raw_scores_flagged(extracted, records, tmp_path, caplog, damage):
    """Seed 000's rule, as the served calibrator: a corrupt calibration file falls back to raw."""
    root = tmp_path / "model"
    shutil.copytree(extracted["binary"], root)
    if damage == "calibration.json":
        (root / "calibration" / "calibration.json").write_text("{not json", encoding="utf-8")
    else:
        (table,) = [p for p in (root / "calibration").glob("*.npy")]
        table.write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING, logger=handler.__name__):
        model = handler.model_fn(str(root))
    warnings = [r for r in caplog.records if r.name == handler.__name__]
    assert len(warnings) == 1 and "'abuse'" in warnings[0].getMessage()
    healthy = json.loads(serve(extracted["binary"], records.to_csv(index=False), "text/csv", "*/*")[0])
    body, _ = handler.output_fn(handler.predict_fn(handler.input_fn(records.to_csv(index=False), "text/csv"), model),
                                "application/json")
    for got, expected in zip(json.loads(body)["predictions"], healthy["predictions"], strict=True):
        assert got["calibration-fallback"] == "True" and "calibration-fallback" not in expected
        assert got["legacy-score"] == got["calibrated-score"] == expected["legacy-score"]
        assert got["output-label"] == expected["output-label"]


def test_the_archives_own_code_is_what_the_container_imports(extracted, records):
    root = extracted["binary"]
    script = ("import sys, json; sys.path.insert(0, sys.argv[1] + '/code'); import inference, tce_backends;"
              "assert tce_backends.__file__.startswith(sys.argv[1]), tce_backends.__file__;"
              "m = inference.model_fn(sys.argv[1]);"
              "print(inference.output_fn(inference.predict_fn(inference.input_fn(sys.argv[2], 'text/csv'), m),"
              " 'application/json')[0]);"
              "assert 'pandas' not in sys.modules, 'code/requirements.txt pins no pandas'")
    result = subprocess.run([sys.executable, "-c", script, str(root), records.to_csv(index=False)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(serve(root, records.to_csv(index=False), "text/csv",
                                                          "application/json")[0])
