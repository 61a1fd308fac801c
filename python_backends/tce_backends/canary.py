"""Health that means "the ensemble answers": a canary inference, not only
``/v2/health/ready``.

Triton keeps reporting ready after a Python step's stub process dies; every request
that reaches that instance then fails with "Stub process is not healthy". ``probe``
sends a few requests at once (so that a step with several instances has each of them
probed) of one record built from the schema the ensemble publishes (empty texts,
zeros, missing categories) and checks every answer. ``tce serve`` probes this way to restart a broken server, and the
container image uses the command line below as its healthcheck and as a watchdog
that stops a broken server so the container restarts:

    python3 -m tce_backends.canary --url localhost:8000                 # one probe, exit 0/1
    python3 -m tce_backends.canary --url localhost:8000 --watch PID     # stop PID when probes keep failing

Standard library only: it runs inside the server image, which has no client SDK.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

DEFAULT_MODEL = "calibrated_ensemble"
SCHEMA_PARAMETER = "tce_schema"


def _get_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def canary_body(schema: dict[str, Any]) -> bytes:
    """One record with every input present and every value at its documented default."""
    inputs = [{"name": field, "shape": [1, 1], "datatype": "BYTES", "data": [""]} for field in schema["text_fields"]]
    if schema["numeric_features"]:
        inputs.append({"name": "numeric_features", "shape": [1, len(schema["numeric_features"])],
                       "datatype": "FP64", "data": [0.0] * len(schema["numeric_features"])})
    if schema["categorical_features"]:
        inputs.append({"name": "categorical_features", "shape": [1, len(schema["categorical_features"])],
                       "datatype": "BYTES", "data": [""] * len(schema["categorical_features"])})
    return json.dumps({"inputs": inputs}).encode()


class Canary:
    """Probes one ensemble over HTTP; learns its schema on first use."""

    def __init__(self, http_url: str, model: str = DEFAULT_MODEL, timeout_s: float = 10.0,
                 concurrency: int = 4) -> None:
        self.base = http_url if http_url.startswith("http") else f"http://{http_url}"
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._body: bytes | None = None
        self._tasks: list[str] = []

    def probe(self) -> str | None:
        """None when the ensemble answered every canary plausibly, else what went wrong."""
        try:
            if self._body is None:
                config = _get_json(f"{self.base}/v2/models/{self.model}/config", self.timeout_s)
                schema = json.loads(config["parameters"][SCHEMA_PARAMETER]["string_value"])
                self._body = canary_body(schema)
                self._tasks = [task["name"] for task in schema["tasks"]]
        except urllib.error.HTTPError as error:
            return f"cannot read the ensemble's schema: HTTP {error.code}: {_error_text(error)}"
        except (OSError, urllib.error.URLError) as error:
            return f"cannot reach the server: {getattr(error, 'reason', error)}"
        except (ValueError, KeyError, TypeError) as error:
            return f"the ensemble publishes no readable schema: {error!r}"
        body = self._body
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            problems = [p for p in pool.map(lambda _: self._infer(body), range(self.concurrency)) if p]
        return problems[0] if problems else None

    def _infer(self, body: bytes) -> str | None:
        try:
            request = urllib.request.Request(f"{self.base}/v2/models/{self.model}/infer", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                outputs = {o["name"]: o["data"] for o in json.loads(response.read())["outputs"]}
        except urllib.error.HTTPError as error:
            return f"canary inference failed: HTTP {error.code}: {_error_text(error)}"
        except (OSError, urllib.error.URLError) as error:
            return f"canary inference failed: {getattr(error, 'reason', error)}"
        except (ValueError, KeyError, TypeError) as error:
            return f"canary inference returned an unreadable answer: {error!r}"
        for task in self._tasks:
            scores = outputs.get(f"{task}_calibrated")
            if not scores or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores):
                return f"canary inference returned no finite '{task}_calibrated' scores"
        return None


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", "")
    except (ValueError, OSError):
        return error.reason


def watch(canary: Canary, pid: int, interval_s: float, failures: int, grace_s: float) -> int:
    """Probe every ``interval_s``; after ``failures`` failed probes in a row, stop
    ``pid`` (SIGTERM, SIGKILL after ``grace_s``) and return 1. Failures count only
    once the ensemble has answered (models may take minutes to load)."""
    failed, answered = 0, False
    while _alive(pid):
        time.sleep(interval_s)
        problem = canary.probe()
        answered = answered or problem is None
        failed = failed + 1 if problem and answered else 0
        if problem and answered:
            print(f"tce canary: {problem} ({failed}/{failures})", file=sys.stderr, flush=True)
        if failed >= failures:
            print(f"tce canary: the ensemble stopped answering; stopping process {pid}", file=sys.stderr, flush=True)
            _stop(pid, grace_s)
            return 1
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(pid: int, grace_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tce_backends.canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8000", help="Triton HTTP host:port (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per probe (default: %(default)s)")
    parser.add_argument("--watch", type=int, default=None, metavar="PID",
                        help="keep probing and stop PID when the ensemble stops answering")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between probes (default: %(default)s)")
    parser.add_argument("--failures", type=int, default=3,
                        help="failed probes in a row before stopping PID (default: %(default)s)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds between SIGTERM and SIGKILL (default: %(default)s)")
    args = parser.parse_args(argv)
    canary = Canary(args.url, args.model, args.timeout)
    if args.watch is not None:
        return watch(canary, args.watch, args.interval, args.failures, args.grace)
    problem = canary.probe()
    print(problem or "ok", file=sys.stderr if problem else sys.stdout)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
