"""The executor and the reconcile pass on the fake engine: tier order, parallelism, health
gates, revert and quarantine, adoption after a crash, foreign names. Time is the fake's own
clock (sleep advances it), so nothing here really sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired, build
from reconciler.execute import Progress
from reconciler.loading import load
from reconciler.persistence import State
from reconciler.reconcile import PassStatus, Reconciler
from tests.component.fakes import FakeRuntime, ImageBehaviour
from tests.specfactory import write_spec

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 2s, deadline: 30s}
networks: {backend: {}}
volumes: {data: {}}
services:
  db: {tier: infrastructure, image: "db:1", volumes: ["data:/d"], networks: [backend]}
  cache: {tier: infrastructure, image: "cache:1", networks: [backend]}
  auth: {tier: core, image: "auth:1", networks: [backend], depends_on: [db]}
  api:
    tier: business
    image: "api:1"
    replicas: 3
    update: {parallelism: 2}
    networks: [backend]
"""
IMAGES = {"db:1", "cache:1", "auth:1", "api:1", "api:2", "api:bad", "api:crash"}


class Clock:
    def __init__(self, fake: FakeRuntime) -> None:
        self.fake = fake
        self.slept = 0.0

    def __call__(self) -> float:
        return self.fake.now

    async def sleep(self, seconds: float) -> None:
        """Advance the fake clock, then yield, so concurrent steps interleave."""
        self.slept += seconds
        self.fake.advance(seconds)
        await asyncio.sleep(0)


def make(tmp_path: Path, fake: FakeRuntime, text: str = SPEC) -> tuple[Reconciler, list[Progress]]:
    spec = write_spec(tmp_path / "spec", text)
    events: list[Progress] = []
    clock = Clock(fake)
    rec = Reconciler(spec_dir=spec, state=State(tmp_path / "state"), runtime=fake,
                     report=events.append, clock=clock, sleep=clock.sleep, wall=clock,
                     poll_s=0.5)
    return rec, events


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime(images=set(IMAGES))


def running(fake: FakeRuntime, service: str) -> list[str]:
    return sorted(c.name for c in fake.containers.values()
                  if c.labels.get("reconciler.service") == service and c.state == "running")


async def test_cold_start_runs_tiers_in_order_and_waits_min_ready(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, events = make(tmp_path, fake)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    order = [e.tier for e in events if e.kind == "tier-start"]
    assert order == ["infrastructure", "core", "business"]
    # nothing served yet: each tier passes its gate once healthy while its min_ready
    # window (2 s on the fake clock) goes on in the background; the pass waits for them
    assert res.seconds >= 2.0
    assert len(running(fake, "api")) == 3
    # a second pass makes no engine write at all
    writes = fake.write_calls
    again = await rec.reconcile()
    assert again.result is PassStatus.NOOP and fake.write_calls == writes


def peak_in_flight(events: list[Progress], tier: str) -> int:
    in_flight = peak = 0
    for e in events:
        if e.tier != tier:
            continue
        if e.kind == "step-start":
            in_flight += 1
            peak = max(peak, in_flight)
        elif e.kind in ("step-done", "step-failed"):
            in_flight -= 1
    return peak


async def test_parallelism_bounds_updates_but_not_new_replicas(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, events = make(tmp_path, fake)
    await rec.reconcile()
    assert peak_in_flight(events, "business") == 3  # a cold start takes nothing away
    events.clear()
    write_spec(tmp_path / "spec", SPEC.replace('image: "api:1"', 'image: "api:2"'))
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    assert peak_in_flight(events, "business") == 2  # update.parallelism


@pytest.mark.parametrize(("image", "behaviour", "why"), [
    ("api:bad", ImageBehaviour(health="unhealthy"), "unhealthy"),
    ("api:crash", ImageBehaviour(exit_on_start=1), "exited with code 1"),
])
async def test_failed_rollout_reverts_to_last_good_and_quarantines(
        tmp_path: Path, fake: FakeRuntime, image: str, behaviour: ImageBehaviour,
        why: str) -> None:
    rec, _ = make(tmp_path, fake)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    before = {c.id: c.name for c in fake.containers.values()}
    fake.set_behaviour(image, behaviour)
    write_spec(tmp_path / "spec", SPEC.replace('image: "api:1"', f'image: "{image}"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK
    assert why in res.message
    # start-first: the old replicas were never stopped; the host is exactly last-good
    assert {c.id: c.name for c in fake.containers.values()} == before
    assert all(c.state == "running" for c in fake.containers.values())
    assert len(rec.state.quarantined()) == 1
    # the same bad spec is not retried
    writes = fake.write_calls
    held = await rec.reconcile()
    assert held.held_last_good and fake.write_calls == writes
    # a changed spec is applied
    write_spec(tmp_path / "spec", SPEC.replace('image: "api:1"', 'image: "api:2"'))
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    assert all(fake.containers[c].config["Image"] == "api:2" for c in fake.containers
               if fake.containers[c].labels["reconciler.service"] == "api")


async def test_missing_image_fails_before_anything_is_touched(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    await rec.reconcile()
    before = dict(fake.calls)
    write_spec(tmp_path / "spec", SPEC.replace('image: "auth:1"', 'image: "auth:404"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.FAILED or res.result is PassStatus.ROLLED_BACK
    assert "auth:404" in res.message
    for method in ("create_container", "stop_container", "remove_container",
                   "start_container"):
        assert fake.calls[method] == before.get(method, 0), method


async def test_first_deploy_failure_degrades_instead_of_freezing(tmp_path: Path,
                                                                 fake: FakeRuntime) -> None:
    fake.set_behaviour("auth:1", ImageBehaviour(health="unhealthy"))
    rec, _ = make(tmp_path, fake)
    res = await rec.reconcile()
    assert res.result is PassStatus.FAILED and res.degraded
    assert res.failed_services == ("auth",) and res.waiting == {}
    assert res.message.splitlines()[0] == "degraded: auth failed"
    assert "no last-good spec" in res.message
    assert running(fake, "db") and running(fake, "cache")
    assert len(running(fake, "api")) == 3  # api does not depend on auth: it came up
    assert rec.state.quarantined() == {}  # nothing to revert to: degrade, never quarantine
    assert rec.state.last_good() is None
    assert (rec.state.degraded() or {})["failed"] == ["auth"]


DEPENDS = SPEC.replace("    update: {parallelism: 2}\n", "    update: {parallelism: 2}\n"
                       "    depends_on: [auth]\n")


async def test_degraded_holds_only_dependents_then_heals(tmp_path: Path,
                                                         fake: FakeRuntime) -> None:
    fake.set_behaviour("auth:1", ImageBehaviour(health="unhealthy"))
    rec, _ = make(tmp_path, fake, DEPENDS)
    res = await rec.reconcile()
    assert res.degraded and res.waiting == {"api": ("auth",)}
    assert res.message.splitlines()[0] == "degraded: auth failed, api waiting on auth"
    assert not running(fake, "api") and running(fake, "db")
    # the next pass retries the failed service (same spec); still failing: still degraded
    again = await rec.reconcile()
    assert again.degraded and not running(fake, "api")
    # fixed (say the SMTP server is back): the retry heals it and api comes up
    fake.set_behaviour("auth:1", ImageBehaviour())
    healed = await rec.reconcile()
    assert healed.result is PassStatus.CONVERGED, healed.message
    assert len(running(fake, "api")) == 3 and running(fake, "auth")
    assert rec.state.degraded() is None and rec.state.last_good() is not None


def desired_now(rec: Reconciler, tmp_path: Path) -> Desired:
    key = rec.state.key(create=False)
    assert key is not None
    return build(load(tmp_path / "spec", strict=False), key)


async def test_name_left_by_a_crash_is_adopted(tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    await rec.reconcile()
    old = next(c for c in fake.containers.values() if c.labels["reconciler.service"] == "cache")
    # a crash between create and start of the new generation: its container exists, never
    # started, and the next pass's list call does not see it yet (the engine finished the
    # create after the list), so the plan creates it and the create hits the name
    write_spec(tmp_path / "spec", SPEC.replace('image: "cache:1"', 'image: "cache:1", '
                                               'environment: {V: "2"}'))
    svc = desired_now(rec, tmp_path).services["cache"]
    left = fake.seed_container(svc.container_name(1), container_config(svc, 1), running=False)
    listed = fake.list_containers
    hidden = {"once": True}

    async def list_missing_the_leftover(*, label: str) -> list[dict[str, Any]]:
        items = await listed(label=label)
        if hidden.pop("once", False):
            return [c for c in items if c["Id"] != left]
        return items

    fake.list_containers = list_missing_the_leftover  # type: ignore[method-assign]
    creates = fake.calls["create_container"]
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    assert fake.calls["create_container"] == creates + 1  # tried, hit the name, adopted
    assert running(fake, "cache") == [svc.container_name(1)]
    assert fake.containers[left].state == "running" and old.id not in fake.containers


async def test_a_foreign_container_on_a_name_we_need_is_not_adopted(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    await rec.reconcile()
    write_spec(tmp_path / "spec", SPEC.replace("replicas: 3", "replicas: 4"))
    desired_name = desired_now(rec, tmp_path).services["api"].container_name(4)
    foreign = fake.seed_container(desired_name, {"Image": "nginx", "Labels": {}})
    res = await rec.reconcile()
    assert res.result in (PassStatus.ROLLED_BACK, PassStatus.FAILED)
    assert "not ours" in res.message
    assert fake.containers[foreign].state == "running"
