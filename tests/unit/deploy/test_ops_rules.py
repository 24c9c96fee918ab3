"""ops/: the Prometheus alert rules name only metrics the services export, each alert has a
runbook, `promtool test rules` passes, and the Grafana dashboard queries existing metrics.
promtool comes from scripts/promtool-up; without it the rule tests fail, not skip."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "bastion-rules.yaml"
SERVICE_DIRS = ("bastion", "proxy", "policy", "graph", "verifier")
#: Series Prometheus itself makes for every scrape target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
#: Words of PromQL that look like metric names.
PROMQL_WORDS = frozenset(
    {"sum", "max", "min", "by", "rate", "increase", "and", "or", "unless", "histogram_quantile", "topk", "le", "time"}
)

#: `Gauge("bastion_…"`, and the `GaugeMetricFamily("bastion_…"` of a custom collector.
_FAMILY = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*(f?)\"(bastion_[a-z0-9_{}]+)\"", re.MULTILINE
)
#: `service="graph"` arguments and the `service: str = "proxy"` default that fill f"bastion_{service}_…".
_SERVICE_ARG = re.compile(r"\bservice(?::\s*str)?\s*=\s*\"([a-z]+)\"")


def exported_metrics() -> set[str]:
    """Every series name the services' code registers, as Prometheus sees them
    (counters gain `_total`; histograms `_bucket`, `_sum`, `_count`)."""
    sources = [path.read_text() for d in SERVICE_DIRS for path in (ROOT / d).glob("**/*.py") if "/v1/" not in str(path)]
    services = {name for text in sources for name in _SERVICE_ARG.findall(text)}
    names: set[str] = set()
    for text in sources:
        for kind, is_f, name in _FAMILY.findall(text):
            expanded = [name.replace("{service}", s) for s in services] if is_f else [name]
            for family in expanded:
                base = family.removesuffix("_total")
                if kind == "Counter":
                    names |= {f"{base}_total", f"{base}_created"}
                elif kind in ("Histogram", "Summary"):
                    names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
                else:
                    names.add(family)
    return names


def _names_in(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}|\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    without_strings = re.sub(r"\"[^\"]*\"|\[[^\]]*\]", "", without_labels)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_strings))
    return {w for w in words if w not in PROMQL_WORDS and not w.isdigit()}


def _alerts() -> list[dict[str, Any]]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_the_code_scan_finds_the_metrics_of_every_service() -> None:
    # Guards the scan itself: if it found nothing, every rule would look wrong, or (worse) right.
    found = exported_metrics()
    assert {
        "bastion_action_latency_seconds_bucket",
        "bastion_journal_lag_seconds",
        "bastion_policy_rollout_decisions_total",
        "bastion_graph_ingest_events_total",
        "bastion_proxy_identity_synced",
        "bastion_graph_identity_synced",
        "bastion_policy_bundle_expiry_timestamp_seconds",
        "bastion_audit_chain_ok",
        "bastion_verifier_fallback_total",
    } <= found


def test_every_metric_an_alert_names_is_exported_by_the_code() -> None:
    known = exported_metrics() | PROMETHEUS_SERIES
    for alert in _alerts():
        unknown = _names_in(alert["expr"]) - known
        assert not unknown, f"{alert['alert']} names metrics no service exports: {sorted(unknown)}"


def test_every_alert_has_a_severity_and_a_runbook_page() -> None:
    for alert in _alerts():
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        page = OPS / "runbooks" / f"{alert['labels']['runbook']}.md"
        assert page.is_file(), f"{alert['alert']}: missing {page.relative_to(ROOT)}"
        assert alert["alert"] in page.read_text(), f"{page.name} does not name {alert['alert']}"
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["annotations"]["description"], alert["alert"]


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        found = subprocess.run(
            [str(ROOT / "scripts" / "promtool-up")], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/promtool-up could not run: {exc}")
    if found.returncode != 0:
        pytest.fail(f"scripts/promtool-up failed (exit {found.returncode}):\n{found.stderr[-3000:]}")
    return found.stdout.strip().splitlines()[-1]


def test_rules_pass_promtool_check_and_their_unit_tests(promtool: str) -> None:
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "bastion-rules.test.yaml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "bastion-dashboard.json").read_text())
    known = exported_metrics() | PROMETHEUS_SERIES
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        assert _names_in(expr) <= known, (expr, sorted(_names_in(expr) - known))
