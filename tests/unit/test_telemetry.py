"""Metrics, the /metrics endpoint and the dashboard against DESIGN.md §7 (fresh registry per
test, promtool on the exposition, real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import telemetry
from reconciler.core.plans import Reason, drift_kind
from reconciler.execute import FailureKind
from reconciler.telemetry import Metrics, SwarmMetrics, serve
from tests.monitoring import (
    DS,
    alert_rules,
    dashboard,
    dashboard_queries,
    metric_names,
    panels,
    promtool,
)

# DESIGN.md §7: exposition name -> (type, label names)
DESIGN = {
    "reconciler_reconcile_total": ("counter", {"result"}),
    "reconciler_reconcile_duration_seconds": ("histogram", {"result"}),  # result: issue 17
    "reconciler_converged": ("gauge", set()),
    "reconciler_steps_total": ("counter", {"action", "outcome"}),
    "reconciler_tier_duration_seconds": ("histogram", {"tier"}),
    "reconciler_health_wait_seconds": ("histogram", {"service"}),
    "reconciler_rollbacks_total": ("counter", {"reason"}),
    "reconciler_drift_total": ("counter", {"kind"}),
    "reconciler_service_replicas": ("gauge", {"service", "tier", "state"}),
    "reconciler_spec_info": ("gauge", {"revision", "fingerprint"}),
    "reconciler_last_good_info": ("gauge", {"revision"}),
    "reconciler_quarantined_revisions": ("gauge", set()),
    "reconciler_last_success_timestamp_seconds": ("gauge", set()),
    "reconciler_docker_events_reconnects_total": ("counter", set()),
    "reconciler_git_pull_total": ("counter", {"result"}),
    "reconciler_build_info": ("gauge", {"version"}),
}
SUFFIXES = ("_bucket", "_sum", "_count")
CONTAINER_ID = "3f9c2a1b" * 8  # 64 hex characters, like a container id or a sha256


def exercised() -> tuple[CollectorRegistry, Metrics]:
    """A fresh registry with every method called once."""
    reg = CollectorRegistry()
    m = Metrics(reg, version="0.1.0")
    m.pass_done("converged", 12.5)
    m.step("replace", "ok")
    m.tier("core", 3.2)
    m.health_wait("api", 1.4)
    m.rollback("health_gate")
    m.drift("removed")
    m.replicas([("api", "business", 2, 2, 1), ("db", "infrastructure", 1, 1, 1)])
    m.health_check_failed("api")
    m.spec("a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2", "3f9c2a1b0c0d")
    m.last_good("a1b2c3d4e5f6")
    m.quarantined(1)
    m.converged(True)
    m.last_success(1_700_000_000.0)
    m.heartbeat(1_700_000_000.0)
    m.events_reconnect()
    m.git_pull("ok")
    m.engine_call("containers.list")
    sm = SwarmMetrics(reg)
    sm.tasks({("api", "node-1", "running"): 2, ("api", "node-2", "starting"): 1})
    sm.nodes([("node-1", "manager", "ready", "active")])
    return reg, m


Sample = tuple[str, dict[str, str], float]


def families(reg: CollectorRegistry) -> dict[str, tuple[str, list[Sample]]]:
    """Parsed exposition: sample-family name -> (type, samples)."""
    out: dict[str, tuple[str, list[Sample]]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        out[name] = (fam.type, [(s.name, dict(s.labels), s.value) for s in fam.samples])
    return out


def sample_names(reg: CollectorRegistry) -> set[str]:
    return {s[0] for _, samples in families(reg).values() for s in samples}


# --- names, types, labels -----------------------------------------------------------------


def test_every_design_metric_is_exported_with_its_type_and_labels() -> None:
    reg, _ = exercised()
    fams = families(reg)
    for name, (kind, labels) in DESIGN.items():
        assert name in fams, f"{name} is not exported"
        got_kind, samples = fams[name]
        assert got_kind == kind, f"{name}: {got_kind}, want {kind}"
        assert samples, f"{name} has no samples"
        for sample, sample_labels, _ in samples:
            keys = set(sample_labels) - {"le"}
            assert keys == labels, f"{sample}: labels {sorted(keys)}, want {sorted(labels)}"


def test_known_label_values_are_pre_created_at_zero() -> None:
    reg = CollectorRegistry()
    Metrics(reg, version="1.2.3")
    value = reg.get_sample_value
    for result in ("noop", "converged", "rolled_back", "failed", "invalid_spec"):
        assert value("reconciler_reconcile_total", {"result": result}) == 0
    for action in ("create", "replace", "recreate", "start", "remove", "create-network",
                   "create-volume", "backup"):
        for outcome in ("ok", "failed"):
            assert value("reconciler_steps_total", {"action": action, "outcome": outcome}) == 0
    for reason in ("health_gate", "pull_error", "edge_reload", "deadline", "crash_loop",
                   "engine_error", "other"):
        assert value("reconciler_rollbacks_total", {"reason": reason}) == 0
    for kind in ("removed", "stopped", "dead", "oom", "unhealthy", "config"):
        assert value("reconciler_drift_total", {"kind": kind}) == 0
    for result in ("ok", "unchanged", "failed", "non_fast_forward"):
        assert value("reconciler_git_pull_total", {"result": result}) == 0
    for tier in telemetry.DEFAULT_TIERS:
        assert value("reconciler_tier_duration_seconds_count", {"tier": tier}) == 0
    assert value("reconciler_docker_events_reconnects_total") == 0
    for state in ("failed", "waiting"):
        assert value("reconciler_degraded_services", {"state": state}) == 0
    assert value("reconciler_build_info", {"version": "1.2.3"}) == 1
    assert value("reconciler_converged") == 0
    assert value("reconciler_quarantined_revisions") == 0
    for result in ("noop", "converged", "rolled_back", "failed", "invalid_spec"):
        assert value("reconciler_reconcile_duration_seconds_count", {"result": result}) == 0
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert value("reconciler_edge_requests_total",
                     {"upstream": "edge", "status_class": cls}) == 0
    for code in ("502", "503", "504"):
        assert value("reconciler_edge_gateway_errors_total",
                     {"upstream": "edge", "code": code}) == 0
    # no `_created` series: they double the series count and nothing uses them
    assert not any(n.endswith("_created") for n in sample_names(reg))


def test_calls_move_the_right_series() -> None:
    reg, m = exercised()
    value = reg.get_sample_value
    assert value("reconciler_reconcile_total", {"result": "converged"}) == 1
    assert value("reconciler_reconcile_duration_seconds_sum", {"result": "converged"}) == 12.5
    assert value("reconciler_reconcile_duration_seconds_count", {"result": "noop"}) == 0
    assert value("reconciler_health_check_failures_total", {"service": "api"}) == 1
    assert value("reconciler_health_check_failures_total", {"service": "db"}) == 0
    assert value("reconciler_steps_total", {"action": "replace", "outcome": "ok"}) == 1
    assert value("reconciler_tier_duration_seconds_count", {"tier": "core"}) == 1
    assert value("reconciler_health_wait_seconds_bucket", {"service": "api", "le": "2.0"}) == 1
    assert value("reconciler_rollbacks_total", {"reason": "health_gate"}) == 1
    assert value("reconciler_drift_total", {"kind": "removed"}) == 1
    assert value("reconciler_service_replicas",
                 {"service": "api", "tier": "business", "state": "healthy"}) == 1
    assert value("reconciler_quarantined_revisions") == 1
    assert value("reconciler_converged") == 1
    assert value("reconciler_last_success_timestamp_seconds") == 1_700_000_000
    assert value("reconciler_loop_heartbeat_timestamp_seconds") == 1_700_000_000
    assert value("reconciler_git_pull_total", {"result": "ok"}) == 1
    m.converged(False)
    assert value("reconciler_converged") == 0
    m.rollback("something new")  # unknown causes are counted, as "other"
    assert value("reconciler_rollbacks_total", {"reason": "other"}) == 1
    with pytest.raises(ValueError, match="unknown result"):
        m.pass_done("bogus", 1.0)


def test_info_metrics_keep_only_the_current_label_set() -> None:
    reg, m = exercised()
    m.spec("rev2", "fp2")
    m.spec("rev3", "fp3")
    m.last_good("rev1")
    m.last_good("rev2")
    spec = [s for s in families(reg)["reconciler_spec_info"][1]]
    good = [s for s in families(reg)["reconciler_last_good_info"][1]]
    assert spec == [("reconciler_spec_info", {"revision": "rev3", "fingerprint": "fp3"}, 1.0)]
    assert good == [("reconciler_last_good_info", {"revision": "rev2"}, 1.0)]


def test_replicas_of_services_gone_from_the_spec_are_removed() -> None:
    reg, m = exercised()
    m.replicas([("api", "business", 3, 3, 3)])
    rows = {(s[1]["service"], s[1]["state"]): s[2]
            for s in families(reg)["reconciler_service_replicas"][1]}
    assert rows == {("api", "desired"): 3, ("api", "running"): 3, ("api", "healthy"): 3}
    m.replicas([])
    assert families(reg)["reconciler_service_replicas"][1] == []


def test_no_label_value_looks_like_a_container_id_or_a_secret_hash() -> None:
    reg, m = exercised()
    m.spec(CONTAINER_ID, CONTAINER_ID)
    m.last_good(CONTAINER_ID)
    m.replicas([(f"svc-{CONTAINER_ID}", "core", 1, 1, 1)])
    m.health_wait(CONTAINER_ID, 1.0)
    m.tier(CONTAINER_ID, 1.0)
    m.engine_call(f"containers/{CONTAINER_ID}/json")
    text = generate_latest(reg).decode()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        for value in re.findall(r'="([^"]*)"', line):
            assert not re.search(r"[0-9a-fA-F]{32,}", value), line
            assert len(value) <= 64, line


def test_drift_kinds_and_rollback_reasons_are_known_label_values() -> None:
    for reason in Reason:
        kind = drift_kind(reason)
        assert kind is None or kind in telemetry.DRIFT_KINDS
    assert drift_kind(Reason.REPLICA_MISSING) == "removed"
    assert drift_kind(Reason.STOPPED) == "stopped"
    assert drift_kind(Reason.DEAD) == "dead"
    assert drift_kind(Reason.UNHEALTHY) == "unhealthy"
    assert drift_kind(Reason.CONFIG_CHANGED) is None
    assert drift_kind(Reason.NEW_SERVICE) is None
    assert sorted(k.value for k in FailureKind) == sorted(telemetry.ROLLBACK_REASONS)


def test_promtool_check_metrics_has_no_findings() -> None:
    reg, _ = exercised()
    res = promtool("check", "metrics", stdin=generate_latest(reg))
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout + res.stderr)


# --- the dashboard and the rules use only exported names ----------------------------------


def test_every_metric_in_the_dashboard_and_the_rules_is_exported() -> None:
    reg, _ = exercised()
    exported = sample_names(reg)
    exprs = ([e for _, e in dashboard_queries(dashboard(), engine="swarm")]
             + [r["expr"] for r in alert_rules()])
    used: set[str] = set()
    for expr in exprs:
        used |= metric_names(expr)
    assert used, "no metric names found"
    missing = sorted(n for n in used if n != "up" and n not in exported)
    assert not missing, f"used but not exported: {missing}"
    # ... and everything of §7 is on the dashboard or in an alert, one way or another
    stems = {re.sub(r"(_bucket|_sum|_count)$", "", n) for n in used}
    assert not set(DESIGN) - stems, f"not on the dashboard nor in a rule: {set(DESIGN) - stems}"


def test_dashboard_is_provisionable() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DS
    assert "${DS_" not in str(dash), "file provisioning does not substitute ${DS_*}"
    titles = []
    for panel in panels(dash):
        titles.append(panel["title"])
        assert panel["datasource"] == DS, panel["title"]
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
            assert "$job" in target["expr"] and "$instance" in target["expr"], target["expr"]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    kinds = {p["type"] for p in panels(dash)}
    assert "state-timeline" in kinds


# --- the HTTP endpoint --------------------------------------------------------------------


async def test_serve_answers_metrics_healthz_and_readyz() -> None:
    _, m = exercised()
    state = {"healthy": True, "ready": False}
    runner = await serve(m, "127.0.0.1", 0, healthy=lambda: state["healthy"],
                         ready=lambda: state["ready"])
    try:
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                body = await resp.text()
            assert 'reconciler_reconcile_total{result="converged"} 1.0' in body
            assert "reconciler_build_info" in body

            async def status(path: str) -> int:
                async with http.get(f"{base}{path}") as resp:
                    return resp.status

            assert await status("/healthz") == 200
            assert await status("/readyz") == 503
            state.update(healthy=False, ready=True)
            assert await status("/healthz") == 503
            assert await status("/readyz") == 200
            state["healthy"] = True
            assert await status("/healthz") == 200
    finally:
        await runner.cleanup()


# --- the edge's access log (issue 17) ----------------------------------------------------------


def _line(status: int, upstream: str = "api-gateway", upstream_status: str = "200") -> bytes:
    return json.dumps({"time": "2026-11-30T10:00:00+00:00", "status": status,
                       "upstream": upstream, "upstream_status": upstream_status,
                       "uri": "/v1/x"}).encode()


@pytest.mark.parametrize(("line", "expected"), [
    (_line(200), ("api-gateway", "2xx", None)),
    (_line(404, "", ""), ("edge", "4xx", None)),
    # the friendly 503 of the edge after refused connections: the gateway code is 502
    (_line(503, "api-gateway", "502, 502"), ("api-gateway", "5xx", "502")),
    (_line(503, "grafana", "504"), ("grafana", "5xx", "504")),
    # no live upstream at all: nginx logs no upstream status
    (_line(503, "api-gateway", ""), ("api-gateway", "5xx", "503")),
    (_line(502, "api-gateway", "200 : 502"), ("api-gateway", "5xx", "502")),
    (_line(500, "api-gateway", "500"), ("api-gateway", "5xx", None)),
    (_line(200, "a" * 100), ("other", "2xx", None)),
    (b"not json", None),
    (b'{"status": "abc"}', None),
    (b'{"status": 999}', None),
    (b"[1, 2]", None),
])
def test_edge_record(line: bytes, expected: object) -> None:
    assert telemetry.edge_record(line) == expected


def test_edge_records_count_by_upstream_class_and_gateway_code() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, version="1")
    m.edge_upstreams(["api-gateway"])
    value = reg.get_sample_value
    assert value("reconciler_edge_gateway_errors_total",
                 {"upstream": "api-gateway", "code": "502"}) == 0
    m.edge_records([_line(200), _line(200), _line(503, upstream_status="502"), b"garbage",
                    _line(301, "", "")])
    assert value("reconciler_edge_requests_total",
                 {"upstream": "api-gateway", "status_class": "2xx"}) == 2
    assert value("reconciler_edge_requests_total",
                 {"upstream": "api-gateway", "status_class": "5xx"}) == 1
    assert value("reconciler_edge_gateway_errors_total",
                 {"upstream": "api-gateway", "code": "502"}) == 1
    assert value("reconciler_edge_requests_total",
                 {"upstream": "edge", "status_class": "3xx"}) == 1
    assert value("reconciler_edge_log_lines_total", {"result": "invalid"}) == 1
    assert value("reconciler_edge_log_lines_total", {"result": "ok"}) == 4
    # label values are bounded: past MAX_UPSTREAMS distinct names, "other"
    m.edge_records([_line(200, f"svc-{i}") for i in range(telemetry.MAX_UPSTREAMS + 5)])
    assert value("reconciler_edge_requests_total",
                 {"upstream": "other", "status_class": "2xx"}) == 7


def test_edge_log_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    path.write_bytes(b"old 1\nold 2\n")
    log = telemetry.EdgeLog(path, max_bytes=64, truncate_at=10_000)
    assert log.read() == []  # starts at the end: lines from before the start are not counted
    with path.open("ab") as f:
        f.write(b"a\nb\npart")
    assert log.read() == [b"a", b"b"]
    with path.open("ab") as f:
        f.write(b"ial\n")
    assert log.read() == [b"partial"]
    # rotation: the old file gets its last lines, then the new file is read from its start
    with path.open("ab") as f:
        f.write(b"last of old\n")
    path.rename(tmp_path / "access.json.1")
    path.write_bytes(b"first of new\n")
    assert log.read() == [b"last of old", b"first of new"]
    # truncation (copytruncate): start over at 0
    path.write_bytes(b"")
    with path.open("ab") as f:
        f.write(b"x\n")
    assert log.read() == [b"x"]
    # bounded per read: the rest comes next time
    with path.open("ab") as f:
        f.write(b"".join(b"%02d-line-of-twenty-b\n" % i for i in range(10)))
    first = log.read()
    assert 1 <= len(first) < 10
    rest = []
    for _ in range(10):
        rest += log.read()
    assert len(first) + len(rest) == 10
    # a file that does not exist yet is read from its start once it appears
    late = telemetry.EdgeLog(tmp_path / "later.json")
    assert late.read() == []
    (tmp_path / "later.json").write_bytes(b"hello\n")
    assert late.read() == [b"hello"]
    late.close()
    log.close()


def test_edge_log_truncates_a_large_file_after_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    path.write_bytes(b"")
    log = telemetry.EdgeLog(path, max_bytes=1 << 20, truncate_at=100, max_line=50)
    assert log.read() == []
    with path.open("ab") as f:  # O_APPEND, like nginx
        f.write(b"y" * 80 + b"\n" + b"line\n" * 30)
        f.flush()
        assert log.read() == [b"line"] * 30  # the 80-byte line is over max_line: dropped
        assert path.stat().st_size == 0
        f.write(b"after\n")
    assert log.read() == [b"after"]
    log.close()
