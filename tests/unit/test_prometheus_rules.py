"""deploy/prometheus, deploy/grafana and their wiring: the shipped rules are the template's
rendering, promtool accepts them and their unit tests pass on synthetic series
(deploy/prometheus/tests), every dashboard query is valid PromQL, and compose and the
Kubernetes manifests mount and select what these files expect."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tce.lib import prometheus_rules
from tce.lib.prometheus_rules import RuleSettings, render_operator_rules, render_rules
from tce_backends import score_metrics
from tests.conftest import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "calibrated-ensemble.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
# Grafana's variables, as a query runs them: one value each.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$ensemble": "calibrated_ensemble", "$task": "abuse",
                       "$class": "abusive", "$score": "raw"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_shipped_rules_are_the_templates_rendering():
    regenerate = "regenerate with: python -m tce.lib.prometheus_rules --write"
    assert prometheus_rules.RULES_FILE.read_text(encoding="utf-8") == render_rules(), regenerate
    assert prometheus_rules.OPERATOR_RULES_FILE.read_text(encoding="utf-8") == render_operator_rules(), regenerate
    operator = yaml.safe_load(render_operator_rules())
    assert operator["spec"]["groups"] == yaml.safe_load(render_rules())["groups"]


@needs_promtool
@pytest.mark.parametrize("settings", [RuleSettings(), RuleSettings(psi_window="20s", psi_min_scores=20,
                                                                   drift_for="0s", rate_window="10s")])
def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path, settings: RuleSettings):
    rules = tmp_path / "tce.rules.yml"
    rules.write_text(render_rules(settings), encoding="utf-8")
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout  # rules/*.yml, relative to the config


@needs_promtool
def test_the_rules_unit_tests_pass_on_synthetic_series():
    """PSI, drift, fallback, error, queue, canary and step alerts (deploy/prometheus/tests)."""
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "tests" / "tce.rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_a_wrong_expectation_fails_promtool(tmp_path: Path):
    tests = (PROMETHEUS_DIR / "tests" / "tce.rules.test.yml").read_text(encoding="utf-8")
    broken = tests.replace("../rules/tce.rules.yml", str(prometheus_rules.RULES_FILE)).replace(
        "(PSI 8.28 > 0.25)", "(PSI 8.29 > 0.25)")
    (tmp_path / "broken.test.yml").write_text(broken, encoding="utf-8")
    result = promtool("test", "rules", str(tmp_path / "broken.test.yml"))
    assert result.returncode != 0 and "PSI 8.28 > 0.25" in result.stderr  # what the rule said


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = []
    for index, query in enumerate(queries):
        for variable, value in DASHBOARD_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unknown dashboard variable in {query}"
        rules.append({"record": f"dashboard:query_{index}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_name_only_metrics_that_exist():
    exported = {score_metrics.SCORE_BUCKET, score_metrics.SCORE_COUNT, score_metrics.SCORE_SUM,
                score_metrics.PREDICTED_LABEL, score_metrics.REFERENCE_FRACTION, score_metrics.CANARY_PREDICTIONS,
                score_metrics.CALIBRATED_PREDICTIONS, score_metrics.CALIBRATION_FALLBACK_TOTAL}
    recorded = {rule["record"] for group in yaml.safe_load(render_rules())["groups"] for rule in group["rules"]
                if "record" in rule}
    text = render_rules() + "\n".join(dashboard_queries())
    groups = {group["name"] for group in yaml.safe_load(render_rules())["groups"]}
    assert set(re.findall(r"\btce_[a-z_]+", text)) - groups <= exported
    assert set(re.findall(r"\btce:[a-z_:]+", text)) <= recorded
    assert {"tce:score_psi", "tce:task_psi", "tce:score_bin:fraction", "tce:score_reference:fraction"} <= recorded


def test_the_dashboard_shows_what_an_operator_watches():
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]).lower()
    for topic in ("requests", "latency per step", "batch size", "queue time", "histogram vs reference", "psi",
                  "fallback", "release"):
        assert topic in titles, topic


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    grafana, prometheus = compose["grafana"], compose["prometheus"]
    assert grafana["profiles"] == prometheus["profiles"] == ["monitoring"]
    host_of = {container: REPO_ROOT / host for host, container, *_ in (v.split(":") for v in grafana["volumes"])}
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "tce.yml").read_text(encoding="utf-8"))
    dashboards = provider["providers"][0]["options"]["path"]
    assert (host_of[dashboards] / DASHBOARD.name).is_file()
    assert host_of["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards}/{DASHBOARD.name}"
    source = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text(
        encoding="utf-8"))["datasources"][0]
    port = prometheus["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{port}"


def test_compose_prometheus_scrapes_the_servers_and_loads_the_rules():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    prometheus = compose["services"]["prometheus"]
    mounts = {container: REPO_ROOT / host for host, container, *_ in
              (volume.split(":") for volume in prometheus["volumes"]) if host.startswith("./")}
    assert mounts["/etc/prometheus"] == PROMETHEUS_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert [p for pattern in config["rule_files"] for p in PROMETHEUS_DIR.glob(pattern)] == [
        prometheus_rules.RULES_FILE]
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"triton:8002", "triton-cpu:8002"}
    assert "8002" in compose["x-triton"]["expose"]
    assert {"triton", "triton-cpu"} <= set(compose["services"])


def test_the_pod_monitor_selects_the_server_pods_metrics_port():
    from tests.unit.test_deploy_manifests import by_kind, container, documents, render, serving_runtime

    monitoring = REPO_ROOT / "deploy" / "k8s" / "monitoring"
    kustomization = documents(monitoring / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == ["podmonitor.yaml", "prometheusrule.yaml"]
    monitor, kserve_monitor = documents(monitoring / "podmonitor.yaml")
    for overlay in ("cpu", "gpu"):
        pod = by_kind(render(overlay), "Deployment")["spec"]["template"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for p in container(pod["spec"], "triton")["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]} <= ports
    service = documents(REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml")[0]
    assert kserve_monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": service["metadata"]["name"]}
    ports = {p["name"] for p in container(serving_runtime()["spec"], "triton")["ports"]}
    assert {endpoint["port"] for endpoint in kserve_monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_the_monitoring_services_bind_loopback_by_default_on_their_own_ports():
    from tests.unit.test_deployment import _published

    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    ports = {name: _published(services[name]) for name in ("prometheus", "grafana")}
    assert [(h, c) for _, h, c in ports["prometheus"]] == [("9090", "9090")]
    assert [(h, c) for _, h, c in ports["grafana"]] == [("3000", "3000")]
    for published in ports.values():
        assert all(address == "${TCE_METRICS_ADDRESS:-127.0.0.1}" for address, _, _ in published)
    taken = [h for name, service in services.items() if name not in ports for _, h, _ in _published(service)]
    assert not {"9090", "3000"} & set(taken)
