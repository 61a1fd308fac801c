"""``tce import-seed``: the seed layout (seed 000/001) -> a bundle.

Reads, from a directory or a ``model.tar.gz``:

    model.pt                 TorchScript model with this project's forward contract, or
    model.pth                a Lightning checkpoint, with model_artifacts.pth (its config), when the
                             user names the class (--model-class; tce.seed.lightning)
    hyperparameters.json     model_class, text field names and steps, max_sen_len,
                             tab_field_list, cat_field_list, is_binary / num_classes,
                             optional score_fields (multi-task) and class names
    risk_table_map.pkl       {feature: {"bins": {category: value}, "default_bin": value}}
    impute_dict.pkl          {feature: value}
    feature_columns.txt      optional feature order, one name per line
    tokenizer.json           HF fast tokenizer, or vocab.txt (lowercasing per its tokenizer_config.json),
                             or the tokenizer hyperparameters.json names, found locally or installed
    calibration/             percentile_score.pkl | calibration_model.pkl |
                             calibration_models/calibration_model_class_<i>.pkl |
                             calibration_model_<score_field>.pkl

Pickles are read here, offline, with an unpickler that only rebuilds plain Python
containers and numpy arrays, and are written out as JSON and ``.npy``. Nothing at
serve time ever unpickles.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tce.seed.errors import SeedImportError
from tce_backends.bundle import Bundle, Manifest
from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tce_backends.errors import BundleError
from tce_backends.features import FeatureLayout
from tce_backends.tabular import RiskTable, TabularPreprocessor
from tce_backends.tasks import TaskSpec
from tce_backends.text import TextFieldConfig, TextPreprocessor

MODEL_CLASSES = {"bimodal_bert": "bimodal", "trimodal_bert": "trimodal", "bimodal": "bimodal",
                 "trimodal": "trimodal"}
DEFAULT_PRIMARY_STEPS = ("dialogue_splitter", "html_normalizer", "emoji_remover", "text_normalizer",
                         "dialogue_chunker", "tokenizer")
DEFAULT_SECONDARY_STEPS = ("dialogue_splitter", "text_normalizer", "dialogue_chunker", "tokenizer")
KNOWN_FILES = {"model.pt", "hyperparameters.json", "risk_table_map.pkl", "impute_dict.pkl", "feature_columns.txt",
               "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "calibration",
               "model.tar.gz", "feature_importance.json", "model.pth", "model_artifacts.pth", "model.onnx"}
SAFE_GLOBALS = {
    ("builtins", "list"), ("builtins", "tuple"), ("builtins", "dict"), ("builtins", "set"), ("builtins", "float"),
    ("builtins", "int"), ("builtins", "str"), ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers and numpy arrays")


def read_seed_pickle(path: Path) -> Any:
    """Load one seed pickle with the restricted unpickler (tooling only, never at serve time)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a malformed artifact
        raise SeedImportError(path.name, f"cannot read: {exc}") from None


def table_from_seed(value: Any, name: str) -> LookupTable:
    """A seed lookup table: list of (raw, calibrated) pairs, or an [n, 2] array."""
    try:
        return LookupTable.from_points(np.asarray(value, dtype=np.float64))
    except (ValueError, TypeError) as exc:
        raise SeedImportError(name, f"not a (raw, calibrated) lookup table: {exc}") from None


@dataclass
class SeedCalibration:
    """The calibration files found in a seed ``calibration/`` directory."""

    percentile: LookupTable | None = None
    binary: LookupTable | None = None
    per_class: dict[int, LookupTable] = field(default_factory=dict)
    per_score_field: dict[str, LookupTable] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, directory: Path) -> "SeedCalibration":
        found = cls()
        if not directory.is_dir():
            return found
        for path in sorted(directory.iterdir()):
            relative = f"calibration/{path.name}"
            if path.name == "percentile_score.pkl":
                found.percentile = table_from_seed(read_seed_pickle(path), relative)
            elif path.name == "calibration_model.pkl":
                found.binary = table_from_seed(read_seed_pickle(path), relative)
            elif path.name == "calibration_models" and path.is_dir():
                for item in sorted(path.iterdir()):
                    suffix = item.name.removeprefix("calibration_model_class_").removesuffix(".pkl")
                    if item.name.startswith("calibration_model_class_") and item.suffix == ".pkl" and suffix.isdigit():
                        found.per_class[int(suffix)] = table_from_seed(read_seed_pickle(item),
                                                                       f"{relative}/{item.name}")
                    else:
                        found.unknown.append(f"{relative}/{item.name}")
            elif path.name.startswith("calibration_model_") and path.suffix == ".pkl":
                field_name = path.name.removeprefix("calibration_model_").removesuffix(".pkl")
                found.per_score_field[field_name] = table_from_seed(read_seed_pickle(path), relative)
            elif path.name == "calibration_summary.json":
                continue  # metadata only
            else:
                found.unknown.append(relative)
        return found

    def for_tasks(self, tasks: tuple[TaskSpec, ...]) -> tuple[dict[str, TaskCalibration], list[str]]:
        """Map the files onto tasks the way seed 000 loads them; report leftovers."""
        calibrations: dict[str, TaskCalibration] = {}
        notes: list[str] = []
        names = {t.name: t for t in tasks}
        for field_name, table in self.per_score_field.items():
            if field_name not in names:
                notes.append(f"calibration/calibration_model_{field_name}.pkl names no task ({sorted(names)})")
                continue
            if names[field_name].kind != "binary":  # one table is a binary calibration (seed 000)
                notes.append(f"calibration/calibration_model_{field_name}.pkl is one binary table, but "
                             f"{field_name!r} has {names[field_name].num_classes} classes: not applied, it stays raw")
                continue
            calibrations[field_name] = TaskCalibration.of("binary", {1: table})
        single = [t for t in tasks if t.name not in self.per_score_field]
        if self.percentile or self.binary or self.per_class:
            if len(single) != 1:
                notes.append("percentile_score.pkl / calibration_model.pkl / calibration_models/ apply to a "
                             f"single task, but {len(single)} tasks lack a score-field table: not applied")
                return calibrations, notes
            calibration = self._single_task(single[0], notes)
            if calibration is not None:
                calibrations[single[0].name] = calibration
        return calibrations, notes

    def _single_task(self, task: TaskSpec, notes: list[str]) -> TaskCalibration | None:
        """Seed 000's load order for one task: percentile first, then binary, then per class."""
        skipped = [n for n, v in (("calibration_model.pkl", self.percentile and self.binary),
                                  ("calibration_models/", (self.percentile or self.binary) and self.per_class)) if v]
        notes += [f"calibration/{name} ignored: a higher-priority calibration file is present (seed 000)"
                  for name in skipped]
        if self.percentile is not None:
            if task.kind == "binary":
                return TaskCalibration.of("percentile", {1: self.percentile})
            notes.append(f"percentile calibration is binary-only; task {task.name!r} stays raw (seed 000)")
            return None
        if self.binary is not None:
            return TaskCalibration.of("binary", {1: self.binary})
        out_of_range = [c for c in self.per_class if c >= task.num_classes]
        if out_of_range:
            raise SeedImportError("calibration/calibration_models",
                                  f"tables for classes {out_of_range} but task {task.name!r} has "
                                  f"{task.num_classes} classes")
        return TaskCalibration.of("multiclass", dict(self.per_class))


def _tasks(hyper: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    if "tasks" in hyper:  # this project's explicit form
        return tuple(TaskSpec.from_dict(t) for t in hyper["tasks"])
    if hyper.get("score_fields"):
        return tuple(_score_field(str(f), hyper.get("score_field_classes") or {}) for f in hyper["score_fields"])
    is_binary = bool(hyper.get("is_binary", True))
    count = 2 if is_binary else int(hyper["num_classes"])
    classes = hyper.get("multiclass_categories") or [str(i) for i in range(count)]
    name = str(hyper.get("label_name", "label"))
    return (TaskSpec(name, "binary" if is_binary else "multiclass", tuple(str(c) for c in classes)),)


def _score_field(name: str, classes: Mapping[str, Any]) -> TaskSpec:
    """Seed 000's score fields are binary; ``score_field_classes`` names the classes of one
    that is not (this project's extension: ``{"reason": ["none", "fraud", ...]}`` or a count)."""
    named = classes.get(name)
    if named is None:
        return TaskSpec(name, "binary", ("0", "1"))
    names = [str(i) for i in range(int(named))] if isinstance(named, int) else [str(c) for c in named]
    if len(names) < 2:
        raise SeedImportError("hyperparameters.json", f"score_field_classes[{name!r}] needs two or more classes")
    return TaskSpec(name, "binary" if len(names) == 2 else "multiclass", tuple(names))


def _check_width(module: Any, model_name: str, text: TextPreprocessor, num_features: int,
                 tasks: tuple[TaskSpec, ...], hyper: Mapping[str, Any]) -> None:
    """The model returns every task's probabilities; for a multi-task seed the message names
    the assumption that failed (binary per score field) and how to state otherwise."""
    from tce.models.model_check import NotProbabilitiesError, check_probabilities  # torch, only here

    try:
        check_probabilities(module, model_name, text, num_features, tasks)
    except NotProbabilitiesError as error:
        binary = [t.name for t in tasks if t.kind == "binary"]
        if not hyper.get("score_fields") or "outputs have shape" not in str(error) or not binary:
            raise
        raise SeedImportError("hyperparameters.json", f"{error}: score fields are read as binary (2 scores each, "
                              f"as seed 000's multi-task mode); for a multiclass field, name its classes in "
                              f"score_field_classes, e.g. {{\"{binary[-1]}\": [\"none\", \"...\"]}}") from None


def _text_fields(hyper: Mapping[str, Any], kind: str) -> tuple[TextFieldConfig, ...]:
    max_length = int(hyper.get("max_sen_len", 512))
    max_chunks = int(hyper.get("max_total_chunks", 1))

    def field(name: str, steps: Any, default: tuple[str, ...]) -> TextFieldConfig:
        steps = tuple(steps or default)
        chunks = max_chunks if "dialogue_chunker" in steps else 1
        return TextFieldConfig(str(name), steps, max_length, chunks)

    if kind == "trimodal":
        return (field(hyper["primary_text_name"], hyper.get("primary_text_processing_steps"), DEFAULT_PRIMARY_STEPS),
                field(hyper["secondary_text_name"], hyper.get("secondary_text_processing_steps"),
                      DEFAULT_SECONDARY_STEPS))
    return (field(hyper["text_name"], hyper.get("text_processing_steps"), DEFAULT_PRIMARY_STEPS),)


def _wordpiece(vocab: Path, hyper: Mapping[str, Any]) -> str:
    """A BERT WordPiece vocabulary as a fast tokenizer, lowercasing as its tokenizer config says."""
    from tokenizers import BertWordPieceTokenizer

    config = vocab.parent / "tokenizer_config.json"
    lowercase = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case") if config.is_file() else None
    if lowercase is None:
        lowercase = hyper.get("do_lower_case")
    if lowercase is None:
        raise SeedImportError("vocab.txt", "cannot tell whether the tokenizer lowercases: put its "
                                           "tokenizer_config.json (do_lower_case) beside it, or do_lower_case in "
                                           "hyperparameters.json")
    tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=bool(lowercase))
    return tokenizer._tokenizer.to_str()  # the fast tokenizer's JSON form


def _installed_tokenizer(name: str) -> str | None:
    """A tokenizer named by its Hugging Face name, from an installed package or the local
    cache; never downloaded."""
    if name.rsplit("/", 1)[-1].lower() == "all-minilm-l6-v2":  # the package this project ships with
        from tce.models.encoders import minilm_dir

        return (minilm_dir() / "tokenizer.json").read_text(encoding="utf-8")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True).backend_tokenizer.to_str()
    except (OSError, ValueError, AttributeError):
        return None


def _tokenizer_json(source: Path, hyper: Mapping[str, Any]) -> str:
    """tokenizer.json or vocab.txt shipped with the seed, else the tokenizer its config
    names (``tokenizer``): a local directory, an installed package or the local cache."""
    name = str(hyper.get("tokenizer") or "")
    directories = [source, source / "tokenizer"] + ([Path(name)] if name and Path(name).is_dir() else [])
    for directory in directories:
        if (directory / "tokenizer.json").is_file():
            return (directory / "tokenizer.json").read_text(encoding="utf-8")
        if (directory / "vocab.txt").is_file():
            return _wordpiece(directory / "vocab.txt", hyper)
    found = _installed_tokenizer(name) if name else None
    if found is not None:
        return found
    named = f"; the tokenizer {name!r} is neither a local directory nor installed" if name else ""
    raise SeedImportError("tokenizer", f"no tokenizer.json or vocab.txt in {source}{named} (nothing is downloaded "
                                       "at run time: ship the tokenizer files with the model)")


@dataclass
class ImportReport:
    bundle: Path
    notes: list[str]


@dataclass(frozen=True)
class ExtractionLimits:
    """What an archive may unpack to: a seed is a model and a few small files."""

    max_bytes: int = 8 << 30
    max_files: int = 10_000


def _check_links(directory: Path) -> None:
    """Refuse symbolic links that lead out of the seed directory (a seed could name
    any file of the machine as its risk table)."""
    root = directory.resolve()
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink() and root not in path.resolve().parents and path.resolve() != root:
            raise SeedImportError(str(path.relative_to(directory)) if path != directory else str(path),
                                  f"is a link out of the seed directory (to {path.resolve()}); copy the file in")


def _extract(archive: Path, scratch: Path, limits: ExtractionLimits) -> None:
    """Extract with tarfile's ``data`` filter after checking the member count and
    sizes as they stream by, so a bomb is stopped before it fills the disk."""
    try:
        with tarfile.open(archive) as tar:
            total, members = 0, []
            for member in tar:
                members.append(member)
                total += member.size
                if len(members) > limits.max_files:
                    raise SeedImportError(archive.name, f"holds more than {limits.max_files} files; not a seed")
                if total > limits.max_bytes:
                    raise SeedImportError(archive.name, f"unpacks to more than {limits.max_bytes >> 20} MiB; not "
                                                        "a seed (raise the limit with --max-seed-mib if it is)")
            tar.extractall(scratch, members=members, filter="data")
    except tarfile.FilterError as error:
        raise SeedImportError(archive.name, f"unsafe member refused ({error})") from None
    except (tarfile.TarError, EOFError, OSError) as error:
        raise SeedImportError(archive.name, f"cannot be unpacked: {error}") from None


def _unpack(source: Path, scratch: Path, limits: ExtractionLimits) -> Path:
    if source.is_dir():
        _check_links(source)
    archive = source if source.is_file() else source / "model.tar.gz"
    if archive.is_file() and tarfile.is_tarfile(archive):
        _extract(archive, scratch, limits)
        if source.is_dir():  # loose files beside the archive take part too (e.g. calibration/)
            for item in source.iterdir():
                target = scratch / item.name
                if item.name != "model.tar.gz" and not target.exists():
                    (shutil.copytree if item.is_dir() else shutil.copyfile)(item, target)
        return scratch
    if source.is_dir():
        return source
    raise SeedImportError("seed", f"{source} is neither a directory nor a .tar.gz archive")


def _model_source(root: Path, model_class: str | None) -> tuple[str, list[str]]:
    """Which model file the import uses ("model.pt" or "model.pth"), and what it says about the other."""
    if model_class:
        missing = [f for f in ("model.pth", "model_artifacts.pth") if not (root / f).is_file()]
        if missing:
            raise SeedImportError("--model-class", f"imports a Lightning checkpoint, but {', '.join(missing)} "
                                                   "is missing")
        notes = ["model.pt ignored: --model-class imports model.pth"] if (root / "model.pt").is_file() else []
        return "model.pth", notes
    if (root / "model.pt").is_file():
        notes = ["model.pth ignored: model.pt (TorchScript) is imported; --model-class imports the checkpoint "
                 "instead"] if (root / "model.pth").is_file() else []
        return "model.pt", notes
    if (root / "model.pth").is_file():
        raise SeedImportError("model.pth", "is a Lightning checkpoint: name the class that built it with "
                                           "--model-class package.module:Class (or ship model.pt, TorchScript)")
    return "model.pt", []


def import_seed(source: Path | str, destination: Path | str, name: str | None = None,
                limits: ExtractionLimits = ExtractionLimits(), model_class: str | None = None) -> ImportReport:
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise SeedImportError("seed", f"{source} does not exist")
    with tempfile.TemporaryDirectory(prefix="tce-seed-") as scratch:
        root = _unpack(source, Path(scratch), limits)
        notes = [f"unknown file ignored: {p.name}" for p in sorted(root.iterdir()) if p.name not in KNOWN_FILES]
        model_file, model_notes = _model_source(root, model_class)
        notes += model_notes
        missing = [f for f in (model_file, "hyperparameters.json", "risk_table_map.pkl", "impute_dict.pkl")
                   if not (root / f).is_file()]
        if missing:
            raise SeedImportError("seed", f"missing {', '.join(missing)} in {source}")
        hyper = json.loads((root / "hyperparameters.json").read_text(encoding="utf-8"))
        kind = MODEL_CLASSES.get(str(hyper.get("model_class", "")))
        if kind is None:
            raise SeedImportError("hyperparameters.json", f"model_class {hyper.get('model_class')!r} is not one of "
                                                          f"{sorted(MODEL_CLASSES)}")
        for key in ("tab_field_list", "cat_field_list"):
            if key not in hyper:
                raise SeedImportError("hyperparameters.json", f"missing {key!r}")
        order = None
        if (root / "feature_columns.txt").is_file():
            order = [line.strip() for line in (root / "feature_columns.txt").read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#")]
            order = [line.split(",")[-1].strip() for line in order]  # tolerate "index,name" lines
        layout = FeatureLayout.from_lists(hyper["tab_field_list"], hyper["cat_field_list"], order)
        risk = read_seed_pickle(root / "risk_table_map.pkl")
        impute = read_seed_pickle(root / "impute_dict.pkl")
        if not isinstance(risk, dict) or not isinstance(impute, dict):
            raise SeedImportError("risk_table_map.pkl / impute_dict.pkl", "each must hold a dict")
        try:
            tables = {str(k): RiskTable({str(c): float(v) for c, v in t["bins"].items()}, float(t["default_bin"]))
                      for k, t in risk.items() if k in layout.categorical_names}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SeedImportError("risk_table_map.pkl", f"expected {{feature: {{'bins': ..., 'default_bin': ...}}}}: "
                                                        f"{exc!r}") from None
        notes += [f"risk_table_map.pkl: table for {k!r} ignored (not a categorical feature)"
                  for k in risk if k not in layout.categorical_names]
        tabular = TabularPreprocessor(layout, {k: float(v) for k, v in impute.items()}, tables)
        fields = _text_fields(hyper, kind)
        text = TextPreprocessor(fields, _tokenizer_json(root, hyper))
        tasks = _tasks(hyper)
        seed_calibration = SeedCalibration.read(root / "calibration")
        notes += [f"unknown calibration file ignored: {u}" for u in seed_calibration.unknown]
        calibrations, calibration_notes = seed_calibration.for_tasks(tasks)
        notes += calibration_notes
        manifest = Manifest(name=name or str(hyper.get("model_name", source.stem.replace(".tar", ""))),
                            model_kind="",
                            text_fields=tuple(f.name for f in fields), features=layout, tasks=tasks,
                            description=f"imported from seed artifacts at {source}")
        model_path = root / "model.pt"
        if model_file == "model.pth":
            from tce.seed.lightning import export_lightning  # torch, only here

            model_path = Path(scratch) / "exported_model.pt"
            notes.append(export_lightning(root / "model.pth", root / "model_artifacts.pth", str(model_class), text,
                                          layout.names, tasks, model_path))
        module = _check_model(model_path, 2 * len(fields) + 1)
        _check_width(module, model_path.name, text, len(layout.names), tasks, hyper)
        Bundle.write(destination, manifest, model_path, text, tabular, Calibrator(tasks, calibrations))
    return ImportReport(destination, notes)


def _check_model(path: Path, expected_inputs: int) -> Any:
    """The loaded TorchScript model, once its forward takes ``expected_inputs`` tensors."""
    from tce.models.loading import load_torchscript

    try:
        module = load_torchscript(path)
    except BundleError as exc:
        raise SeedImportError("model.pt", exc.problem) from None
    arguments = [a for a in module.forward.schema.arguments if a.name != "self"]
    if len(arguments) != expected_inputs:
        raise SeedImportError("model.pt", f"forward takes {len(arguments)} tensors, expected {expected_inputs} "
                                          "(input_ids, attention_mask per text field, then tabular)")
    return module
