"""The benchmark's pure parts: the stack generator (reconciler spec and compose file from one
description) and the table/ratio formatting. No Docker; milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.core.specs import parse_duration
from reconciler.loading import load
from tests.bench import generate as gen
from tests.bench import report
from tests.bench.engine import CountingRuntime, normalise
from tests.bench.report import Row
from tests.bench.scenarios import add_b4_rows, lower_bounds, order


def _compose(stack: gen.Stack, tmp: Path) -> dict[str, Any]:
    path = gen.write_compose(stack, tmp / "compose")
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    assert data["version"] == "2.4"
    return data


@pytest.mark.parametrize("make", [
    lambda p: gen.demo_stack(p),
    lambda p: gen.demo_stack(p, edge_port=18088),
    lambda p: gen.scale_stack(p, 12, fast=["ext-4"]),
    lambda p: gen.scale_stack(p, 50, interval_s=4.0),
])
def test_spec_validates_and_compose_has_the_same_services_and_edges(
        make: Callable[[str], gen.Stack], tmp_path: Path) -> None:
    stack = make("bench-0123abcd-r")
    loaded = load(gen.write_reconciler(stack, tmp_path / "spec"), strict=True)
    spec = loaded.spec
    compose = _compose(stack, tmp_path)
    assert set(spec.services) == set(compose["services"])
    for name, svc in spec.services.items():
        body = compose["services"][name]
        assert set(svc.depends_on) == set(body.get("depends_on", {}))
        assert all(v == {"condition": "service_healthy"}
                   for v in body.get("depends_on", {}).values())
        assert body["image"] == svc.image
        assert dict(svc.environment) == body.get("environment", dict(svc.environment))
        assert svc.replicas == body.get("scale", 1)
        assert list(svc.volumes) == [v for v in body.get("volumes", [])
                                     if not v.startswith("./")] or name == "nginx"
        if svc.healthcheck is not None:
            hc = body["healthcheck"]
            assert list(svc.healthcheck.test or ()) == hc["test"]
            assert svc.healthcheck.interval == parse_duration(hc["interval"])
    # tiers of a scale stack: depends_on only points to the tier before
    tier_of = {n: s.tier for n, s in spec.services.items()}
    for name, svc in spec.services.items():
        for dep in svc.depends_on:
            assert spec.tiers.index(tier_of[dep]) <= spec.tiers.index(tier_of[name])


def test_scale_stack_shape(tmp_path: Path) -> None:
    assert gen.tier_sizes(12) == [1, 4, 4, 3]
    assert gen.tier_sizes(50) == [5, 15, 15, 15]
    assert sum(gen.tier_sizes(5000)) == 5000
    stack = gen.scale_stack("bench-x", 50, fast=["ext-15"])
    infra = [s for s in stack.services if s.tier == "infrastructure"]
    assert all(s.volume == f"{s.name}-data" for s in infra)
    assert {s.name for s in stack.services if s.interval_s == 0.5} == {"ext-15"}
    assert all(len(s.depends_on) == 1 for s in stack.services if s.tier != "infrastructure")
    changed = stack.with_version("ext-15", "1.7")
    assert [s.version for s in changed.services if s.name == "ext-15"] == ["1.7"]
    assert stack.replicas_total() == 50 and gen.demo_stack("p").replicas_total() == 12


def test_big_specs_are_split_under_the_loader_file_cap(tmp_path: Path) -> None:
    directory = gen.write_reconciler(gen.scale_stack("bench-big", 1300), tmp_path / "s")
    files = sorted(p.name for p in directory.glob("*.yaml"))
    assert files[0] == "00-project.yaml" and len(files) >= 5
    assert max(p.stat().st_size for p in directory.glob("*.yaml")) < 1024 * 1024


def test_durations_are_written_the_way_compose_accepts_them() -> None:
    assert gen.ms(2.0) == "2s" and gen.ms(0.5) == "500ms" and gen.ms(0) == "0s"


def test_dump_yaml_round_trips() -> None:
    doc = {"a": {"b": ["x", {"c": 1, "d": "no"}], "e": {}}, "f": [], "g": True,
           "with space": "1.0"}
    assert YAML(typ="safe").load(gen.dump_yaml(doc)) == doc


def test_lower_bound_sums_the_slowest_tier_delay_and_one_start_per_tier() -> None:
    stack = gen.demo_stack("p")  # delays 2, 1, 1, 0; interval 0.5 s
    issue, probe = lower_bounds(stack, 0.25)
    assert issue == pytest.approx(2 + 1 + 1 + 0 + 4 * 0.25)
    assert probe == pytest.approx(2 + 1 + 1 + 0.5 + 4 * 0.25)


def test_chain_levels_count_health_gated_chains_inside_tiers_and_over_the_graph() -> None:
    per_tier, graph = gen.chain_levels(gen.demo_stack("x"))
    # core: auth-service -> user-service; business: catalog -> order -> payment -> gateway
    assert per_tier == {"infrastructure": 1, "core": 2, "business": 4, "external": 1}
    # without tiers: db -> catalog -> order -> payment -> api-gateway -> web
    assert graph == 6
    flat = gen.scale_stack("y", 12)  # chains only between tiers
    assert gen.chain_levels(flat) == ({t: 1 for t in gen.TIERS}, 4)


def test_chain_delays_weigh_the_chains_by_readiness() -> None:
    # B1: tiers 2 (infra) + 1 + 1 (auth -> user) + 1 + 1 + 1 + 1 (catalog ... gateway) + 0 (web);
    # the bare graph: db 2 -> catalog -> order -> payment -> gateway -> web 0
    assert gen.chain_delays(gen.demo_stack("x")) == (8, 6)
    assert gen.chain_delays(gen.demo_stack("x", ready_s=2)) == (16, 12)


def test_ab_alternation() -> None:
    assert order(0) == ("reconciler", "compose") and order(1) == ("compose", "reconciler")


def test_table_medians_ranges_ratios_and_targets() -> None:
    rows = [
        Row("B2", "no-op CLI at 200 services", "s", rec=[0.9, 0.7, 0.8], cmp=[2.0, 1.6, 1.8],
            target="<= 0.5 x compose", met=True),
        Row("B2", "in-process pass", "s", rec=[0.120, 0.100, 0.110], target="< 50 ms",
            met=False),
        Row("B5", "drift", "s", rec=[1.5], target="< 2 s", met=True,
            note="compose: n/a (no controller)"),
        Row("B4", "rolling update", "count", target="0 failed", note="not run: no edge_compare"),
    ]
    assert rows[0].rec_median == 0.8 and rows[0].cmp_median == 1.8
    assert rows[0].ratio == pytest.approx(0.8 / 1.8)
    table = report.table_rows(rows)
    assert table[0][2] == "800 ms (700 ms-900 ms)"
    assert table[0][3] == "1.8 s (1.6 s-2 s)"
    assert table[0][4] == "0.44" and table[0][6] == "met"
    assert table[1][2] == "110 ms (100 ms-120 ms)" and table[1][3] == "n/a"
    assert table[1][4] == "-" and table[1][6] == "NOT met"
    assert table[2][3] == "n/a"
    assert table[3][2].startswith("not run") and table[3][6] == "not run"
    md = report.markdown(rows)
    assert md.splitlines()[0].startswith("| scenario | metric |")
    assert md.count("\n") == 2 + len(rows)
    text = report.plain(rows)
    assert "NOT met" in text and "0.44" in text
    summary = report.summary(rows)
    assert summary.startswith("targets: 2 met, 1 not met")
    assert "B2 in-process pass" in summary


def test_number_formatting() -> None:
    assert report.fmt_num(None) == "-"
    assert report.fmt_num(0.0123, "s") == "12.3 ms"
    assert report.fmt_num(12.345, "s") == "12.3 s"
    assert report.fmt_num(3.0, "calls") == "3 calls"
    assert report.fmt_num(45.5, "MB") == "45.5 MB"
    assert report.fmt_num(1234.5, "MB") == "1234 MB"
    assert report.ratio(1.0, 0) is None and report.ratio(None, 1.0) is None


def test_b4_rows_from_edge_compare_results() -> None:
    rows: list[Row] = []
    add_b4_rows(rows, [{"reconciler": {"failed": 0, "longest_gap_s": 0.05, "total": 900},
                        "compose": {"failed": 71, "longest_gap_s": 1.25, "total": 880}}])
    failed = next(r for r in rows if "failed" in r.metric)
    assert failed.rec == [0.0] and failed.cmp == [71.0] and failed.met is True
    assert any("gap" in r.metric and r.cmp == [1.25] for r in rows)
    odd: list[Row] = []
    add_b4_rows(odd, [{"something": 1}])
    assert odd and odd[0].note.startswith("edge_compare returned")


def test_engine_path_normalisation_and_counting_runtime() -> None:
    assert normalise("/v1.41/containers/abc123/json?x=1") == "/containers/{id}/json"
    assert normalise("/v1.41/containers/json?all=1") == "/containers/json"
    assert normalise("/_ping") == "/_ping"

    class Inner:
        async def list_containers(self, *, label: str) -> list[str]:
            return [label]

    import asyncio

    counting = CountingRuntime(Inner())
    assert asyncio.run(counting.list_containers(label="x")) == ["x"]
    assert counting.total == 1 and counting.calls["list_containers"] == 1


def test_stateful_services_down_at_once_from_events() -> None:
    from tests.bench.engine import max_down_together

    def ev(action: str, svc: str, cid: str) -> dict[str, Any]:
        return {"Action": action, "Actor": {"ID": cid, "Attributes": {"svc": svc}}}

    one_by_one = [ev("die", "db", "d1"), ev("start", "db", "d2"), ev("die", "cache", "c1"),
                  ev("start", "cache", "c2"), ev("die", "web", "w1")]
    together = [ev("die", "db", "d1"), ev("die", "cache", "c1"), ev("start", "db", "d2"),
                ev("start", "cache", "c2")]
    assert max_down_together(one_by_one, ["db", "cache"], "svc") == 1
    assert max_down_together(together, ["db", "cache"], "svc") == 2
    assert max_down_together([], ["db", "cache"], "svc") == 0
