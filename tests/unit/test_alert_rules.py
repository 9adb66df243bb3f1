"""The Prometheus config, the alert rules and their promtool unit tests, checked by promtool."""

from __future__ import annotations

import fnmatch

from ruamel.yaml import YAML

from tests.monitoring import ALERT_TESTS, PROM_DIR, RULES, alert_rules, promtool

ALERTS = {
    "ReconcilerConvergenceFailing", "ReconcilerRolloutReverted", "ReconcilerRevisionQuarantined",
    "ReconcilerServiceUnhealthy", "ReconcilerDriftRepeated", "ReconcilerGitPullFailing",
    "ReconcilerDown", "ReconcilerStuck", "ReconcilerNotConverged15m",
}


def test_promtool_check_rules() -> None:
    assert RULES
    res = promtool("check", "rules", *map(str, RULES))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = promtool("test", "rules", str(ALERT_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_check_config() -> None:
    for name in ("prometheus.yml", "scrape-reconciler.yml"):
        res = promtool("check", "config", str(PROM_DIR / name))
        assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_exists_with_severity_summary_description() -> None:
    rules = {r["alert"]: r for r in alert_rules() if "alert" in r}
    assert set(rules) >= ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    assert rules["ReconcilerServiceUnhealthy"]["for"] == "5m"
    assert rules["ReconcilerNotConverged15m"]["for"] == "15m"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    tests = YAML(typ="safe").load(ALERT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules() if "alert" in r}
    assert names <= fires, f"never shown to fire: {names - fires}"
    assert names <= silent, f"never shown to stay silent: {names - silent}"


def test_rule_tests_are_not_loaded_as_rules() -> None:
    config = YAML(typ="safe").load((PROM_DIR / "prometheus.yml").read_text())
    globs = config["rule_files"]
    for path in PROM_DIR.rglob("*"):
        rel = str(path.relative_to(PROM_DIR))
        loaded = any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs)
        if path.parent.name == "tests":
            assert not loaded, f"{rel} matches the rule_files globs {globs}"
    for rules in RULES:
        rel = str(rules.relative_to(PROM_DIR))
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not loaded by {globs}"
