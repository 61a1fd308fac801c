"""Health that means "the ensemble answers", not only ``/v2/health/ready``.

Triton keeps reporting ready after a Python step's stub process dies; every request
that reaches that instance then fails with "Stub process is not healthy". Two checks
catch it:

- ``Canary.probe`` sends a few concurrent requests of one record built from the schema
  the ensemble publishes (empty texts, zeros, missing categories) and checks every
  answer. A refusal for overload (full queue) is not a failure: restarting would not help.
- ``Watch`` also counts the server's stub processes per step against the instance
  counts in the published configs: a ready step with fewer is broken, even when the
  canary's requests all happen to reach a healthy instance of it.

``tce serve`` restarts Triton on either; the container image uses the command line as
its healthcheck and as a watchdog that stops a broken server so the container restarts:

    python3 -m tce_backends.canary --url localhost:8000                 # one probe, exit 0/1
    python3 -m tce_backends.canary --url localhost:8000 --watch PID     # stop PID once it breaks

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
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from .contract import CANARY_PARAMETER, QUEUE_REFUSALS, SCHEMA_PARAMETER
from .contract import DEFAULT_ENSEMBLE as DEFAULT_MODEL


def _get_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def canary_body(schema: dict[str, Any]) -> bytes:
    """One record with every input present and every value at its documented default, marked
    as the canary's (``CANARY_PARAMETER``), so that the score metrics count it apart."""
    inputs = [{"name": field, "shape": [1, 1], "datatype": "BYTES", "data": [""]} for field in schema["text_fields"]]
    if schema["numeric_features"]:
        inputs.append({"name": "numeric_features", "shape": [1, len(schema["numeric_features"])],
                       "datatype": "FP64", "data": [0.0] * len(schema["numeric_features"])})
    if schema["categorical_features"]:
        inputs.append({"name": "categorical_features", "shape": [1, len(schema["categorical_features"])],
                       "datatype": "BYTES", "data": [""] * len(schema["categorical_features"])})
    return json.dumps({"inputs": inputs, "parameters": {CANARY_PARAMETER: True}}).encode()


class Canary:
    """Probes one ensemble over HTTP; learns its schema on first use."""

    def __init__(self, http_url: str, model: str = DEFAULT_MODEL, timeout_s: float = 10.0,
                 concurrency: int = 4) -> None:
        self.base = http_url if http_url.startswith("http") else f"http://{http_url}"
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._body: bytes | None = None
        self._calibrated: list[str] = []  # each task's calibrated output, as the schema publishes it

    def probe(self) -> str | None:
        """None when the ensemble answered every canary plausibly, else what went wrong."""
        try:
            if self._body is None:
                config = _get_json(f"{self.base}/v2/models/{self.model}/config", self.timeout_s)
                schema = json.loads(config["parameters"][SCHEMA_PARAMETER]["string_value"])
                self._body = canary_body(schema)
                self._calibrated = [task["outputs"]["calibrated"] for task in schema["tasks"]]
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
            text = _error_text(error)
            if any(busy in text for busy in QUEUE_REFUSALS):
                return None
            return f"canary inference failed: HTTP {error.code}: {text}"
        except (OSError, urllib.error.URLError) as error:
            return f"canary inference failed: {getattr(error, 'reason', error)}"
        except (ValueError, KeyError, TypeError) as error:
            return f"canary inference returned an unreadable answer: {error!r}"
        for name in self._calibrated:
            scores = outputs.get(name)
            if not scores or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores):
                return f"canary inference returned no finite '{name}' scores"
        return None


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", "")
    except (ValueError, OSError):
        return error.reason


def stub_counts(server_pid: int, proc: Path = Path("/proc")) -> Counter:
    """Step name -> number of Python backend stub processes of the server ``server_pid``."""
    counts: Counter = Counter()
    for stat in proc.glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != server_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            counts[Path(argv[1].decode(errors="replace")).parent.parent.name] += 1  # <step>/<version>/model.py
    return counts


class Watch:
    """Decides, one ``check`` at a time, whether a running server is broken."""

    def __init__(self, canary: Canary, server_pid: int, failures: int = 2) -> None:
        self.canary, self.failures = canary, failures
        self.reset(server_pid)

    def reset(self, server_pid: int) -> None:
        """Start over, e.g. for a restarted server; failed canaries count once it has answered."""
        self.server_pid = server_pid
        self.failed, self.answered = 0, False
        self._expected: dict[str, int] | None = None

    def _get(self, path: str) -> Any:
        return _get_json(f"{self.canary.base}{path}", self.canary.timeout_s)

    def expected_stubs(self) -> dict[str, int]:
        """Stub processes each Python step of the ensemble runs, from the published configs."""
        expected = {}
        ensemble = self._get(f"/v2/models/{self.canary.model}/config")
        for step in ensemble["ensemble_scheduling"]["step"]:
            config = self._get(f"/v2/models/{step['model_name']}/config")
            if config.get("backend") == "python":
                expected[step["model_name"]] = sum(int(group.get("count", 1)) * max(1, len(group.get("gpus", [])))
                                                   for group in config.get("instance_group", []))
        return expected

    def dead_steps(self) -> list[str]:
        """Ready steps running fewer stub processes than their configs ask for."""
        current = stub_counts(self.server_pid)
        try:
            if self._expected is None:
                self._expected = self.expected_stubs()
            short = [step for step, count in self._expected.items() if current[step] < count]
            if short:  # a config may have changed (a published version): ask again before judging
                self._expected = self.expected_stubs()
                short = [step for step, count in self._expected.items() if current[step] < count]
            return sorted(step for step in short if self._ready(step))
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
            return []  # not answering (yet): the canary judges that

    def _ready(self, step: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.canary.base}/v2/models/{step}/ready",
                                        timeout=self.canary.timeout_s) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False  # unloaded on purpose, or loading: not a dead stub

    def check(self) -> str | None:
        dead = self.dead_steps()
        if dead:
            return f"the Python stub of {', '.join(dead)} died"
        problem = self.canary.probe()
        if problem is None:
            self.answered, self.failed = True, 0
            return None
        self.failed = self.failed + 1 if self.answered else 0  # models may take minutes to load
        return problem if self.failed >= self.failures else None


def watch(canary: Canary, pid: int, interval_s: float, failures: int, grace_s: float) -> int:
    """Check every ``interval_s``; once the server is broken, stop ``pid`` (SIGTERM,
    SIGKILL after ``grace_s``) and return 1. Returns 0 when ``pid`` exits by itself."""
    watcher = Watch(canary, pid, failures)
    while process_alive(pid):
        deadline = time.monotonic() + interval_s
        while time.monotonic() < deadline and process_alive(pid):  # notice a server that exits by itself at once
            time.sleep(0.2)
        if not process_alive(pid):
            break
        problem = watcher.check()
        if problem:
            print(f"tce canary: the ensemble stopped answering ({problem}); stopping process {pid}",
                  file=sys.stderr, flush=True)
            _stop(pid, grace_s)
            return 1
    return 0


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists (also when it belongs to another user)."""
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
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.2)
        if process_alive(pid):
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
                        help="failed probes in a row before stopping PID (default: %(default)s); a step that "
                             "lost a stub process stops it at once")
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
