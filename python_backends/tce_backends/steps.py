"""The ensemble's three steps as plain numpy logic.

Each step validates one request's tensors (``validate``, raising ``InputError``
that names the field) and processes a whole batch of concatenated requests
(``run``). The Triton ``model.py`` files and the in-process reference pipeline
both drive these same objects.

``PreprocessStep`` is the only step that sees caller tensors. It validates all of
them before anything else runs, so the ensemble is a chain in which nothing runs
beside a step that rejects a request (see ``docs/security.md``: Triton 2.51's
ensemble deadlocks, leaks or frees inputs early when one of two parallel steps
fails).
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from . import contract
from .calibration import Calibrator
from .errors import InputError
from .strings import decode_strings
from .tabular import TabularPreprocessor
from .text import TextPreprocessor

Tensors = dict[str, np.ndarray]


class Step(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors: ...


def _require(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in inputs or inputs[name] is None:
        raise InputError(name, "missing")
    return np.asarray(inputs[name])


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {name: array.shape[0] if array.ndim else 1 for name, array in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(", ".join(sorted(sizes)), f"inputs disagree on batch size: {sizes}")
    return next(iter(sizes.values()), 0)


class TokenizerStep:
    """Raw strings per text field -> token ids and attention masks per field."""

    def __init__(self, text: TextPreprocessor) -> None:
        self.text = text
        self.input_names = tuple(f.name for f in text.fields)
        self.output_names = tuple(n for pair in contract.token_tensor_names(self.input_names) for n in pair)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        out = {}
        for name in self.input_names:
            values = _require(inputs, name)
            if values.ndim == 1:
                values = values[:, None]
            if values.ndim != 2 or values.shape[1] != 1:
                raise InputError(name, f"expected shape [batch, 1], got {list(values.shape)}")
            out[name] = decode_strings(values, name, self.text.field(name).max_bytes, oversize="truncate")
        _batch_size(out)
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        out = {}
        for name, (ids_name, mask_name) in zip(self.input_names, contract.token_tensor_names(self.input_names)):
            tokens = self.text.encode(name, inputs[name][:, 0].tolist())
            out[ids_name], out[mask_name] = tokens.input_ids, tokens.attention_mask
        return out


class TabularStep:
    """Raw numeric and categorical values -> float32 features in model order."""

    def __init__(self, tabular: TabularPreprocessor, text_fields: Sequence[str]) -> None:
        self.tabular = tabular
        layout = tabular.layout
        self.input_names = tuple(name for name, present in (
            (contract.NUMERIC_FEATURES, bool(layout.numeric_names)),
            (contract.CATEGORICAL_FEATURES, bool(layout.categorical_names))) if present)
        self.output_names = (contract.tabular_tensor_name(text_fields),)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        out = {}
        if contract.NUMERIC_FEATURES in self.input_names:
            out[contract.NUMERIC_FEATURES] = self.tabular.validate_numeric(_require(inputs, contract.NUMERIC_FEATURES))
        if contract.CATEGORICAL_FEATURES in self.input_names:
            out[contract.CATEGORICAL_FEATURES] = self.tabular.validate_categorical(
                _require(inputs, contract.CATEGORICAL_FEATURES))
        _batch_size(out)
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        batch = _batch_size(inputs)
        numeric = inputs.get(contract.NUMERIC_FEATURES, np.zeros((batch, 0)))
        categorical = inputs.get(contract.CATEGORICAL_FEATURES, np.zeros((batch, 0), dtype=np.str_))
        return {self.output_names[0]: self.tabular.transform(numeric, categorical)}


class PreprocessStep:
    """Every caller input -> token tensors per text field and the tabular matrix."""

    def __init__(self, text: TextPreprocessor, tabular: TabularPreprocessor) -> None:
        fields = tuple(f.name for f in text.fields)
        self.tokenizer = TokenizerStep(text)
        self.tabular = TabularStep(tabular, fields)
        self.input_names = (*self.tokenizer.input_names, *self.tabular.input_names)
        self.output_names = (*self.tokenizer.output_names, *self.tabular.output_names)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        out = {**self.tokenizer.validate(inputs), **self.tabular.validate(inputs)}
        _batch_size(out)
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        return {**self.tokenizer.run(inputs), **self.tabular.run(inputs)}


class ModelStep:
    """Token tensors + tabular features -> concatenated task probabilities."""

    def __init__(self, model: Callable[[Sequence[np.ndarray]], np.ndarray], text_fields: Sequence[str],
                 total_classes: int) -> None:
        self.model = model
        self.total_classes = total_classes
        self.input_names = (*(n for pair in contract.token_tensor_names(text_fields) for n in pair),
                            contract.tabular_tensor_name(text_fields))
        self.output_names = (contract.PROBABILITIES,)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """The preprocessor's outputs, when a caller sends them to this step directly."""
        out = {name: _require(inputs, name) for name in self.input_names}
        _batch_size(out)
        *tokens, tabular = self.input_names
        for ids_name, mask_name in zip(tokens[::2], tokens[1::2]):
            ids, mask = out[ids_name], out[mask_name]
            if ids.dtype != np.int64 or mask.dtype != np.int64 or ids.ndim != 3 or ids.shape != mask.shape:
                raise InputError(ids_name, "token ids and attention mask must be int64 arrays of one shape "
                                           "[batch, chunks, length]")
            if ids.size and ids.min() < 0:
                raise InputError(ids_name, "token ids must be >= 0")
            if not np.isin(mask, (0, 1)).all():
                raise InputError(mask_name, "attention mask values must be 0 or 1")
        features = out[tabular]
        if features.dtype != np.float32 or not np.isfinite(features).all():
            raise InputError(tabular, "tabular features must be finite float32 values")
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        arrays = [inputs[name] for name in self.input_names]
        probabilities = self.model(arrays)
        if probabilities.shape != (arrays[0].shape[0], self.total_classes):
            raise RuntimeError(f"model returned shape {probabilities.shape}, expected "
                               f"[{arrays[0].shape[0]}, {self.total_classes}]")
        return {contract.PROBABILITIES: probabilities.astype(np.float32, copy=False)}


class CalibratorStep:
    """Concatenated probabilities -> per task raw, calibrated and label, plus the
    calibration version and per-task fallback flags."""

    def __init__(self, calibrator: Calibrator) -> None:
        self.calibrator = calibrator
        self.input_names = (contract.PROBABILITIES,)
        names = []
        for task in calibrator.tasks:
            names += [contract.raw_output(task.name), contract.calibrated_output(task.name),
                      contract.label_output(task.name)]
        self.output_names = (*names, contract.CALIBRATION_VERSION, contract.CALIBRATION_FALLBACK)
        self._class_names = {t.name: np.array([c.encode() for c in t.classes], dtype=np.object_)
                             for t in calibrator.tasks}
        self._version = calibrator.version.encode()

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """The model's output, when a caller sends it to this step directly."""
        probabilities = _require(inputs, contract.PROBABILITIES)
        expected = sum(t.num_classes for t in self.calibrator.tasks)
        if probabilities.ndim != 2 or probabilities.shape[1] != expected or probabilities.dtype.kind != "f":
            raise InputError(contract.PROBABILITIES, f"expected float probabilities of shape [batch, {expected}], "
                                                     f"got {probabilities.dtype} {list(probabilities.shape)}")
        with np.errstate(invalid="ignore"):
            inside = (probabilities >= 0) & (probabilities <= 1)
        if not inside.all():
            raise InputError(contract.PROBABILITIES, "probabilities must be finite values in [0, 1]")
        return {contract.PROBABILITIES: probabilities}

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        probabilities = inputs[contract.PROBABILITIES]
        result = self.calibrator.apply(probabilities)
        out: Tensors = {}
        for task in self.calibrator.tasks:
            out[contract.raw_output(task.name)] = result.raw[task.name].astype(np.float32, copy=False)
            out[contract.calibrated_output(task.name)] = result.calibrated[task.name].astype(np.float32)
            out[contract.label_output(task.name)] = self._class_names[task.name][result.labels[task.name]][:, None]
        batch = probabilities.shape[0]
        out[contract.CALIBRATION_VERSION] = np.full((batch, 1), self._version, dtype=np.object_)
        out[contract.CALIBRATION_FALLBACK] = result.fallback
        return out
