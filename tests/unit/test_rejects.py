"""Bad records do not fail a batch job (issue 23): the limit, how records are found bad
(schema, undecodable CSV text), how a job directory keeps and joins them; and seed 001's
environment variables as the batch commands' defaults."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tce.cli import main, parser
from tce.commands.common import apply_seed_settings
from tce.lib.parts import HEALTH, SUCCESS, JobDirectory, RejectsOutput
from tce.lib.rejects import RejectLimit, RejectsExceeded
from tce.lib.seed_settings import SeedSettings, check_job_type
from tce.lib.tables import TableSource
from tce_backends.errors import UsageError
from tce_client import RecordError
from tce_client.schema import EnsembleSchema, TaskInfo

SCHEMA = EnsembleSchema(text_fields=("dialogue",), numeric_features=("amount",), categorical_features=("payment",),
                        feature_order=("amount", "payment"), tasks=(TaskInfo("abuse", "binary", ("no", "yes")),),
                        inputs={"numeric": "numeric_features", "categorical": "categorical_features"})


# -- the limit -----------------------------------------------------------------------

@pytest.mark.parametrize("text, count, fraction", [("10", 10, 0.0), ("0", 0, 0.0), ("0.5%", 0, 0.005),
                                                   ("0.005", 0, 0.005), ("1.0", 0, 1.0), ("100%", 0, 1.0)])
def test_max_rejects_takes_a_count_a_percentage_or_a_fraction(text, count, fraction):
    limit = RejectLimit.parse(text)
    assert (limit.count, limit.fraction) == (count, pytest.approx(fraction))


@pytest.mark.parametrize("text", ["abc", "-1", "150%", "2.5", "", "1e3", "10 records"])
def test_a_bad_max_rejects_is_one_error_naming_the_flag(text):
    with pytest.raises(UsageError, match="--max-rejects"):
        RejectLimit.parse(text)


def test_the_default_lets_a_one_off_through_and_stops_a_broken_file():
    default = RejectLimit.parse("10 or 0.1%")
    assert default == RejectLimit()
    assert default.allowed(40) == 10 and default.allowed(1_000_000) == 1000
    assert RejectLimit.parse("1%").allowed(250) == 2 and RejectLimit.parse("0").allowed(10**6) == 0
    default.check(10, 40, listed_in=None)  # type: ignore[arg-type]  # at the limit: fine
    with pytest.raises(RejectsExceeded, match=r"11 of 40 records could not be scored.*rejects\.csv lists them"):
        default.check(11, 40, listed_in="out/rejects.csv")  # type: ignore[arg-type]


# -- which records are bad -----------------------------------------------------------

def test_encode_valid_leaves_out_bad_records_and_names_each_one_s_field():
    records = [{"dialogue": "fine", "amount": "12.5", "payment": "card"},
               {"dialogue": "x", "amount": "12,5x", "payment": "card"},       # not a number
               {"dialogue": b"caf\xe9", "amount": 1, "payment": "card"},       # latin-1 bytes, not UTF-8
               {"dialogue": "y", "amount": float("inf"), "payment": ["a"]},    # two problems: one is named
               {"dialogue": "last", "amount": None, "payment": None}]
    inputs, problems = SCHEMA.encode_valid(records)
    assert [(p.index, p.field) for p in problems] == [(1, "amount"), (2, "dialogue"), (3, "amount")]
    assert "12,5x" in problems[0].problem and "byte 0xe9 at position 3" in problems[1].problem
    assert inputs["dialogue"].tolist() == [[b"fine"], [b"last"]]
    np.testing.assert_array_equal(inputs["numeric_features"], [[12.5], [np.nan]])
    with pytest.raises(RecordError, match="record 2, field 'dialogue'"):  # encode still stops at the first
        SCHEMA.encode(records)
    with pytest.raises(RecordError, match="absent from every record"):  # a missing column is never a reject
        SCHEMA.encode_valid([{"dialogue": "a", "payment": "b"}])


def test_csv_text_that_is_not_utf8_reads_as_null_with_its_row_and_column(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"id,dialogue,note\n1,ok,x\n2,caf\xe9,y\n3,fine,\xff\n")
    (tmp_path / "b.csv").write_bytes(b"id,dialogue,note\n4,\"two\nlines \xc3\",z\n5,last,w\n")
    source = TableSource(tmp_path)
    chunks = list(source.checked_chunks(2))
    assert [t.num_rows for t, _ in chunks] == [2, 2, 1]
    found = [p for _, problems in chunks for p in problems]
    assert [(p.row, p.column) for p in found] == [(1, "dialogue"), (2, "note"), (3, "dialogue")]
    assert "byte 0xe9 at position 3" in found[0].reason
    assert chunks[0][0].column("dialogue").to_pylist() == ["ok", None]
    assert chunks[1][0].column("id").to_pylist() == ["3", "4"]  # the rest of each row reads as before
    assert source.locate(3) == ("b.csv", 1)
    assert [t.num_rows for t in TableSource(tmp_path).chunks(10)] == [5]


# -- a job directory keeps them beside its parts ----------------------------------------

def _render_csv(parts, target):
    import pyarrow.csv as pcsv

    tables = [p for p in parts if p.num_rows]
    pcsv.write_csv(pa.concat_tables(tables) if tables else pa.table({}), target)


def _rejects(rows: list[int]) -> pa.Table:
    return pa.table({"id": [str(r) for r in rows], "file": ["in.csv"] * len(rows), "row": [r + 1 for r in rows],
                     "field": ["amount"] * len(rows), "reason": ["not a number"] * len(rows)})


def _job_with_rejects(out, limit: str) -> tuple[JobDirectory, RejectsOutput]:
    job = JobDirectory(out, {"x": 1}, ("result.csv", "rejects.csv"))
    job.write(0, pa.table({"id": ["0", "2"]}), 0, rows=3, rejects=_rejects([1]))
    job.write(1, pa.table({"id": ["3"]}), 3, rows=3, rejects=_rejects([4, 5]))
    return job, RejectsOutput("rejects.csv", _render_csv, RejectLimit.parse(limit))


def test_past_the_limit_only_the_rejects_are_written_and_a_rerun_with_a_higher_one_finishes(tmp_path):
    out = tmp_path / "out"
    job, rejects = _job_with_rejects(out, "2")
    with pytest.raises(RejectsExceeded, match="3 of 6 records"):
        job.finish(2, _render_csv, "result.csv", rejects)
    assert (out / "rejects.csv").read_text().splitlines()[1:] == ['"1","in.csv",2,"amount","not a number"',
                                                                 '"4","in.csv",5,"amount","not a number"',
                                                                 '"5","in.csv",6,"amount","not a number"']
    assert not (out / "result.csv").exists() and not (out / SUCCESS).exists() and not (out / HEALTH).exists()

    again = JobDirectory(out, {"x": 1}, ("result.csv", "rejects.csv"))  # the saved chunks are kept
    assert again.done(0, 0, 3) and again.done(1, 3, 3)
    again.finish(2, _render_csv, "result.csv", RejectsOutput("rejects.csv", _render_csv, RejectLimit.parse("50%")))
    assert (out / "result.csv").read_text().split() == ['"id"', '"0"', '"2"', '"3"']
    assert (out / SUCCESS).exists() and len((out / "rejects.csv").read_text().splitlines()) == 4


def test_a_changed_rejects_part_is_never_trusted(tmp_path):
    job, _ = _job_with_rejects(tmp_path / "out", "10")
    pq.write_table(_rejects([4]), job.work / "rejects-000001.parquet")
    assert job.done(0) and not job.done(1)
    assert job.bad_parts(2) == [1]


def test_sharded_rejects_join_in_input_order(tmp_path):
    out = tmp_path / "out"
    rejects = RejectsOutput("rejects.csv", _render_csv, RejectLimit())
    shards = [JobDirectory(out, {"x": 1}, ("result.csv", "rejects.csv"), shard=(i, 2)) for i in range(2)]
    for chunk in range(4):
        shards[chunk % 2].write(chunk, pa.table({"id": [str(chunk * 2)]}), chunk * 2, rows=2,
                                rejects=_rejects([chunk * 2 + 1]))
    assert shards[1].finish(4, _render_csv, "result.csv", rejects) is None  # shard 0 is not done yet
    assert shards[0].finish(4, _render_csv, "result.csv", rejects) == out / "result.csv"
    assert [line.split(",")[0] for line in (out / "rejects.csv").read_text().splitlines()[1:]] == \
        ['"1"', '"3"', '"5"', '"7"']
    assert (out / SUCCESS).exists()


# -- seed 001's settings --------------------------------------------------------------

def _predict_args(*flags: str):
    return parser().parse_args(["predict", "--input", "in.csv", "--output", "out", *flags])


def test_the_seed_s_environment_is_the_default_and_a_flag_wins(monkeypatch):
    monkeypatch.setenv("ID_FIELD", "customer_id")
    monkeypatch.setenv("BATCH_SIZE", "16")
    monkeypatch.setenv("DEVICE", "[0,2,3]")
    monkeypatch.setenv("NUM_WORKERS", "4")
    monkeypatch.delenv("ACCELERATOR", raising=False)
    notes: list[str] = []
    args = _predict_args()
    apply_seed_settings(args, notes.append)
    assert (args.id_field, args.batch_size, args.id_field_option) == ("customer_id", 16, "ID_FIELD")
    assert args.max_rejects == RejectLimit()
    assert notes == ["note: DEVICE=[0,2,3], NUM_WORKERS=4: the server decides where and how the model runs (its GPU "
                     "when it has one, its own instances), so these seed settings change nothing in this job"]
    flags = _predict_args("--id-field", "record_id", "--batch-size", "4", "--max-rejects", "1%")
    apply_seed_settings(flags, notes.append)
    assert (flags.id_field, flags.batch_size, flags.id_field_option) == ("record_id", 4, "--id-field")
    assert flags.max_rejects == RejectLimit(0, 0.01)


def test_without_the_seed_s_environment_nothing_changes(monkeypatch):
    for name in ("ID_FIELD", "BATCH_SIZE", "DEVICE", "ACCELERATOR", "NUM_WORKERS", "LABEL_FIELD"):
        monkeypatch.delenv(name, raising=False)
    notes: list[str] = []
    args = _predict_args()
    apply_seed_settings(args, notes.append)
    assert (args.id_field, args.batch_size, notes) == (None, None, [])
    assert SeedSettings.from_environ({"ID_FIELD": " ", "LABEL_FIELD": "y"}) == SeedSettings(label_field="y")


@pytest.mark.parametrize("argv, words", [
    (["--job_type", "training"], ["--job_type 'training'", "inference, validation, testing"]),
    (["--job_type", "inference"], ["ID_FIELD", "--id-field"]),  # the seed requires ID_FIELD
    (["--max-rejects", "lots"], ["--max-rejects", "'lots'"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1"]),
])
def test_seed_arguments_the_job_cannot_take_are_one_line_before_any_connection(argv, words, monkeypatch, capsys):
    monkeypatch.delenv("ID_FIELD", raising=False)
    assert main(["predict", "--input", "in.csv", "--output", "out", "--url", "127.0.0.1:1", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert all(word in err for word in words), err


def test_bad_batch_size_variable_and_every_seed_job_type(monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "big")
    with pytest.raises(UsageError, match="BATCH_SIZE .* got 'big'"):
        apply_seed_settings(_predict_args())
    for job_type in ("inference", "validation", "testing", None):
        check_job_type(job_type)
