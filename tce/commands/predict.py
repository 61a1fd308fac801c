"""``tce predict``: score CSV/TSV/Parquet files through the server (seed 001's batch job).

Configured the seed's way too: ``ID_FIELD`` and ``BATCH_SIZE`` from the environment are
the defaults of ``--id-field`` and ``--batch-size``, and ``--job_type inference`` is accepted."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import Commands, add_batch_options, add_command, apply_seed_settings
from tce_backends.errors import UsageError


def _predict(args: argparse.Namespace) -> int:
    from tce.jobs.predict import SEED_FORMATS, PredictJob, run_predict
    from tce.lib.parts import parse_shard, shards_done
    from tce.lib.seed_settings import check_job_type

    check_job_type(args.job_type)
    apply_seed_settings(args)
    if args.format in SEED_FORMATS and args.id_field_option == "ID_FIELD":
        args.id_field = None  # seed 000's records carry no ID: the environment's ID_FIELD does not apply
    if args.id_field is None and args.job_type is not None and args.format not in SEED_FORMATS:
        raise UsageError("seed 001's job needs ID_FIELD (the ID column kept beside the predictions): set it, or "
                         "give --id-field")
    shard = parse_shard(args.shard) if args.shard else None
    job = PredictJob(args.input, args.output, url=args.url, protocol=args.protocol, model=args.model,
                     format=args.format, task=args.task, id_field=args.id_field, keep_columns=args.keep_columns,
                     allow_missing_columns=args.allow_missing_columns, chunk_rows=args.chunk_rows,
                     max_in_flight=args.max_in_flight, restart=args.restart, shard=shard,
                     batch_size=args.batch_size, max_rejects=args.max_rejects, id_field_option=args.id_field_option)
    result = run_predict(job)
    if result.path is None:
        assert shard is not None
        print(f"shard {shard[0]}/{shard[1]} done (this run scored {result.scored} records in {result.seconds:.1f} s); "
              f"{len(shards_done(args.output, shard[1]))} of {shard[1]} shards done: the last one to finish joins "
              f"them into {args.output}")
    elif result.finished_before:
        print(f"{args.output} already holds this job's finished output; nothing to do (--restart scores again)")
    else:
        print(f"{result.rows} predictions written to {result.path} (this run scored {result.scored} records in "
              f"{result.seconds:.1f} s, {result.records_per_s:.1f} records/s)")
    if result.rejects_path is not None and result.path is not None:
        logging.getLogger(__name__).warning(
            f"note: {result.rejected} records could not be scored and are left out of the predictions; "
            f"{result.rejects_path} lists them (file, row, field, reason)")
    return 0


def add(commands: Commands) -> None:
    from tce.jobs.predict import FORMATS

    p = add_command(commands, "predict", "batch inference (seed 001): score CSV/TSV/Parquet files on a running "
                 "server into an output directory; resumable", _predict)
    p.add_argument("--input", type=Path, required=True,
                   help="records to score: a CSV, TSV or Parquet file, or a directory of them")
    p.add_argument("--output", type=Path, required=True,
                   help="directory for inference_predictions.<format>, _SUCCESS and _HEALTH")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (if not given: the input's); seed-json/seed-csv: seed 000's score fields")
    p.add_argument("--task", default=None, help="one task of a several-task model: its columns alone, named as a "
                   "one-task model's (prob_class_<i>, as seed 001 writes them); with seed formats: the task to format")
    p.add_argument("--keep-columns", action="store_true", help="keep every input column beside the predictions")
    add_batch_options(p)
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="score only the I-th of N disjoint parts of the input (from 0), into the same --output; "
                        "the last shard to finish joins all into one file (a Kubernetes Indexed Job: "
                        "deploy/k8s/batch/)")
    p.add_argument("--job_type", "--job-type", dest="job_type", default=None, metavar="JOB_TYPE",
                   help="seed 001's argument, accepted as the seed takes it (inference, validation or testing: "
                        "all score the records the same way); with it, ID_FIELD (or --id-field) is required, as "
                        "in the seed")
