"""deploy/grafana/session-gateway.json: current schema, portable datasource, variables, panels.

That every query parses and names real metrics is checked with the rules in test_deploy_prometheus.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from promql import DASHBOARD

DATASOURCE = "${datasource}"

# Every metric the dashboard must show (issue 4, the Redis store's, and issue 16's edge), recorded or raw.
SHOWN = [
    "session_gateway_sessions_active{",
    "session_gateway_sessions_active_max",
    "session_gateway_sessions_limit",
    "session_gateway_sessions_started",
    "session_gateway_sessions_ended",
    "session_gateway_sessions_rejected_total",
    "session_gateway_session_duration_seconds_bucket",
    "session_gateway_session_requests_bucket",
    "session_gateway_session_idle_gap_seconds_bucket",
    "session_gateway_session_idle_timeout_seconds",
    "session_gateway_session_carrier_total",
    "session_gateway_requests:rate5m",
    "session_gateway_request_errors:rate5m",
    "session_gateway_request_duration_seconds_bucket",
    "session_gateway_upstream_first_byte_seconds_bucket",
    "session_gateway_overhead_seconds_bucket",
    "session_gateway_upstream_errors",
    "session_gateway_requests_in_flight",
    "session_gateway_streams_open",
    "session_gateway_expiry_sweep_duration_seconds_bucket",
    "session_gateway_expiry_sweep_last_timestamp_seconds",
    "session_gateway_store_up",
    "session_gateway_store_errors_total",
    "session_gateway_connections_open",
    "session_gateway_connections_rejected_total",
    "session_gateway_client_timeouts:rate5m",
    "session_gateway_upstream_queue_seconds_bucket",
    "session_gateway_deferred_total",
    "session_gateway_deferred_pending",
    "session_gateway_deferred_pickup_seconds_bucket",
    'code="503"',
]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows only group), including those inside collapsed rows."""
    for panel in document["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_current_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "session-gateway"
    assert dashboard["title"]
    assert "__inputs" not in dashboard, "import-time inputs are not needed with a datasource variable"


def test_no_hard_coded_datasource(dashboard: dict[str, Any]) -> None:
    refs = list(datasource_refs(dashboard))
    assert refs
    for ref in refs:
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert uid == DATASOURCE, f"datasource {ref!r}: expected uid {DATASOURCE}"
        if isinstance(ref, dict):
            assert ref.get("type") == "prometheus", ref


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables.keys()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == DATASOURCE
        assert variable["definition"].startswith("label_values(")
        assert variable["definition"].endswith(f", {name})")
    assert "$job" in variables["instance"]["definition"], "instances should follow the chosen job"
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]


def test_every_panel_queries_prometheus(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        targets = panel.get("targets", [])
        assert any(t.get("expr", "").strip() for t in targets), f"panel {panel['title']!r} has no query"
        for target in targets:
            where = f"panel {panel['title']!r} {target['refId']}"
            # Each query honours the job and instance pickers.
            assert 'job=~"$job"' in target["expr"], f"{where}: no $job filter"
            assert 'instance=~"$instance"' in target["expr"], f"{where}: no $instance filter"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['title']!r}: duplicate refId"


def test_layout(dashboard: dict[str, Any]) -> None:
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in [*rows, *panels(dashboard)]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_shows_every_metric_of_the_issue(dashboard: dict[str, Any]) -> None:
    queries = "\n".join(t["expr"] for p in panels(dashboard) for t in p["targets"])
    missing = [name for name in SHOWN if name not in queries]
    assert not missing, f"not on the dashboard: {missing}"
    assert 'carrier=~"header|path|query"' in queries, "the cookie-blocked share"
