"""tce capacity: the plan from make bench figures, and docs/scaling.md's examples."""
from __future__ import annotations

import pytest

from tce.jobs.capacity import operating_points, plan_capacity
from tce_backends.errors import UsageError
from tests.conftest import REPO_ROOT

# The run recorded in docs/performance.md (2-core CPU, MiniLM demo), as tce benchmark writes it.
RECORDED = {
    "served_by_concurrency": {"8": {"records_per_s": 67.48, "p99_ms": 190.55},
                              "32": {"records_per_s": 75.81, "p99_ms": 672.95}},
    "speed_metrics": {"served_concurrency_1": {"throughput_samples_per_sec": 52.1, "max_time_per_sample_ms": 33.2}},
}


def test_the_busiest_load_within_the_slo_sets_the_plan():
    points = operating_points(RECORDED)
    assert [p.concurrency for p in points] == [1, 8, 32]
    plan = plan_capacity(points, rate=500, p99_ms=200)
    assert plan.point.concurrency == 8 and plan.replicas == 11  # ceil(500 / (0.8 * 67.48)) + 1
    assert plan_capacity(points, rate=500, p99_ms=50).point.concurrency == 1
    assert plan_capacity(points, rate=500, p99_ms=1000, spare=0).replicas == 9


def test_an_slo_below_a_single_request_is_refused_and_bad_files_named():
    with pytest.raises(UsageError, match="no measured load meets p99 <= 20 ms"):
        plan_capacity(operating_points(RECORDED), rate=10, p99_ms=20)
    with pytest.raises(UsageError, match="not a 'tce benchmark' result"):
        operating_points({"config": {}})


def test_docs_scaling_shows_what_the_planner_computes():
    text = (REPO_ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    points = operating_points(RECORDED)
    for rate, slo in ((100, 50), (500, 200), (500, 1000), (2000, 200)):
        plan = plan_capacity(points, rate=rate, p99_ms=slo)
        assert f"| {rate} | {slo} ms | {plan.point.concurrency} | {plan.replicas} |" in text
