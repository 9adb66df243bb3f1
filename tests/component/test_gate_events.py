"""Health gates wake on the engine's events: a `health_status: healthy` (or a die) of the
gated container ends the wait at once, not at the next poll; without an event stream the
gate still passes by polling. On a manual clock: nothing really sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler.core.desired import Desired
from reconciler.core.plans import compute
from reconciler.core.snapshots import empty
from reconciler.execute import ExecutionReport, Executor
from reconciler.runtimes import EngineUnavailable
from tests.component.clock import ManualClock
from tests.component.fakes import FakeRuntime, ImageBehaviour
from tests.specfactory import desired_from

SPEC = """
project: shop
services:
  api:
    tier: core
    image: "app:1"
    healthcheck: {test: ["CMD", "ok"], interval: 10s, timeout: 1s, retries: 1}
    update: {min_ready: 0s, deadline: 60s}
"""
POLL_S = 5.0  # long, so a wake-up before it can only come from an event


class EngineWithStartInterval(FakeRuntime):
    """The engine probes at a short start interval itself: the executor runs no exec
    probes, so only Docker's status (inspect or its event) ends the gate."""

    @property
    def start_interval(self) -> bool:
        return True


def setup(tmp_path: Path) -> tuple[EngineWithStartInterval, Desired, ManualClock, Executor]:
    fake = EngineWithStartInterval(images={"app:1"})
    fake.set_behaviour("app:1", ImageBehaviour(health="starting"))
    clock = ManualClock()
    desired = desired_from(tmp_path, SPEC)
    return fake, desired, clock, Executor(fake, clock=clock, sleep=clock.sleep, poll_s=POLL_S)


async def started(fake: FakeRuntime, clock: ManualClock) -> str:
    for _ in range(20):
        await clock.settle()
        running = [c for c in fake.containers.values() if c.state == "running"]
        if running:
            return running[0].id
    raise AssertionError("the container never started")


async def test_healthy_event_wakes_the_gate_before_its_next_poll(tmp_path: Path) -> None:
    fake, desired, clock, executor = setup(tmp_path)
    run = asyncio.create_task(executor.run(compute(desired, empty("shop")), desired))
    cid = await started(fake, clock)
    await clock.advance(0.5)  # past the quick first checks: the gate now waits POLL_S
    assert not run.done()
    at = clock.now
    fake.set_health(cid, "healthy")  # emits `health_status: healthy`
    await clock.settle()
    assert run.done() and clock.now == at  # no time passed: the event woke the gate
    report: ExecutionReport = run.result()
    assert report.ok, report.failure


async def test_a_die_event_fails_the_gate_at_once(tmp_path: Path) -> None:
    fake, desired, clock, executor = setup(tmp_path)
    run = asyncio.create_task(executor.run(compute(desired, empty("shop")), desired))
    cid = await started(fake, clock)
    await clock.advance(0.5)
    fake.crash(cid, exit_code=3)
    await clock.settle()
    assert run.done()
    report = run.result()
    assert not report.ok and report.failure is not None
    assert "exited with code 3" in report.failure.message or "restart" in (
        report.failure.message)


async def test_without_an_event_stream_the_gate_polls(tmp_path: Path) -> None:
    fake, desired, clock, executor = setup(tmp_path)
    fake.fail_next("events.connect", EngineUnavailable("no events"))
    run = asyncio.create_task(executor.run(compute(desired, empty("shop")), desired))
    cid = await started(fake, clock)
    await clock.advance(0.5)
    fake.set_health(cid, "healthy")
    await clock.settle()
    assert not run.done()  # nobody told the gate: it looks at its next poll
    await clock.advance(POLL_S)
    assert run.done() and run.result().ok
