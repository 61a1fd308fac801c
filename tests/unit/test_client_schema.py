import numpy as np
import pandas as pd
import pytest

from tce_client import RecordError
from tce_client.schema import EnsembleSchema, TaskInfo

SCHEMA = EnsembleSchema(text_fields=("dialogue",), numeric_features=("amount", "age"),
                        categorical_features=("payment",), feature_order=("amount", "age", "payment"),
                        tasks=(TaskInfo("abuse", "binary", ("no", "yes")),))


def test_records_become_ensemble_inputs_with_missing_values():
    inputs = SCHEMA.encode([{"dialogue": "hi", "amount": 3, "payment": "card", "id": 7},
                            {"age": None, "payment": None},
                            {"dialogue": None, "amount": float("nan")}])
    assert inputs["dialogue"].tolist() == [[b"hi"], [b""], [b""]]
    assert inputs["numeric_features"].dtype == np.float64
    np.testing.assert_array_equal(inputs["numeric_features"], [[3, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
    assert inputs["categorical_features"].tolist() == [[b"card"], [b""], [b""]]


def test_dataframe_and_single_dict_are_accepted():
    frame = pd.DataFrame({"dialogue": ["a", "b"], "amount": [1.0, None], "payment": ["x", None]})
    assert SCHEMA.encode(frame)["numeric_features"].shape == (2, 2)
    assert SCHEMA.encode({"dialogue": "only one"})["dialogue"].shape == (1, 1)


def test_non_numeric_value_names_record_and_field():
    with pytest.raises(RecordError, match="record 1, field 'amount'.*'lots'"):
        SCHEMA.encode([{"amount": 1}, {"amount": "lots"}])


def test_infinity_is_refused():
    with pytest.raises(RecordError, match="field 'age'.*infinite"):
        SCHEMA.encode([{"age": float("inf")}])


def test_non_text_dialogue_is_refused():
    with pytest.raises(RecordError, match="record 0, field 'dialogue': expected text"):
        SCHEMA.encode([{"dialogue": 42}])


def test_records_must_be_dicts():
    with pytest.raises(RecordError, match="record 1"):
        SCHEMA.encode([{"dialogue": "a"}, "oops"])
