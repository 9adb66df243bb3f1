"""The Prometheus config, the alert rules and their promtool unit tests, checked by promtool."""

from __future__ import annotations

import fnmatch

from ruamel.yaml import YAML

from tests.monitoring import ALERT_TESTS, PROM_DIR, RULES, alert_rules, promtool

ALERTS = {
    "ReconcilerConvergenceFailing", "ReconcilerRolloutReverted", "ReconcilerRevisionQuarantined",
    "ReconcilerServiceUnhealthy", "ReconcilerDriftRepeated", "ReconcilerGitPullFailing",
    "ReconcilerDown", "ReconcilerStuck", "ReconcilerNotConverged15m",
    # issue 17: the edge, the services' health checks, rollout duration by result
    "EdgeBadGatewayDuringRollout", "EdgeGatewayErrorsHigh", "ServiceHealthChecksFailing",
    "ReconcilerRolloutsSlow",
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


def test_the_stack_scrapes_the_reconciler_where_the_unit_serves_it() -> None:
    """A fresh install: deploy/reconciler.service's --metrics-addr is the stack Prometheus's
    reconciler target, and the target is an address containers reach (the docker0 gateway),
    from a network the prometheus service is on (a non-internal one: it has a route out)."""
    import re

    from reconciler.loading import load

    unit = (PROM_DIR.parent / "reconciler.service").read_text()
    addr = re.search(r"--metrics-addr (\S+)", unit)
    assert addr is not None
    config = YAML(typ="safe").load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["reconciler"]["static_configs"] for t in sc["targets"]]
    assert targets == [addr.group(1)] == ["172.17.0.1:9321"]
    spec = load(PROM_DIR.parent.parent / "specs", strict=False).spec
    prom = spec.services["prometheus"]
    assert any(not spec.network(n).internal for n in prom.networks)
    # Prometheus answers under its route prefix, also to its own scrape
    assert "--web.route-prefix=/prometheus" in (prom.command or ())
    assert jobs["prometheus"]["metrics_path"] == "/prometheus/metrics"
