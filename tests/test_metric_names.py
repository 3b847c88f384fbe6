"""The metrics file's names follow Prometheus conventions, and the README lists each one."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from etl.report.metrics import RunMetrics, registry_for

README = Path(__file__).resolve().parents[1] / "README.md"


def test_metric_names_follow_prometheus_conventions_and_the_readme_lists_them() -> None:
    every_metric = RunMetrics(
        finished_at=datetime(2025, 5, 1, tzinfo=UTC),
        duration_seconds=1.0,
        status="succeeded",
        exit_code=0,
        last_success_at=None,
        stalest_batch_age_seconds=60.0,
    )
    families = list(registry_for(every_metric).collect())

    names = {family.name for family in families}
    for family in families:
        assert family.name.startswith("ultravox_etl_")
        assert family.type == "gauge", family.name
        assert not family.name.endswith("_total"), family.name  # a counter's suffix
        assert re.fullmatch(r"[a-z_]+", family.name)
        if "seconds" in family.name:
            assert family.name.endswith("_seconds"), family.name  # the unit is the suffix
    section = README.read_text().split("### Metrics", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `(ultravox_etl_[a-z_]+)", section, flags=re.MULTILINE))
    assert listed == names
