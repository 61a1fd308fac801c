"""``tce release add | promote | rollback | retire | list | traffic``: roll a new model out
(and back) on a running server, one repository of releases (``tce.jobs.release``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command


def _server(args: argparse.Namespace):
    from tce.jobs.release import Server
    from tce.serving.security import read_admin_key

    if not args.url:
        return Server()
    return Server(args.url, read_admin_key(args.admin_key_file, required=True), args.timeout)


def _where(args: argparse.Namespace) -> str:
    return f"the server at {args.url}" if args.url else "the files (no --url: a server picks it up when it loads them)"


def _add(args: argparse.Namespace) -> int:
    from tce.jobs.release import add

    records = None
    if args.records:
        from tce.lib.tables import read_frame

        records = read_frame(args.records).head(args.record_limit).to_dict(orient="records")
    release = add(args.bundle, args.repository, _server(args), records=records, say=logging.getLogger(__name__).info,
                  lock_timeout_s=args.lock_timeout)
    checked = "loaded beside the current release and checked by the canary" if args.url else "written"
    print(f"release {release.release} (bundle '{release.bundle}', calibration {release.calibration_version}) "
          f"{checked}: a candidate; promote it with: tce release promote {release.release}")
    return 0


def _print_switch(switch, verb: str, args: argparse.Namespace) -> None:
    timing = f" (the server switched in {switch.switch_s * 1000:.1f} ms)" if switch.switch_s is not None else ""
    previous = f"; previous: release {switch.previous.release} (tce release rollback)" if switch.previous else ""
    print(f"{verb} release {switch.current.release} (bundle '{switch.current.bundle}', calibration "
          f"{switch.current.calibration_version}) on {_where(args)}{timing}{previous}")
    if switch.retired is not None:
        print(f"release {switch.retired.release} retired: unloaded and removed")


def _promote(args: argparse.Namespace) -> int:
    from tce.jobs.release import promote

    _print_switch(promote(args.repository, args.release, _server(args), args.lock_timeout), "now serving", args)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from tce.jobs.release import rollback

    _print_switch(rollback(args.repository, _server(args), args.lock_timeout), "rolled back: now serving", args)
    return 0


def _retire(args: argparse.Namespace) -> int:
    from tce.jobs.release import retire

    release = retire(args.repository, args.release, _server(args), args.lock_timeout)
    print(f"release {release.release} retired: unloaded and removed")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tce.repository.releases import Releases, format_table

    print(format_table(Releases.load(args.repository)))
    return 0


def _traffic(args: argparse.Namespace) -> int:
    from tce.jobs.release import set_traffic
    from tce_backends.errors import UsageError

    if args.off == (args.release is not None):
        raise UsageError("give a candidate release and --share, or --off")
    if args.off:
        set_traffic(args.repository, None, lock_timeout_s=args.lock_timeout)
        print(f"traffic split off: every request goes to the current release ({args.repository}/releases.json)")
        return 0
    if args.share is None:
        raise UsageError("--share S is needed (0 < S <= 1)")
    set_traffic(args.repository, args.release, args.share, args.mode, lock_timeout_s=args.lock_timeout)
    print(f"{args.mode}: {args.share:g} of the gateway's requests go to release {args.release} "
          f"({args.repository}/releases.json)")
    return 0


def _common(p: argparse.ArgumentParser, server: bool = True) -> None:
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the model repository")
    p.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait while another tce command changes the same repository")
    if server:
        p.add_argument("--url", default=None, help="HTTP host:port of the server in explicit model-control mode "
                       "(if not given: change the files only)")
        p.add_argument("--admin-key-file", type=Path, default=None,
                       help="the server's admin key (if not given: $TCE_ADMIN_KEY_FILE, then $TCE_ADMIN_KEY)")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each load")


def add(commands: Commands) -> None:
    release = commands.add_parser("release", help="add, promote, roll back and retire releases of a repository")
    actions = release.add_subparsers(dest="action", required=True)
    p = add_command(actions, "add", "add a bundle as a candidate release beside the current one", _add)
    p.add_argument("bundle", type=Path, help="bundle with the same tasks, classes, features and text fields")
    _common(p)
    p.add_argument("--records", type=Path, default=None,
                   help="records (CSV, TSV, Parquet) the canary compares with the bundle's reference pipeline "
                        "(if not given: records made from the bundle's own settings)")
    p.add_argument("--record-limit", type=int, default=32, help="records of --records used")
    p = add_command(actions, "promote", "serve a release: new requests go to it at once", _promote)
    p.add_argument("release", type=int, nargs="?", default=None, help="release number (default: newest candidate)")
    _common(p)
    p = add_command(actions, "rollback", "serve the previous release again (instant: it is still loaded)",
                    _rollback)
    _common(p)
    p = add_command(actions, "retire", "unload and remove a release that is neither current nor previous", _retire)
    p.add_argument("release", type=int, help="release number")
    _common(p)
    p = add_command(actions, "list", "the repository's releases", _list)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the model repository")
    p = add_command(actions, "traffic", "send a share of the gateway's requests to a candidate", _traffic)
    p.add_argument("release", type=int, nargs="?", default=None, help="candidate release number")
    p.add_argument("--share", type=float, default=None, help="share of requests, 0 < S <= 1")
    p.add_argument("--mode", choices=("canary", "shadow"), default="canary",
                   help="canary: the candidate answers that share; shadow: it gets a copy, the current release "
                        "answers")
    p.add_argument("--off", action="store_true", help="no split: every request to the current release")
    _common(p, server=False)
