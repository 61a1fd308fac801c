"""The usual mistakes of a new user, made at the command line: each gets one clear line
on stderr and a non-zero exit code, never a traceback, and nothing is half done."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

pytestmark = pytest.mark.e2e


def tce(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tce.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""})


def one_clear_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[0]
    for word in words:
        assert word in line, line
    return line


@pytest.fixture(scope="module")
def served(bimodal_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    repository = write_repository(bimodal_bundle, root / "repository")
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        yield server, root


@pytest.fixture(scope="module")
def records_file(served) -> Path:
    _, root = served
    path = root / "records.csv"
    make_dataset(40, seed=11).drop(columns=["abuse", "reason", "events"]).to_csv(path, index=False)
    return path


def test_a_misspelt_column_stops_before_scoring_and_names_the_fix(served, records_file, tmp_path):
    server, _ = served
    frame = pd.read_csv(records_file).rename(columns={"dialogue": "dialog"})
    frame.to_csv(tmp_path / "typo.csv", index=False)
    result = tce("predict", "--url", server.config.grpc_url, "--input", str(tmp_path / "typo.csv"),
                 "--output", str(tmp_path / "out"), "--id-field", "record_id")
    one_clear_line(result, "'dialogue'", "absent from every record", "'dialog'", "--allow-missing-columns")
    assert not (tmp_path / "out").exists()
    allowed = tce("predict", "--url", server.config.grpc_url, "--input", str(tmp_path / "typo.csv"),
                  "--output", str(tmp_path / "out"), "--id-field", "record_id", "--allow-missing-columns")
    assert allowed.returncode == 0, allowed.stderr
    assert "note: column 'dialog' is not a model input and is not kept" in allowed.stderr
    assert len(pd.read_csv(tmp_path / "out" / "inference_predictions.csv")) == 40


def test_seed_format_without_a_task_fails_before_scoring(served, records_file, tmp_path):
    server, _ = served
    result = tce("predict", "--url", server.config.grpc_url, "--input", str(records_file),
                 "--output", str(tmp_path / "out"), "--format", "seed-json")
    one_clear_line(result, "--task", "abuse", "reason")
    assert not (tmp_path / "out").exists()


def test_an_id_field_the_file_lacks_is_named(served, records_file, tmp_path):
    server, _ = served
    result = tce("predict", "--url", server.config.grpc_url, "--input", str(records_file),
                 "--output", str(tmp_path / "out"), "--id-field", "order_id")
    one_clear_line(result, "--id-field 'order_id'")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_no_server_running(records_file, tmp_path, protocol):
    (port,) = free_ports(1)
    result = tce("predict", "--url", f"127.0.0.1:{port}", "--protocol", protocol, "--input", str(records_file),
                 "--output", str(tmp_path / "out"))
    one_clear_line(result, f"no server listens at 127.0.0.1:{port}")


def test_a_url_with_a_scheme_is_accepted(served, records_file, tmp_path):
    server, _ = served
    result = tce("predict", "--url", f"http://{server.config.http_url}/", "--protocol", "http", "--input",
                 str(records_file), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("protocol, port_of", [("http", "grpc"), ("grpc", "http")])
def test_the_other_protocols_port_is_named_as_such(served, records_file, tmp_path, protocol, port_of):
    server, _ = served
    url = server.config.grpc_url if port_of == "grpc" else server.config.http_url
    result = tce("predict", "--url", url, "--protocol", protocol, "--input", str(records_file),
                 "--output", str(tmp_path / "out"))
    line = one_clear_line(result, f"does not answer {protocol.upper()}", f"is it the {port_of.upper()} port",
                          f"--protocol {port_of}")
    assert line.isascii() and line.isprintable(), line  # no raw bytes of the other protocol's answer


def test_publish_to_a_server_without_model_control_writes_nothing(served, bimodal_bundle, tmp_path):
    server, _ = served
    key_file = tmp_path / "key"
    key_file.write_text(server.admin_key)
    before = sorted(p.name for p in (server.config.model_repository / "calibrator").iterdir())
    result = tce("calibrate", "publish", "--bundle", str(bimodal_bundle.root), "--repository",
                 str(server.config.model_repository), "--url", server.config.http_url,
                 "--admin-key-file", str(key_file))
    one_clear_line(result, "does not allow model control", "--model-control-mode explicit")
    assert sorted(p.name for p in (server.config.model_repository / "calibrator").iterdir()) == before


def test_serve_on_a_taken_port_says_so_first(served):
    server, _ = served
    result = tce("serve", "--repository", str(server.config.model_repository), "--http-port",
                 str(server.config.http_port), "--grpc-port", str(free_ports(1)[0]), "--metrics-port",
                 str(free_ports(1)[0]))
    one_clear_line(result, f"HTTP port {server.config.http_port}", "already in use")


def test_serve_names_the_model_that_failed_to_load_and_why(bimodal_bundle, tmp_path):
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    os.remove(repository / "calibrator" / "1" / "manifest.json")
    http, grpc, metrics = free_ports()
    result = tce("serve", "--repository", str(repository), "--http-port", str(http), "--grpc-port", str(grpc),
                 "--metrics-port", str(metrics))
    line = one_clear_line(result, "model 'calibrator' failed to load", "manifest")
    assert "log:" in line
    log = Path(line.split("full log: ")[1].rstrip(")"))
    assert log.is_file(), "a failed start keeps its log"


def test_serve_never_believes_another_server(tmp_path, bimodal_bundle):
    """Something else answers on the HTTP port: refused before start, never reported ready."""
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        grpc, metrics = free_ports(2)
        result = tce("serve", "--repository", str(repository), "--http-port", str(port), "--grpc-port", str(grpc),
                     "--metrics-port", str(metrics))
    one_clear_line(result, f"HTTP port {port}", "already in use")
    assert "Triton ready" not in result.stdout + result.stderr


def test_tce_schema_shows_inputs_feature_order_tasks_and_classes(served):
    server, _ = served
    result = tce("schema", "--url", server.config.http_url)
    assert result.returncode == 0, result.stderr
    assert "numeric_features       FP64  [5]    order_amount, account_age_days" in result.stdout
    assert "reason                 multiclass  classes: none, item_not_received" in result.stdout
    as_json = tce("schema", "--url", server.config.grpc_url, "--protocol", "grpc", "--json")
    assert json.loads(as_json.stdout)["feature_order"][0] == "order_amount"


def test_the_readme_way_to_read_the_schema_from_the_config(served):
    """The README: a JSON document inside parameters.tce_schema.string_value."""
    import urllib.request

    server, _ = served
    with urllib.request.urlopen(f"http://{server.config.http_url}/v2/models/calibrated_ensemble/config") as r:
        config = json.load(r)
    schema = json.loads(config["parameters"]["tce_schema"]["string_value"])
    assert schema["text_fields"] == ["dialogue"] and len(schema["tasks"]) == 2
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert '["parameters"]["tce_schema"]["string_value"]' in readme


def test_a_bad_label_stops_evaluate_before_scoring_and_the_fixed_file_just_runs(served, tmp_path):
    """Before: the whole file was scored first, the error did not list the classes, and the
    rerun after the fix was refused until --restart."""
    from tce.lib.demo_data import write_demo_records

    server, _ = served
    path = tmp_path / "labelled.csv"
    frame = write_demo_records(path, rows=120, seed=5, labels=True)
    frame.loc[117, "label_reason"] = "fraud"  # a label that is no class, near the end
    frame.to_csv(path, index=False)
    args = ["evaluate", "--input", str(path), "--out", str(tmp_path / "eval"), "--url", server.config.grpc_url,
            "--id-field", "record_id", "--chunk-rows", "20"]
    line = one_clear_line(tce(*args), "'label_reason'", "'fraud'", "the classes are 'none', 'item_not_received'")
    assert not list((tmp_path / "eval").rglob("part-*.parquet")), "nothing may be scored before the labels are read"
    frame.loc[117, "label_reason"] = "payment_fraud"
    frame.to_csv(path, index=False)
    fixed = tce(*args)  # the same command, no --restart
    assert fixed.returncode == 0, fixed.stderr + line
    assert (tmp_path / "eval" / "_SUCCESS").is_file()
