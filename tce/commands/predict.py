"""``tce predict``: score CSV/TSV/Parquet files through the server (seed 001's batch job)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import Commands, add_batch_options, add_command


def _predict(args: argparse.Namespace) -> int:
    from tce.jobs.predict import PredictJob, run_predict
    from tce.lib.parts import parse_shard, shards_done

    shard = parse_shard(args.shard) if args.shard else None
    job = PredictJob(args.input, args.output, url=args.url, protocol=args.protocol, model=args.model,
                     format=args.format, task=args.task, id_field=args.id_field, keep_columns=args.keep_columns,
                     allow_missing_columns=args.allow_missing_columns, chunk_rows=args.chunk_rows,
                     max_in_flight=args.max_in_flight, restart=args.restart, shard=shard)
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
    p.add_argument("--task", default=None, help="with seed formats: the task to format")
    p.add_argument("--keep-columns", action="store_true", help="keep every input column beside the predictions")
    add_batch_options(p)
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="score only the I-th of N disjoint parts of the input (from 0), into the same --output; "
                        "the last shard to finish joins all into one file (a Kubernetes Indexed Job: "
                        "deploy/k8s/batch/)")
