"""`reconciler apply` against the real dockerd: tier gating, no-op, targeted replacement,
failed rollouts reverted to last-good, volumes kept, foreign containers untouched."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.dockerkit import APP, STACK, Host, docker, swap

pytestmark = pytest.mark.docker


def healthy_everywhere(h: Host) -> None:
    for c in h.containers():
        assert c["State"]["Running"], c["Name"]
        assert c["State"]["Health"]["Status"] == "healthy", c["Name"]


def test_cold_start_gates_each_tier_on_the_previous_one(host: Host) -> None:
    host.write(STACK)
    with host.watch("start", "health_status", "exec_die") as events:
        res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    healthy_everywhere(host)
    assert {s: len(cs) for s, cs in host.by_service().items()} == {
        "db": 1, "auth": 1, "api": 2, "web": 1}
    tier_of = {c["Id"]: c["Config"]["Labels"]["reconciler.tier"] for c in host.containers()}
    order = ["infrastructure", "core", "business", "external"]
    started: dict[str, list[int]] = {t: [] for t in order}
    # a container is ready at its first passing health check: Docker's own (health_status:
    # healthy) or the executor's exec of the same command before Docker's first probe
    # (an exec_die with exit code 0)
    ready_at: dict[str, int] = {}
    for ev in events:
        tier = tier_of.get(ev["id"])
        if tier is None:
            continue
        exit_code = (ev.get("Actor") or {}).get("Attributes", {}).get("exitCode")
        if ev["status"] == "start":
            started[tier].append(ev["timeNano"])
        elif ev["status"].startswith("health_status: healthy") or (
                ev["status"].startswith("exec_die") and exit_code == "0"):
            ready_at.setdefault(ev["id"], ev["timeNano"])
    healthy: dict[str, list[int]] = {t: [] for t in order}
    for cid, at in ready_at.items():
        healthy[tier_of[cid]].append(at)
    for earlier, later in itertools.pairwise(order):
        assert healthy[earlier] and started[later], (earlier, later, healthy, started)
        assert min(started[later]) >= max(healthy[earlier]), (earlier, later)
    assert "tier infrastructure" in res.stdout and "Converged." in res.stdout


def test_second_apply_changes_nothing(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    before = host.ids()
    with host.watch("create", "start", "kill", "stop", "die", "destroy") as events:
        res = host.cli("apply")
    assert res.returncode == 0, res.stderr
    assert "No changes" in res.stdout
    assert host.ids() == before
    assert events == []  # zero write calls: no container event was caused by the apply


def test_changing_one_service_replaces_only_its_containers(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    before = host.ids()
    host.write(swap(STACK, 'APP_NAME: auth}', 'APP_NAME: auth, APP_VERSION: "2.0"}'))
    plan = host.cli("plan", "--json")
    assert plan.returncode == 2
    steps = json.loads(plan.stdout)["steps"]
    assert [(s["action"], s["service"], s["order"]) for s in steps] == [
        ("replace", "auth", "start-first")]
    assert steps[0]["changes"] == [{"field": "environment.APP_VERSION", "old": None,
                                    "new": "2.0"}]
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    after = host.ids()
    unchanged = {n: i for n, i in before.items() if "-auth-" not in n}
    assert {n: after[n] for n in unchanged} == unchanged
    auth = host.by_service()["auth"]
    assert len(auth) == 1 and auth[0]["Id"] not in before.values()
    healthy_everywhere(host)


def test_missing_image_fails_before_touching_anything(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    before = host.ids()
    host.write(swap(STACK, f"image: {APP}:1.0\n    replicas: 2",
                    "image: reconciler-test/nope:404\n    replicas: 2"))
    res = host.cli("apply")
    assert res.returncode == 1
    assert "reconciler-test/nope:404" in res.stdout + res.stderr
    assert host.ids() == before
    assert all(c["State"]["Running"] for c in host.containers())
    quarantine = json.loads((host.state / "quarantine.json").read_text())
    assert len(quarantine) == 1


@pytest.mark.parametrize("bad", ["NEVER_HEALTHY: \"1\"", "CRASH_AFTER: \"1\""],
                         ids=["never-healthy", "crash-loop"])
def test_failed_rollout_reverts_and_quarantines(host: Host, bad: str) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    before = host.ids()
    old_api = {n: i for n, i in before.items() if "-api-" in n}
    since = time.time()
    bad_spec = swap(STACK, 'APP_VERSION: "1.0"}', f'APP_VERSION: "2.0", {bad}}}')
    if "CRASH_AFTER" in bad:
        # the crash (1 s after start) must come before the gate can pass (first probe after
        # 300 ms + min_ready): with min_ready 600 ms a replica raced it, got "ready", and
        # its old container was retired before the crash
        bad_spec = swap(bad_spec, "update: {parallelism: 2}",
                        "update: {parallelism: 2, min_ready: 3s}")
    host.write(bad_spec)
    res = host.cli("apply")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "reverted to last-good" in out
    # start-first: the old api containers served the whole time
    for name, cid in old_api.items():
        info = json.loads(docker("inspect", cid))[0]
        assert info["State"]["Running"], name
        assert info["State"]["StartedAt"] < time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(since)), name
    died = {e["id"] for e in host.events(since, time.time()) if e["status"] == "die"}
    assert not died & set(old_api.values())
    assert host.ids() == before  # exactly on last-good again
    history = host.cli("history")
    assert "rolled_back" in history.stdout
    again = host.cli("apply")
    assert again.returncode == 1
    assert "quarantined" in again.stdout + again.stderr
    assert host.ids() == before
    host.write(swap(STACK, 'APP_VERSION: "1.0"}', 'APP_VERSION: "3.0"}'))
    fixed = host.cli("apply")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    healthy_everywhere(host)


def test_stop_first_volume_survives_update_and_revert(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    db = host.by_service()["db"][0]
    docker("exec", db["Id"], "sh", "-c", "echo sentinel-123 > /data/sentinel")
    host.write(swap(STACK, 'HEALTH_DELAY: "1"}', 'HEALTH_DELAY: "1", APP_VERSION: "2"}'))
    with host.watch("start", "die") as events:
        assert host.cli("apply").returncode == 0
    db2 = host.by_service()["db"][0]
    assert db2["Id"] != db["Id"]
    assert docker("exec", db2["Id"], "cat", "/data/sentinel").strip() == "sentinel-123"
    # never two db containers running at once: the old one died before the new one started
    db_events = [(e["status"], e["id"]) for e in events if e["id"] in (db["Id"], db2["Id"])]
    assert db_events == [("die", db["Id"]), ("start", db2["Id"])]
    # a failing db rollout is reverted; the volume still holds the sentinel
    host.write(swap(STACK, 'HEALTH_DELAY: "1"}', 'HEALTH_DELAY: "1", NEVER_HEALTHY: "1"}'))
    assert host.cli("apply").returncode == 1
    db3 = host.by_service()["db"]
    assert len(db3) == 1 and db3[0]["State"]["Running"]
    assert docker("exec", db3[0]["Id"], "cat", "/data/sentinel").strip() == "sentinel-123"
    assert host.project + "_data" in docker("volume", "ls", "-q")


def test_foreign_container_is_never_touched(host: Host) -> None:
    name = f"{host.project}-foreign"
    docker("run", "-d", "--name", name, "--label", "reconciler.service=api",
           f"{APP}:1.0")
    try:
        before = json.loads(docker("inspect", name))[0]
        host.write(STACK)
        assert host.cli("apply").returncode == 0
        host.write(swap(STACK, "replicas: 2", "replicas: 1"))
        assert host.cli("apply").returncode == 0
        after = json.loads(docker("inspect", name))[0]
        assert after["Id"] == before["Id"] and after["State"]["Running"]
        assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    finally:
        docker("rm", "-f", name, check=False)


def test_rollback_to_an_earlier_good_revision(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    first = {n: i for n, i in host.ids().items() if "-auth-" in n}
    host.write(swap(STACK, 'APP_NAME: auth}', 'APP_NAME: auth, APP_VERSION: "2.0"}'))
    assert host.cli("apply").returncode == 0
    goods = [line.split()[4] for line in host.cli("history").stdout.splitlines()
             if "converged" in line]
    assert len(goods) == 2
    refused = host.cli("rollback", "--to", "ffffffffffff")
    assert refused.returncode == 1 and "not a recorded good revision" in refused.stderr
    res = host.cli("rollback", "--to", goods[0])
    assert res.returncode == 0, res.stdout + res.stderr
    auth = host.by_service()["auth"]
    assert len(auth) == 1 and auth[0]["Name"].lstrip("/") in first
    healthy_everywhere(host)


NOTIFY = """  notify:
    tier: core
    image: {app}:1.0
    environment: {{APP_NAME: notify, NEVER_HEALTHY: "1"}}
    networks: [backend]
"""


def test_first_deploy_degrades_then_heals(host: Host) -> None:
    """No last-good yet: a failed service holds only what depends on it; the rest comes
    up, nothing is quarantined, the next pass retries it, a fix heals the host."""
    host.write(STACK + NOTIFY.format(app=APP))
    res = host.cli("apply")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "DEGRADED" in out and "degraded: notify failed" in out, out
    running = {s: [c for c in cs if c["State"]["Running"]]
               for s, cs in host.by_service().items()}
    assert len(running["api"]) == 2 and len(running["web"]) == 1, out  # later tiers came up
    assert not (host.state / "quarantine.json").exists() or json.loads(
        (host.state / "quarantine.json").read_text()) == {}
    assert "degraded: notify failed" in host.cli("status").stdout
    preview = host.cli("plan")
    assert "degraded: notify failed" in preview.stdout, preview.stdout + preview.stderr

    # a failing service that others depend on: they wait, the rest is up
    bad_auth = swap(STACK, "APP_NAME: auth}", 'APP_NAME: auth, NEVER_HEALTHY: "1"}')
    held = {n: i for n, i in host.ids().items() if "-api-" in n or "-web-" in n}
    host.write(bad_auth)
    res = host.cli("apply")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "degraded: auth failed, api, web waiting on auth" in out, out
    first_auth = {(c["Id"], c["State"]["StartedAt"]) for c in host.by_service()["auth"]}
    # held: their containers (from the pass before) are left exactly as they were
    assert {n: i for n, i in host.ids().items() if "-api-" in n or "-web-" in n} == held
    # the same spec again: the failed service is retried (started again), still degraded
    again = host.cli("apply")
    assert again.returncode == 1 and "degraded: auth failed" in again.stdout + again.stderr
    assert {(c["Id"], c["State"]["StartedAt"])
            for c in host.by_service()["auth"]} != first_auth
    # fixed: heals, becomes last-good
    host.write(STACK)
    fixed = host.cli("apply")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    healthy_everywhere(host)
    assert not (host.state / "degraded.json").exists()
    assert (host.state / "last-good.json").exists()
