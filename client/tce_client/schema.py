"""What a caller needs to know about a served ensemble, and turning plain records
into its input tensors. The server publishes this schema in the ensemble config's
``parameters``, tensor names included; nothing else is needed on the client side,
and the client holds no copy of the server's naming rules."""
from __future__ import annotations

import decimal
import difflib
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from tce_backends import contract
from tce_backends.contract import SCHEMA_PARAMETER  # noqa: F401 - published here for the SDK's users

from .errors import RecordError

if TYPE_CHECKING:
    import pandas as pd

    from tce_backends.bundle import Manifest

Records = Union["pd.DataFrame", Sequence[Mapping[str, Any]], Mapping[str, Any]]
# A task's outputs, by the keys of ``TaskInfo.outputs``.
TASK_OUTPUTS = ("raw", "calibrated", "label", "decision")



class UnusedColumnsWarning(UserWarning):
    """Records carry columns the model does not take (ids, labels, another model's fields)."""


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str
    classes: tuple[str, ...]
    # "raw"/"calibrated"/"label"/"decision" -> output tensor ("decision" is absent from servers built before it)
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleSchema:
    text_fields: tuple[str, ...]
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    feature_order: tuple[str, ...]
    tasks: tuple[TaskInfo, ...]
    # Tensor names: "numeric"/"categorical" -> input, "calibration_version"/"calibration_fallback"/"release"
    # -> output ("release" is absent from servers built before releases).
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
        names = [t.outputs[part] for t in self.tasks for part in TASK_OUTPUTS if part in t.outputs]
        release = [self.outputs["release"]] if "release" in self.outputs else []
        return [*names, self.outputs["calibration_version"], self.outputs["calibration_fallback"], *release]

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
        ``UnusedColumnsWarning``. The first bad value raises ``RecordError``.
        """
        return self._encode(records, allow_missing_fields, _Problems(collect=False))

    def encode_valid(self, records: Records, allow_missing_fields: bool = False, warn_unused: bool = True
                     ) -> tuple[dict[str, np.ndarray], list[RecordError]]:
        """As ``encode``, but a record with a bad value (a number that does not parse, text
        that is not text) is left out instead of failing them all: returns the input arrays
        of the other records, in order, and each left-out record's first problem (its
        ``index`` is the record's position in ``records``). A field absent from every
        record is still an error. ``warn_unused=False``: the caller reported the unused
        columns itself (a warnings filter is process-wide, so threads cannot scope one)."""
        problems = _Problems(collect=True)
        inputs = self._encode(records, allow_missing_fields, problems, warn_unused)
        if not problems.found:
            return inputs, []
        rows = next(iter(inputs.values())).shape[0]
        keep = np.ones(rows, dtype=bool)
        keep[list(problems.found)] = False
        return {name: values[keep] for name, values in inputs.items()}, \
            [problems.found[index] for index in sorted(problems.found)]

    def _encode(self, records: Records, allow_missing_fields: bool, problems: "_Problems", warn_unused: bool = True
                ) -> dict[str, np.ndarray]:
        table = _RecordTable.of(records)
        if table.rows == 0:
            raise RecordError(None, "records", "no records to encode")
        inputs: dict[str, np.ndarray] = {}
        for text_field in self.text_fields:
            inputs[text_field] = _strings(table, text_field, True, problems)[:, None]
        if self.numeric_features:
            inputs[self.inputs["numeric"]] = np.stack([_numbers(table, f, problems) for f in self.numeric_features],
                                                      axis=1)
        if self.categorical_features:
            inputs[self.inputs["categorical"]] = np.stack(
                [_strings(table, f, False, problems) for f in self.categorical_features], axis=1)
        unknown = self.check_fields(table.names, allow_missing_fields)
        if unknown and warn_unused:
            warnings.warn(UnusedColumnsWarning(f"columns the model does not take were left out: {', '.join(unknown)}"),
                          stacklevel=4)
        return inputs


class _Problems:
    """Bad values found while encoding: the first raises ``RecordError`` (``collect=False``),
    or each record's first problem is kept and encoding goes on."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.found: dict[int, RecordError] = {}

    def add(self, index: int, field: str, problem: str) -> None:
        if not self.collect:
            raise RecordError(index, field, problem)
        self.found.setdefault(index, RecordError(index, field, problem))


@dataclass(frozen=True)
class _RecordTable:
    """Records as columns: a DataFrame's own columns (no copy), or each field of a list of
    dicts as given. pandas is needed only by a caller who has DataFrames."""

    rows: int
    names: tuple[str, ...]
    column: Callable[[str], Sequence[Any]]

    @classmethod
    def of(cls, records: Records) -> "_RecordTable":
        if hasattr(records, "columns") and hasattr(records, "iloc"):  # a pandas DataFrame
            frame = records
            names = tuple(str(c) for c in frame.columns)
            return cls(len(frame), names, lambda field: frame[field].to_numpy())
        if isinstance(records, Mapping):
            records = [records]
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise RecordError(None, "records", "expected a DataFrame, a dict or a list of dicts")
        names: dict[str, None] = {}
        for index, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise RecordError(index, "record", f"expected a dict, got {type(record).__name__}")
            names.update(dict.fromkeys(str(key) for key in record))
        keyed = [{str(k): v for k, v in record.items()} for record in records]
        return cls(len(keyed), tuple(names), lambda field: [record.get(field) for record in keyed])

    def get(self, field: str) -> Sequence[Any] | None:
        return self.column(field) if field in self.names else None


def _numbers(table: _RecordTable, field: str, problems: _Problems) -> np.ndarray:
    values = table.get(field)
    if values is None:
        return np.full(table.rows, np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        numbers_ = values.astype(np.float64)
    elif isinstance(values, np.ndarray) and values.dtype.kind in "mMc":
        # dates, durations and complex numbers would convert silently (nanoseconds, the real part)
        for index in [i for i, v in enumerate(values) if not _null(v)] or [0]:
            problems.add(index, field, f"expected a number or null, got {_short(values[index])} ({values.dtype})")
        return np.full(table.rows, np.nan)
    else:
        numbers_ = np.array([_number(index, value, field, problems) for index, value in enumerate(values)],
                            dtype=np.float64)
    for index in np.flatnonzero(np.isinf(numbers_)):
        problems.add(int(index), field, "infinite values (or numbers beyond float range) are not allowed; use null "
                                        "for a missing value")
        numbers_[index] = np.nan
    return numbers_


def _number(index: int, value: Any, field: str, problems: _Problems) -> float:
    """A number, numeric text or null (NaN); dates, complex numbers and the like are refused."""
    if _null(value):
        return math.nan
    if isinstance(value, (numbers.Real, decimal.Decimal, str, bytes)):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    problems.add(index, field, f"expected a number or null (within float range), got {_short(value)}")
    return math.nan


def _strings(table: _RecordTable, field: str, text: bool, problems: _Problems) -> np.ndarray:
    values = table.get(field)
    if values is None:
        return np.full(table.rows, b"", dtype=np.object_)
    scalar = (str, bytes) if text else (str, bytes, numbers.Number)
    encoded = np.empty(len(values), dtype=np.object_)
    for index, value in enumerate(values):
        if _null(value):
            encoded[index] = b""
        elif not isinstance(value, scalar):
            problems.add(index, field, f"expected {'text' if text else 'a category (text)'}, got "
                                       f"{type(value).__name__}")
            encoded[index] = b""
        elif isinstance(value, bytes):
            try:
                value.decode("utf-8")  # the server refuses a whole request for one such value
            except UnicodeDecodeError as error:
                problems.add(index, field, f"is not valid UTF-8 text (byte 0x{value[error.start]:02x} at position "
                                           f"{error.start})")
                value = b""
            encoded[index] = value
        else:
            try:
                encoded[index] = str(value).encode("utf-8")
            except UnicodeEncodeError as error:  # a lone surrogate: not text any server can read
                problems.add(index, field, f"is not valid Unicode text ({error.reason} at position {error.start})")
                encoded[index] = b""
    return encoded


def _null(value: Any) -> bool:
    """None, NaN, and pandas' NA and NaT: a missing value."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT differ from themselves
    except (TypeError, ValueError):
        return value is not None and type(value).__name__ in ("NAType", "NaTType")


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
                             dict(zip(TASK_OUTPUTS, (*contract.task_output_names(t.name),
                                                     contract.decision_output_name(t.name)), strict=True)))
                    for t in manifest.tasks),
        inputs={"numeric": contract.NUMERIC_FEATURES, "categorical": contract.CATEGORICAL_FEATURES},
        outputs={"calibration_version": contract.CALIBRATION_VERSION,
                 "calibration_fallback": contract.CALIBRATION_FALLBACK, "release": contract.RELEASE},
    )
