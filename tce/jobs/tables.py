"""Prediction files in and out: CSV, TSV or Parquet, chosen by extension (seed 001)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tce_backends.errors import UsageError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


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
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
    except (ValueError, OSError) as error:  # pandas' parser errors and pyarrow's are ValueErrors
        raise UsageError(f"{path} is not a readable {kind} file: {error}") from None


def write_frame(frame: pd.DataFrame, path: Path | str) -> Path:
    kind = file_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    return path
