"""Prediction files in and out: CSV, TSV or Parquet, chosen by extension (seed 001).

``read_frame``/``write_frame`` hold a whole file in memory (calibration files).
``TableSource`` streams a file or a directory of files as fixed-size Arrow tables
for the batch jobs: CSV and TSV columns are read as text, so a value is written
back exactly as it came and a column never changes type between chunks. A CSV/TSV
value that is not valid UTF-8 is read as null and reported with its row and column
(``checked_chunks``), so one bad record does not stop a batch job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import pandas as pd
import pyarrow as pa

from tce_backends.errors import UsageError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
EXTENSIONS = {"csv": ".csv", "tsv": ".tsv", "parquet": ".parquet"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
_CSV_BLOCK_BYTES = 1 << 20


def file_format(path: Path | str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"{path}: unsupported file extension {suffix!r}; use .csv, .tsv or .parquet")
    return FORMATS[suffix]


def read_frame(path: Path | str) -> pd.DataFrame:
    kind = file_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=_DELIMITERS[kind])
    except (ValueError, OSError) as error:  # pandas' parser errors and pyarrow's are ValueErrors
        raise UsageError(f"{path} is not a readable {kind} file: {error}") from None


def write_frame(frame: pd.DataFrame, path: Path | str) -> Path:
    kind = file_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep=_DELIMITERS[kind], index=False)
    return path


def input_files(path: Path) -> list[Path]:
    """A file, or the data files of a directory in name order (markers such as
    ``_SUCCESS`` and hidden files are skipped)."""
    path = Path(path)
    if path.is_file():
        file_format(path)
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith(("_", ".")))
    if not files:
        raise UsageError(f"{path} holds no .csv, .tsv or .parquet file")
    return files


# -- streaming ---------------------------------------------------------------------

def _csv_options(kind: str) -> tuple:
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter=_DELIMITERS[kind], newlines_in_values=True)
    return parse, pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES)


def _csv_names(path: Path, kind: str) -> list[str]:
    import pyarrow.csv as pcsv

    parse, read = _csv_options(kind)
    with pcsv.open_csv(path, parse_options=parse, read_options=read) as reader:
        return reader.schema.names


def _csv_batches(path: Path, kind: str, names: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    parse, read = _csv_options(kind)
    # Read as bytes, decoded per chunk (``_decode``): pyarrow's own UTF-8 check fails the whole file.
    convert = pcsv.ConvertOptions(column_types={name: pa.binary() for name in names}, strings_can_be_null=True)
    with pcsv.open_csv(path, parse_options=parse, read_options=read, convert_options=convert) as reader:
        yield from reader


class Undecodable(NamedTuple):
    """A CSV/TSV value that is not valid UTF-8 (read as null)."""

    row: int      # 0-based, across the whole input
    column: str
    reason: str


def _decode(batch: pa.RecordBatch, schema: pa.Schema) -> tuple[pa.RecordBatch, list[tuple[int, str, str]]]:
    """Bytes columns -> text; a value that is not UTF-8 becomes null and is returned as
    (row in the batch, column, reason). Valid columns take one vectorised check."""
    columns, problems = [], []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            columns.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values: list[str | None] = []
        for row, value in enumerate(column.to_pylist()):
            try:
                values.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as error:
                problems.append((row, name, f"is not valid UTF-8 text (byte 0x{value[error.start]:02x} at position "
                                            f"{error.start})"))
                values.append(None)
        columns.append(pa.array(values, pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=schema), problems


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str
    schema: pa.Schema
    rows: int | None  # known without reading for Parquet

    @classmethod
    def open(cls, path: Path) -> "InputFile":
        kind = file_format(path)
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(path)
                return cls(path, kind, meta.schema_arrow, meta.metadata.num_rows)
            names = _csv_names(path, kind)
        except (pa.ArrowInvalid, OSError) as error:
            raise UsageError(f"{path} is not a readable {kind} file: {error}") from None
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise UsageError(f"{path}: the header repeats the columns {duplicated}")
        return cls(path, kind, pa.schema([(n, pa.string()) for n in names]), None)

    def batches(self) -> Iterator[tuple[pa.RecordBatch, list[tuple[int, str, str]]]]:
        """Record batches, each with its values that are not valid UTF-8 (row in the batch,
        column, reason), read as null."""
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=65536):
                    yield batch, []
            else:
                for batch in _csv_batches(self.path, self.format, self.schema.names):
                    yield _decode(batch, self.schema)
        except pa.ArrowInvalid as error:
            raise UsageError(f"{self.path} is not a readable {self.format} file: {error}") from None


class TableSource:
    """The rows of one or more files as tables of ``chunk_rows`` rows (the last one
    shorter), always cut at the same rows: a resumed job finds the same chunks.

    Every file must have the first file's columns; later files are cast to its types.
    """

    def __init__(self, path: Path) -> None:
        self.files = [InputFile.open(p) for p in input_files(path)]
        first = self.files[0]
        for other in self.files[1:]:
            if other.schema.names != first.schema.names:
                raise UsageError(f"{other.path} has the columns {other.schema.names}, but {first.path} has "
                                 f"{first.schema.names}; every input file needs the same columns")
        self.schema = first.schema
        self.format = first.format
        # Where each file's rows start, filled in while reading: error messages name the file.
        self._starts: list[tuple[int, Path]] = []

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @property
    def rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    def identity(self) -> list[dict]:
        """What a resumed job checks: the same files, unchanged."""
        return [{"file": f.path.name, "bytes": f.path.stat().st_size, "mtime_ns": f.path.stat().st_mtime_ns}
                for f in self.files]

    def where(self, row: int) -> str:
        """Row ``row`` (0-based, across files) as 'row N of FILE' (1-based data rows)."""
        for start, path in reversed(self._starts):
            if row >= start:
                return f"row {row - start + 1} of {path}"
        return f"input row {row + 1}"

    def locate(self, row: int) -> tuple[str, int]:
        """Row ``row`` (0-based, across files, already read) as (file name, 1-based data row)."""
        for start, path in reversed(self._starts):
            if row >= start:
                return path.name, row - start + 1
        return self.files[0].path.name, row + 1

    def _batches(self) -> Iterator[tuple[pa.RecordBatch, list[Undecodable]]]:
        offset = 0
        for file in self.files:
            self._starts.append((offset, file.path))
            for batch, problems in file.batches():
                if batch.schema != self.schema:
                    batch = self._cast(batch, file.path)
                yield batch, [Undecodable(offset + row, column, reason) for row, column, reason in problems]
                offset += batch.num_rows

    def _cast(self, batch: pa.RecordBatch, path: Path) -> pa.RecordBatch:
        try:
            return batch.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise UsageError(f"{path}: cannot read its columns with the types of {self.files[0].path} "
                             f"({error})") from None

    def chunks(self, chunk_rows: int) -> Iterator[pa.Table]:
        """Tables of ``chunk_rows`` rows; values that are not valid UTF-8 read as null."""
        for table, _ in self.checked_chunks(chunk_rows):
            yield table

    def checked_chunks(self, chunk_rows: int) -> Iterator[tuple[pa.Table, list[Undecodable]]]:
        """Tables of ``chunk_rows`` rows, each with its values that are not valid UTF-8."""
        pending: list[pa.RecordBatch] = []
        problems: list[Undecodable] = []
        held = start = 0
        for batch, found in self._batches():
            problems += found
            while batch.num_rows:
                take = min(chunk_rows - held, batch.num_rows)
                pending.append(batch.slice(0, take))
                held += take
                batch = batch.slice(take)
                if held == chunk_rows:
                    end = start + held
                    yield pa.Table.from_batches(pending, self.schema), [p for p in problems if p.row < end]
                    problems = [p for p in problems if p.row >= end]
                    pending, held, start = [], 0, end
        if held:
            yield pa.Table.from_batches(pending, self.schema), problems


def write_table_text(table: pa.Table, handle, kind: str, header: bool) -> None:
    """CSV/TSV the way pandas writes them (True/False, no quoted header, no ``.0``
    on integers with gaps)."""
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    frame.to_csv(handle, sep=_DELIMITERS[kind], index=False, header=header)
