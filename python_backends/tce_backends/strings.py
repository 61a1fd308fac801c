"""Caller strings (Triton BYTES) -> Python ``str``, with a byte cap per value.

Every value is decoded on its own into an object array, never through numpy's
fixed-width ``bytes_``/``str_`` dtypes: those size every element like the longest
one, so a single 4 MB text in a 64-row request cost gigabytes. The cap is applied
to the raw bytes before decoding, so memory stays proportional to the capped input.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from .errors import InputError

Oversize = Literal["truncate", "reject"]
# A UTF-8 character is at most 4 bytes: a cut this close to the end may split one.
_MAX_CHAR_BYTES = 4


def decode_strings(values: np.ndarray, field: str, max_bytes: int, oversize: Oversize = "reject",
                   columns: Sequence[str] = ()) -> np.ndarray:
    """Decode BYTES (an object array of ``bytes``; ``str`` passes through) into an
    object array of ``str`` of the same shape.

    A value longer than ``max_bytes`` is cut at the last whole character within the
    cap (``truncate``) or refused (``reject``); bytes past the cap are never decoded.
    Errors name the field, the row and, given ``columns``, the column.
    """
    if values.dtype.kind == "U":
        values = values.astype(np.object_)
    if values.dtype.kind not in "OS":
        raise InputError(field, f"expected strings (BYTES), got dtype {values.dtype}")
    flat = values.reshape(-1)
    width = values.shape[-1] if values.ndim > 1 else 1
    out = np.empty(flat.shape, dtype=np.object_)
    for index, value in enumerate(flat):  # one bounded decode per value, no fixed-width copies
        row, column = divmod(index, width)
        where = {"row": row, "column": columns[column] if columns else None}
        if isinstance(value, str):
            value = value.encode("utf-8", errors="surrogatepass")
        elif not isinstance(value, (bytes, bytearray)):
            raise InputError(field, f"expected strings (BYTES), got {type(value).__name__}", **where)
        cut = len(value) > max_bytes
        if cut and oversize == "reject":
            raise InputError(field, f"{len(value)} bytes, above the limit of {max_bytes}", **where)
        out[index] = _decode(value[:max_bytes] if cut else value, cut, field, where)
    return out.reshape(values.shape)


def _decode(value: bytes, cut: bool, field: str, where: dict) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        # The cut may split the last character; anything else is invalid input.
        if cut and error.reason == "unexpected end of data" and error.start >= len(value) - _MAX_CHAR_BYTES:
            return bytes(value[: error.start]).decode("utf-8")
        raise InputError(field, "not valid UTF-8", **where) from None
