"""The tabular feature order: which features exist, their kind, and the column
order of the float32 matrix the model consumes.

Callers send numeric values as one float64 vector (``numeric_names`` order) and
categorical values as one string vector (``categorical_names`` order); the
preprocessor places them into ``names`` order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from .errors import BundleError

FeatureKind = Literal["numeric", "categorical"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind


@dataclass(frozen=True)
class FeatureLayout:
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise BundleError("features", f"duplicate feature names in {names}")
        for feature in self.features:
            if feature.kind not in ("numeric", "categorical"):
                raise BundleError("features", f"feature {feature.name!r}: kind must be numeric or categorical")
            if not _NAME.match(feature.name):
                raise BundleError("features", f"feature name {feature.name!r} must match {_NAME.pattern}")

    @classmethod
    def from_lists(cls, numeric: Sequence[str], categorical: Sequence[str],
                   order: Sequence[str] | None = None) -> "FeatureLayout":
        """Build from the seed's ``tab_field_list``/``cat_field_list`` and optional
        ``feature_columns.txt`` order (default: numerics, then categoricals)."""
        kinds = {name: "numeric" for name in numeric}
        for name in categorical:
            if name in kinds:
                raise BundleError("features", f"feature {name!r} is listed as numeric and categorical")
            kinds[name] = "categorical"
        order = list(order) if order is not None else [*numeric, *categorical]
        unknown = [n for n in order if n not in kinds]
        missing = [n for n in kinds if n not in order]
        if unknown or missing:
            raise BundleError("features", f"feature order does not match the feature lists "
                                          f"(unknown: {unknown}, not ordered: {missing})")
        return cls(tuple(Feature(n, kinds[n]) for n in order))  # type: ignore[arg-type]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "numeric")

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "categorical")

    @property
    def numeric_columns(self) -> np.ndarray:
        """Column index in ``names`` of each numeric input, in input order."""
        return np.array([i for i, f in enumerate(self.features) if f.kind == "numeric"], dtype=np.intp)

    @property
    def categorical_columns(self) -> np.ndarray:
        return np.array([i for i, f in enumerate(self.features) if f.kind == "categorical"], dtype=np.intp)

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "kind": f.kind} for f in self.features]

    @classmethod
    def from_dict(cls, data: list[dict[str, Any]]) -> "FeatureLayout":
        try:
            return cls(tuple(Feature(d["name"], d["kind"]) for d in data))
        except (KeyError, TypeError) as exc:
            raise BundleError("features", f"malformed feature list: {exc}") from None
