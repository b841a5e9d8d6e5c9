"""ops/prometheus checked by promtool (Debian's ``prometheus`` package, installed by ``make deps``):
the scrape config, the alert rules, and the rule unit tests (each alert firing and not firing).
A missing promtool fails these tests: CI must run them, not skip them."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from streams.observability import metrics
from tests.promql import exported_series, selectors
from tests.support import REPO

PROM = REPO / "ops/prometheus"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's `prometheus` package (`make deps` installs it)"
        )
    result = subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_tests() -> list[str]:
    return sorted(str(p.relative_to(PROM)) for p in (PROM / "tests").glob("*.yml"))


def test_scrape_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out


def test_alert_rules_are_valid() -> None:
    out = promtool("check", "rules", "alerts.yml")
    assert f"{len(rules())} rules found" in out


def test_alert_rule_unit_tests_pass() -> None:
    files = rule_tests()
    assert files, "no rule tests in ops/prometheus/tests"
    promtool("test", "rules", *files)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    seen: dict[str, set[bool]] = {}
    for name in rule_tests():
        doc = yaml.safe_load((PROM / name).read_text())
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                seen.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for rule in rules():
        assert seen.get(rule["alert"]) == {True, False}, f"{rule['alert']}: needs a firing and a quiet case"


def test_alerts_select_only_exported_series_and_labels() -> None:
    exported = {**exported_series(metrics.REGISTRY), "up": frozenset({"job", "instance"})}
    for rule in rules():
        found = selectors(rule["expr"])
        assert found, f"{rule['alert']} selects no metric"
        for sel in found:
            assert sel.name in exported, f"{rule['alert']} uses {sel.name}, which the worker does not export"
            assert sel.labels <= exported[sel.name] | {"job", "instance"}, (rule["alert"], sel)
