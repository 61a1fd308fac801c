"""What a caller needs to know about a served ensemble, and turning plain records
into its input tensors. The server publishes this schema in the ensemble config's
``parameters``, tensor names included; nothing else is needed on the client side,
and the client holds no copy of the server's naming rules."""
from __future__ import annotations

import decimal
import difflib
import json
import numbers
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from tce_backends import contract

from .errors import RecordError

if TYPE_CHECKING:
    from tce_backends.bundle import Manifest

Records = Union[pd.DataFrame, Sequence[Mapping[str, Any]], Mapping[str, Any]]

SCHEMA_PARAMETER = "tce_schema"


class UnusedColumnsWarning(UserWarning):
    """Records carry columns the model does not take (ids, labels, another model's fields)."""


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str
    classes: tuple[str, ...]
    outputs: Mapping[str, str] = field(default_factory=dict)  # "raw"/"calibrated"/"label" -> output tensor


@dataclass(frozen=True)
class EnsembleSchema:
    text_fields: tuple[str, ...]
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    feature_order: tuple[str, ...]
    tasks: tuple[TaskInfo, ...]
    # Tensor names: "numeric"/"categorical" -> input, "calibration_version"/"calibration_fallback" -> output.
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> "EnsembleSchema":
        """Raises KeyError when the server's schema lacks a part (an older build)."""
        data = json.loads(text)
        return cls(
            text_fields=tuple(data["text_fields"]),
            numeric_features=tuple(data["numeric_features"]),
            categorical_features=tuple(data["categorical_features"]),
            feature_order=tuple(data["feature_order"]),
            tasks=tuple(TaskInfo(t["name"], t["kind"], tuple(t["classes"]), dict(t["outputs"]))
                        for t in data["tasks"]),
            inputs=dict(data["inputs"]),
            outputs=dict(data["outputs"]),
        )

    def to_json(self) -> str:
        return json.dumps({
            "text_fields": list(self.text_fields),
            "numeric_features": list(self.numeric_features),
            "categorical_features": list(self.categorical_features),
            "feature_order": list(self.feature_order),
            "tasks": [{"name": t.name, "kind": t.kind, "classes": list(t.classes), "outputs": dict(t.outputs)}
                      for t in self.tasks],
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
        }, separators=(",", ":"))

    @property
    def output_names(self) -> list[str]:
        """Every output tensor the ensemble returns, as published."""
        names = [t.outputs[part] for t in self.tasks for part in ("raw", "calibrated", "label")]
        return [*names, self.outputs["calibration_version"], self.outputs["calibration_fallback"]]

    @property
    def input_fields(self) -> tuple[str, ...]:
        """Every field a record may carry: text fields, then numeric and categorical features."""
        return (*self.text_fields, *self.numeric_features, *self.categorical_features)

    def check_fields(self, present: Iterable[str], allow_missing_fields: bool = False) -> list[str]:
        """Fields absent from *every* record are a mistake (a misspelt column would
        silently score as missing everywhere): RecordError naming them and the closest
        columns present. Returns the columns the model does not take."""
        present = [str(c) for c in present]
        unknown = sorted(set(present) - set(self.input_fields))
        missing = [f for f in self.input_fields if f not in present]
        if missing and not allow_missing_fields:
            hints = []
            for field in missing:
                close = difflib.get_close_matches(field, unknown, n=1, cutoff=0.6)
                hints.append(f"'{field}'" + (f" (is '{close[0]}' meant?)" if close else ""))
            raise RecordError(None, ", ".join(missing),
                              f"absent from every record: {', '.join(hints)}. "
                              + (f"Columns the model does not know: {', '.join(unknown)}. " if unknown else "")
                              + "Fix the names, or allow_missing_fields=True (--allow-missing-columns) to score "
                                "them as missing everywhere")
        return unknown

    def encode(self, records: Records, allow_missing_fields: bool = False) -> dict[str, np.ndarray]:
        """Records (dicts or a DataFrame) -> the ensemble's input arrays.

        Per record, missing text is "", missing numerics (None, NaN, absent) are NaN
        and get the bundle's imputation value, missing categoricals are "" and get the
        risk table's default bin. A field absent from every record is an error unless
        ``allow_missing_fields``; columns the model does not take are reported with an
        ``UnusedColumnsWarning``.
        """
        frame = _as_frame(records)
        if len(frame) == 0:
            raise RecordError(None, "records", "no records to encode")
        rows = len(frame)
        inputs: dict[str, np.ndarray] = {}
        for text_field in self.text_fields:
            inputs[text_field] = _strings(frame, text_field, rows, text=True)[:, None]
        if self.numeric_features:
            inputs[self.inputs["numeric"]] = np.stack([_numbers(frame, f, rows) for f in self.numeric_features], axis=1)
        if self.categorical_features:
            inputs[self.inputs["categorical"]] = np.stack(
                [_strings(frame, f, rows, text=False) for f in self.categorical_features], axis=1)
        unknown = self.check_fields(frame.columns, allow_missing_fields)
        if unknown:
            warnings.warn(UnusedColumnsWarning(f"columns the model does not take were left out: {', '.join(unknown)}"),
                          stacklevel=3)
        return inputs


def _as_frame(records: Records) -> pd.DataFrame:
    if isinstance(records, pd.DataFrame):
        return records.reset_index(drop=True)
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise RecordError(None, "records", "expected a DataFrame, a dict or a list of dicts")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise RecordError(index, "record", f"expected a dict, got {type(record).__name__}")
    # [{}] is one record, not none. Objects as given: inferring column types here would fail on
    # the records this module must name (a lone surrogate, an int beyond float range).
    return pd.DataFrame(list(records), index=pd.RangeIndex(len(records)), dtype=object)


def _numbers(frame: pd.DataFrame, field: str, rows: int) -> np.ndarray:
    if field not in frame:
        return np.full(rows, np.nan)
    column = frame[field]
    _refuse_non_numbers(column, field)
    try:
        values = pd.to_numeric(column, errors="raise")
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    except (ValueError, TypeError, OverflowError):
        index = next((i for i, v in enumerate(column.to_numpy()) if not _converts(v)), None)
        value = column.iloc[index] if index is not None else None
        raise RecordError(index, field, f"expected a number or null (within float range), got {_short(value)}"
                          ) from None
    if np.isinf(values).any():
        index = int(np.flatnonzero(np.isinf(values))[0])
        raise RecordError(index, field, "infinite values (or numbers beyond float range) are not allowed; use null "
                                        "for a missing value")
    return values


def _refuse_non_numbers(column: pd.Series, field: str) -> None:
    """Dates, durations and complex numbers convert to numbers silently (nanoseconds, the
    real part): a mistake, refused. Numbers, numeric text and nulls pass."""
    if column.dtype.kind in "mMc":
        index = int(np.flatnonzero(column.notna().to_numpy())[0]) if column.notna().any() else 0
        raise RecordError(index, field, f"expected a number or null, got {_short(column.iloc[index])} "
                                        f"({column.dtype})")
    if column.dtype.kind == "O":
        for index, value in enumerate(column.to_numpy()):
            if not (isinstance(value, (numbers.Real, decimal.Decimal, str, bytes)) or _null(value)):
                raise RecordError(index, field, f"expected a number or null, got {_short(value)}")


def _strings(frame: pd.DataFrame, field: str, rows: int, text: bool) -> np.ndarray:
    if field not in frame:
        return np.full(rows, b"", dtype=np.object_)
    column = frame[field].astype(object)
    column = column.where(column.notna(), "")
    scalar = (str, bytes) if text else (str, bytes, numbers.Number)
    wrong = ~column.map(lambda v: isinstance(v, scalar)).to_numpy(dtype=bool)
    if wrong.any():
        index = int(np.flatnonzero(wrong)[0])
        raise RecordError(index, field, f"expected {'text' if text else 'a category (text)'}, got "
                                        f"{type(column.iloc[index]).__name__}")

    def encoded(index: int, value: object) -> bytes:
        if isinstance(value, bytes):
            return value
        try:
            return str(value).encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: not text any server can read
            raise RecordError(index, field, f"is not valid Unicode text ({error.reason} at position "
                                            f"{error.start})") from None

    return np.array([encoded(i, v) for i, v in enumerate(column.to_numpy())] if len(column) else [],
                    dtype=np.object_)


def _converts(value: object) -> bool:
    try:
        return _null(value) or np.isfinite(float(value))  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return False


def _null(value: object) -> bool:
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_for(manifest: "Manifest") -> EnsembleSchema:
    """What the client learns from the server: published in the ensemble config,
    with the tensor names, so that the client needs no copy of ``contract``."""
    return EnsembleSchema(
        text_fields=manifest.text_fields,
        numeric_features=manifest.features.numeric_names,
        categorical_features=manifest.features.categorical_names,
        feature_order=manifest.features.names,
        tasks=tuple(TaskInfo(t.name, t.kind, t.classes,
                             dict(zip(("raw", "calibrated", "label"), contract.task_output_names(t.name), strict=True)))
                    for t in manifest.tasks),
        inputs={"numeric": contract.NUMERIC_FEATURES, "categorical": contract.CATEGORICAL_FEATURES},
        outputs={"calibration_version": contract.CALIBRATION_VERSION,
                 "calibration_fallback": contract.CALIBRATION_FALLBACK},
    )
