"""``tce schema``: what a served ensemble takes and returns."""
from __future__ import annotations

import argparse

from tce.commands.common import PROTOCOLS, Commands, add_command
from tce_client import DEFAULT_MODEL


def _schema(args: argparse.Namespace) -> int:
    from tce.jobs.schema import describe_schema

    print(describe_schema(args.url, protocol=args.protocol, model=args.model, as_json=args.json))
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "schema", "print what a served ensemble takes and returns", _schema)
    p.add_argument("--url", default=None, help="server address (if not given: localhost:8000, or :8001 for grpc)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="protocol to call the server with")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--json", action="store_true", help="print the published schema as JSON")
