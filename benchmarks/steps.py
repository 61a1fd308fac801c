"""Side-by-side speed of the Python steps' batch code against per-row Python (seed style).

    .venv/bin/python -m benchmarks.steps [--bundle artifacts/demo_bundle] [--batch 1024]

Prints per-item microseconds and the ratio, each pair measured in the same run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tce.lib.demo_data import make_dataset
from tce.repository.builder import schema_for
from tce_backends.bundle import Bundle
from tce_backends.calibration import LookupTable
from tce_backends.steps import TabularStep, TokenizerStep
from tce_backends.text import CLEANING_STEPS, clean_batch
from tests import seed_reference as seed


def best_of(function: Callable[[], object], repeats: int = 5) -> float:
    function()  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def row(name: str, items: int, ours: float, baseline: float | None = None, baseline_name: str = "") -> None:
    line = f"{name:<44} {ours / items * 1e6:10.2f} us/item"
    if baseline is not None:
        line += f"   {baseline_name}: {baseline / items * 1e6:10.2f} us/item   speed-up x{baseline / ours:,.1f}"
    print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo_bundle"))
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    points = np.stack([np.linspace(0, 1, 1000), np.sort(rng.random(1000))], axis=1)
    table, as_list = LookupTable.from_points(points), [tuple(p) for p in points]
    scores = rng.dirichlet([1, 1], size=args.batch).astype(np.float32)
    ours = best_of(lambda: np.stack([1 - table(scores[:, 1]), table(scores[:, 1])], axis=1))
    loop = best_of(lambda: seed.apply_regular_binary_calibration(scores, as_list), repeats=2)
    print(f"batch of {args.batch} records\n")
    row("binary calibration, 1000-point table", args.batch, ours, loop, "seed loop")

    bundle = Bundle.load(args.bundle)
    frame = make_dataset(args.batch, seed=1, unseen_rate=0.05)
    texts = frame["dialogue"].tolist()
    steps = bundle.text.fields[0].steps
    cleaning = [s for s in steps if s in CLEANING_STEPS]  # the rest (chunking, tokenizing) are not cleaning
    ours = best_of(lambda: clean_batch(texts, steps, 100_000))
    per_row = best_of(lambda: [clean_batch([t], steps, 100_000) for t in texts], repeats=2)
    row(f"text cleaning ({', '.join(cleaning)}), one pass per step", len(texts), ours, per_row,
        "one call per row")

    inputs = schema_for(bundle.manifest).encode(frame)
    tokenizer = TokenizerStep(bundle.text)
    tabular = TabularStep(bundle.tabular)
    fields = ", ".join(f.name for f in bundle.text.fields)
    row(f"preprocessor {type(tokenizer).__name__} ({fields}: clean, chunk, tokenize)", args.batch,
        best_of(lambda: tokenizer.run(tokenizer.validate(inputs))))
    row(f"preprocessor {type(tabular).__name__} ({len(bundle.manifest.features.names)} features: impute, risk "
        "tables, order)", args.batch, best_of(lambda: tabular.run(tabular.validate(inputs))))


if __name__ == "__main__":
    main()
