"""Order inside a tier on the fake engine: same-tier depends_on with each compose condition,
and updates one service at a time (never a stateful one next to another)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from reconciler.execute import Progress
from reconciler.reconcile import PassStatus
from tests.component.fakes import FakeContainer, FakeRuntime, ImageBehaviour
from tests.component.test_reconcile_fake import make
from tests.specfactory import write_spec

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "ok"], interval: 10s, timeout: 1s, retries: 1}
  update: {min_ready: 1s, deadline: 60s}
volumes: {data: {}}
services:
  db: {tier: core, image: "slow:1", volumes: ["data:/d"]}
  cache: {tier: core, image: "slow:1"}
  migrate:
    tier: core
    kind: job
    image: "tool:1"
    command: ["sh", "-c", "echo done; exit 0"]
    depends_on: {db: {condition: service_healthy}}
  auth: {tier: core, image: "slow:1", depends_on: {db: {condition: service_healthy}}}
  worker: {tier: core, image: "slow:1", depends_on: {cache: {condition: service_started}}}
  api:
    tier: core
    image: "slow:1"
    depends_on: {migrate: {condition: service_completed_successfully}}
"""
READY_AFTER = 2.0


@pytest.fixture
def fake() -> FakeRuntime:
    fake = FakeRuntime(images={"slow:1", "slow:2", "tool:1"})
    for ref in ("slow:1", "slow:2"):
        fake.set_behaviour(ref, ImageBehaviour(ready_after=READY_AFTER))
    return fake


def one(fake: FakeRuntime, service: str) -> FakeContainer:
    [c] = [c for c in fake.containers.values()
           if c.labels.get("reconciler.service") == service]
    return c


def started(fake: FakeRuntime, service: str) -> float:
    at = one(fake, service).started_at
    assert at is not None
    return at


async def test_same_tier_depends_on_follows_each_condition(tmp_path: Path,
                                                           fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake, SPEC)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    # service_healthy: after the dependency's app answered its health check
    assert started(fake, "auth") >= started(fake, "db") + READY_AFTER
    # service_started: right after the dependency started (not after it is healthy)
    assert started(fake, "cache") <= started(fake, "worker") < started(fake, "cache") + 1
    # service_completed_successfully: after the job exited 0
    job = one(fake, "migrate")
    assert job.finished_at is not None and job.exit_code == 0
    assert started(fake, "api") >= job.finished_at
    # independent services start together
    assert abs(started(fake, "db") - started(fake, "cache")) < 0.5


def windows(events: list[Progress]) -> dict[str, tuple[int, int]]:
    """service -> (index of its first step-start, index of its last step-done)."""
    out: dict[str, tuple[int, int]] = {}
    for i, e in enumerate(events):
        if e.kind not in ("step-start", "step-done"):
            continue
        service = e.step.split()[1].split("[")[0]
        first, last = out.get(service, (i, i))
        out[service] = (min(first, i), max(last, i))
    return out


@pytest.mark.parametrize(("width", "most"), [(1, 1), (2, 2)])
async def test_updates_go_one_service_at_a_time(tmp_path: Path, fake: FakeRuntime,
                                                width: int, most: int) -> None:
    rec, events = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    events.clear()
    text = SPEC.replace('"slow:1"', '"slow:2"')
    if width > 1:
        text = text.replace("volumes: {data: {}}", f"volumes: {{data: {{}}}}\n"
                                                   f"tier_parallelism: {{core: {width}}}")
    write_spec(tmp_path / "spec", text)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    spans = windows(events)
    assert set(spans) == {"db", "cache", "auth", "worker", "api"}

    def overlapping(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    peak = max(sum(1 for other in spans if overlapping(s, other) or other == s)
               for s in spans)
    assert peak == most
    # the stateful db (named volume, stop-first) never next to another
    assert not any(overlapping("db", other) for other in spans if other != "db")
    # dependency order: auth after db
    assert spans["auth"][0] > spans["db"][1]


TIERS = """
project: shop
defaults:
  healthcheck: {test: ["CMD-SHELL", "wget -qO- http://127.0.0.1:8080/health"], interval: 45s,
                timeout: 5s, retries: 5, start_period: 90s}
  update: {min_ready: 0s, deadline: 120s}
services:
  db: {tier: infrastructure, image: "slow:1"}
  api: {tier: core, image: "slow:1", depends_on: [db]}
"""


async def test_exec_probes_reach_the_next_tier_soon_after_the_app_is_ready(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake, TIERS)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    gap = started(fake, "api") - started(fake, "db")
    # the app answers after 2 s; Docker's own first probe would be 45 s after start
    assert READY_AFTER <= gap <= READY_AFTER + 1.0
    probes = [cmd for cid, cmd in fake.exec_log if cid == one(fake, "db").id]
    assert probes and all(cmd == ("/bin/sh", "-c", "wget -qO- http://127.0.0.1:8080/health")
                          for cmd in probes)
    # once an exec probe succeeded, Docker's status takes over: no more exec probes
    before = len(fake.exec_log)
    assert (await rec.reconcile()).result is PassStatus.NOOP
    assert len(fake.exec_log) == before


SLOW_APP = 6.0  # ready after more than EXEC_FAST_S: the cadence backs off after that


async def test_exec_probe_cadence_is_start_to_start_then_backs_off(
        tmp_path: Path, fake: FakeRuntime) -> None:
    from reconciler.execute import EXEC_FAST_S, EXEC_FIRST_S, EXEC_MAX_S

    fake.set_behaviour("slow:1", ImageBehaviour(ready_after=SLOW_APP))
    at: list[float] = []

    def stamp(c: FakeContainer, cmd: object) -> None:
        if c.labels.get("reconciler.service") == "db":
            at.append(fake.now)

    fake.exec_handler = stamp
    rec, _ = make(tmp_path, fake, TIERS)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    start = started(fake, "db")
    gaps = [b - a for a, b in itertools.pairwise(at)]
    fast = [g for a, g in zip(at, gaps, strict=False) if a - start < EXEC_FAST_S - EXEC_FIRST_S]
    # every EXEC_FIRST_S while the app may be about to answer (the inspect poll here is
    # 0.5 s: probes no longer wait for its tick)
    assert fast and all(abs(g - EXEC_FIRST_S) < 1e-6 for g in fast), gaps
    # then backing off, never beyond EXEC_MAX_S
    assert max(gaps) <= EXEC_MAX_S + 1e-6 and max(gaps) > EXEC_FIRST_S, gaps
    # the next tier starts within one probe period of the app answering
    gap = started(fake, "api") - start
    assert SLOW_APP <= gap <= SLOW_APP + max(gaps) + 1e-6, gap


async def test_the_next_tier_starts_within_one_fast_probe_of_a_2s_app(
        tmp_path: Path, fake: FakeRuntime) -> None:
    from reconciler.execute import EXEC_FIRST_S

    rec, _ = make(tmp_path, fake, TIERS)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    gap = started(fake, "api") - started(fake, "db")
    assert READY_AFTER <= gap <= READY_AFTER + EXEC_FIRST_S + 1e-6, gap


async def test_a_crash_inside_a_background_min_ready_window_still_fails_the_rollout(
        tmp_path: Path, fake: FakeRuntime) -> None:
    from reconciler.persistence import State
    from reconciler.reconcile import Reconciler
    from tests.component.test_reconcile_fake import Clock

    text = TIERS.replace("min_ready: 0s", "min_ready: 20s")
    spec = write_spec(tmp_path / "spec", text)
    clock = Clock(fake)

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        for c in list(fake.containers.values()):  # db dies inside its min_ready window
            if (c.labels.get("reconciler.service") == "db" and c.state == "running"
                    and c.started_at is not None and fake.now - c.started_at >= 12.0):
                fake.crash(c.id)

    events: list[Progress] = []
    rec = Reconciler(spec_dir=spec, state=State(tmp_path / "state"), runtime=fake,
                     report=events.append, clock=clock, sleep=sleep, wall=clock, poll_s=0.5)
    res = await rec.reconcile()
    # the next tier started before db's window was over (nothing served yet)...
    assert [e.tier for e in events if e.kind == "tier-start"] == ["infrastructure", "core"]
    # ...but the crash inside the window fails the rollout all the same
    assert res.result is PassStatus.FAILED, res.message
    assert "db[1]" in res.message and "crash loop" in res.message


RETIRE = """
project: shop
defaults:
  update: {min_ready: 1s, deadline: 60s}
  stop_grace_period: 10s
services:
  a: {tier: core, image: "app:1", replicas: 2}
  b: {tier: core, image: "app:1", depends_on: [a]}
"""


async def test_old_replicas_stop_in_the_background_with_at_most_one_surplus_copy(
        tmp_path: Path) -> None:
    fake = FakeRuntime(images={"app:1", "app:2"})
    rec, events = make(tmp_path, fake, RETIRE)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    stop = fake.stop_container
    log: list[tuple[str, str, int]] = []  # (what, container name, progress events so far)
    peak: dict[str, int] = {}

    async def slow_stop(container_id: str, *, timeout_s: float) -> None:
        c = fake.container(container_id)
        service = c.labels["reconciler.service"]
        alive = sum(1 for x in fake.containers.values()
                    if x.labels.get("reconciler.service") == service and x.state == "running")
        peak[service] = max(peak.get(service, 0), alive)
        log.append(("stop", service, len(events)))
        for _ in range(20):  # an app that ignores SIGTERM: the whole grace period
            await asyncio.sleep(0)
        fake.advance(timeout_s)
        await stop(container_id, timeout_s=timeout_s)
        log.append(("stopped", service, len(events)))

    fake.stop_container = slow_stop  # type: ignore[method-assign]
    events.clear()
    write_spec(tmp_path / "spec", RETIRE.replace('"app:1"', '"app:2"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    # b's update began while a's last old replica was still stopping
    b_start = next(i for i, e in enumerate(events)
                   if e.kind == "step-start" and e.step.startswith("replace b"))
    a_stopped = max(n for what, service, n in log if what == "stopped" and service == "a")
    assert b_start < a_stopped, (b_start, a_stopped, log)
    assert [service for what, service, _ in log if what == "stop"] == ["a", "a", "b"]
    # at most one surplus copy per service (a: 2 replicas -> never more than 3 running)
    assert peak == {"a": 3, "b": 2}
    # the pass ended with every old container gone
    assert all(c.config["Image"] == "app:2" for c in fake.containers.values())


async def test_a_hanging_exec_probe_frees_its_slot_for_other_services(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes that hang until their check's timeout (an app holding the connection) must not
    starve the other services' probes: a slot is held at most EXEC_SLOT_S."""
    import reconciler.execute as execute
    from reconciler.runtimes import ExecResult

    monkeypatch.setattr(execute, "EXEC_SLOT_S", 0.05)
    release = asyncio.Event()

    class Hanging:
        start_interval = False

        async def exec_in_container(self, cid: str, cmd: list[str]) -> ExecResult:
            if cid.startswith("hang"):
                await release.wait()
            return ExecResult(exit_code=0, output="")

    ex = execute.Executor(Hanging())  # type: ignore[arg-type]
    hung = [asyncio.ensure_future(ex._exec_probe(f"hang{i}", ["true"], 30.0))
            for i in range(execute.EXEC_CONCURRENCY + 2)]
    await asyncio.sleep(0)
    # every slot is taken by a hanging probe, yet a quick one gets through in a few slot times
    quick = await asyncio.wait_for(ex._exec_probe("quick", ["true"], 30.0), timeout=2.0)
    assert quick is True
    assert not any(t.done() for t in hung)  # still waiting for their own timeout
    release.set()
    assert all(await asyncio.gather(*hung))
