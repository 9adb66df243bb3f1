"""The controller loop on the fake engine and a manual clock: triggers coalesce, failed
passes back off (an urgent trigger cuts the wait short), engine outages retry soon, and the
resync timer fires. Time moves only when the test says so; nothing really sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.controller import Controller
from reconciler.persistence import State
from reconciler.reconcile import PassResult, PassStatus, Reconciler
from reconciler.runtimes import EngineFailure, EngineUnavailable
from tests.component.clock import ManualClock
from tests.component.fakes import FakeRuntime, ImageBehaviour
from tests.specfactory import write_spec

SPEC = """
project: loop
defaults:
  update: {min_ready: 0s, deadline: 30s}
services:
  web: {tier: core, image: "web:1"}
"""


class Loop:
    """A running controller plus what the test needs to watch it."""

    def __init__(self, ctl: Controller, clock: ManualClock, fake: FakeRuntime) -> None:
        self.ctl, self.clock, self.fake = ctl, clock, fake
        self.results: list[PassResult] = []
        self.gate = asyncio.Event()
        self.gate.set()
        reconcile = ctl.rec.reconcile

        async def recorded(*, kind: str = "apply") -> PassResult:
            await self.gate.wait()
            res = await reconcile(kind=kind)
            self.results.append(res)
            return res

        ctl.rec.reconcile = recorded  # type: ignore[method-assign]

    @property
    def passes(self) -> int:
        return self.ctl.passes


@contextlib.asynccontextmanager
async def running_loop(tmp_path: Path, fake: FakeRuntime, text: str) -> AsyncIterator[Loop]:
    """A controller on `fake` and a manual clock, running until the block ends."""
    clock = ManualClock()
    rec = Reconciler(spec_dir=write_spec(tmp_path / "spec", text),
                     state=State(tmp_path / "state"), runtime=fake, clock=clock,
                     sleep=clock.sleep, wall=clock)
    ctl = Controller(rec, resync_s=10.0, clock=clock, wall=clock, sleep=clock.sleep,
                     watch_spec=False, follow_events=False)
    harness = Loop(ctl, clock, fake)
    task = asyncio.create_task(ctl.run())
    await clock.settle()
    try:
        yield harness
    finally:
        ctl.stop.set()
        harness.gate.set()
        await clock.settle()
        await asyncio.wait_for(task, timeout=5)


@pytest.fixture
async def loop(tmp_path: Path) -> AsyncIterator[Loop]:
    async with running_loop(tmp_path, FakeRuntime(images={"web:1"}), SPEC) as harness:
        yield harness


async def test_the_first_pass_runs_at_start(loop: Loop) -> None:
    assert loop.passes == 1 and loop.results[0].result is PassStatus.CONVERGED


async def test_triggers_during_a_pass_cause_exactly_one_more(loop: Loop) -> None:
    loop.gate.clear()
    loop.ctl.trigger("spec")
    await loop.clock.settle()  # the second pass started and waits on the gate
    for reason in ("spec", "engine-event", "resync", "spec", "engine-event"):
        loop.ctl.trigger(reason)
    loop.gate.set()
    await loop.clock.settle()
    assert loop.passes == 3
    await loop.clock.advance(5)  # and nothing after that until the next trigger
    assert loop.passes == 3


async def test_the_resync_timer_fires(loop: Loop) -> None:
    await loop.clock.advance(9)
    assert loop.passes == 1
    await loop.clock.advance(2)
    assert loop.passes == 2
    await loop.clock.advance(10)
    assert loop.passes == 3


def fail(loop: Loop, exc: BaseException, times: int = 50) -> None:
    loop.fake.fail_next("list_containers", exc, times=times)


async def test_failed_passes_back_off_exponentially(loop: Loop) -> None:
    fail(loop, EngineFailure("boom"))
    loop.ctl.trigger("spec")
    await loop.clock.settle()
    assert loop.passes == 2 and loop.ctl.failures == 1
    loop.ctl.trigger("engine-event")  # not urgent: waits 2 s
    await loop.clock.advance(1.9)
    assert loop.passes == 2
    await loop.clock.advance(0.2)
    assert loop.passes == 3 and loop.ctl.failures == 2
    loop.ctl.trigger("resync")  # now 4 s
    await loop.clock.advance(3.9)
    assert loop.passes == 3
    await loop.clock.advance(0.2)
    assert loop.passes == 4


async def test_an_urgent_trigger_cuts_the_backoff_short(loop: Loop) -> None:
    fail(loop, EngineFailure("boom"))
    loop.ctl.trigger("spec")
    await loop.clock.settle()
    loop.ctl.trigger("resync")
    await loop.clock.advance(0.5)
    assert loop.passes == 2
    loop.ctl.trigger("spec")  # a new spec does not wait out the backoff
    await loop.clock.settle()
    assert loop.passes == 3


async def test_an_engine_outage_retries_soon_and_never_quarantines(loop: Loop) -> None:
    fail(loop, EngineUnavailable("socket gone"), times=1)
    loop.ctl.trigger("spec")
    await loop.clock.settle()
    assert loop.passes == 2 and loop.results[-1].engine_unavailable
    await loop.clock.advance(2.1)  # retried on its own, without another trigger
    assert loop.passes == 3 and loop.results[-1].result is PassStatus.NOOP
    assert loop.ctl.failures == 0 and not loop.ctl.rec.state.quarantined()


def test_the_loop_reads_no_clock_of_its_own() -> None:
    import inspect

    from reconciler import controller

    source = inspect.getsource(controller)
    for call in ("time.monotonic()", "time.time()", "asyncio.sleep(", "wait_for("):
        assert call not in source, call




HALT_SPEC = """
project: halt
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 0s, deadline: 30s}
volumes: {data: {}}
services:
  web: {tier: core, image: "web:1", volumes: ["data:/d"]}
"""


async def test_a_failed_revert_halts_until_the_spec_changes(tmp_path: Path) -> None:
    fake = FakeRuntime(images={"web:1", "web:2", "web:3"})
    spec = tmp_path / "spec"
    async with running_loop(tmp_path, fake, HALT_SPEC) as loop:
        ctl, clock = loop.ctl, loop.clock
        assert loop.results[-1].result is PassStatus.CONVERGED
        for image in ("web:1", "web:2"):  # the new one fails, and so does the way back
            fake.set_behaviour(image, ImageBehaviour(health="unhealthy"))
        write_spec(spec, HALT_SPEC.replace("web:1", "web:2"))
        ctl.trigger("spec")
        await clock.settle()
        failed = loop.results[-1]
        assert failed.result is PassStatus.FAILED and failed.halt, failed.message
        assert "REVERT FAILED" in failed.message
        writes, passes = fake.write_calls, len(loop.results)
        ctl.trigger("spec")  # the same spec: halted, nothing is reconciled
        await clock.advance(60)
        assert len(loop.results) == passes and fake.write_calls == writes
        write_spec(spec, HALT_SPEC.replace("web:1", "web:3"))  # a new spec is taken on
        ctl.trigger("spec")
        await clock.settle()
        assert loop.results[-1].result is PassStatus.CONVERGED


DEGRADE = """
project: loop
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 0s, deadline: 30s}
services:
  mail: {tier: core, image: "mail:1"}
  notify: {tier: business, image: "web:1", depends_on: [mail]}
  web: {tier: business, image: "web:1"}
"""


async def test_a_degraded_first_deploy_is_retried_with_backoff_then_heals(
        tmp_path: Path) -> None:
    fake = FakeRuntime(images={"web:1", "mail:1"})
    fake.set_behaviour("mail:1", ImageBehaviour(health="unhealthy"))
    async with running_loop(tmp_path, fake, DEGRADE) as loop:
        first = loop.results[-1]
        assert first.degraded and first.waiting == {"notify": ("mail",)}
        assert not loop.ctl.rec.state.quarantined()
        passes = loop.passes
        await loop.clock.advance(2.1)  # retried on its own after the failure backoff
        assert loop.passes == passes + 1 and loop.results[-1].degraded
        fake.set_behaviour("mail:1", ImageBehaviour())  # the dependency is reachable again
        await loop.clock.advance(4.1)  # the backoff doubled
        assert loop.results[-1].result is PassStatus.CONVERGED, loop.results[-1].message
        assert loop.ctl.failures == 0 and loop.ctl.rec.state.degraded() is None
        await loop.clock.advance(9)  # healed: the resync pass finds nothing to do
        assert loop.results[-1].result is PassStatus.NOOP
