"""The canary and the stub watch, without a Triton server (a stand-in HTTP server and a fake /proc)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tce.serving.server import free_ports
from tce_backends.canary import Canary, canary_body, stub_counts

SCHEMA = {"text_fields": ["dialogue"], "numeric_features": ["a", "b"], "categorical_features": ["c"],
          "feature_order": ["a", "b", "c"], "tasks": [{"name": "abuse", "kind": "binary", "classes": ["n", "y"],
                                                       "outputs": {"raw": "abuse_raw", "calibrated": "abuse_calibrated",
                                                                   "label": "abuse_label"}}]}


def test_the_canary_record_has_every_input_at_its_default():
    body = json.loads(canary_body(SCHEMA))
    inputs = {i["name"]: i for i in body["inputs"]}
    assert inputs["dialogue"] == {"name": "dialogue", "shape": [1, 1], "datatype": "BYTES", "data": [""]}
    assert inputs["numeric_features"]["shape"] == [1, 2] and inputs["numeric_features"]["data"] == [0.0, 0.0]
    assert inputs["categorical_features"]["data"] == [""]


def test_stub_processes_are_counted_per_step(tmp_path: Path):
    def process(pid: int, ppid: int, argv: list[str]) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (x y) S {ppid} 1 1 0")
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")

    stub = "/run/backends/python/triton_python_backend_stub"
    process(10, 1, ["tritonserver"])
    process(11, 10, [stub, "/repo/preprocessor/1/model.py", "region"])
    process(12, 10, [stub, "/repo/preprocessor/1/model.py", "region"])
    process(13, 10, [stub, "/repo/calibrator/2/model.py", "region"])
    process(14, 99, [stub, "/other/calibrator/1/model.py", "region"])  # another server's
    assert stub_counts(10, proc=tmp_path) == {"preprocessor": 2, "calibrator": 1}


class _Canned(BaseHTTPRequestHandler):
    status, error = 200, ""

    def do_GET(self):  # the ensemble config
        self._send(200, {"parameters": {"tce_schema": {"string_value": json.dumps(SCHEMA)}}})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.status == 200:
            self._send(200, {"outputs": [{"name": "abuse_calibrated", "data": [0.9, 0.1]}]})
        else:
            self._send(self.status, {"error": self.error})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.fixture()
def canned():
    (port,) = free_ports(1)
    server = ThreadingHTTPServer(("127.0.0.1", port), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{port}"
    server.shutdown()


@pytest.mark.parametrize("status, error, verdict", [
    (200, "", None),
    (500, "Stub process 'preprocessor_0_1' is not healthy.", "Stub process"),
    (503, "Exceeds maximum queue size", None),      # busy, not broken: a restart would not help
    (503, "Request timeout expired", None),
])
def test_probe_verdicts(canned, status, error, verdict):
    _Canned.status, _Canned.error = status, error
    problem = Canary(canned).probe()
    assert (problem is None) if verdict is None else (verdict in problem)


def test_probe_of_a_closed_port_says_so():
    (port,) = free_ports(1)
    assert "cannot reach the server" in Canary(f"127.0.0.1:{port}", timeout_s=2).probe()
