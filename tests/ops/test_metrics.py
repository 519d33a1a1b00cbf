"""gateway/ops/metrics.py: the exposition after real traffic passes `promtool check metrics`, names and labels."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from conftest_tools import REPO
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from promql import promtool, rules
from served import GatewayTestServer
from session_helpers import make_session_config
from traffic import ACTIVE, ENDED, REJECTED, SESSION_OPTIONS, STARTED, UPSTREAM_ERRORS, Traffic, bot_app, run

from gateway import __version__
from gateway.app import admin_app_for, create_app
from gateway.ops import metrics as m

FOREIGN_PREFIXES = ("process_", "python_")  # prometheus_client's own collectors
LABEL_VALUES = {
    "reason": {*m.START_REASONS, *m.END_REASONS, *m.UPSTREAM_ERROR_REASONS},
    "carrier": set(m.CARRIERS),
    "kind": set(m.STREAM_KINDS),
    "op": set(m.STORE_OPS),
    "phase": set(m.CLIENT_TIMEOUT_PHASES),
    "outcome": {*m.DEFERRED_OUTCOMES, *m.EVENT_OUTCOMES},
    "type": set(m.EVENT_TYPES),
    "method": set(m.METHODS),
    "replica": {"default"},
    "version": {__version__},
}


async def scrape_after_traffic(aiohttp_server: Any, aiohttp_client: Any) -> tuple[str, Traffic]:
    """Run the scripted scenario through a gateway in front of the demo bot; /metrics from its admin app."""
    bot = await aiohttp_server(bot_app())
    registry = CollectorRegistry()
    app = create_app(
        make_session_config(f"http://127.0.0.1:{bot.port}", session=SESSION_OPTIONS), registry=registry
    )
    client = await aiohttp_client(GatewayTestServer(app), cookie_jar=aiohttp.DummyCookieJar())
    admin = await aiohttp_client(admin_app_for(app))
    traffic = Traffic(client, registry)
    await run(traffic)
    async with admin.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return await response.text(), traffic


async def test_exposition_passes_promtool_and_counts_the_scenario(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    text, traffic = await scrape_after_traffic(aiohttp_server, aiohttp_client)

    result = promtool("check", "metrics", stdin=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr

    # The scenario's implications, as the gateway counted them (the Prometheus test checks them again).
    v = traffic.value
    for reason in m.START_REASONS:
        assert v("session_gateway_sessions_started_total", reason=reason) == STARTED.get(reason, 0), reason
    for reason in m.END_REASONS:
        assert v("session_gateway_sessions_ended_total", reason=reason) == ENDED.get(reason, 0), reason
    for reason in m.UPSTREAM_ERROR_REASONS:
        assert v("session_gateway_upstream_errors_total", reason=reason) == UPSTREAM_ERRORS.get(reason, 0), (
            reason
        )
    for carrier in m.CARRIERS:
        assert v("session_gateway_session_carrier_total", carrier=carrier) == traffic.carriers[carrier], (
            carrier
        )
    for (method, code), count in traffic.requests.items():
        assert v("session_gateway_requests_total", method=method, code=code) == count, (method, code)
    assert v("session_gateway_sessions_rejected_total") == REJECTED
    assert v("session_gateway_sessions_active") == v("session_gateway_sessions_active_max") == ACTIVE
    assert v("session_gateway_session_duration_seconds_count") == sum(ENDED.values())
    assert v("session_gateway_requests_in_flight") == 0
    assert v("session_gateway_build_info", version=__version__) == 1


async def test_names_and_label_values_are_bounded(aiohttp_server: Any, aiohttp_client: Any) -> None:
    text, traffic = await scrape_after_traffic(aiohttp_server, aiohttp_client)
    families = list(text_string_to_metric_families(text))
    assert any(f.name.startswith("process_") for f in families), "the process collector is gone"
    for family in families:
        assert family.name.startswith(("session_gateway_", *FOREIGN_PREFIXES)), family.name
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "code":
                    assert re.fullmatch(r"[1-5][0-9][0-9]", value), (sample.name, value)
                elif label == "le":
                    float(value)  # a bucket bound, "+Inf" included
                else:
                    assert value in LABEL_VALUES.get(label, ()), f"{sample.name}: {label}={value!r}"
    assert traffic.secrets, "the scenario saw no session id"
    leaked = sorted(s for s in traffic.secrets if s in text)
    assert not leaked, f"session ids or affinity values in /metrics: {leaked}"


def _buckets(name: str) -> list[float]:
    registry = CollectorRegistry()
    m.Metrics(registry)
    return [
        float(s.labels["le"]) for f in registry.collect() for s in f.samples if s.name == f"{name}_bucket"
    ]


def test_latency_buckets_reach_300s_and_have_an_edge_at_every_alert_threshold() -> None:
    for name in ("session_gateway_request_duration_seconds", "session_gateway_upstream_first_byte_seconds"):
        edges = _buckets(name)
        assert edges[0] <= 0.005 and 300 in edges, (name, edges)
    thresholds = []
    for rule in rules():
        for histogram, threshold in re.findall(
            r"histogram_quantile\([^,]+,\s*[^)]*?(session_gateway_\w+?)_bucket[^)]*\)\s*>\s*([0-9.]+)",
            rule["expr"],
        ):
            thresholds.append((rule.get("alert"), histogram, float(threshold)))
            assert float(threshold) in _buckets(histogram), (
                f"{rule.get('alert')}: no {threshold}s edge in {histogram}"
            )
    assert thresholds, "no latency alert found: the regex no longer matches alerts.yaml"


def test_readme_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    readme = (REPO / "docs" / "operating.md").read_text()  # the README's Metrics section moved there
    section = readme.partition("\n## Metrics\n")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `([a-z_*]+)` \|\s*(\w*)\s*\|([^|]*)\|", section, flags=re.MULTILINE)
    documented = {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}
    metrics = m.Metrics(CollectorRegistry())
    exposed = metrics.hot.declared()  # the per-request ones (gateway/ops/hotmetrics.py)
    # Some families are kept only as their children, one per label value (client_timeouts[phase]).
    children = [c for v in vars(metrics).values() if isinstance(v, dict) for c in v.values()]
    for metric in [*vars(metrics).values(), *children]:
        if isinstance(metric, MetricWrapperBase):
            # The labels of a family with no child yet appear in no sample: read the declared names.
            name = metric._name + ("_total" if metric._type == "counter" else "")
            exposed[name] = (metric._type, set(metric._labelnames))
    assert "process_*" in documented
    documented.pop("process_*")
    assert documented == exposed
