"""Containers found in every state get a defined action, never a traceback.

Real engine: exited, paused, created-not-started (a clone `docker create`d under the
replica's name and labels, as a crash between create and start leaves it), and a name taken
by a foreign container. Planner table (the engine cannot be made to hold these states on
demand): restarting, dead, removal-in-progress, and the others again for completeness."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.core import snapshots
from reconciler.core.plans import compute
from tests.dockerkit import APP, Host, docker
from tests.faults import kit
from tests.specfactory import container_json, desired_from

SPEC = """
project: shop
networks: {backend: {}}
services:
  web:
    tier: business
    image: web:1
    networks: [backend]
"""

# state (as the engine's list reports it) -> the step line the planner must produce
TABLE = {
    "running": ("running", "Up 1 minute (healthy)", []),
    "unhealthy": ("running", "Up 1 minute (unhealthy)", ["recreate web[1]",
                                                         "container unhealthy"]),
    "created": ("created", "Created", ["start web[1]", "container created but never started"]),
    "exited": ("exited", "Exited (0) 3 seconds ago", ["start web[1]", "container stopped"]),
    "crashed": ("exited", "Exited (137) 3 seconds ago", ["start web[1]", "container stopped"]),
    "restarting": ("restarting", "Restarting (1) 2 seconds ago",
                   ["recreate web[1]", "container restarting"]),
    "paused": ("paused", "Up 1 minute (Paused)", ["recreate web[1]", "container paused"]),
    "dead": ("dead", "Dead", ["recreate web[1]", "container dead"]),
    "removing": ("removing", "Removal In Progress", ["create web[1]", "replica missing"]),
    "unknown-state": ("bogus", "???", ["recreate web[1]", "container dead"]),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_planner_has_a_defined_action_for_every_state(tmp_path: Path, case: str) -> None:
    state, status, expected = TABLE[case]
    d = desired_from(tmp_path, SPEC)
    snap = snapshots.parse(d.project, [container_json(d, "web", 1, state=state, status=status)],
                           networks=[{"Name": "shop_backend",
                                      "Labels": {"reconciler.project": "shop"}}])
    plan = compute(d, snap)
    got = [f"{s.id}|{s.reason}" for s in plan.steps]
    if not expected:
        assert got == []
    else:
        assert len(got) == 1 and got[0].startswith(expected[0]) and got[0].endswith(
            expected[1]), got
    # the next plan, once the step is done, is empty
    done = snapshots.parse(d.project, [container_json(d, "web", 1)],
                           networks=[{"Name": "shop_backend",
                                      "Labels": {"reconciler.project": "shop"}}])
    assert compute(d, done).empty


def web(h: Host) -> dict[str, Any]:
    ws = h.by_service()["web"]
    assert len(ws) == 1, [w["Name"] for w in ws]
    return ws[0]


def healthy_web(h: Host) -> bool:
    ws = h.by_service().get("web", [])
    return len(ws) == 1 and kit.all_healthy(ws)


@pytest.mark.docker
def test_real_engine_states_get_a_defined_action(host: Host) -> None:
    figures = kit.Figures("containers in every state (real engine)")
    kit.write_stack(host, kit.DUO)
    assert kit.cli(host, "apply").returncode == 0
    data = kit.plant_sentinel(host)
    results = []

    def repair(case: str, expect: str, *, exit_code: int = 0) -> str:
        t0 = time.monotonic()
        res = kit.cli(host, "apply")
        out = res.stdout + res.stderr
        assert "Traceback" not in out and "internal error" not in out, out
        assert res.returncode == exit_code, f"{case}: {out}"
        assert expect in out, f"{case}: expected {expect!r} in:\n{out}"
        if exit_code == 0:
            took = kit.wait_for(lambda: healthy_web(host), 30)
            assert took is not None, case
        seconds = time.monotonic() - t0
        figures.trial(True, seconds)
        results.append(f"{case}: {expect} ({seconds:.1f}s)")
        return out

    # exited -> started again, same container
    before = web(host)
    docker("stop", "-t", "1", before["Id"])
    repair("exited", "ok   start web[1]")
    assert web(host)["Id"] == before["Id"]

    # paused -> recreated (a paused container cannot pass a health gate)
    docker("pause", web(host)["Id"])
    repair("paused", "ok   recreate web[1]")
    assert not web(host)["State"]["Paused"]

    # created-not-started: a clone under the replica's own name and labels is started
    current = web(host)
    docker("rm", "-f", current["Id"])
    net = f"{host.project}_backend"
    args = ["create", "--name", current["Name"].lstrip("/"), "--network", net,
            "--network-alias", "web"]
    for k, v in current["Config"]["Labels"].items():
        args += ["--label", f"{k}={v}"]
    for e in current["Config"]["Env"]:
        args += ["--env", e]
    hc = current["Config"]["Healthcheck"]
    args += ["--health-cmd", hc["Test"][-1] if hc["Test"][0] == "CMD-SHELL" else
             " ".join(hc["Test"][1:]), "--health-interval", "300ms", f"{APP}:1.0"]
    clone = docker(*args).strip()
    repair("created-not-started", "ok   start web[1]")
    assert web(host)["Id"] == clone

    # name taken by a foreign container: refused, the foreign container is left untouched
    name = web(host)["Name"].lstrip("/")
    docker("rm", "-f", web(host)["Id"])
    foreign = docker("run", "-d", "--name", name, f"{APP}:1.0").strip()
    repair("foreign-name", "is taken by a container that is not ours", exit_code=1)
    info = json.loads(docker("inspect", foreign))[0]
    assert info["State"]["Running"] and "reconciler.project" not in info["Config"]["Labels"]
    quarantine = host.state / "quarantine.json"
    assert not quarantine.exists() or json.loads(quarantine.read_text()) == {}, (
        "repairing the last-good spec failed, and the last-good spec got quarantined")
    docker("rm", "-f", foreign)
    repair("foreign-name removed", "ok   create web[1]")

    assert kit.sentinel(host) == data
    kit.record_host(host)
    figures.notes.extend(results)
    figures.show()
