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

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from . import contract
from .bundle import CALIBRATION_DIR, MODEL_FILE, TABULAR_DIR, TEXT_DIR, Manifest
from .calibration import Calibrator
from .contract import Signature, TensorSpec
from .errors import BundleError, InputError
from .strings import decode_strings
from .tabular import TabularPreprocessor
from .tasks import total_classes
from .text import TextFieldConfig, TextPreprocessor

Tensors = dict[str, np.ndarray]


class Step(Protocol):
    """One ensemble step. ``signature`` describes its tensors from the bundle's
    manifest (what the repository builder renders); ``load`` builds it from a
    directory laid out like a bundle (a bundle, or the step's version directory)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @classmethod
    def signature(cls, manifest: Manifest, text_fields: Sequence[TextFieldConfig]) -> Signature: ...

    @classmethod
    def load(cls, root: Path, manifest: Manifest, **options: Any) -> "Step": ...

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
        self.output_names = tuple(n for field in self.input_names for n in contract.token_names(field))

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
        for name in self.input_names:
            ids_name, mask_name = contract.token_names(name)
            tokens = self.text.encode(name, inputs[name][:, 0].tolist())
            out[ids_name], out[mask_name] = tokens.input_ids, tokens.attention_mask
        return out


class TabularStep:
    """Raw numeric and categorical values -> float32 features in model order."""

    def __init__(self, tabular: TabularPreprocessor) -> None:
        self.tabular = tabular
        layout = tabular.layout
        self.input_names = tuple(name for name, present in (
            (contract.NUMERIC_FEATURES, bool(layout.numeric_names)),
            (contract.CATEGORICAL_FEATURES, bool(layout.categorical_names))) if present)
        self.output_names = (contract.TABULAR,)

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
        self.tokenizer = TokenizerStep(text)
        self.tabular = TabularStep(tabular)
        self.input_names = (*self.tokenizer.input_names, *self.tabular.input_names)
        self.output_names = (*self.tokenizer.output_names, *self.tabular.output_names)

    @classmethod
    def signature(cls, manifest: Manifest, text_fields: Sequence[TextFieldConfig]) -> Signature:
        texts = [TensorSpec(f.name, "TYPE_STRING", (1,)) for f in text_fields]
        features = manifest.features
        tabular_inputs = [spec for spec, present in (
            (TensorSpec(contract.NUMERIC_FEATURES, "TYPE_FP64", (len(features.numeric_names),)),
             features.numeric_names),
            (TensorSpec(contract.CATEGORICAL_FEATURES, "TYPE_STRING", (len(features.categorical_names),)),
             features.categorical_names)) if present]
        tokens = [TensorSpec(name, "TYPE_INT64", (f.max_chunks, f.max_length))
                  for f in text_fields for name in contract.token_names(f.name)]
        return Signature((*texts, *tabular_inputs),
                         (*tokens, TensorSpec(contract.TABULAR, "TYPE_FP32", (len(features.names),))))

    @classmethod
    def load(cls, root: Path, manifest: Manifest, **options: Any) -> "PreprocessStep":
        return cls(TextPreprocessor.load(root / TEXT_DIR), TabularPreprocessor.load(root / TABULAR_DIR))

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
        self.input_names = contract.positional(contract.model_input_names(text_fields))
        self.output_names = contract.positional((contract.PROBABILITIES,))

    @classmethod
    def signature(cls, manifest: Manifest, text_fields: Sequence[TextFieldConfig]) -> Signature:
        preprocessed = {spec.name: spec for spec in PreprocessStep.signature(manifest, text_fields).outputs}
        names = contract.model_input_names(manifest.text_fields)
        inputs = tuple(TensorSpec(positional, preprocessed[name].data_type, preprocessed[name].dims)
                       for positional, name in zip(contract.positional(names), names, strict=True))
        outputs = (TensorSpec(contract.positional((contract.PROBABILITIES,))[0], "TYPE_FP32",
                              (total_classes(manifest.tasks),)),)
        return Signature(inputs, outputs)

    @classmethod
    def load(cls, root: Path, manifest: Manifest, **options: Any) -> "ModelStep":
        """``options``: ``device`` ("auto", "cpu", "cuda:0") and ``num_threads`` for torch."""
        from .model_runner import ModelRunner  # the only torch import

        runner = ModelRunner(root / MODEL_FILE, **options)
        return cls(runner, manifest.text_fields, total_classes(manifest.tasks))

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """The preprocessor's outputs, when a caller sends them to this step directly."""
        out = {name: _require(inputs, name) for name in self.input_names}
        _batch_size(out)
        *tokens, tabular = self.input_names
        for ids_name, mask_name in zip(tokens[::2], tokens[1::2], strict=True):  # forward order: ids, mask per field
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
        return {self.output_names[0]: probabilities.astype(np.float32, copy=False)}


class CalibratorStep:
    """Concatenated probabilities -> per task raw, calibrated, label and decision (the
    calibration's decision policy, else the label), plus the calibration version, per-task
    fallback flags and the release that answered.

    In a model repository the calibrator's version directory holds ``release.json``
    (``contract.RELEASE_INFO_FILE``, written by the builder): the release number it answers
    with, and the fingerprint of the model that release serves. Tables that record being
    fitted for another model refuse to load; tables that record no model (fitted before the
    record existed) are accepted. Loaded from a bundle (no ``release.json``), the release is ""."""

    def __init__(self, calibrator: Calibrator, release: str = "") -> None:
        self.calibrator = calibrator
        self.release = release
        self.input_names = (contract.PROBABILITIES,)
        self.output_names = tuple(spec.name for spec in self._output_specs(calibrator.tasks))
        self._class_names = {t.name: np.array([c.encode() for c in t.classes], dtype=np.object_)
                             for t in calibrator.tasks}
        self._action_names = {t.name: np.array([a.encode() for a in calibrator.actions[t.name]], dtype=np.object_)
                              for t in calibrator.tasks}
        self._version = calibrator.version.encode()
        self._release = release.encode()
        # The version and release columns are the same for every row: built once at the largest
        # batch seen and handed out as row slices (views), not np.full per execution.
        self._constant_rows = 0
        self._constants: dict[str, np.ndarray] = {}

    @staticmethod
    def _output_specs(tasks: Sequence[Any]) -> tuple[TensorSpec, ...]:
        specs = []
        for task in tasks:
            raw, calibrated, label = contract.task_output_names(task.name)
            specs += [TensorSpec(raw, "TYPE_FP32", (task.num_classes,)),
                      TensorSpec(calibrated, "TYPE_FP32", (task.num_classes,)),
                      TensorSpec(label, "TYPE_STRING", (1,)),
                      TensorSpec(contract.decision_output_name(task.name), "TYPE_STRING", (1,))]
        return (*specs, TensorSpec(contract.CALIBRATION_VERSION, "TYPE_STRING", (1,)),
                TensorSpec(contract.CALIBRATION_FALLBACK, "TYPE_BOOL", (len(tasks),)),
                TensorSpec(contract.RELEASE, "TYPE_STRING", (1,)))

    @classmethod
    def signature(cls, manifest: Manifest, text_fields: Sequence[TextFieldConfig]) -> Signature:
        return Signature((TensorSpec(contract.PROBABILITIES, "TYPE_FP32", (total_classes(manifest.tasks),)),),
                         cls._output_specs(manifest.tasks))

    @classmethod
    def load(cls, root: Path, manifest: Manifest, **options: Any) -> "CalibratorStep":
        calibrator = Calibrator.load(root / CALIBRATION_DIR, manifest.tasks)
        info = read_release_info(root)
        if info is None:
            return cls(calibrator)
        served = str(info.get("model_fingerprint", ""))
        if calibrator.model_fingerprint and served and calibrator.model_fingerprint != served:
            raise BundleError("calibration", f"these tables were fitted for model {calibrator.model_fingerprint}, "
                                             f"release {info.get('release')} serves model {served}: refusing to "
                                             "serve them as its calibration")
        return cls(calibrator, str(info.get("release", "")))

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
            raw, calibrated, label = contract.task_output_names(task.name)
            out[raw] = result.raw[task.name].astype(np.float32, copy=False)
            out[calibrated] = result.calibrated[task.name].astype(np.float32, copy=False)
            out[label] = self._class_names[task.name][result.labels[task.name]][:, None]
            out[contract.decision_output_name(task.name)] = \
                self._action_names[task.name][result.decisions[task.name]][:, None]
        out.update(self._constant_columns(probabilities.shape[0]))
        out[contract.CALIBRATION_FALLBACK] = result.fallback
        return out

    def _constant_columns(self, batch: int) -> Tensors:
        """The version and release columns for ``batch`` rows: read-only views of cached arrays."""
        if batch > self._constant_rows:
            self._constant_rows = max(batch, 64)
            for name, value in ((contract.CALIBRATION_VERSION, self._version), (contract.RELEASE, self._release)):
                column = np.full((self._constant_rows, 1), value, dtype=np.object_)
                column.flags.writeable = False  # shared by every response: nobody may change it in place
                self._constants[name] = column
        return {name: column[:batch] for name, column in self._constants.items()}


def read_release_info(version_dir: Path) -> dict[str, Any] | None:
    """A calibrator version directory's ``release.json``; None when it has none (a bundle,
    or a repository written before releases)."""
    path = Path(version_dir) / contract.RELEASE_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("release"), int):
            raise ValueError("expected an object with an integer 'release'")
    except ValueError as error:
        raise BundleError("release", f"unreadable {path}: {error}") from None
    return info
