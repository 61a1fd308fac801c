"""tce.lib.tables: files and directories streamed as fixed chunks."""
from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pytest

from tce.lib.tables import TableSource, input_files, write_table_text
from tce_backends.errors import UsageError


def _frame(start: int, stop: int) -> pd.DataFrame:
    return pd.DataFrame({"record_id": [f"r{i:03d}" for i in range(start, stop)],
                         "dialogue": [f"line one, {i}\nline \"two\"" if i % 3 else "" for i in range(start, stop)],
                         "order_amount": [None if i % 4 == 0 else i * 1.5 for i in range(start, stop)],
                         "prior_claims": [i % 5 for i in range(start, stop)]})


@pytest.fixture
def mixed_directory(tmp_path):
    _frame(0, 7).to_csv(tmp_path / "a.csv", index=False)
    _frame(7, 12).to_csv(tmp_path / "b.tsv", sep="\t", index=False)
    _frame(12, 23).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.csv").write_text("x\n1\n")
    return tmp_path


def test_a_directory_is_its_data_files_in_name_order(mixed_directory):
    assert [p.name for p in input_files(mixed_directory)] == ["a.csv", "b.tsv", "c.parquet"]


def test_chunks_are_cut_at_fixed_rows_across_files_in_order(mixed_directory):
    source = TableSource(mixed_directory)
    chunks = list(source.chunks(5))
    assert [c.num_rows for c in chunks] == [5, 5, 5, 5, 3]
    ids = [i for c in chunks for i in c.column("record_id").to_pylist()]
    assert ids == [f"r{i:03d}" for i in range(23)]
    again = [i for c in TableSource(mixed_directory).chunks(5) for i in c.column("record_id").to_pylist()]
    assert again == ids
    assert source.where(8) == f"row 2 of {mixed_directory / 'b.tsv'}"
    assert source.rows is None  # CSV rows are only known once read


def test_csv_text_comes_back_exactly_and_numbers_parse_later(tmp_path):
    _frame(0, 9).to_csv(tmp_path / "in.csv", index=False)
    (table,) = TableSource(tmp_path / "in.csv").chunks(100)
    assert all(t == pa.string() for t in table.schema.types)  # one type in every chunk
    buffer = io.StringIO()
    write_table_text(table, buffer, "csv", header=True)
    assert buffer.getvalue() == (tmp_path / "in.csv").read_text()


def test_parquet_keeps_its_types_and_row_count(tmp_path):
    _frame(0, 9).to_parquet(tmp_path / "in.parquet")
    source = TableSource(tmp_path / "in.parquet")
    assert source.rows == 9
    assert source.schema.field("prior_claims").type == pa.int64()


def test_files_with_other_columns_are_refused(tmp_path):
    _frame(0, 3).to_csv(tmp_path / "a.csv", index=False)
    _frame(3, 6).drop(columns=["prior_claims"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(UsageError, match="b.csv has the columns .* every input file needs the same columns"):
        TableSource(tmp_path)


def test_a_value_that_cannot_take_the_first_files_type_names_the_file(tmp_path):
    _frame(0, 3).to_parquet(tmp_path / "a.parquet")
    _frame(3, 6).assign(prior_claims="many").to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(UsageError, match="b.csv: cannot read its columns with the types of"):
        list(TableSource(tmp_path).chunks(10))


def test_repeated_header_names_and_empty_directories_are_refused(tmp_path):
    (tmp_path / "dup.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(UsageError, match="repeats the columns \\['a'\\]"):
        TableSource(tmp_path / "dup.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no .csv"):
        TableSource(tmp_path / "empty")
