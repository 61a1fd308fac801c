"""Caller strings: bounded, per-value decoding that names the field, row and column."""
import numpy as np
import pytest

from tce_backends.errors import InputError
from tce_backends.strings import decode_strings


def test_decodes_bytes_and_passes_str_through():
    out = decode_strings(np.array([[b"caf\xc3\xa9"], ["plain"]], dtype=object), "text", 100)
    assert out.dtype == object and out.tolist() == [["café"], ["plain"]]


def test_truncation_never_splits_a_character():
    # "é" is two bytes: a cap of 4 bytes on "abcé" (5 bytes) keeps "abc", not half a character
    out = decode_strings(np.array([["abcé".encode()]], dtype=object), "text", 4, oversize="truncate")
    assert out[0, 0] == "abc"
    out = decode_strings(np.array([["ab😀cd".encode()]], dtype=object), "text", 5, oversize="truncate")
    assert out[0, 0] == "ab"


def test_invalid_utf8_before_the_cut_is_still_an_error():
    with pytest.raises(InputError, match=r"input 'text' \(row 0\): not valid UTF-8"):
        decode_strings(np.array([[b"\xff" + b"a" * 10]], dtype=object), "text", 4, oversize="truncate")


def test_reject_names_field_column_row_and_limit():
    values = np.array([[b"ok", b"fine"], [b"ok", b"x" * 50]], dtype=object)
    with pytest.raises(InputError, match=r"input 'cats' \(column 'b', row 1\): 50 bytes, above the limit of 10"):
        decode_strings(values, "cats", 10, columns=("a", "b"))


def test_non_string_elements_are_refused():
    with pytest.raises(InputError, match=r"input 'text' \(row 0\): expected strings"):
        decode_strings(np.array([[3]], dtype=object), "text", 10)
    with pytest.raises(InputError, match="expected strings"):
        decode_strings(np.zeros((1, 1)), "text", 10)


def test_memory_stays_proportional_to_the_capped_input():
    """One 4 MB text among 64 short ones: no fixed-width copy of 64 x 4 MB."""
    import tracemalloc

    values = np.array([[b"x" * 4_000_000]] + [[b"short"]] * 63, dtype=object)
    tracemalloc.start()
    out = decode_strings(values, "text", 16_000, oversize="truncate")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(out[0, 0]) == 16_000 and out[1, 0] == "short"
    assert peak < 1_000_000, f"decoding took {peak} bytes"
