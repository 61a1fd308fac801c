import numpy as np
import pytest

from tce_backends.errors import BundleError, InputError
from tce_backends.features import FeatureLayout
from tce_backends.tabular import RiskTable, TabularPreprocessor


@pytest.fixture()
def tabular() -> TabularPreprocessor:
    layout = FeatureLayout.from_lists(["amount", "age"], ["payment"], order=["payment", "amount", "age"])
    return TabularPreprocessor(layout, {"amount": 10.0, "age": 365.0},
                               {"payment": RiskTable({"card": 0.1, "wire": 0.8}, default_bin=0.25)})


def test_feature_order_imputation_and_risk_tables(tabular):
    numeric = np.array([[5.0, np.nan], [np.nan, 20.0]])
    categorical = np.array([["wire"], ["card"]])
    out = tabular.transform(numeric, categorical)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[0.8, 5.0, 365.0], [0.1, 10.0, 20.0]], dtype=np.float32))


def test_unseen_and_missing_categories_get_default_bin(tabular):
    out = tabular.transform(np.zeros((3, 2)), np.array([["barter"], [""], ["Card"]]))
    np.testing.assert_array_equal(out[:, 0], np.float32([0.25, 0.25, 0.25]))


def test_validate_rejects_infinity_naming_the_feature(tabular):
    with pytest.raises(InputError, match=r"numeric_features' \(column 'age', row 0\): infinite"):
        tabular.validate_numeric(np.array([[1.0, np.inf]]))


@pytest.mark.parametrize("value", [1e308, -3.5e38, 3.41e38])
def test_validate_rejects_finite_values_beyond_float32(tabular, value):
    """They would become inf in the model's float32 input and flip labels."""
    with pytest.raises(InputError, match=r"numeric_features' \(column 'amount', row 1\): .*float32 range"):
        tabular.validate_numeric(np.array([[1.0, 2.0], [value, 2.0]]))


def test_validate_keeps_nan_and_the_largest_float32(tabular):
    largest = float(np.finfo(np.float32).max)
    out = tabular.validate_numeric(np.array([[np.nan, largest]]))
    assert np.isnan(out[0, 0]) and out[0, 1] == largest


def test_validate_rejects_wrong_width(tabular):
    with pytest.raises(InputError, match=r"numeric_features.*\[batch, 2\].*amount, age"):
        tabular.validate_numeric(np.zeros((1, 3)))
    with pytest.raises(InputError, match="categorical_features"):
        tabular.validate_categorical(np.array([[b"a", b"b"]], dtype=object))


def test_validate_names_non_utf8_row(tabular):
    with pytest.raises(InputError, match=r"\(column 'payment', row 1\): not valid UTF-8"):
        tabular.validate_categorical(np.array([[b"card"], [b"\xff\xfe"]], dtype=object))


def test_validate_refuses_oversized_categories(tabular):
    """A 1 MB category cannot be a real one; refusing it keeps memory bounded."""
    huge = np.array([[b"card"], [b"x" * 1_000_000]], dtype=object)
    with pytest.raises(InputError, match=r"\(column 'payment', row 1\): 1000000 bytes, above the limit of 1024"):
        tabular.validate_categorical(huge)


def test_long_risk_table_keys_raise_the_category_limit():
    layout = FeatureLayout.from_lists([], ["url"])
    key = "https://example.com/" + "a" * 2000
    tabular = TabularPreprocessor(layout, {}, {"url": RiskTable({key: 0.9}, 0.1)})
    out = tabular.validate_categorical(np.array([[key.encode()]], dtype=object))
    assert tabular.transform(np.zeros((1, 0)), out)[0, 0] == np.float32(0.9)


def test_validate_decodes_bytes(tabular):
    out = tabular.validate_categorical(np.array([["wire".encode()], ["日本".encode()]], dtype=object))
    assert out.tolist() == [["wire"], ["日本"]]


def test_missing_imputation_or_risk_table_is_named():
    layout = FeatureLayout.from_lists(["amount"], ["payment"])
    with pytest.raises(BundleError, match=r"imputation.*amount"):
        TabularPreprocessor(layout, {}, {"payment": RiskTable({}, 0.5)})
    with pytest.raises(BundleError, match=r"risk_tables.*payment"):
        TabularPreprocessor(layout, {"amount": 1.0}, {})


def test_layout_rejects_inconsistent_order():
    with pytest.raises(BundleError, match="unknown"):
        FeatureLayout.from_lists(["a"], ["b"], order=["a", "b", "c"])
    with pytest.raises(BundleError, match="numeric and categorical"):
        FeatureLayout.from_lists(["a"], ["a"])


def test_save_load_round_trip(tabular, tmp_path):
    tabular.save(tmp_path)
    loaded = TabularPreprocessor.load(tmp_path)
    args = (np.array([[np.nan, 3.0]]), np.array([["card"]]))
    np.testing.assert_array_equal(loaded.transform(*args), tabular.transform(*args))
