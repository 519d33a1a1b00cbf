"""Every PromQL expression the deploy kit ships, as Prometheus would run it, and promtool.

Shared by test_deploy_prometheus.py (promtool checks) and test_prometheus_server.py (a real Prometheus).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest_tools import REPO, executable, module

yaml = module("yaml", "pip install pyyaml")

RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULES_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "session-gateway.json"
PROMETHEUS_HINT = "apt-get install prometheus (or run scripts/_system_packages.sh as root)"
JOB = "session-gateway"  # the job name the PodMonitors and the Prometheus test use

# Grafana variables and the concrete values Prometheus sees in their place.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "job": JOB,
    "instance": ".*",
}


def promtool(*args: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [executable("promtool", PROMETHEUS_HINT), *args]
    return subprocess.run(
        command, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, and the series selector inside each label_values() variable."""
    document = json.loads(DASHBOARD.read_text())
    for panel in _panels(document):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert match, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            yield f"variable {variable['name']}", match.group(1)


def rule_queries() -> list[tuple[str, str]]:
    return [(f"rule {r.get('record') or r.get('alert')}", r["expr"]) for r in rules()]


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query; `where` is unique."""
    found = rule_queries() + list(dashboard_queries())
    wheres = [where for where, _ in found]
    assert len(set(wheres)) == len(wheres), "two queries share a name"
    return found


def concrete(expr: str) -> str:
    """The query with Grafana's variables replaced; `${1}` (label_replace) is PromQL's and stays."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = re.sub(rf"\$(?:\{{{name}\}}|{name}\b)", value, expr)
    leftover = re.search(r"\$\{?[A-Za-z_]\w*", expr)
    assert leftover is None, f"unknown Grafana variable {leftover.group()} in {expr}"
    return expr
