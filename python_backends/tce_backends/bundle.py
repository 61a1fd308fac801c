"""The bundle: one deployable model as a directory of safe files.

    manifest.json          name, model kind, text fields, features, tasks
    model.pt               TorchScript multimodal model
    text/                  text.json (fields, steps, windows) + tokenizer.json
    tabular/               tabular.json (feature order, imputation, risk tables)
    calibration/           calibration.json + one .npy lookup table per class

JSON, NumPy (``allow_pickle=False``) and TorchScript only: nothing here unpickles.
``Bundle.load`` validates every part and their agreement, naming what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .calibration import Calibrator
from .contract import RESERVED_NAMES
from .errors import BundleError
from .features import FeatureLayout
from .tabular import TabularPreprocessor
from .tasks import TaskSpec, validate_tasks
from .text import TextPreprocessor

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.pt"
TEXT_DIR, TABULAR_DIR, CALIBRATION_DIR = "text", "tabular", "calibration"
# The model's kind follows from its text fields (each beside the tabular input).
MODEL_KINDS = {1: "bimodal", 2: "trimodal"}


def file_fingerprint(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256 (read in blocks: model.pt can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def model_kind_for(text_fields: int) -> str:
    return MODEL_KINDS.get(text_fields, f"{text_fields + 1}-modal")


@dataclass(frozen=True)
class Manifest:
    """``model_kind`` is derived from the text fields; one given (as older manifests
    and seed files do) must agree with them."""

    name: str
    model_kind: str
    text_fields: tuple[str, ...]
    features: FeatureLayout
    tasks: tuple[TaskSpec, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.text_fields:
            raise BundleError("manifest", "a model needs at least one text field")
        derived = model_kind_for(len(self.text_fields))
        if self.model_kind and self.model_kind != derived:
            expected = {kind: count for count, kind in MODEL_KINDS.items()}.get(self.model_kind)
            raise BundleError("manifest", f"a {self.model_kind} model has {expected or 'other'} text field(s), "
                                          f"got {list(self.text_fields)}")
        object.__setattr__(self, "model_kind", derived)
        validate_tasks(self.tasks)
        names = [*self.text_fields, *self.features.names, *(t.name for t in self.tasks)]
        clashes = sorted({n for n in names if names.count(n) > 1} | (set(self.text_fields) & RESERVED_NAMES))
        if clashes:
            raise BundleError("manifest", f"names used twice or reserved: {clashes}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "model_kind": self.model_kind,
            "text_fields": list(self.text_fields),
            "features": self.features.to_dict(),
            "tasks": [t.to_dict() for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        try:
            version = data.get("format_version")
            if version != FORMAT_VERSION:
                raise BundleError("manifest", f"format_version {version!r} is not supported "
                                              f"(expected {FORMAT_VERSION})")
            return cls(
                name=str(data["name"]),
                model_kind=str(data.get("model_kind", "")),
                text_fields=tuple(data["text_fields"]),
                features=FeatureLayout.from_dict(data["features"]),
                tasks=tuple(TaskSpec.from_dict(t) for t in data["tasks"]),
                description=str(data.get("description", "")),
            )
        except KeyError as missing:
            raise BundleError("manifest", f"missing key {missing}") from None
        except TypeError as exc:
            raise BundleError("manifest", f"malformed: {exc}") from None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "Manifest":
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            raise BundleError("manifest", f"missing {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BundleError("manifest", f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest
    text: TextPreprocessor
    tabular: TabularPreprocessor
    calibrator: Calibrator

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    def model_fingerprint(self) -> str:
        """What a calibration fitted for this model records (``calibration.json``'s
        ``model_fingerprint``), and what a release checks it against."""
        return file_fingerprint(self.model_path)

    def fingerprint(self) -> str:
        """The bundle's preprocessing and model: manifest, model.pt, text/ and tabular/
        (the calibration has its own ``calibration_version``)."""
        digest = hashlib.sha256()
        parts = [self.root / MANIFEST_FILE, self.model_path]
        for directory in (TEXT_DIR, TABULAR_DIR):
            parts += sorted(p for p in (self.root / directory).rglob("*") if p.is_file())
        for path in parts:
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{file_fingerprint(path)}\0".encode())
        return digest.hexdigest()[:12]

    def calibration_model_problem(self) -> str | None:
        """None when the calibration was fitted for this model.pt (or records no model:
        calibrations fitted before the record existed are accepted), else why not."""
        recorded = self.calibrator.model_fingerprint
        if not recorded:
            return None
        actual = self.model_fingerprint()
        if recorded == actual:
            return None
        return (f"the calibration in {self.root / CALIBRATION_DIR} was fitted for model {recorded}, but "
                f"{self.model_path} is model {actual}: fit it for this model (tce calibrate fit)")

    @classmethod
    def load(cls, root: Path | str, strict_calibration: bool = True) -> "Bundle":
        """``strict_calibration=False``: a calibration that cannot be read makes its tasks
        fall back to raw (``calibrator.fallback_reasons``), as the served calibrator does."""
        root = Path(root)
        if not root.is_dir():
            raise BundleError("bundle", f"{root} is not a directory")
        manifest = Manifest.load(root)
        if not (root / MODEL_FILE).is_file():
            raise BundleError("model", f"missing {root / MODEL_FILE}")
        text = TextPreprocessor.load(root / TEXT_DIR)
        tabular = TabularPreprocessor.load(root / TABULAR_DIR)
        calibrator = Calibrator.load(root / CALIBRATION_DIR, manifest.tasks, strict=strict_calibration)
        text_names = tuple(f.name for f in text.fields)
        if text_names != manifest.text_fields:
            raise BundleError("text", f"fields {list(text_names)} do not match the manifest's "
                                      f"{list(manifest.text_fields)}")
        if tabular.layout != manifest.features:
            raise BundleError("tabular", f"feature order {list(tabular.layout.names)} does not match the "
                                         f"manifest's {list(manifest.features.names)}")
        return cls(root, manifest, text, tabular, calibrator)

    @classmethod
    def write(cls, root: Path | str, manifest: Manifest, model_file: Path, text: TextPreprocessor,
              tabular: TabularPreprocessor, calibrator: Calibrator) -> "Bundle":
        """Write every part, then load it back (so a written bundle is a valid one)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest.save(root)
        if Path(model_file).resolve() != (root / MODEL_FILE).resolve():
            shutil.copyfile(model_file, root / MODEL_FILE)
        text.save(root / TEXT_DIR)
        tabular.save(root / TABULAR_DIR)
        if (root / CALIBRATION_DIR).exists():
            shutil.rmtree(root / CALIBRATION_DIR)
        calibrator.save(root / CALIBRATION_DIR, model_fingerprint=file_fingerprint(root / MODEL_FILE))
        return cls.load(root)
