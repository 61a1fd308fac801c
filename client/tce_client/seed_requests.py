"""Seed 003's request bodies (SageMaker ``/invocations``) read into records named by the
model's input fields: one reading for both SageMaker paths, the gateway's door on the
Triton image and the PyTorch handler (``tce_sagemaker.handler``).

- ``application/json``: a record (an object), a list of records, or an object whose only
  key is ``"instances"`` holding the list; ``null`` is a missing value.
- ``text/csv`` (UTF-8): one record per line. Line 1 is a header when every cell in it names
  one of the model's input fields; otherwise every line is a record holding the input
  fields in the order ``tce schema`` lists them (``EnsembleSchema.input_fields``: text
  fields, numeric features, categorical features), as SageMaker's CSV serializer writes
  them. A first line that names some fields and also other words is refused: it is neither.
  An empty cell is a missing value.
- ``application/x-npy``: read from its header without ``np.load`` and never with pickle (an
  object array is refused): a 2-D array ``[records, input fields]`` in that same order (1-D:
  one record) of numbers or fixed-width text, or a structured array whose field names are
  the record fields. NaN and empty text are missing values.

Records are then encoded by the SDK's rules (``EnsembleSchema.encode``) with one more: a
field the model does not take is an error here, not a warning (``encode_records``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tce_backends.errors import UsageError

from .errors import RecordError
from .schema import EnsembleSchema, Records, UnusedColumnsWarning
from .seed_format import CSV, JSON, NPY, UnsupportedMediaType, media_type, short

REQUEST_TYPES = (JSON, CSV, NPY)
# .npy element kinds a body may hold: bool, integers, floats, fixed-width text and bytes
_NPY_KINDS = frozenset("biufUS")
_NPY_MAX_HEADER = 10_000


class SeedBodyError(UsageError):
    """A body that is not one of seed 003's formats, or not records of this model."""


class BodyTooLarge(SeedBodyError):
    """A body holding more values than the reader was allowed to take."""


@dataclass(frozen=True)
class BodyLimits:
    """Work one body may ask for (``None``: no cap)."""

    max_records: int | None = None
    max_elements: int | None = None   # values of all records together


NO_LIMITS = BodyLimits()


@dataclass(frozen=True)
class SeedBody:
    """A body read in its own format, not yet matched with the model's fields: records
    named by the caller (JSON, structured npy) or rows named by position or by a CSV
    header line."""

    media: str
    records: tuple[Mapping[str, Any], ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    may_have_header: bool = False
    limits: BodyLimits = NO_LIMITS

    def records_for(self, fields: Sequence[str]) -> list[dict[str, Any]]:
        """The records, each field named, for a model whose input fields are ``fields``."""
        if self.records:
            records = [dict(record) for record in self.records]
        else:
            rows, names = list(self.rows), tuple(fields)
            header = _header(rows[0], names) if self.may_have_header else None
            if header is not None:
                rows, names = rows[1:], header
                if not rows:
                    raise SeedBodyError(f"the {self.media} body has a header line and no records")
            records = [_named(index, row, names, header is not None, self.media) for index, row in enumerate(rows)]
        _check_count(len(records), self.limits)
        return records


def read_seed_body(body: bytes | str, content_type: str | None, limits: BodyLimits = NO_LIMITS) -> SeedBody:
    """``body`` read as its ``content_type`` says (none: JSON); SeedBodyError naming what is wrong."""
    media = media_type(content_type, JSON)
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if media == JSON:
        return json_records(_json(raw), limits)
    if media == CSV:
        return SeedBody(CSV, rows=_csv_rows(raw, limits), may_have_header=True, limits=limits)
    if media == NPY:
        return _npy(raw, limits)
    raise UnsupportedMediaType(f"unsupported request content type {short(content_type)}; use one of "
                               f"{', '.join(REQUEST_TYPES)}")


def json_records(document: Any, limits: BodyLimits = NO_LIMITS) -> SeedBody:
    """Records from a parsed JSON body: a record, a list of records or ``{"instances": [...]}``."""
    if isinstance(document, dict) and set(document) == {"instances"}:
        document = document["instances"]
    if isinstance(document, dict):
        if not document:
            raise SeedBodyError('the body is an empty JSON object: send a record {"field": value, ...}, a list of '
                                'records or {"instances": [records]}')
        document = [document]
    if not isinstance(document, list) or not document:
        raise SeedBodyError('an application/json body is a record (a JSON object), a non-empty list of records or '
                            '{"instances": [records]}')
    _check_count(len(document), limits)
    wrong = next((index for index, record in enumerate(document) if not isinstance(record, dict)), None)
    if wrong is not None:
        raise SeedBodyError(f"record {wrong} is {_kind(document[wrong])}, not a JSON object of fields: an "
                            'application/json body is a record, a list of records or {"instances": [records]}')
    if limits.max_elements is not None and sum(len(record) for record in document) > limits.max_elements:
        raise BodyTooLarge(f"the records hold more than {limits.max_elements} values")
    return SeedBody(JSON, records=tuple(document), limits=limits)


def encode_records(schema: EnsembleSchema, records: Records) -> dict[str, np.ndarray]:
    """``schema.encode``, with a field the model does not take refused (naming the fields
    it does take): a caller who sends one has misspelt it or sent another model's record."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedColumnsWarning)
        try:
            return schema.encode(records)
        except UnusedColumnsWarning as unused:
            raise SeedBodyError(f"{unused}; the model takes {', '.join(schema.input_fields)}") from None


def _check_count(count: int, limits: BodyLimits) -> None:
    if limits.max_records is not None and count > limits.max_records:
        raise SeedBodyError(f"{count} records; the model takes at most {limits.max_records} per request")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for index, key in enumerate(keys) if key in keys[:index])
        raise SeedBodyError(f"the body has the key {twice!r} twice in one JSON object")
    return record


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as error:
        raise SeedBodyError(f"the application/json body is not UTF-8 text (byte {error.start})") from None
    except RecursionError:
        raise SeedBodyError("the application/json body is nested too deeply to be records") from None
    except ValueError as error:  # JSONDecodeError
        raise SeedBodyError(f"the application/json body is not valid JSON: {error}") from None


def _csv_rows(raw: bytes, limits: BodyLimits) -> tuple[tuple[str, ...], ...]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SeedBodyError(f"the text/csv body is not UTF-8 text (byte {error.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[str, ...]] = []
    values = 0
    try:
        for row in reader:
            if not row:  # a blank line
                continue
            rows.append(tuple(row))
            values += len(row)
            if limits.max_records is not None and len(rows) > limits.max_records + 1:  # + a header line
                raise SeedBodyError(f"more than {limits.max_records} records; the model takes at most "
                                    f"{limits.max_records} per request")
            if limits.max_elements is not None and values > limits.max_elements:
                raise BodyTooLarge(f"the text/csv body holds more than {limits.max_elements} values")
    except csv.Error as error:
        raise SeedBodyError(f"the text/csv body is not CSV (line {reader.line_num}): {error}") from None
    if not rows:
        raise SeedBodyError("the text/csv body holds no records")
    return tuple(rows)


def _header(first: tuple[Any, ...], fields: tuple[str, ...]) -> tuple[str, ...] | None:
    """Line 1's names when it is a header (every cell names an input field), else None."""
    names = tuple(str(cell).strip() for cell in first)
    known = [name for name in names if name in fields]
    if not known:
        return None
    if len(known) != len(names):
        other = next(name for name in names if name not in fields)
        raise SeedBodyError(f"line 1 names the input field(s) {', '.join(known)} and also {other!r}, which the model "
                            f"does not take: a header line names only input fields ({', '.join(fields)}); a record "
                            "line without a header holds them all, in that order")
    twice = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if twice is not None:
        raise SeedBodyError(f"the header line names {twice!r} twice")
    return names


def _named(index: int, row: tuple[Any, ...], names: tuple[str, ...], header: bool, media: str) -> dict[str, Any]:
    if len(row) != len(names):
        expected = (f"the header names {len(names)}" if header else
                    f"a record without a header holds the {len(names)} input fields in order: {', '.join(names)}")
        raise SeedBodyError(f"record {index} of the {media} body has {len(row)} values; {expected}")
    return {name: _value(value) for name, value in zip(names, row, strict=True)}


def _value(value: Any) -> Any:
    """Empty text is a missing value, as a CSV's empty cell."""
    return None if isinstance(value, str) and value == "" else value


def _npy(raw: bytes, limits: BodyLimits) -> SeedBody:
    array = _npy_array(raw, limits)
    if array.dtype.names is not None:
        flat = array.reshape(-1)
        columns = {name: _npy_values(flat[name], lambda i, n=name: (i, n)) for name in array.dtype.names}
        records = tuple({name: columns[name][i] for name in array.dtype.names} for i in range(flat.shape[0]))
        if not records:
            raise SeedBodyError("the application/x-npy array holds no records")
        _check_count(len(records), limits)
        return SeedBody(NPY, records=records, limits=limits)
    if array.ndim not in (1, 2) or array.size == 0:
        raise SeedBodyError(f"an application/x-npy array is [records, input fields] (or one record's fields), got "
                            f"shape {list(array.shape)}")
    matrix = array.reshape(1, -1) if array.ndim == 1 else array
    _check_count(matrix.shape[0], limits)
    width = matrix.shape[1]
    values = _npy_values(matrix.reshape(-1), lambda i: (i // width, f"column {i % width}"))
    rows = tuple(tuple(values[start:start + width]) for start in range(0, len(values), width))
    return SeedBody(NPY, rows=rows, limits=limits)


def _npy_array(raw: bytes, limits: BodyLimits) -> np.ndarray:
    """The array, its size checked against its header and ``limits`` before it is made."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_NPY_MAX_HEADER)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not read here (1.0 and 2.0 are)")
    except (ValueError, TypeError, SyntaxError, EOFError) as error:
        raise SeedBodyError(f"the application/x-npy body is not a .npy array: {error}") from None
    kinds = [dtype.fields[name][0] for name in dtype.names] if dtype.names else [dtype]
    if dtype.hasobject:
        raise SeedBodyError("application/x-npy: an array of Python objects is refused (reading it would unpickle "
                            "it); send numbers or fixed-width text (dtype U or S)")
    if any(kind.kind not in _NPY_KINDS or kind.itemsize == 0 or kind.shape for kind in kinds):
        raise SeedBodyError(f"application/x-npy: dtype {dtype.str if not dtype.names else dtype.descr} is not "
                            "accepted; send numbers (bool, int, float) or fixed-width text (U or S)")
    count = math.prod(shape)
    data = raw[stream.tell():]
    if any(dim < 0 for dim in shape):
        raise SeedBodyError(f"the application/x-npy header's shape {list(shape)} has a negative dimension")
    if count * dtype.itemsize != len(data):
        raise SeedBodyError(f"the application/x-npy body holds {len(data)} bytes of data where its header's shape "
                            f"{list(shape)} of {dtype} takes {count * dtype.itemsize}")
    if limits.max_elements is not None and count * len(kinds) > limits.max_elements:
        raise BodyTooLarge(f"the application/x-npy array holds more than {limits.max_elements} values")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _npy_values(column: np.ndarray, where: Callable[[int], tuple[int, str]]) -> list[Any]:
    """Python values of one column (or of a whole plain array), bytes read as UTF-8 text;
    ``where``: the record and field of the value at an index."""
    values = column.tolist()
    if column.dtype.kind != "S":
        return [_value(v) for v in values]
    texts = []
    for index, value in enumerate(values):
        try:
            texts.append(_value(value.decode("utf-8")))
        except UnicodeDecodeError as error:
            record, field = where(index)
            raise RecordError(record, field, f"is not UTF-8 text (byte {error.start})") from None
    return texts


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "a boolean" if isinstance(value, bool) else "a number"
