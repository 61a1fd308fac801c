"""Tabular preprocessing: numeric imputation, risk-table mapping of categoricals,
fixed feature order, float32 out. Everything runs on whole batches in numpy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .contract import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from .errors import BundleError, InputError
from .features import FeatureLayout
from .strings import decode_strings

TABULAR_FILE = "tabular.json"
# Categories longer than this cannot be real (risk-table keys are short labels); refusing
# them early keeps a hostile request from costing memory. Longer keys raise the limit.
MAX_CATEGORY_BYTES = 1024
# Finite values beyond float32 would become inf in the model's float32 input.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class RiskTable:
    """The seed's ``{"bins": {category: value}, "default_bin": value}``."""

    bins: Mapping[str, float]
    default_bin: float
    # Sorted keys and aligned values, for vectorised lookup with searchsorted.
    _keys: np.ndarray = field(init=False, repr=False, compare=False)
    _values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = np.array(sorted(self.bins), dtype=np.str_)
        values = np.array([float(self.bins[k]) for k in keys], dtype=np.float64)
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_values", values)

    def lookup(self, categories: np.ndarray) -> np.ndarray:
        """Map a 1-D array of category strings; unseen and "" get ``default_bin``."""
        out = np.full(categories.shape, self.default_bin, dtype=np.float64)
        if self._keys.size == 0 or categories.size == 0:
            return out
        categories = categories.astype(np.str_)
        position = np.searchsorted(self._keys, categories)
        position = np.minimum(position, self._keys.size - 1)
        found = self._keys[position] == categories
        out[found] = self._values[position[found]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"bins": dict(self.bins), "default_bin": self.default_bin}


class TabularPreprocessor:
    """Imputation + risk tables + feature order, as in seed 001."""

    def __init__(self, layout: FeatureLayout, imputation: Mapping[str, float],
                 risk_tables: Mapping[str, RiskTable]) -> None:
        missing_impute = [n for n in layout.numeric_names if n not in imputation]
        if missing_impute:
            raise BundleError("imputation", f"no imputation value for numeric features {missing_impute}")
        bad = [n for n in layout.numeric_names if not math.isfinite(float(imputation[n]))]
        if bad:
            raise BundleError("imputation", f"imputation values must be finite: {bad}")
        missing_risk = [n for n in layout.categorical_names if n not in risk_tables]
        if missing_risk:
            raise BundleError("risk_tables", f"no risk table for categorical features {missing_risk}")
        self.layout = layout
        self.imputation = {n: float(imputation[n]) for n in layout.numeric_names}
        self.risk_tables = {n: risk_tables[n] for n in layout.categorical_names}
        self._impute_row = np.array([self.imputation[n] for n in layout.numeric_names], dtype=np.float64)
        self._numeric_columns = layout.numeric_columns
        self._categorical_columns = layout.categorical_columns
        longest_key = max((len(k.encode("utf-8")) for t in self.risk_tables.values() for k in t.bins), default=0)
        self.max_category_bytes = max(MAX_CATEGORY_BYTES, longest_key)

    # -- validation of one request's arrays (cheap, vectorised) ---------------
    def validate_numeric(self, numeric: np.ndarray) -> np.ndarray:
        expected = len(self.layout.numeric_names)
        if numeric.ndim != 2 or numeric.shape[1] != expected:
            raise InputError(NUMERIC_FEATURES, f"expected shape [batch, {expected}] "
                                               f"({', '.join(self.layout.numeric_names)}), got {list(numeric.shape)}")
        if numeric.dtype.kind not in "fiu":
            raise InputError(NUMERIC_FEATURES, f"expected float64 values, got dtype {numeric.dtype}")
        numeric = numeric.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            out_of_range = np.abs(numeric) > FLOAT32_MAX
        if out_of_range.any():
            row, column = (int(i) for i in np.argwhere(out_of_range)[0])
            value = numeric[row, column]
            problem = (f"infinite value {value}; send NaN for a missing value" if np.isinf(value) else
                       f"{value:g} is outside the float32 range (±{FLOAT32_MAX:.4g}) the model computes in")
            raise InputError(NUMERIC_FEATURES, problem, row=row, column=self.layout.numeric_names[column])
        return numeric

    def validate_categorical(self, categorical: np.ndarray) -> np.ndarray:
        expected = len(self.layout.categorical_names)
        if categorical.ndim != 2 or categorical.shape[1] != expected:
            raise InputError(CATEGORICAL_FEATURES, f"expected shape [batch, {expected}] "
                                                   f"({', '.join(self.layout.categorical_names)}), "
                                                   f"got {list(categorical.shape)}")
        return decode_strings(categorical, CATEGORICAL_FEATURES, self.max_category_bytes, oversize="reject",
                              columns=self.layout.categorical_names)

    # -- the batch transform ---------------------------------------------------
    def transform(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """``numeric`` float64 [B, n_numeric] (NaN = missing), ``categorical`` str
        [B, n_categorical] ("" = missing) -> float32 [B, n_features]."""
        batch = numeric.shape[0] if numeric.size or numeric.ndim == 2 else categorical.shape[0]
        out = np.empty((batch, len(self.layout.features)), dtype=np.float64)
        if self._numeric_columns.size:
            out[:, self._numeric_columns] = np.where(np.isnan(numeric), self._impute_row, numeric)
        for i, name in enumerate(self.layout.categorical_names):
            out[:, self._categorical_columns[i]] = self.risk_tables[name].lookup(categorical[:, i])
        return out.astype(np.float32)

    # -- persistence -----------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "features": self.layout.to_dict(),
            "imputation": self.imputation,
            "risk_tables": {n: t.to_dict() for n, t in self.risk_tables.items()},
        }
        (directory / TABULAR_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "TabularPreprocessor":
        path = directory / TABULAR_FILE
        if not path.is_file():
            raise BundleError("tabular", f"missing {path}")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            tables = {n: RiskTable(bins={str(k): float(v) for k, v in t["bins"].items()},
                                   default_bin=float(t["default_bin"]))
                      for n, t in payload["risk_tables"].items()}
            layout = FeatureLayout.from_dict(payload["features"])
            imputation = payload["imputation"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError("tabular", f"malformed {path}: {exc!r}") from None
        return cls(layout, imputation, tables)

