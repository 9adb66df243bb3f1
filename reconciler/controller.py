"""One reconcile pass (used by `apply`, `rollback` and the `run` loop).

load + validate -> choose desired (candidate, or last-good if quarantined) -> snapshot ->
plan -> execute -> record last-good, or quarantine and converge back to last-good through
the same planner and executor. A failed revert stops: it never starts another forward
rollout. Decisions come from `rollback` and `plans`; this module only sequences them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from reconciler import faults, labels, logs, rollback
from reconciler.desired import Desired, build
from reconciler.edges import Edge, edge_dir, edge_log_dir
from reconciler.execute import (
    Executor,
    Outcome,
    Progress,
    Reporter,
    Sleeper,
    StepFailed,
    _ignore,
)
from reconciler.labels import project_selector
from reconciler.loading import LoadedSpec, SpecError, input_stamp, load
from reconciler.persistence import (
    GoodRevision,
    HistoryEntry,
    SpecChanged,
    State,
    StateError,
)
from reconciler.plans import Plan, Reason, compute
from reconciler.runtimes import EngineUnavailable, Runtime, RuntimeError_
from reconciler.snapshots import Health, Snapshot, parse
from reconciler.snapshots import State as SnapState
from reconciler.specs import HostPolicy


class Result(StrEnum):
    NOOP = "noop"
    CONVERGED = "converged"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    INVALID_SPEC = "invalid_spec"


@dataclass(slots=True)
class PassResult:
    result: Result
    message: str = ""
    fingerprint: str = ""
    revision: str | None = None
    plan: Plan | None = None
    outcome: Outcome | None = None
    revert: Outcome | None = None
    quarantined: bool = False  # the candidate is (now) quarantined
    held_last_good: bool = False  # the candidate was skipped because it is quarantined
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    # the pass stopped because the engine did not answer: nothing was quarantined or
    # reverted; the next pass retries
    engine_unavailable: bool = False

    @property
    def ok(self) -> bool:
        return self.result in (Result.NOOP, Result.CONVERGED) and not self.held_last_good


async def observe(runtime: Runtime, project: str) -> Snapshot:
    """One list call per kind, filtered by our project label."""
    selector = project_selector(project)
    containers, networks, volumes = await asyncio.gather(
        runtime.list_containers(label=selector),
        runtime.list_networks(label=selector),
        runtime.list_volumes(label=selector),
    )
    return parse(project, containers, networks, volumes)


class Reconciler:
    def __init__(
        self, *, spec_dir: Path, state: State, runtime: Runtime, profiles: tuple[str, ...] = (),
        policy: HostPolicy | None = None, report: Reporter = _ignore,
        clock: Callable[[], float] = time.monotonic, sleep: Sleeper = asyncio.sleep,
        wall: Callable[[], float] = time.time, poll_s: float = 0.25,
    ) -> None:
        self.spec_dir = spec_dir
        self.state = state
        self.rt = runtime
        self.profiles = profiles
        self.policy = policy
        self.report = report
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.last_desired: Desired | None = None
        self._cached: tuple[LoadedSpec, tuple[Any, ...]] | None = None
        self._built: tuple[LoadedSpec, Desired] | None = None
        self.last_snapshot: Snapshot | None = None
        self.executor = Executor(runtime, clock=clock, sleep=sleep, report=report,
                                 poll_s=poll_s)

    def load_candidate(self) -> LoadedSpec:
        """The spec on disk; an unchanged spec (same files, same stats) is not read again."""
        if self._cached is not None and input_stamp(self._cached[0]) == self._cached[1]:
            return self._cached[0]
        loaded = load(self.spec_dir, strict=True, profiles=self.profiles, policy=self.policy)
        stamp = input_stamp(loaded)
        self._cached = (loaded, stamp) if stamp is not None else None
        return loaded

    def load_good(self, good: GoodRevision) -> LoadedSpec:
        return load(good.directory, strict=True, profiles=self.profiles, policy=self.policy,
                    bind_root=good.root or None)

    async def converge(self, loaded: LoadedSpec) -> tuple[Desired, Plan, Outcome | None]:
        key = self.state.key(create=True)
        assert key is not None
        spec = loaded.spec
        directory = edge_dir(self.state.root, spec.project)
        if self._built is not None and self._built[0] is loaded:
            desired = self._built[1]
        else:
            logs_dir = edge_log_dir(self.state.root, spec.project) if spec.edge else None
            if logs_dir is not None:
                logs_dir.mkdir(parents=True, exist_ok=True)
            desired = build(loaded, key, edge_dir=str(directory) if spec.edge else None,
                            edge_log_dir=str(logs_dir) if logs_dir else None)
            self._built = (loaded, desired)
        self.last_desired = desired
        snapshot = await observe(self.rt, desired.project)
        self.last_snapshot = snapshot
        plan = compute(desired, snapshot)
        edge = None
        if spec.edge is not None:
            edge = Edge(self.rt, directory, filename=os.path.basename(spec.edge.upstreams_file),
                        sleep=self.sleep)
        if plan.empty:
            if edge is not None:
                try:  # health changes outside rollouts still reach the upstreams
                    await edge.sync(desired, containers=snapshot.containers)
                except StepFailed as exc:
                    self.report_line(f"edge not updated: {exc}")
            return desired, plan, None
        self.last_snapshot = None  # the executor changed the host
        return desired, plan, await self.executor.run(plan, desired, edge=edge)

    async def reconcile(self, *, kind: str = "apply") -> PassResult:
        started = self.clock()
        try:
            candidate = self.load_candidate()
        except SpecError as exc:
            return PassResult(Result.INVALID_SPEC, "the spec is invalid; nothing was changed",
                              problems=[str(p) for p in exc.problems],
                              seconds=self.clock() - started)
        structlog.contextvars.bind_contextvars(
            revision=(candidate.revision or candidate.fingerprint)[:12])
        try:
            res = await self._reconcile(candidate, kind=kind)
        except RuntimeError_ as exc:  # observing failed: nothing was decided or changed
            res = PassResult(Result.FAILED, f"engine: {exc}; nothing was quarantined, the "
                             "next pass retries", candidate.fingerprint, candidate.revision,
                             engine_unavailable=isinstance(exc, EngineUnavailable))
        res.seconds = self.clock() - started
        self._record(res, kind)
        return res

    async def converge_to(self, good: GoodRevision, *, kind: str = "rollback") -> PassResult:
        """Converge to a recorded good revision (operator-requested rollback)."""
        started = self.clock()
        loaded = self.load_good(good)
        try:  # the spec on disk would roll forward again at the next pass: hold it back
            candidate = self.load_candidate().fingerprint
        except SpecError:
            candidate = None
        if candidate is not None and candidate != good.fingerprint:
            self.state.quarantine(candidate, revision=None, now=self.wall(),
                                  reason=f"rolled back by the operator to {good.label}")
        _, plan, outcome = await self.converge(loaded)
        fp = good.fingerprint
        if outcome is None or outcome.ok:
            self._keep_good(loaded, fingerprint=fp, revision=good.revision, good=good)
            res = PassResult(Result.CONVERGED if outcome else Result.NOOP,
                             f"host is on revision {good.label}", fp, good.revision, plan,
                             outcome)
        else:
            res = PassResult(Result.FAILED, f"rollback to {good.label} failed: "
                             f"{outcome.failure}", fp, good.revision, plan, outcome)
        res.seconds = self.clock() - started
        self._record(res, kind)
        return res

    async def _reconcile(self, candidate: LoadedSpec, *, kind: str) -> PassResult:
        fp, rev = candidate.fingerprint, candidate.revision
        last_good = self.state.last_good()
        quarantined = self.state.quarantined()
        choice = rollback.choose(fp, last_good=last_good.fingerprint if last_good else None,
                                 quarantined=quarantined)
        if choice.target is rollback.Target.NOTHING:
            return PassResult(Result.NOOP, choice.reason, fp, rev, quarantined=True,
                              held_last_good=True)
        if choice.target is rollback.Target.LAST_GOOD:
            assert last_good is not None
            _, plan, outcome = await self.converge(self.load_good(last_good))
            ok = outcome is None or outcome.ok
            return PassResult(
                Result.NOOP if outcome is None else Result.CONVERGED if ok else Result.FAILED,
                f"{choice.reason} ({last_good.label}); change the spec to try again", fp, rev,
                plan, outcome, quarantined=True, held_last_good=True)

        # a pass that could not record its result must not start: checked before acting
        self.state.ensure_room(extra=sum(os.path.getsize(f) for f in candidate.files
                                         if os.path.isfile(f)))
        _, plan, outcome = await self.converge(candidate)
        if outcome is None or outcome.ok:
            if last_good is None or last_good.fingerprint != fp:
                self._keep_good(candidate, fingerprint=fp, revision=rev)
            return PassResult(Result.NOOP if outcome is None else Result.CONVERGED,
                              "in sync" if outcome is None else "converged", fp, rev, plan,
                              outcome)

        reason = str(outcome.failure) if outcome.failure else "rollout failed"
        if outcome.engine_unavailable:
            # an engine outage says nothing about the spec: no quarantine, no revert
            first = reason.splitlines()[0]
            return PassResult(Result.FAILED, f"the engine did not answer ({first}); nothing "
                              "was quarantined, the next pass retries", fp, rev, plan, outcome,
                              engine_unavailable=True)
        if last_good is not None and last_good.fingerprint == fp:
            # repairing drift to the known-good spec failed: not a bad rollout, there is
            # nothing to revert to, and quarantining the good spec would stop every repair
            return PassResult(Result.FAILED, f"{reason}\nrepairing the host to last-good "
                              f"{last_good.label} failed; nothing was quarantined, the next "
                              "pass retries", fp, rev, plan, outcome)
        with faults.in_phase("revert"):
            return await self._revert(candidate, plan, outcome, reason, last_good)

    async def _revert(self, candidate: LoadedSpec, plan: Plan, outcome: Outcome, reason: str,
                      last_good: GoodRevision | None) -> PassResult:
        """The rollout failed: quarantine it and go back to last-good."""
        fp, rev = candidate.fingerprint, candidate.revision
        self.state.quarantine(fp, revision=rev, reason=reason.splitlines()[0], now=self.wall())
        target = rollback.revert_to(fp, last_good=last_good.fingerprint if last_good else None)
        if target is None or last_good is None:
            return PassResult(Result.FAILED, f"{reason}\nno last-good spec to go back to: what "
                              "converged keeps running", fp, rev, plan, outcome,
                              quarantined=True)
        self.report_line(f"rollout failed: reverting to last-good {last_good.label}")
        try:
            _, _, revert = await self.converge(self.load_good(last_good))
        except SpecError as exc:
            return PassResult(Result.FAILED, f"{reason}\nrevert impossible: last-good spec "
                              f"does not load: {exc}", fp, rev, plan, outcome, quarantined=True)
        if revert is None or revert.ok:
            return PassResult(Result.ROLLED_BACK, f"{reason}\nreverted to last-good "
                              f"{last_good.label}", fp, rev, plan, outcome, revert,
                              quarantined=True)
        if revert.engine_unavailable:  # the candidate stays quarantined: the next pass
            return PassResult(Result.FAILED, f"{reason}\nthe revert was interrupted: the "
                              f"engine did not answer ({revert.failure}); the next pass "
                              "converges to last-good", fp, rev, plan, outcome, revert,
                              quarantined=True, engine_unavailable=True)
        return PassResult(Result.FAILED, f"{reason}\nREVERT FAILED: {revert.failure}; the "
                          "controller stops here and will not start another rollout", fp, rev,
                          plan, outcome, revert, quarantined=True)

    def report_line(self, message: str) -> None:
        self.report(Progress("note", message=message))

    def _keep_good(self, loaded: LoadedSpec, *, fingerprint: str, revision: str | None,
                   good: GoodRevision | None = None) -> None:
        # env files inside the spec tree are kept too (the state dir is private, copies keep
        # their 0600 mode): without them a kept revision cannot load, so it cannot be reverted to
        paths = (list(loaded.files) + [m.host_path for ms in loaded.mounted.values() for m in ms]
                 + [e.path for envs in loaded.env_files.values() for e in envs if e.readable])
        # only what was loaded (and converged) may become last-good, not what the spec dir
        # holds by now: the copy is checked against the digests taken at load time
        digests = dict(loaded.files) | {m.host_path: m.digest for ms in loaded.mounted.values()
                                        for m in ms if m.digest}
        try:
            self.state.record_good(root=Path(good.root if good else loaded.root),
                                   spec_dir=Path(good.directory if good else loaded.directory)
                                   .resolve(), paths=paths, fingerprint=fingerprint,
                                   revision=revision, now=self.wall(), digests=digests)
        except SpecChanged as exc:  # the next pass (a watch trigger is pending) takes it on
            self.report_line(f"last-good not recorded: {exc}")

    def _record(self, res: PassResult, kind: str) -> None:
        failed = [r.step.id for o in (res.outcome, res.revert) if o for r in o.results
                  if not r.ok]
        steps = len(res.plan.steps) if res.plan else 0
        if res.result is Result.NOOP and (not res.held_last_good or kind == "run"):
            return  # a pass that changed nothing is not history
        self.state.append_history(HistoryEntry(
            at=self.wall(), kind=kind, result=res.result.value, fingerprint=res.fingerprint,
            revision=res.revision, duration_s=round(res.seconds, 3), steps=steps,
            message=res.message.splitlines()[0] if res.message else "",
            failed_steps=failed,
        ))


# --- the controller loop (`reconciler run`) ---------------------------------------------------

DRIFT_KINDS = {
    Reason.REPLICA_MISSING: "removed",
    Reason.STOPPED: "stopped",
    Reason.CREATED_NOT_STARTED: "stopped",
    Reason.DEAD: "dead",
    Reason.PAUSED: "stopped",
    Reason.RESTARTING: "dead",
    Reason.UNHEALTHY: "unhealthy",
}
URGENT = frozenset({"spec", "git", "signal", "start"})
WATCHED_EVENTS = ("die", "destroy", "oom", "health_status: unhealthy", "stop", "kill")
EDGE_LOG_EVERY_S = 5  # how often the daemon reads new lines of the edge's access log


def drift_kinds(plan: Plan | None, *, spec_unchanged: bool) -> list[str]:
    """Repairs in a plan, by kind (a pass's plan is the single source of drift). With the
    spec unchanged since it last converged, a "new service" is one whose every container
    went away."""
    if plan is None:
        return []
    kinds = [DRIFT_KINDS[s.reason] for s in plan.steps if s.reason in DRIFT_KINDS]
    if spec_unchanged:
        kinds += ["removed" for s in plan.steps if s.reason is Reason.NEW_SERVICE]
    return kinds


class Controller:
    """Level-triggered loop: every trigger marks the state dirty; at most one pass runs, and
    triggers during a pass cause exactly one more."""

    def __init__(
        self, reconciler: Reconciler, *, resync_s: float = 60.0, git_pull_s: float | None = None,
        quiet_s: float = 0.5, metrics: Any = None, log: Any = None,
        stuck_after_s: float = 1800.0,
    ) -> None:
        self.rec = reconciler
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
        self.heartbeat = time.monotonic()
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
        now = time.monotonic()
        if now - self.heartbeat > 15:
            return False
        return self.pass_started is None or now - self.pass_started < self.stuck_after_s

    def ready(self) -> bool:
        return self.first_pass_done

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._passes(), name="passes"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._events(), name="events"),
            asyncio.create_task(self._watch_spec(), name="watch"),
        ]
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
        last_resync = time.monotonic()
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            self.heartbeat = time.monotonic()
            if self.metrics is not None and self.healthy():
                self.metrics.heartbeat(time.time())
            if self.metrics is not None and ticks % EDGE_LOG_EVERY_S == 0:
                await self._edge_log()
            if self.heartbeat - last_resync >= self.resync_s:
                last_resync = self.heartbeat
                self.trigger("resync")

    async def _edge_log(self) -> None:
        """New lines of the edge's access log into the `reconciler_edge_*` metrics."""
        from reconciler.telemetry import EdgeLog  # the daemon only

        desired = self.rec.last_desired
        if desired is None or desired.edge_service is None:
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.urgent.wait(), timeout=delay)
                self.dirty.clear()
                reasons |= self.reasons
                self.reasons = set()
            try:
                await self.one_pass(sorted(reasons))
            except (StateError, RuntimeError_) as exc:  # the loop outlives a bad pass
                self.failures += 1
                self.log.error("pass failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                self.failures += 1
                self.log.error("pass failed: internal error",
                               error=f"{type(exc).__name__}: {exc}")

    async def one_pass(self, reasons: list[str]) -> PassResult | None:
        pass_id = uuid.uuid4().hex[:8]
        structlog.contextvars.bind_contextvars(reconcile_id=pass_id)
        self.pass_started = time.monotonic()
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
        rollout_failed = res.result in (Result.FAILED, Result.ROLLED_BACK)
        kinds = [] if rollout_failed else drift_kinds(
            res.plan, spec_unchanged=res.held_last_good or good_before == res.fingerprint)
        for kind in kinds:
            self.log.warning("drift repaired" if res.ok else "drift", kind=kind)
        if res.engine_unavailable:
            # not the spec's fault: retry soon (backoff capped at 2 s), never halt
            self.failures = 1
            self.trigger("retry")
        elif res.result is Result.FAILED and res.revert is not None:
            self.halted_on = res.fingerprint
        if res.engine_unavailable:
            pass
        elif res.result in (Result.FAILED, Result.ROLLED_BACK):
            self.failures += 1
        elif res.result is not Result.INVALID_SPEC:
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
        for outcome in (res.outcome, res.revert):
            if outcome is None:
                continue
            for r in outcome.results:
                m.step(r.step.action.value, "ok" if r.ok else "failed")
            for tier, seconds in outcome.tier_seconds.items():
                m.tier(tier, seconds)
            for service, seconds in outcome.health_waits.items():
                m.health_wait(service, seconds)
        if res.result is Result.ROLLED_BACK and res.outcome and res.outcome.failure:
            from reconciler import telemetry  # the daemon only: keeps `apply` start-up lean

            m.rollback(telemetry.rollback_reason(res.outcome.failure.message,
                                                 images_ok=res.outcome.images_ok))
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
        converged = res.ok
        m.converged(converged)
        if converged:
            m.last_success(time.time())
        desired = self.rec.last_desired
        if desired is not None:
            snap = self.rec.last_snapshot
            if snap is None:
                try:
                    snap = await observe(self.rt, desired.project)
                except RuntimeError_:
                    return
            rows = []
            for svc in desired.services.values():
                mine = snap.of_service(svc.name)
                running = [c for c in mine if c.state is SnapState.RUNNING]
                healthy = [c for c in running if c.health in (Health.HEALTHY, Health.NONE)]
                rows.append((svc.name, svc.tier, svc.replicas, len(running), len(healthy)))
            m.replicas(rows)

    async def _wait_git_lock(self) -> None:
        lock = _git_lock(self.rec.spec_dir)
        for _ in range(100):
            if lock is None or not lock.exists():
                return
            await asyncio.sleep(0.1)

    # -- engine events ------------------------------------------------------------------------
    async def _events(self) -> None:
        """Our project's container events only (other projects on the host are not our
        business); reconnect with backoff, a full resync after every (re)connect, and a new
        subscription when the spec's project changes."""
        backoff = 0.5
        while True:
            project = await self._known_project()
            self.events_project = project
            opened = time.monotonic()
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
            if time.monotonic() - opened > 10:
                backoff = 0.5  # it had been up: this is a fresh outage
            self.log.warning("event stream ended; reconnecting", backoff=backoff)
            await asyncio.sleep(backoff)
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
        except RuntimeError_ as exc:
            self.log.warning("event stream error", error=str(exc))

    async def _known_project(self) -> str:
        while self.rec.last_desired is None:
            await asyncio.sleep(0.2)
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
            await asyncio.sleep(2.0)

    # -- git pull -----------------------------------------------------------------------------
    async def _git_pull(self) -> None:
        assert self.git_pull_s
        while True:
            await asyncio.sleep(self.git_pull_s + self.git_backoff_s)
            result = await git_pull(self.rec.spec_dir)
            if self.metrics is not None:
                self.metrics.git_pull(result.kind)
            if result.kind == "ok":
                self.git_backoff_s = 0.0
                self.log.info("git pull", head=result.head[:12])
                self.trigger("git")
            elif result.kind == "unchanged":
                self.git_backoff_s = 0.0
            else:
                self.git_backoff_s = min(max(self.git_backoff_s * 2, self.git_pull_s), 600.0)
                self.log.error("git pull failed", kind=result.kind, detail=result.detail,
                               retry_in=self.git_pull_s + self.git_backoff_s)


@dataclass(frozen=True, slots=True)
class GitPull:
    kind: str  # ok | unchanged | failed | non_fast_forward
    head: str = ""
    detail: str = ""


def _git_lock(spec_dir: Path) -> Path | None:
    for candidate in (spec_dir.resolve(), *spec_dir.resolve().parents):
        if (candidate / ".git").is_dir():
            return candidate / ".git" / "index.lock"
    return None


async def _git(cwd: Path, *args: str, timeout_s: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"git {args[0]} timed out after {timeout_s:g}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def git_pull(spec_dir: Path, *, timeout_s: float = 60.0) -> GitPull:
    """`git pull --ff-only`; a force-pushed remote or a conflict is refused, never merged."""
    cwd = spec_dir.resolve()
    code, before = await _git(cwd, "rev-parse", "HEAD")
    if code != 0:
        return GitPull("failed", detail=before[-300:])
    code, out = await _git(cwd, "pull", "--ff-only", "--quiet", timeout_s=timeout_s)
    if code != 0:
        kind = "non_fast_forward" if ("fast-forward" in out or "diverg" in out) else "failed"
        return GitPull(kind, before, out[-300:])
    _, after = await _git(cwd, "rev-parse", "HEAD")
    return GitPull("ok" if after != before else "unchanged", after)
