import numpy as np
import pandas as pd
import pytest

from tce_client import RecordError, UnusedColumnsWarning
from tce_client.schema import EnsembleSchema, TaskInfo

SCHEMA = EnsembleSchema(text_fields=("dialogue",), numeric_features=("amount", "age"),
                        categorical_features=("payment",), feature_order=("amount", "age", "payment"),
                        tasks=(TaskInfo("abuse", "binary", ("no", "yes")),),
                        inputs={"numeric": "numeric_features", "categorical": "categorical_features"})


def test_records_become_ensemble_inputs_with_missing_values():
    with pytest.warns(UnusedColumnsWarning, match="left out: id"):
        inputs = SCHEMA.encode([{"dialogue": "hi", "amount": 3, "payment": "card", "id": 7},
                                {"age": None, "payment": None},
                                {"dialogue": None, "amount": float("nan")}])
    assert inputs["dialogue"].tolist() == [[b"hi"], [b""], [b""]]
    assert inputs["numeric_features"].dtype == np.float64
    np.testing.assert_array_equal(inputs["numeric_features"], [[3, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
    assert inputs["categorical_features"].tolist() == [[b"card"], [b""], [b""]]


def test_dataframe_and_single_dict_are_accepted():
    frame = pd.DataFrame({"dialogue": ["a", "b"], "amount": [1.0, None], "age": [2, 3], "payment": ["x", None]})
    assert SCHEMA.encode(frame)["numeric_features"].shape == (2, 2)
    assert SCHEMA.encode({"dialogue": "only one"}, allow_missing_fields=True)["dialogue"].shape == (1, 1)


@pytest.mark.parametrize("typo, meant", [("dialog", "dialogue"), ("ammount", "amount"), ("Payment", "payment")])
def test_a_misspelt_column_is_an_error_naming_the_field_and_the_likely_typo(typo, meant):
    record = {"dialogue": "hi", "amount": 1.0, "age": 2.0, "payment": "card"}
    record[typo] = record.pop(meant)
    with pytest.raises(RecordError, match=rf"field '{meant}': absent from every record: '{meant}' \(is '{typo}' meant"):
        SCHEMA.encode(pd.DataFrame([record] * 3))


def test_missing_everywhere_can_be_allowed_explicitly():
    inputs = SCHEMA.encode([{"dialogue": "hi"}], allow_missing_fields=True)
    assert np.isnan(inputs["numeric_features"]).all() and inputs["categorical_features"].tolist() == [[b""]]


def test_a_value_missing_from_some_records_is_a_documented_default():
    inputs = SCHEMA.encode([{"dialogue": "hi", "amount": 1.0, "age": 2.0, "payment": "card"}, {"dialogue": "x"}])
    assert np.isnan(inputs["numeric_features"][1]).all() and inputs["categorical_features"][1, 0] == b""


def test_no_records_and_an_empty_record_get_clear_answers():
    with pytest.raises(RecordError, match="no records"):
        SCHEMA.encode([])
    with pytest.raises(RecordError, match="'dialogue', 'amount', 'age', 'payment'"):
        SCHEMA.encode([{}])


def test_non_numeric_value_names_record_and_field():
    with pytest.raises(RecordError, match="record 1, field 'amount'.*'lots'"):
        SCHEMA.encode([{"amount": 1}, {"amount": "lots"}], allow_missing_fields=True)


def test_infinity_is_refused():
    with pytest.raises(RecordError, match="field 'age'.*infinite"):
        SCHEMA.encode([{"age": float("inf")}], allow_missing_fields=True)


def test_non_text_dialogue_is_refused():
    with pytest.raises(RecordError, match="record 0, field 'dialogue': expected text"):
        SCHEMA.encode([{"dialogue": 42}], allow_missing_fields=True)


def test_records_must_be_dicts():
    with pytest.raises(RecordError, match="record 1"):
        SCHEMA.encode([{"dialogue": "a"}, "oops"])


@pytest.mark.parametrize("field, value, problem", [
    ("dialogue", "lone \ud800 surrogate", "not valid Unicode text"),
    ("payment", "\udcff", "not valid Unicode text"),
    ("amount", 10 ** 400, "within float range"),
    ("amount", "1e999", "beyond float range"),
    ("amount", __import__("datetime").date(2026, 1, 2), "expected a number or null"),
    ("amount", __import__("datetime").datetime(2026, 1, 2), "expected a number or null"),
    ("amount", __import__("datetime").timedelta(days=1), "expected a number or null"),
    ("amount", np.datetime64("2026-01-02"), "expected a number or null"),
    ("amount", 1 + 2j, "expected a number or null"),
    ("amount", [1, 2], "expected a number or null"),
    ("payment", {"a": 1}, "expected a category"),
])
def test_values_a_server_cannot_read_are_record_errors_naming_the_field(field, value, problem):
    """Never a raw UnicodeEncodeError, OverflowError or TypeError, and never a date or a
    complex number turned silently into a number."""
    record = {"dialogue": "hi", "amount": 1.0, "age": 2.0, "payment": "card"}
    with pytest.raises(RecordError, match=rf"record 1, field '{field}': .*{problem}"):
        SCHEMA.encode([record, {**record, field: value}])
