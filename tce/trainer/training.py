"""Build a bundle from scratch: synthetic data, frozen BERT encoder, trained fusion
and heads, TorchScript export, calibration fitted on held-out data.

The encoder is frozen, so its pooled text embeddings are computed once per record
and the trainable part (projections, tabular MLP, fusion, heads) trains on them;
that is exactly what the exported model computes end to end.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch

from tce.lib import demo_data
from tce.lib.calibration_metrics import TaskMetrics, metrics_table, task_metrics
from tce.lib.fitting import FitMethod, fit_task
from tce.lib.tables import write_frame
from tce.lib.thresholds import choose_policy, parse_target
from tce.models.encoders import minilm_dir
from tce.trainer.modeling import BertConfig, BertEncoder, MultimodalClassifier, export_torchscript
from tce_backends.bundle import CALIBRATION_DIR, Bundle, Manifest
from tce_backends.calibration import Calibrator
from tce_backends.decisions import DecisionPolicy
from tce_backends.errors import UsageError
from tce_backends.features import FeatureLayout
from tce_backends.score_metrics import ReferenceScores
from tce_backends.tabular import RiskTable, TabularPreprocessor
from tce_backends.tasks import TaskSpec, task_columns
from tce_backends.text import TextFieldConfig, TextPreprocessor
from tce_client.columns import probability_columns, true_label_column

EncoderChoice = Literal["minilm", "tiny"]
TaskSet = Literal["abuse_reason", "abuse", "reason", "score_fields"]
_ABUSE = TaskSpec("abuse", "binary", demo_data.ABUSE_CLASSES)
_REASON = TaskSpec("reason", "multiclass", demo_data.REASONS)
DEMO_TASK_SETS: dict[str, tuple[TaskSpec, ...]] = {
    "abuse_reason": (_ABUSE, _REASON),
    "abuse": (_ABUSE,),
    "reason": (_REASON,),
    "score_fields": (_ABUSE, TaskSpec("payment_fraud", "binary", ("no", "yes")),
                     TaskSpec("item_not_received", "binary", ("no", "yes"))),
}
TASK_SETS: tuple[str, ...] = tuple(DEMO_TASK_SETS)
FULL_STEPS = ("dialogue_splitter", "html_normalizer", "emoji_remover", "text_normalizer", "dialogue_chunker",
              "tokenizer")
EVENT_STEPS = ("text_normalizer", "tokenizer")
# The demo's decision targets (tce.lib.thresholds), chosen on the calibration split as `tce calibrate
# thresholds` chooses them from its file (calibration_split.csv, written beside the bundle's parts).
# Costs, because a cost target always has a cheapest policy, also for the small models the tests
# train (a precision target may be out of their reach): a missed abuse case costs 5 reviews and
# blocking a legit buyer 4; sending a reason to a person (abstain) costs 0.3 of a wrong one.
DEMO_DECISION_TARGETS = ("abuse=cost:allow=0/5,review=1/1,block=4/0", "reason=cost:abstain=0.3")
CALIBRATION_SPLIT_FILE = "calibration_split.csv"


@dataclass(frozen=True)
class TrainingConfig:
    model_kind: Literal["bimodal", "trimodal"] = "bimodal"
    encoder: EncoderChoice = "minilm"
    rows: int = 3000
    seed: int = 7
    epochs: int = 40
    learning_rate: float = 3e-3
    calibration_method: FitMethod = "isotonic"
    decision_targets: tuple[str, ...] = DEMO_DECISION_TARGETS  # TASK=SPEC; a task the model lacks is skipped
    task_set: TaskSet = "abuse_reason"
    tasks: tuple[TaskSpec, ...] = ()  # instead of a task set: any tasks task_labels can label
    dialogue_max_length: int = 64
    dialogue_max_chunks: int = 2
    events_max_length: int = 24

    def __post_init__(self) -> None:
        if self.model_kind not in ("bimodal", "trimodal"):
            raise UsageError(f"model_kind must be bimodal or trimodal, got {self.model_kind!r}")
        if self.encoder not in ("minilm", "tiny"):
            raise UsageError(f"encoder must be minilm or tiny, got {self.encoder!r}")
        if self.task_set not in TASK_SETS:
            raise UsageError(f"task_set must be one of {list(TASK_SETS)}, got {self.task_set!r}")
        if self.rows < 200:
            raise UsageError(f"rows must be >= 200 to leave train, calibration and test splits, got {self.rows}")


@dataclass
class BuildReport:
    bundle: Path
    seconds: float
    metrics: dict[str, dict[str, TaskMetrics]] = field(default_factory=dict)  # task -> {"raw","calibrated"}

    def table(self) -> str:
        return metrics_table(self.metrics, ("auroc", "ece", "brier", "log_loss"))

    def to_json(self) -> str:
        return json.dumps({"bundle": str(self.bundle), "seconds": round(self.seconds, 1),
                           "metrics": {t: {k: m.as_dict() for k, m in p.items()} for t, p in self.metrics.items()}},
                          indent=1)


def demo_tasks(task_set: TaskSet = "abuse_reason") -> tuple[TaskSpec, ...]:
    """The demo's task lists: both labels (default), one of them, or three binary
    score fields (the seed's multi-task mode)."""
    return DEMO_TASK_SETS[task_set]


def task_labels(task: TaskSpec, frame: pd.DataFrame) -> np.ndarray:
    """Class index per record for a demo task."""
    if task.name in (demo_data.SPEC.abuse, demo_data.SPEC.reason):
        return frame[task.name].to_numpy(dtype=np.int64)
    return (frame[demo_data.SPEC.reason] == demo_data.REASONS.index(task.name)).to_numpy(dtype=np.int64)


def demo_text_fields(config: TrainingConfig) -> tuple[TextFieldConfig, ...]:
    fields = [TextFieldConfig(demo_data.SPEC.dialogue, FULL_STEPS, config.dialogue_max_length,
                              config.dialogue_max_chunks)]
    if config.model_kind == "trimodal":
        fields.append(TextFieldConfig(demo_data.SPEC.events, EVENT_STEPS, config.events_max_length, 1))
    return tuple(fields)


def demo_manifest(config: TrainingConfig) -> Manifest:
    """The demo bundle's manifest, known before training (the configs depend on it alone)."""
    return Manifest(name=f"demo_{config.model_kind}", model_kind="",
                    text_fields=tuple(f.name for f in demo_text_fields(config)),
                    features=FeatureLayout.from_lists(demo_data.NUMERIC, demo_data.CATEGORICAL),
                    tasks=config.tasks or demo_tasks(config.task_set),
                    description=f"synthetic buyer-seller messaging demo, {config.encoder} encoder")


def fit_tabular(train: pd.DataFrame, layout: FeatureLayout, target: str, smoothing: float = 20.0,
                min_count: int = 5) -> TabularPreprocessor:
    """Median imputation and smoothed target-rate risk tables (the seed's formats)."""
    imputation = {n: float(train[n].median()) for n in layout.numeric_names}
    prior = float(train[target].mean())
    tables = {}
    for name in layout.categorical_names:
        column = train[name].astype(object).where(train[name].notna(), "")
        stats = train.assign(_key=column).groupby("_key")[target].agg(["sum", "count"])
        stats = stats[(stats["count"] >= min_count) & (stats.index != "")]
        bins = ((stats["sum"] + prior * smoothing) / (stats["count"] + smoothing)).round(6)
        tables[name] = RiskTable({str(k): float(v) for k, v in bins.items()}, default_bin=round(prior, 6))
    return TabularPreprocessor(layout, imputation, tables)


def embed_texts(core: MultimodalClassifier, text: TextPreprocessor, frame: pd.DataFrame,
                batch_size: int = 64) -> list[torch.Tensor]:
    """Pooled text embedding per field, [rows, hidden], with the frozen encoder."""
    embeddings = []
    with torch.inference_mode():
        for config in text.fields:
            values = frame[config.name].fillna("").astype(str).tolist()
            parts = []
            for start in range(0, len(values), batch_size):
                tokens = text.encode(config.name, values[start:start + batch_size])
                parts.append(core.text(torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)))
            embeddings.append(torch.cat(parts))
    return embeddings


def train_heads(core: MultimodalClassifier, embeddings: list[torch.Tensor], tabular: torch.Tensor,
                labels: list[torch.Tensor], tasks: Sequence[TaskSpec], epochs: int, learning_rate: float,
                seed: int) -> None:
    """Class-weighted cross-entropy per task (common practice for imbalanced
    labels, and the reason raw scores need calibration)."""
    torch.manual_seed(seed)
    for parameter in core.text.parameters():
        parameter.requires_grad_(False)
    trainable = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=1e-2)
    losses = []
    for task, y in zip(tasks, labels, strict=True):
        counts = torch.bincount(y, minlength=task.num_classes).clamp(min=1).float()
        weights = (counts.sum() / (task.num_classes * counts)).sqrt()
        losses.append(torch.nn.CrossEntropyLoss(weight=weights))
    rows = tabular.shape[0]
    batch = 128
    core.train()
    for _ in range(epochs):
        order = torch.randperm(rows)
        for start in range(0, rows, batch):
            index = order[start:start + batch]
            logits = core.head_logits([e[index] for e in embeddings], tabular[index])
            loss = sum(fn(out, y[index]) for fn, out, y in zip(losses, logits, labels, strict=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    core.eval()


def calibration_split_frame(tasks: Sequence[TaskSpec], probabilities: np.ndarray, split: pd.DataFrame
                            ) -> pd.DataFrame:
    """The calibration split's raw scores and true labels as a predictions file (tce_client.columns)."""
    single, columns = len(tasks) == 1, task_columns(tasks)
    frame = {}
    for task in tasks:
        names = probability_columns(task.name, task.num_classes, single)
        frame.update(zip(names, probabilities[:, columns[task.name]].astype(np.float64).T, strict=True))
        frame[true_label_column(task.name, single)] = task_labels(task, split)
    return pd.DataFrame(frame)


def demo_policy(tasks: Sequence[TaskSpec], calibrator: Calibrator, probabilities: np.ndarray, split: pd.DataFrame,
                targets: Sequence[str], log=print) -> DecisionPolicy:
    """Each target's policy on the calibrated calibration split, as ``tce calibrate thresholds``
    chooses it from ``split`` (tasks the model lacks are skipped)."""
    calibrated = calibrator.apply(probabilities).calibrated
    known = {task.name: task for task in tasks}
    chosen = {}
    for text in targets:
        name, target = parse_target(text)
        if name in known:
            truth = split[true_label_column(name, len(tasks) == 1)].to_numpy(dtype=np.int64)
            choice = choose_policy(known[name], calibrated[name], truth, target, samples=0)
            chosen[name] = choice.policy
            log(f"decisions for {name}: {choice.policy.describe()} ({choice.target}, {choice.rows} calibration "
                "records)")
    return DecisionPolicy(chosen)


def build_demo_bundle(out: Path, config: TrainingConfig = TrainingConfig(), log=print) -> BuildReport:
    started = time.perf_counter()
    torch.manual_seed(config.seed)  # weight init and training order: same config, same bundle
    out = Path(out)
    tasks = config.tasks or demo_tasks(config.task_set)
    frame = demo_data.make_dataset(config.rows, seed=config.seed)
    shuffled = frame.sample(frac=1.0, random_state=config.seed).reset_index(drop=True)
    cut_train, cut_calibration = int(0.6 * config.rows), int(0.8 * config.rows)
    train = shuffled.iloc[:cut_train]
    calibration_split = shuffled.iloc[cut_train:cut_calibration]
    test = shuffled.iloc[cut_calibration:]
    log(f"data: {len(train)} train, {len(calibration_split)} calibration, {len(test)} test records")

    manifest = demo_manifest(config)
    layout = manifest.features
    tabular = fit_tabular(train, layout, target=demo_data.SPEC.abuse)
    fields = demo_text_fields(config)
    text = TextPreprocessor(fields, (minilm_dir() / "tokenizer.json").read_text(encoding="utf-8"))

    if config.encoder == "minilm":
        encoder = BertEncoder.from_hf(minilm_dir())
    else:
        encoder = BertEncoder(BertConfig.tiny(text.vocab_size))
    encoder.eval()

    def tabular_matrix(part: pd.DataFrame) -> torch.Tensor:
        numeric = part[list(layout.numeric_names)].to_numpy(dtype=np.float64, na_value=np.nan)
        categorical = part[list(layout.categorical_names)].astype(object).where(
            part[list(layout.categorical_names)].notna(), "").astype(str).to_numpy()
        return torch.from_numpy(tabular.transform(numeric, categorical))

    train_tab = tabular_matrix(train)
    core = MultimodalClassifier(encoder, len(fields), len(layout.names), [t.num_classes for t in tasks],
                                tabular_mean=train_tab.mean(0), tabular_std=train_tab.std(0))
    log(f"encoding text with the frozen {config.encoder} encoder ...")
    embedded = {name: embed_texts(core, text, part) for name, part in
                (("train", train), ("calibration", calibration_split), ("test", test))}
    train_labels = [torch.tensor(task_labels(task, train)) for task in tasks]
    log(f"training fusion and heads for {config.epochs} epochs ...")
    train_heads(core, embedded["train"], train_tab, train_labels, tasks, config.epochs, config.learning_rate,
                config.seed)

    def predict(name: str, part: pd.DataFrame) -> np.ndarray:
        with torch.inference_mode():
            return core.probabilities(embedded[name], tabular_matrix(part)).numpy()

    columns = task_columns(tasks)
    calibration_probs = predict("calibration", calibration_split)
    calibrations = {task.name: fit_task(task, calibration_probs[:, columns[task.name]],
                                        task_labels(task, calibration_split), config.calibration_method)
                    for task in tasks}
    calibrator = Calibrator(tasks, calibrations)
    split = calibration_split_frame(tasks, calibration_probs, calibration_split)
    calibrator = Calibrator(tasks, calibrations, policy=demo_policy(tasks, calibrator, calibration_probs, split,
                                                                    config.decision_targets, log))

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.pt"
    export_torchscript(core, model_path)
    Bundle.write(out, manifest, model_path, text, tabular, calibrator)
    write_frame(split, out / CALIBRATION_SPLIT_FILE)
    # The scores of the calibration data, binned as the calibrator's live histograms: the drift reference.
    reference = calibrator.apply(calibration_probs)
    ReferenceScores.of_calibrated(reference.raw, reference.calibrated).save(out / CALIBRATION_DIR)

    report = BuildReport(out, 0.0)
    test_probs = predict("test", test)
    calibrated = calibrator.apply(test_probs)
    for task in tasks:
        labels = task_labels(task, test)
        report.metrics[task.name] = {
            "raw": task_metrics(calibrated.raw[task.name], labels),
            "calibrated": task_metrics(calibrated.calibrated[task.name], labels),
        }
    report.seconds = time.perf_counter() - started
    (out / "build_report.json").write_text(report.to_json(), encoding="utf-8")
    return report
