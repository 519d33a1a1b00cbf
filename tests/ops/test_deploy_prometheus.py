"""deploy/prometheus and the dashboard's queries: promtool checks, unit tests, names and conventions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from promql import RULES, RULES_TESTS, all_queries, concrete, promtool, rules, yaml

from gateway.ops import metrics as gateway_metrics

RECORDING_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")  # level:metric:operations
ALERT_NAME = re.compile(r"SessionGateway[A-Z][A-Za-z0-9]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
REASONS = (gateway_metrics.START_REASONS, gateway_metrics.END_REASONS, gateway_metrics.UPSTREAM_ERROR_REASONS)
KNOWN_LABEL_VALUES = {
    "reason": {reason for reasons in REASONS for reason in reasons},
    "carrier": set(gateway_metrics.CARRIERS),
    "kind": set(gateway_metrics.STREAM_KINDS),
    "op": set(gateway_metrics.STORE_OPS),
    "phase": set(gateway_metrics.CLIENT_TIMEOUT_PHASES),
    "outcome": {*gateway_metrics.DEFERRED_OUTCOMES, *gateway_metrics.EVENT_OUTCOMES},
    "type": set(gateway_metrics.EVENT_TYPES),
}


def exposed_names() -> set[str]:
    registry = CollectorRegistry()
    gateway_metrics.Metrics(registry)
    return {f.name + suffix for f in registry.collect() for suffix in SUFFIXES.get(f.type, ("",))}


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_parses(tmp_path: Path) -> None:
    queries = all_queries()
    checks = [{"record": f"query_check_{i}", "expr": concrete(expr)} for i, (_, expr) in enumerate(queries)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": checks}]}))
    result = promtool("check", "rules", str(path))
    index = "\n".join(f"query_check_{i}: {where}" for i, (where, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{index}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_queries_use_only_existing_metrics() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    known = exposed_names() | recorded
    for where, expr in all_queries():
        names = {n for n in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if "session_gateway_" in n}
        assert names <= known, f"{where}: unknown metrics {sorted(names - known)}"


def test_queries_use_known_label_values() -> None:
    for where, expr in all_queries():
        for label, _, values in re.findall(
            r'\b(reason|carrier|kind|op|phase)\s*(=~|=|!=|!~)\s*"([^"]*)"', expr
        ):
            unknown = set(values.split("|")) - KNOWN_LABEL_VALUES[label]
            assert not unknown, f"{where}: {label} values {sorted(unknown)} are not in gateway/ops/metrics.py"


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in rules():
        if "record" in rule:
            assert RECORDING_NAME.fullmatch(rule["record"]), rule["record"]
            assert "session_gateway_" in rule["record"].split(":")[1], rule["record"]


def test_alerts_follow_the_mixin_conventions() -> None:
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 10
    for alert in alerts:
        name = alert["alert"]
        assert ALERT_NAME.fullmatch(name), name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
        assert "{{" not in summary and summary.endswith("."), f"{name}: summary must be a static sentence"
        assert "{{" in description, f"{name}: description must be templated"


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for alert in (r["alert"] for r in rules() if "alert" in r):
        outcomes = cases.get(alert, [])
        assert True in outcomes, f"{alert}: no test shows it firing"
        assert False in outcomes, f"{alert}: no test shows it silent"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'x{job=~"$job",instance=~"$instance"}[$__rate_interval]',
            'x{job=~"session-gateway",instance=~".*"}[1m]',
        ),
        ("increase(x[${__range}])", "increase(x[1h])"),
        ('label_replace(x, "class", "${1}xx", "code", "(.).*")',) * 2,
    ],
    ids=["plain", "braced", "label-replace-group"],
)
def test_grafana_variables_are_replaced(expr: str, expected: str) -> None:
    assert concrete(expr) == expected


def test_unknown_grafana_variable_is_reported() -> None:
    with pytest.raises(AssertionError, match=r"\$instnace"):
        concrete('x{instance=~"$instnace"}')
