"""``tce evaluate``: raw and calibrated metrics of scored records (seed 002)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tce.commands.common import Commands, add_batch_options, add_command, apply_seed_settings, label_overrides


def _evaluate_log(args: argparse.Namespace) -> int:
    """--predictions LOG --labels FILE: late labels joined to the gateway's prediction log."""
    from tce.jobs.evaluate_log import LogEvaluationJob, run_log_evaluation
    from tce_backends.errors import UsageError

    if args.predictions is None:
        raise UsageError("--labels joins late labels to the gateway's prediction log: name the log with "
                         "--predictions LOG (a file, a directory or a glob)")
    report = run_log_evaluation(LogEvaluationJob(
        str(args.predictions), args.labels, args.out, join_on=args.join_on or "id", window=args.window or "day",
        label_columns=label_overrides(args.label), task=args.task, bins=args.bins))
    for note in report.notes:
        logging.getLogger(__name__).info(note)
    print(report.summary, end="")
    print(f"\nlog_metrics.json, log_metrics.csv, calibration_over_time_<task>.png and "
          f"reliability/<task>/<window>.png written to {report.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.labels is not None:
        return _evaluate_log(args)
    from tce.jobs.evaluate import EvaluateJob, release_score_column, run_evaluate
    from tce.lib.seed_evaluation import ComparisonFlags, comparison_switches
    from tce_backends.errors import UsageError

    if args.join_on is not None or args.window is not None:
        raise UsageError("--join-on and --window go with --labels (late labels for a prediction log)")
    compared = args.previous_score_field
    if args.compare_release is not None:  # release N's scores are the previous model's
        if args.previous_score_field or args.comparison_mode == "false":
            raise UsageError("--compare-release N compares with release N: drop --previous-score-field and "
                             "--comparison-mode false")
        compared = release_score_column(args.compare_release)
    previous_score_field, comparison = comparison_switches(ComparisonFlags(
        compared, args.comparison_mode, args.comparison_metrics, args.statistical_tests,
        args.comparison_plots), {k: v for k, v in os.environ.items() if args.compare_release is None
                                 or k not in ("PREVIOUS_SCORE_FIELD", "COMPARISON_MODE")})
    settings = apply_seed_settings(args)  # ID_FIELD, LABEL_FIELD, BATCH_SIZE as defaults; --max-rejects
    labels = label_overrides(args.label) or ({"*": settings.label_field} if settings.label_field else {})
    job = EvaluateJob(args.out, input=args.input, predictions=args.predictions, bundle=args.bundle,
                      labels=labels, task=args.task, comparison=comparison,
                      batch_size=args.batch_size, max_rejects=args.max_rejects,
                      id_field=args.id_field, previous_score_field=previous_score_field,
                      compare_task=args.compare_task, bins=args.bins, bootstrap_samples=args.bootstrap_samples,
                      url=args.url, protocol=args.protocol, model=args.model, format=args.format,
                      allow_missing_columns=args.allow_missing_columns, chunk_rows=args.chunk_rows,
                      max_in_flight=args.max_in_flight, restart=args.restart, compare_release=args.compare_release)
    report = run_evaluate(job)
    print(report.summary, end="")
    print(f"\nmetrics.json, metrics_summary.txt, plots and predictions of {report.records} records written to "
          f"{report.out} (seed 002's layout in {report.out / 'eval'} and {report.out / 'metrics'})")
    return 0


def add(commands: Commands) -> None:
    from tce.jobs.predict import TABLE_FORMATS

    p = add_command(commands, "evaluate", "model evaluation (seed 002): raw and calibrated metrics per task, plots, "
                 "and comparison with a previous model", _evaluate)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="labelled records to score on a running server: a CSV, TSV or "
                        "Parquet file, or a directory of them")
    source.add_argument("--predictions", type=Path, help="an already scored, labelled predictions file "
                        "(prob_class_<i>, and calibrated_prob_class_<i> if calibrated: without them, raw "
                        "metrics only, e.g. seed 001's output); with --labels: the gateway's prediction log "
                        "(a file, a directory of rotated files, or a glob)")
    p.add_argument("--labels", type=Path, default=None, metavar="LABELS_CSV",
                   help="late labels for the prediction log given with --predictions: a CSV with the --join-on "
                        "column and a label column per task (label, or label_<task>; --label TASK=COLUMN); "
                        "metrics per --window, a calibration-over-time plot and a reliability diagram per window")
    p.add_argument("--join-on", default=None, metavar="COLUMN",
                   help="with --labels: the labels' column holding the log's request id (if not given: id)")
    p.add_argument("--window", choices=("day", "week"), default=None,
                   help="with --labels: the time window (UTC) metrics are grouped by (if not given: day)")
    p.add_argument("--out", type=Path, required=True, help="directory for metrics, plots and predictions")
    p.add_argument("--bundle", type=Path, default=None, help="with --predictions: the bundle whose tasks and class "
                   "names the file holds (if not given: tasks from the column names, labels as class indices)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN",
                   help="true-label column of a task (if not given: label, or label_<task> with several tasks)")
    p.add_argument("--task", default=None, help="evaluate this task only, named as seed 002's one-task model "
                   "(metrics/metrics.json keys eval/auroc, ...; if not given: every task, seed names prefixed <task>_)")
    p.add_argument("--previous-score-field", default=None,
                   help="a previous model's class-1 score column: compare the two models (if not given: seed 002's "
                   "PREVIOUS_SCORE_FIELD, used when COMPARISON_MODE is true)")
    switches = (("--comparison-mode", ("true", "false"), "COMPARISON_MODE", "compare with the previous model's score"),
                ("--comparison-metrics", ("all", "basic"), "COMPARISON_METRICS", "basic: both models' metrics, "
                 "differences, correlations; all: also agreement and score distributions"),
                ("--statistical-tests", ("true", "false"), "STATISTICAL_TESTS", "paired t-test, Wilcoxon, McNemar, "
                 "DeLong, bootstrap"),
                ("--comparison-plots", ("true", "false"), "COMPARISON_PLOTS", "previous model in the plots, "
                 "comparison scatter and distributions"))
    for flag, choices, variable, what in switches:
        p.add_argument(flag, choices=choices, default=None, help=f"{what} (if not given: seed 002's {variable}, "
                       "else the seed's default)")
    p.add_argument("--compare-release", type=int, default=None, metavar="N",
                   help="with --input: also score the records with release N of the served ensemble and compare "
                        "the current release with it (release N's class-1 score is the previous model's score)")
    p.add_argument("--compare-task", default=None, help="the binary task the previous score belongs to "
                   "(needed when there are several)")
    p.add_argument("--bins", type=int, default=15, help="reliability bins (ECE, diagrams)")
    p.add_argument("--bootstrap-samples", type=int, default=200, help="resamples for the comparison's intervals")
    p.add_argument("--format", choices=TABLE_FORMATS, default=None, help="predictions file format (if not given: "
                   "the input's)")
    add_batch_options(p)
