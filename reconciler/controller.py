"""The controller loop (`reconciler run`): triggers in, at most one reconcile pass at a time.

Triggers (spec directory changes, engine events, the resync timer, git pulls) mark the
state dirty; triggers during a pass cause exactly one more pass. After failed passes the
next non-urgent pass waits with an exponential backoff that a new spec or a signal cuts
short. The pass itself is `reconcile.Reconciler`, the pull `gitsync`; the clock, the wall
clock and the sleeper are injected, so the loop's timing runs on a fake clock in tests.
This module sequences; the decisions are the planner's and `rollback`'s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from reconciler import logs
from reconciler.core import labels
from reconciler.core.model import SpecError
from reconciler.core.plans import drift_kinds
from reconciler.core.snapshots import ContainerState, Health
from reconciler.edges import edge_log_dir
from reconciler.execute import Sleeper
from reconciler.gitsync import PullKind, git_lock, git_pull
from reconciler.persistence import StateError
from reconciler.reconcile import PassResult, PassStatus, Reconciler, observe
from reconciler.runtimes import EngineError

URGENT = frozenset({"spec", "git", "signal", "start"})
WATCHED_EVENTS = ("die", "destroy", "oom", "health_status: unhealthy", "stop", "kill")
EDGE_LOG_EVERY_S = 5  # how often the daemon reads new lines of the edge's access log


class Controller:
    """Level-triggered loop: every trigger marks the state dirty; at most one pass runs, and
    triggers during a pass cause exactly one more."""

    def __init__(
        self, reconciler: Reconciler, *, resync_s: float = 60.0, git_pull_s: float | None = None,
        quiet_s: float = 0.5, metrics: Any = None, log: Any = None,
        stuck_after_s: float = 1800.0, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time, sleep: Sleeper = asyncio.sleep,
        watch_spec: bool = True, follow_events: bool = True,
    ) -> None:
        self.rec = reconciler
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.watch_spec = watch_spec  # off only in tests that drive triggers themselves
        self.follow_events = follow_events
        self.rt = reconciler.rt
        self.resync_s = resync_s
        self.git_pull_s = git_pull_s
        self.quiet_s = quiet_s
        self.metrics = metrics
        self.log = log or logs.get()
        self.stuck_after_s = stuck_after_s
        self.dirty = asyncio.Event()
        self.urgent = asyncio.Event()  # a new spec or a signal cuts a failure backoff short
        self.reasons: set[str] = set()
        self.stop = asyncio.Event()
        self.passes = 0
        self.first_pass_done = False
        self.failures = 0  # consecutive failed passes (for backoff)
        self.halted_on: str | None = None  # candidate fingerprint a failed revert stopped on
        self.heartbeat = clock()
        self.pass_started: float | None = None
        self.git_backoff_s = 0.0
        self.events_project: str | None = None
        self.project_changed = asyncio.Event()
        self.edge_log: Any = None  # telemetry.EdgeLog, once there is an edge

    # -- triggers --------------------------------------------------------------------------
    def trigger(self, reason: str) -> None:
        self.reasons.add(reason)
        self.dirty.set()
        if reason in URGENT:
            self.urgent.set()

    def healthy(self) -> bool:
        now = self.clock()
        if now - self.heartbeat > 15:
            return False
        return self.pass_started is None or now - self.pass_started < self.stuck_after_s

    def ready(self) -> bool:
        return self.first_pass_done

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._passes(), name="passes"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]
        if self.follow_events:
            tasks.append(asyncio.create_task(self._events(), name="events"))
        if self.watch_spec:
            tasks.append(asyncio.create_task(self._watch_spec(), name="watch"))
        if self.git_pull_s:
            tasks.append(asyncio.create_task(self._git_pull(), name="git-pull"))
        self.trigger("start")
        try:
            await self.stop.wait()
        finally:
            for task in tasks[1:]:
                task.cancel()
            # the pass loop finishes its current step at a safe point: cancellation lands on
            # an await, and every state it can leave is one the next plan knows how to finish
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ticker(self) -> None:
        last_resync = self.clock()
        ticks = 0
        while True:
            await self.sleep(1.0)
            ticks += 1
            self.heartbeat = self.clock()
            if self.metrics is not None and self.healthy():
                self.metrics.heartbeat(self.wall())
            if self.metrics is not None and ticks % EDGE_LOG_EVERY_S == 0:
                await self._edge_log()
            if self.heartbeat - last_resync >= self.resync_s:
                last_resync = self.heartbeat
                self.trigger("resync")

    async def _edge_log(self) -> None:
        """New lines of the edge's access log into the `reconciler_edge_*` metrics."""
        from reconciler.telemetry import EdgeLog  # the daemon only

        desired = self.rec.last_desired
        if desired is None or desired.edge_service is None or self.metrics is None:
            return
        path = edge_log_dir(self.rec.state.root, desired.project) / "access.json"
        if self.edge_log is None or self.edge_log.path != str(path):
            if self.edge_log is not None:
                self.edge_log.close()
            self.edge_log = EdgeLog(path)
            self.metrics.edge_upstreams(
                n for n, s in desired.services.items() if s.service.expose is not None)
        try:
            lines = await asyncio.to_thread(self.edge_log.read)
        except OSError as exc:
            self.log.warning("edge access log unreadable", error=str(exc))
            return
        self.metrics.edge_records(lines)

    async def _passes(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            reasons, self.reasons = self.reasons, set()
            if self.failures and reasons <= {"resync", "engine-event", "events-connected",
                                             "retry"}:
                delay = min(2 ** self.failures, 300)
                self.log.info("backoff", seconds=delay, failures=self.failures)
                self.urgent.clear()
                await self._sleep_unless_urgent(delay)
                self.dirty.clear()
                reasons |= self.reasons
                self.reasons = set()
            try:
                await self.one_pass(sorted(reasons))
            except (StateError, EngineError) as exc:  # the loop outlives a bad pass
                self.failures += 1
                self.log.error("pass failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                self.failures += 1
                self.log.error("pass failed: internal error",
                               error=f"{type(exc).__name__}: {exc}")

    async def one_pass(self, reasons: list[str]) -> PassResult | None:
        pass_id = uuid.uuid4().hex[:8]
        structlog.contextvars.bind_contextvars(reconcile_id=pass_id)
        self.pass_started = self.clock()
        try:
            await self._wait_git_lock()
            res = await self._one_pass(reasons)
        finally:
            self.pass_started = None
            self.passes += 1
            structlog.contextvars.unbind_contextvars("reconcile_id", "revision")
        return res

    async def _one_pass(self, reasons: list[str]) -> PassResult | None:
        if self.halted_on is not None:
            try:
                fp = self.rec.load_candidate().fingerprint
            except SpecError:
                fp = self.halted_on
            if fp == self.halted_on:
                self.log.error("halted", reason="a revert failed; waiting for a new spec")
                return None
            self.halted_on = None
        good_before = self._good_fingerprint()
        res = await self.rec.reconcile(kind="run")
        self.first_pass_done = True
        desired = self.rec.last_desired
        if desired is not None and self.events_project not in (None, desired.project):
            self.project_changed.set()
        level = "info" if res.ok or res.held_last_good else "error"
        getattr(self.log, level)(
            "pass", result=res.result.value, triggers=reasons, seconds=round(res.seconds, 3),
            steps=len(res.plan.steps) if res.plan else 0,
            message=res.message.splitlines()[0] if res.message else "",
            problems=res.problems[:20] or None)
        rollout_failed = res.result in (PassStatus.FAILED, PassStatus.ROLLED_BACK)
        kinds = [] if rollout_failed else drift_kinds(
            res.plan, spec_unchanged=res.held_last_good or good_before == res.fingerprint)
        for kind in kinds:
            self.log.warning("drift repaired" if res.ok else "drift", kind=kind)
        if res.engine_unavailable:
            # not the spec's fault: retry soon (backoff capped at 2 s), never halt
            self.failures = 1
            self.trigger("retry")
        elif res.halt:
            self.halted_on = res.fingerprint
        elif res.degraded:
            # first deploy: the failed services are retried after the failure backoff
            self.log.error(res.message.splitlines()[0], failed=list(res.failed_services),
                           waiting={k: list(v) for k, v in res.waiting.items()})
            self.trigger("retry")
        if res.engine_unavailable:
            pass
        elif res.result in (PassStatus.FAILED, PassStatus.ROLLED_BACK):
            self.failures += 1
        elif res.result is not PassStatus.INVALID_SPEC:
            self.failures = 0
        if self.metrics is not None:
            await self._export(res, kinds)
        return res

    def _good_fingerprint(self) -> str | None:
        try:
            good = self.rec.state.last_good()
        except StateError:
            return None
        return good.fingerprint if good else None

    async def _export(self, res: PassResult, kinds: list[str]) -> None:
        m = self.metrics
        m.pass_done(res.result.value, res.seconds)
        for outcome in (res.outcome, res.revert, res.rest):
            if outcome is None:
                continue
            for r in outcome.results:
                m.step(r.step.action.value, "ok" if r.ok else "failed")
            for tier, seconds in outcome.tier_seconds.items():
                m.tier(tier, seconds)
            for service, seconds in outcome.health_waits.items():
                m.health_wait(service, seconds)
        if res.result is PassStatus.ROLLED_BACK and res.outcome and res.outcome.failure:
            m.rollback(str(res.outcome.failure_kind))
        for kind in kinds:
            m.drift(kind)
        if res.fingerprint:
            m.spec(res.revision or res.fingerprint[:12], res.fingerprint)
        try:
            good = self.rec.state.last_good()
            m.last_good(good.label if good else "")
            m.quarantined(len(self.rec.state.quarantined()))
        except StateError:
            pass
        m.degraded(failed=len(res.failed_services), waiting=len(res.waiting))
        converged = res.ok
        m.converged(converged)
        if converged:
            m.last_success(self.wall())
        desired = self.rec.last_desired
        if desired is not None:
            snap = self.rec.last_snapshot
            if snap is None:
                try:
                    snap = await observe(self.rt, desired.project)
                except EngineError:
                    return
            rows = []
            for svc in desired.services.values():
                if svc.service.job:  # runs to completion: never "too few healthy replicas"
                    continue
                mine = snap.of_service(svc.name)
                running = [c for c in mine if c.state is ContainerState.RUNNING]
                healthy = [c for c in running if c.health in (Health.HEALTHY, Health.NONE)]
                rows.append((svc.name, svc.tier, svc.replicas, len(running), len(healthy)))
            m.replicas(rows)

    async def _wait_git_lock(self) -> None:
        lock = git_lock(self.rec.spec_dir)
        for _ in range(100):
            if lock is None or not lock.exists():
                return
            await self.sleep(0.1)

    # -- engine events ------------------------------------------------------------------------
    async def _events(self) -> None:
        """Our project's container events only (other projects on the host are not our
        business); reconnect with backoff, a full resync after every (re)connect, and a new
        subscription when the spec's project changes."""
        backoff = 0.5
        while True:
            project = await self._known_project()
            self.events_project = project
            opened = self.clock()
            stream = self.rt.events(label=labels.project_selector(project))
            reader = asyncio.create_task(self._read_events(stream))
            changed = asyncio.create_task(self.project_changed.wait())
            try:
                done, _ = await asyncio.wait({reader, changed},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, changed):
                    task.cancel()
                await asyncio.gather(reader, changed, return_exceptions=True)
                await stream.aclose()
            if changed in done:
                self.project_changed.clear()
                continue
            if self.metrics is not None:
                self.metrics.events_reconnect()
            if self.clock() - opened > 10:
                backoff = 0.5  # it had been up: this is a fresh outage
            self.log.warning("event stream ended; reconnecting", backoff=backoff)
            await self.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _read_events(self, stream: Any) -> None:
        try:
            await stream.connect()
            self.trigger("events-connected")  # a full resync after every (re)connect
            async for event in stream:
                if event.action.startswith(WATCHED_EVENTS):
                    self.trigger("engine-event")
                if event.action == "health_status: unhealthy" and self.metrics is not None:
                    self.metrics.health_check_failed(
                        event.attributes.get(labels.SERVICE) or "unknown")
        except EngineError as exc:
            self.log.warning("event stream error", error=str(exc))

    async def _known_project(self) -> str:
        while self.rec.last_desired is None:
            await self.sleep(0.2)
        return self.rec.last_desired.project

    # -- spec directory -----------------------------------------------------------------------
    async def _watch_spec(self) -> None:
        import watchfiles

        spec = self.rec.spec_dir.resolve()
        parent = spec.parent

        def relevant(_change: Any, path: str) -> bool:
            p = Path(path)
            return (p == spec or spec in p.parents) and ".git" not in p.parts

        while True:
            try:
                async for _ in watchfiles.awatch(parent, watch_filter=relevant,
                                                 debounce=int(self.quiet_s * 1000),
                                                 step=50, recursive=True,
                                                 stop_event=self.stop):
                    self.trigger("spec")
            except (OSError, RuntimeError) as exc:
                self.log.warning("spec watch failed; relying on resync", error=str(exc))
            if self.stop.is_set():
                return
            await self.sleep(2.0)

    # -- git pull -----------------------------------------------------------------------------
    async def _git_pull(self) -> None:
        assert self.git_pull_s
        while True:
            await self.sleep(self.git_pull_s + self.git_backoff_s)
            result = await git_pull(self.rec.spec_dir)
            if self.metrics is not None:
                self.metrics.git_pull(result.kind.value)
            if result.kind is PullKind.OK:
                self.git_backoff_s = 0.0
                self.log.info("git pull", head=result.head[:12])
                self.trigger("git")
            elif result.kind is PullKind.UNCHANGED:
                self.git_backoff_s = 0.0
            else:
                self.git_backoff_s = min(max(self.git_backoff_s * 2, self.git_pull_s), 600.0)
                self.log.error("git pull failed", kind=result.kind.value, detail=result.detail,
                               retry_in=self.git_pull_s + self.git_backoff_s)

    async def _sleep_unless_urgent(self, delay: float) -> None:
        """Sleep `delay` on the injected sleeper; an urgent trigger ends it early."""
        sleeper = asyncio.ensure_future(self.sleep(delay))
        urgent = asyncio.ensure_future(self.urgent.wait())
        try:
            await asyncio.wait({sleeper, urgent}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, urgent):
                task.cancel()
            await asyncio.gather(sleeper, urgent, return_exceptions=True)
