"""Containers created ahead on the fake engine: while a tier waits for health, the
containers of its waiting steps and of the next tier are created (creating runs nothing),
but each still starts only when its tier and `depends_on` allow; a run that fails removes
the ones it created ahead and never started; a failed create ahead fails its own step."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from reconciler.core.desired import Desired
from reconciler.core.plans import Action, compute
from reconciler.core.snapshots import empty
from reconciler.execute import ExecutionReport, Executor, creatable_ahead
from reconciler.reconcile import PassStatus, observe
from tests.component.clock import ManualClock
from tests.component.fakes import FakeContainer, FakeRuntime, ImageBehaviour
from tests.component.test_reconcile_fake import make
from tests.specfactory import desired_from

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "ok"], interval: 10s, timeout: 1s, retries: 1}
  update: {min_ready: 0s, deadline: 60s}
services:
  db: {tier: infrastructure, image: "slow:1"}
  auth: {tier: core, image: "slow:1", depends_on: [db]}
  user: {tier: core, image: "slow:1", depends_on: {auth: {condition: service_healthy}}}
  api: {tier: business, image: "slow:1", replicas: 2, depends_on: [user]}
"""
READY_AFTER = 2.0


def fake_engine() -> FakeRuntime:
    fake = FakeRuntime(images={"slow:1", "slow:2"})
    for ref in ("slow:1", "slow:2"):
        fake.set_behaviour(ref, ImageBehaviour(ready_after=READY_AFTER))
    return fake


def of(fake: FakeRuntime, service: str) -> list[FakeContainer]:
    return sorted((c for c in fake.containers.values()
                   if c.labels.get("reconciler.service") == service), key=lambda c: c.name)


def ready_at(c: FakeContainer) -> float:
    assert c.started_at is not None, c.name
    return c.started_at + READY_AFTER


async def test_waiting_containers_are_created_ahead_and_started_in_order(
        tmp_path: Path) -> None:
    fake = fake_engine()
    rec, _ = make(tmp_path, fake, SPEC)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    [db], [auth], [user] = of(fake, "db"), of(fake, "auth"), of(fake, "user")
    api = of(fake, "api")
    assert len(api) == 2 and all(c.state == "running" for c in [db, auth, user, *api])
    # created while the tier before (or the dependency) was still starting up...
    assert auth.created < ready_at(db) and user.created < ready_at(db)
    assert all(c.created < ready_at(user) for c in api)
    # ...never before the running tier's own first starts...
    assert all(c.created >= (db.started_at or 0) for c in [auth, user])
    assert all(c.created >= (auth.started_at or 0) for c in api)
    # ...and started only when tiers and depends_on allow, as without the look-ahead
    assert (auth.started_at or 0) >= ready_at(db)
    assert (user.started_at or 0) >= ready_at(auth)
    assert all((c.started_at or 0) >= ready_at(user) for c in api)
    assert fake.calls["create_container"] == 5  # one create per container, none repeated


def run_manually(tmp_path: Path, fake: FakeRuntime, text: str = SPEC
                 ) -> tuple[ManualClock, asyncio.Task[ExecutionReport], Desired]:
    clock = ManualClock()
    desired = desired_from(tmp_path, text)
    executor = Executor(fake, clock=clock, sleep=clock.sleep, poll_s=0.5)
    run = asyncio.create_task(executor.run(compute(desired, empty("shop")), desired))
    return clock, run, desired


async def test_a_failed_run_removes_what_it_created_ahead(tmp_path: Path) -> None:
    fake = fake_engine()
    clock, run, _ = run_manually(tmp_path, fake)
    await clock.advance(0.5)
    [db] = of(fake, "db")
    assert db.state == "running"
    ahead = of(fake, "auth") + of(fake, "user")
    assert len(ahead) == 2 and all(c.state == "created" for c in ahead)
    fake.crash(db.id, exit_code=3)  # the first tier fails before the next one starts
    await clock.advance(1.0)
    report = run.result()
    assert not report.ok and report.failure is not None
    assert "db" in report.failure.step_id
    assert of(fake, "auth") == of(fake, "user") == []  # created ahead, never started: gone
    assert of(fake, "api") == []


async def test_a_failed_create_ahead_fails_its_own_step_and_leaves_the_name(
        tmp_path: Path) -> None:
    fake = fake_engine()
    desired = desired_from(tmp_path, SPEC)
    taken = desired.services["user"].container_name(1)
    foreign = fake.seed_container(taken, {"Image": "slow:1", "Labels": {"owner": "someone"}},
                                  running=False)
    clock, run, _ = run_manually(tmp_path, fake)
    for _ in range(40):  # the fake's own time (readiness) moves with the clock
        fake.advance(0.5)
        await clock.advance(0.5)
        if run.done():
            break
    report = run.result()
    assert not report.ok and report.failure is not None
    assert report.failure.step_id == "create user[1]"
    assert "not ours" in report.failure.message
    assert foreign in fake.containers  # untouched
    [auth] = of(fake, "auth")
    assert auth.state == "running"  # the tier went on until the step's own turn
    assert of(fake, "api") == []  # created ahead for the next tier, then removed


async def test_an_executor_running_tiers_its_own_way_creates_nothing_ahead(
        tmp_path: Path) -> None:
    fake = fake_engine()
    seen: list[tuple[str, list[str]]] = []

    class OwnTiers(Executor):
        async def _tier(self, steps: Any, desired: Any, outcome: Any) -> None:
            seen.append((steps[0].tier, sorted(c.name for c in fake.containers.values())))
            await super()._tier(steps, desired, outcome)

    desired = desired_from(tmp_path, SPEC)
    executor = OwnTiers(fake, poll_s=0.05)
    fake.set_behaviour("slow:1", ImageBehaviour())  # healthy at once: real time is short
    report = await executor.run(compute(desired, empty("shop")), desired)
    assert report.ok, report.failure
    assert [tier for tier, _ in seen] == ["infrastructure", "core", "business"]
    for tier, names in seen:  # nothing of a tier exists before the tier begins
        own = {s.service for s in compute(desired, empty("shop")).in_tier(tier)}
        assert not any(f"-{svc}-" in name for svc in own for name in names), (tier, names)


async def test_only_plain_creates_of_new_services_are_created_ahead(tmp_path: Path) -> None:
    fake = fake_engine()
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    changed = SPEC.replace('auth: {tier: core, image: "slow:1"', 'auth: {tier: core, image: '
                           '"slow:2"') + """  side:
    tier: business
    image: "slow:1"
    network_mode: "service:api"
  extra: {tier: business, image: "slow:1"}
"""
    desired = desired_from(tmp_path / "v2", changed)
    plan = compute(desired, await observe(fake, "shop"))
    kinds = {(s.action, s.service) for s in plan.steps}
    assert (Action.REPLACE, "auth") in kinds and (Action.CREATE, "side") in kinds
    # a replacement waits for its own moment; a joined namespace needs its target running
    assert creatable_ahead(plan, desired) == {"create extra[1]"}
