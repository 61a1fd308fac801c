"""Seed 003's handler contract, called exactly as SageMaker's PyTorch container calls it,
on the archive ``tce package-sagemaker --handler pytorch`` writes."""
from __future__ import annotations

import io
import json
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


def test_the_archive_holds_the_bundle_and_the_handler(extracted):
    root = extracted["binary"]
    assert (root / "manifest.json").is_file() and (root / "model.pt").is_file()
    assert (root / "code" / "inference.py").is_file() and (root / "code" / "tce_backends").is_dir()
    requirements = (root / "code" / "requirements.txt").read_text().split()
    assert all("==" in pin for pin in requirements) and any(p.startswith("tokenizers==") for p in requirements)


def test_every_request_type_gives_the_same_seed_000_answer(extracted, records):
    root = extracted["binary"]
    plain = records.to_dict(orient="records")
    clean = json.loads(records.to_json(orient="records"))  # NaN as null, as a caller sends it
    bodies = [(json.dumps(clean), "application/json"),
              (json.dumps({"instances": clean}).encode(), "application/json; charset=utf-8"),
              (records.to_csv(index=False), "text/csv"),
              (_npy(records), "application/x-npy")]
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


def test_unsupported_types_and_bad_bodies_are_named(extracted, records):
    with pytest.raises(handler.UnsupportedContentType, match="request content type 'image/png'.*application/json"):
        handler.input_fn(b"...", "image/png")
    model = handler.model_fn(str(extracted["binary"]))
    prediction = handler.predict_fn(handler.input_fn(records.to_csv(index=False), "text/csv"), model)
    with pytest.raises(handler.UnsupportedContentType, match="Accept 'application/xml'"):
        handler.output_fn(prediction, "application/xml")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 3)))
    with pytest.raises(UsageError, match="structured array whose field names are the record fields"):
        handler.input_fn(buffer.getvalue(), "application/x-npy")
    with pytest.raises(UsageError, match="not JSON"):
        handler.input_fn("{", "application/json")
    with pytest.raises(UsageError, match="a record, a list of records"):
        handler.input_fn("[1, 2]", "application/json")


def test_the_archives_own_code_is_what_the_container_imports(extracted, records):
    root = extracted["binary"]
    script = ("import sys, json; sys.path.insert(0, sys.argv[1] + '/code'); import inference, tce_backends;"
              "assert tce_backends.__file__.startswith(sys.argv[1]), tce_backends.__file__;"
              "m = inference.model_fn(sys.argv[1]);"
              "print(inference.output_fn(inference.predict_fn(inference.input_fn(sys.argv[2], 'text/csv'), m),"
              " 'application/json')[0])")
    result = subprocess.run([sys.executable, "-c", script, str(root), records.to_csv(index=False)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(serve(root, records.to_csv(index=False), "text/csv",
                                                          "application/json")[0])
