import math

import pytest

from load_tests.slo import LatencyHistogram, ProtocolSLO, SLOConfig, SLOConfigError, evaluate, format_verdict, summarise


def test_histogram_percentiles_are_exact_below_a_millisecond():
    histogram = LatencyHistogram()
    for value in [10.001, 10.002, 10.003, 10.004, 10.005, 10.006, 10.007, 10.008, 10.009, 25.5]:
        histogram.record(value)
    assert histogram.percentile(50) == 10.005  # locust would report 10
    assert histogram.percentile(90) == 10.009
    assert histogram.percentile(99) == 25.5
    assert histogram.total == 10


def test_empty_histogram_is_nan():
    assert math.isnan(LatencyHistogram().percentile(50))


def _config(p50=10.0, errors=0.0, throughput=1.0):
    return SLOConfig({"http": ProtocolSLO(p50, 20.0, 30.0)}, errors, throughput)


def _summary(latency=8.0, count=100, errors=0):
    histogram = LatencyHistogram()
    for _ in range(count):
        histogram.record(latency)
    return {"http": summarise("http", histogram, errors, duration_s=10.0)}


def test_passing_run():
    checks = evaluate(_config(), _summary())
    assert all(c.ok for c in checks)
    assert "all SLOs met" in format_verdict(_summary(), checks)


def test_missed_slo_is_named_with_its_margin():
    checks = evaluate(_config(p50=5.0), _summary(latency=8.0))
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == ["http.p50_ms"]
    text = format_verdict(_summary(latency=8.0), checks)
    assert "FAIL http.p50_ms: 8.000 ms, limit 5 ms (missed by 3.000 ms)" in text
    assert "FAILED: http.p50_ms" in text


def test_errors_and_throughput_are_checked():
    checks = {c.name: c for c in evaluate(_config(throughput=50.0), _summary(errors=5))}
    assert not checks["error_rate"].ok and not checks["throughput_rps"].ok


def test_protocol_without_traffic_fails():
    config = SLOConfig({"http": ProtocolSLO(1, 2, 3), "grpc": ProtocolSLO(1, 2, 3)}, 0.0, 0.0)
    checks = {c.name: c for c in evaluate(config, _summary(latency=0.5))}
    assert not checks["grpc.p50_ms"].ok


def test_config_file_errors_name_the_key(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text("protocols:\n  http: {p50_ms: 10, p95_ms: 5, p99_ms: 30}\nmax_error_rate: 0\n"
                    "min_throughput_rps: 1\n", encoding="utf-8")
    with pytest.raises(SLOConfigError, match="protocols.http: expected p50 <= p95 <= p99"):
        SLOConfig.load(path)
    path.write_text("protocols: {}\nmax_error_rate: 0\n", encoding="utf-8")
    with pytest.raises(SLOConfigError, match="min_throughput_rps"):
        SLOConfig.load(path)


def test_shipped_slo_file_loads():
    from tests.conftest import REPO_ROOT

    config = SLOConfig.load(REPO_ROOT / "load_tests" / "slo.yaml")
    assert set(config.protocols) == {"http", "grpc"}


def test_p99_over_the_idle_p50_is_a_ratio_check():
    config = SLOConfig({}, 0.0, 0.0, max_p99_over_idle_p50=10.0)
    checks = {c.name: c for c in evaluate(config, _summary(latency=80.0), idle_p50_ms={"http": 10.0})}
    assert checks["http.p99_over_idle_p50"].measured == pytest.approx(8.0) and checks["http.p99_over_idle_p50"].ok
    checks = {c.name: c for c in evaluate(config, _summary(latency=120.0), idle_p50_ms={"http": 10.0})}
    assert not checks["http.p99_over_idle_p50"].ok
    assert "missed by 2.000x" in checks["http.p99_over_idle_p50"].describe()
    checks = {c.name: c for c in evaluate(config, _summary(latency=5.0))}  # no idle figure: cannot pass
    assert not checks["http.p99_over_idle_p50"].ok


def test_idle_p50_option_is_parsed_and_checked():
    from load_tests.slo import parse_idle_p50

    assert parse_idle_p50("http=12.5,grpc=11") == {"http": 12.5, "grpc": 11.0}
    assert parse_idle_p50("") == {}
    with pytest.raises(SLOConfigError, match="protocol=ms"):
        parse_idle_p50("ftp=3")


def test_the_gate_in_make_test_has_no_absolute_latency():
    from tests.conftest import REPO_ROOT

    gate = SLOConfig.load(REPO_ROOT / "tests" / "e2e" / "slo_gate.yaml")
    assert not gate.protocols and gate.min_throughput_rps == 0 and gate.max_p99_over_idle_p50
