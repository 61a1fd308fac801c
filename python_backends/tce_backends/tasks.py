"""The task list: names, kinds and classes of every score field a model emits.

The model step returns one float32 row per record holding every task's class
probabilities side by side, in task order; ``TaskSpec.columns`` says where each
task's block sits in that row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

from .errors import BundleError

TaskKind = Literal["binary", "multiclass"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise BundleError("tasks", f"task name {self.name!r} must match {_NAME.pattern}")
        if self.kind not in ("binary", "multiclass"):
            raise BundleError("tasks", f"task {self.name!r}: kind must be binary or multiclass, got {self.kind!r}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise BundleError("tasks", f"binary task {self.name!r} needs exactly 2 classes, got {len(self.classes)}")
        if self.kind == "multiclass" and len(self.classes) < 3:
            raise BundleError("tasks", f"multiclass task {self.name!r} needs at least 3 classes, "
                                       f"got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise BundleError("tasks", f"task {self.name!r} has duplicate class names")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskSpec":
        try:
            return cls(name=data["name"], kind=data["kind"], classes=tuple(str(c) for c in data["classes"]))
        except KeyError as missing:
            raise BundleError("tasks", f"task entry lacks {missing}") from None


def task_columns(tasks: Sequence[TaskSpec]) -> dict[str, slice]:
    """Where each task's probabilities sit in the model's concatenated output row."""
    columns, start = {}, 0
    for task in tasks:
        columns[task.name] = slice(start, start + task.num_classes)
        start += task.num_classes
    return columns


def total_classes(tasks: Iterable[TaskSpec]) -> int:
    return sum(task.num_classes for task in tasks)


def validate_tasks(tasks: Sequence[TaskSpec]) -> None:
    if not tasks:
        raise BundleError("tasks", "a bundle needs at least one task")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise BundleError("tasks", f"duplicate task names in {names}")
