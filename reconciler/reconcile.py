"""One reconcile pass (used by `apply`, `rollback` and the `run` loop).

load + validate -> choose desired (candidate, or last-good if quarantined) -> snapshot ->
plan -> execute -> record last-good, or quarantine and converge back to last-good through
the same planner and executor. A failed revert stops: it never starts another forward
rollout. Decisions come from `rollback` (which spec, and what a failure leads to) and
`plans`; this module only sequences them. The loop around it is `controller`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler import edgeconf, faults
from reconciler.backupstore import BackupStore
from reconciler.core import labels, rollback
from reconciler.core.desired import Desired, build
from reconciler.core.labels import project_selector
from reconciler.core.model import LoadedSpec, SpecError
from reconciler.core.plans import Plan, compute, degraded_line
from reconciler.core.snapshots import (
    ContainerState,
    Snapshot,
    parse,
    with_applied,
    with_edge_reuse,
)
from reconciler.core.specs import HostPolicy
from reconciler.edges import Edge, edge_conf_dir, edge_dir, edge_log_dir, reuse_facts
from reconciler.execute import (
    ExecutionReport,
    Executor,
    Progress,
    Reporter,
    Sleeper,
    StepFailed,
    ignore_progress,
)
from reconciler.filestore import FileStore, files_dir
from reconciler.loading import input_stamp, load
from reconciler.persistence import (
    GoodRevision,
    HistoryEntry,
    SpecChanged,
    State,
)
from reconciler.runtimes import EngineError, EngineUnavailable, Runtime


class PassStatus(StrEnum):
    """How a pass ended (the `reconciler_reconcile_total{result}` label)."""

    NOOP = "noop"
    CONVERGED = "converged"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    INVALID_SPEC = "invalid_spec"


@dataclass(slots=True)
class PassResult:
    result: PassStatus
    message: str = ""
    fingerprint: str = ""
    revision: str | None = None
    plan: Plan | None = None
    outcome: ExecutionReport | None = None
    revert: ExecutionReport | None = None
    quarantined: bool = False  # the candidate is (now) quarantined
    held_last_good: bool = False  # the candidate was skipped because it is quarantined
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    # the pass stopped because the engine did not answer: nothing was quarantined or
    # reverted; the next pass retries
    engine_unavailable: bool = False
    # the revert itself failed (`rollback.AfterRevert.HALT`): the loop starts no rollout
    # until the spec changes
    halt: bool = False
    # first deploy degraded (`rollback.AfterFailure.DEGRADE`, result FAILED): the services
    # that failed, the ones waiting on them (service -> failed ones), and the run that
    # brought up the rest
    failed_services: tuple[str, ...] = ()
    waiting: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rest: ExecutionReport | None = None

    @property
    def degraded(self) -> bool:
        return bool(self.failed_services)

    @property
    def ok(self) -> bool:
        return self.result in (PassStatus.NOOP, PassStatus.CONVERGED) and not self.held_last_good


async def observe(runtime: Runtime, project: str) -> Snapshot:
    """One list call per kind, filtered by our project label (and the networks and volumes
    of a compose project of the same name, which an imported spec uses)."""
    selector = project_selector(project)
    compose = labels.compose_selector(project)  # a migrated compose project's objects
    containers, networks, volumes, compose_networks, compose_volumes = await asyncio.gather(
        runtime.list_containers(label=selector),
        runtime.list_networks(label=selector),
        runtime.list_volumes(label=selector),
        runtime.list_networks(label=compose),
        runtime.list_volumes(label=compose),
    )
    return parse(project, containers, networks + compose_networks, volumes + compose_volumes)


def failed_services(outcome: ExecutionReport | None) -> tuple[str, ...]:
    """The services whose own steps failed in a run (not the ones cancelled with them)."""
    if outcome is None:
        return ()
    return tuple(sorted({r.step.service for r in outcome.results
                         if not r.ok and r.step.service}))


def _revert_plan(desired: Desired, snapshot: Snapshot) -> Plan:
    """The planner of a revert: a failed backup does not stop it (`rollback.for_revert`)."""
    return rollback.for_revert(compute(desired, snapshot))


class Reconciler:
    # the edge mounts staged copies of its config (reloaded in place); an engine whose
    # executor never stages them (Swarm) mounts the checkout
    stage_edge_config = True
    edge_holder = True  # the edge runs in a holder's network namespace (desired.build)

    def __init__(
        self, *, spec_dir: Path, state: State, runtime: Runtime, profiles: tuple[str, ...] = (),
        policy: HostPolicy | None = None, report: Reporter = ignore_progress,
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
        self.files = FileStore(files_dir(state.root))
        self.executor = Executor(runtime, clock=clock, sleep=sleep, report=report,
                                 poll_s=poll_s, backups=BackupStore(state.root, runtime,
                                                                    wall=wall),
                                 files=self.files)

    def load_candidate(self) -> LoadedSpec:
        """The spec on disk; an unchanged spec (same files, same stats) is not read again."""
        if self._cached is not None and input_stamp(self._cached[0]) == self._cached[1]:
            return self._cached[0]
        loaded = load(self.spec_dir, strict=True, profiles=self.profiles, policy=self.policy,
                      key=self.state.key(create=True))
        stamp = input_stamp(loaded)
        self._cached = (loaded, stamp) if stamp is not None else None
        return loaded

    def load_good(self, good: GoodRevision) -> LoadedSpec:
        return load(good.directory, strict=True, profiles=self.profiles, policy=self.policy,
                    bind_root=good.root or None, key=self.state.key(create=True))

    def desired_for(self, loaded: LoadedSpec) -> Desired:
        """The desired state of a loaded spec (built once per loaded spec), with the edge's
        upstreams, log and staged-config directories and the secrets/configs directory of
        this state dir."""
        key = self.state.key(create=True)
        assert key is not None
        spec = loaded.spec
        directory = edge_dir(self.state.root, spec.project)
        conf = edge_conf_dir(self.state.root, spec.project)
        if self._built is not None and self._built[0] is loaded:
            desired = self._built[1]
        else:
            logs_dir = edge_log_dir(self.state.root, spec.project) if spec.edge else None
            if logs_dir is not None:
                logs_dir.mkdir(parents=True, exist_ok=True)
            desired = build(loaded, key, edge_dir=str(directory) if spec.edge else None,
                            edge_log_dir=str(logs_dir) if logs_dir else None,
                            edge_conf_dir=(str(conf / edgeconf.MOUNTS)
                                           if spec.edge and self.stage_edge_config else None),
                            files_dir=str(self.files.root),
                            edge_holder=self.edge_holder)
            self._built = (loaded, desired)
        self.last_desired = desired
        return desired

    async def converge(self, loaded: LoadedSpec, *, hold: tuple[str, ...] = (),
                       retry: tuple[str, ...] = (),
                       planner: Callable[[Desired, Snapshot], Plan] | None = None,
                       ) -> tuple[Desired, Plan, ExecutionReport | None]:
        spec = loaded.spec
        directory = edge_dir(self.state.root, spec.project)
        conf = edge_conf_dir(self.state.root, spec.project)
        desired = self.desired_for(loaded)
        snapshot = with_applied(await observe(self.rt, desired.project),
                                edgeconf.read_applied(conf))
        self.last_snapshot = snapshot
        # secrets/configs of generations no container and no desired service uses any more
        if snapshot.engine_available:
            self.files.prune(desired.project, {f"{c.service}-{c.fingerprint}"
                                               for c in snapshot.containers}
                             | {f"{s.name}-{s.fingerprint}"
                                for s in desired.services.values()})
        def plan_for(snap: Snapshot) -> Plan:
            return (planner(desired, snap) if planner is not None
                    else compute(desired, snap, hold=hold, retry=retry))

        plan = plan_for(snapshot)
        checks = [o.id for s in plan.steps if s.bind_check for o in s.old
                  if o.state is ContainerState.RUNNING]
        if checks:  # the planner asks what the running edge's whole config says
            snapshot = with_edge_reuse(snapshot, await reuse_facts(self.rt, checks))
            before, plan = plan.notes, plan_for(snapshot)
            for note in plan.notes:
                if note not in before:  # what the facts changed (a stop-first edge), said
                    self.report_line(note)
        edge = None
        if spec.edge is not None:
            edge = Edge(self.rt, directory, filename=os.path.basename(spec.edge.upstreams_file),
                        sleep=self.sleep, conf_dir=conf)
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
            return PassResult(PassStatus.INVALID_SPEC, "the spec is invalid; nothing was changed",
                              problems=[str(p) for p in exc.problems],
                              seconds=self.clock() - started)
        # the revision of structured log lines: structlog is in use where logging was set up
        # (the `run` loop); a one-shot `apply` does not pay for importing it
        log_context = sys.modules.get("structlog.contextvars")
        if log_context is not None:
            log_context.bind_contextvars(
                revision=(candidate.revision or candidate.fingerprint)[:12])
        try:
            res = await self._reconcile(candidate, kind=kind)
        except EngineError as exc:  # observing failed: nothing was decided or changed
            res = PassResult(PassStatus.FAILED, f"engine: {exc}; nothing was quarantined, the "
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
            res = PassResult(PassStatus.CONVERGED if outcome else PassStatus.NOOP,
                             f"host is on revision {good.label}", fp, good.revision, plan,
                             outcome)
        else:
            res = PassResult(PassStatus.FAILED, f"rollback to {good.label} failed: "
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
            return PassResult(PassStatus.NOOP, choice.reason, fp, rev, quarantined=True,
                              held_last_good=True)
        if choice.target is rollback.Target.LAST_GOOD:
            assert last_good is not None
            # holding last-good finishes an interrupted revert: the same best-effort backups
            _, plan, outcome = await self.converge(self.load_good(last_good),
                                                   planner=_revert_plan)
            ok = outcome is None or outcome.ok
            return PassResult(
                PassStatus.NOOP if outcome is None
                else PassStatus.CONVERGED if ok else PassStatus.FAILED,
                f"{choice.reason} ({last_good.label}); change the spec to try again", fp, rev,
                plan, outcome, quarantined=True, held_last_good=True)

        # a pass that could not record its result must not start: checked before acting
        self.state.ensure_room(extra=sum(os.path.getsize(f) for f in candidate.files
                                         if os.path.isfile(f)))
        degraded = self.state.degraded()
        retry = tuple(degraded["failed"]) if degraded else ()
        _, plan, outcome = await self.converge(candidate, retry=retry)
        if outcome is None or outcome.ok:
            if degraded:
                self.state.clear_degraded()
            if last_good is None or last_good.fingerprint != fp:
                self._keep_good(candidate, fingerprint=fp, revision=rev)
            return PassResult(PassStatus.NOOP if outcome is None else PassStatus.CONVERGED,
                              "in sync" if outcome is None else "converged", fp, rev, plan,
                              outcome)

        reason = str(outcome.failure) if outcome.failure else "rollout failed"
        wanted = self.last_desired.services if self.last_desired else {}
        failed = tuple(f for f in failed_services(outcome) if f in wanted)
        policy = rollback.after_failure(fp, last_good=last_good.fingerprint if last_good else None,
                                        engine_unavailable=outcome.engine_unavailable,
                                        failed_services=failed)
        if policy is rollback.AfterFailure.RETRY:
            first = reason.splitlines()[0]
            return PassResult(PassStatus.FAILED, f"the engine did not answer ({first}); nothing "
                              "was quarantined, the next pass retries", fp, rev, plan, outcome,
                              engine_unavailable=True)
        if policy is rollback.AfterFailure.REPAIR_FAILED:
            assert last_good is not None
            return PassResult(PassStatus.FAILED, f"{reason}\nrepairing the host to last-good "
                              f"{last_good.label} failed; nothing was quarantined, the next "
                              "pass retries", fp, rev, plan, outcome)
        if policy is rollback.AfterFailure.DEGRADE:
            return await self._degrade(candidate, plan, outcome, reason, failed)
        with faults.in_phase("revert"):
            return await self._revert(candidate, plan, outcome, reason, last_good)

    async def _degrade(self, candidate: LoadedSpec, plan: Plan, outcome: ExecutionReport,
                       reason: str, failed: tuple[str, ...]) -> PassResult:
        """First deploy, a service failed: hold it and what depends on it, bring up the rest
        (a service failing in that run is held too), record who is held; no quarantine, the
        next passes retry the failed services (the loop backs off exponentially)."""
        fp, rev = candidate.fingerprint, candidate.revision
        hold = set(failed)
        rest: ExecutionReport | None = None
        rest_plan = plan
        for _ in range(len(candidate.spec.services)):
            _, rest_plan, rest = await self.converge(candidate, hold=tuple(sorted(hold)))
            more = set(failed_services(rest)) - hold if rest is not None else set()
            if rest is None or rest.ok or rest.engine_unavailable or not more:
                break
            hold |= more
        held = dict(rest_plan.held)
        waiting = {name: on for name, on in held.items() if on}
        down = tuple(name for name, on in held.items() if not on)
        self.state.record_degraded(fingerprint=fp, failed=list(down),
                                   waiting={k: list(v) for k, v in waiting.items()},
                                   now=self.wall())
        line = degraded_line(down, waiting)
        self.report_line(line)
        tail = "" if rest is None or rest.ok else f"\nbringing up the rest failed: {rest.failure}"
        return PassResult(PassStatus.FAILED, f"{line}\n{reason}{tail}\nno last-good spec yet: "
                          "nothing was quarantined; the failed services are retried with "
                          "backoff by `reconciler run` and on every spec change", fp, rev, plan,
                          outcome, failed_services=down, waiting=waiting, rest=rest,
                          engine_unavailable=rest is not None and rest.engine_unavailable)

    async def _revert(self, candidate: LoadedSpec, plan: Plan, outcome: ExecutionReport,
                      reason: str,
                      last_good: GoodRevision | None) -> PassResult:
        """The rollout failed: quarantine it and go back to last-good."""
        fp, rev = candidate.fingerprint, candidate.revision
        self.state.quarantine(fp, revision=rev, reason=reason.splitlines()[0], now=self.wall())
        target = rollback.revert_to(fp, last_good=last_good.fingerprint if last_good else None)
        if target is None or last_good is None:
            return PassResult(PassStatus.FAILED, f"{reason}\nno last-good spec to go back to: what "
                              "converged keeps running", fp, rev, plan, outcome,
                              quarantined=True)
        self.report_line(f"rollout failed: reverting to last-good {last_good.label}")
        try:
            _, _, revert = await self.converge(self.load_good(last_good), planner=_revert_plan)
        except SpecError as exc:
            return PassResult(PassStatus.FAILED, f"{reason}\nrevert impossible: last-good spec "
                              f"does not load: {exc}", fp, rev, plan, outcome, quarantined=True)
        after = rollback.after_revert(ok=revert is None or revert.ok,
                                      engine_unavailable=revert is not None
                                      and revert.engine_unavailable)
        if after is rollback.AfterRevert.ROLLED_BACK:
            notes = "".join(f"\n{n}" for n in (revert.notes if revert else ()))
            return PassResult(PassStatus.ROLLED_BACK, f"{reason}\nreverted to last-good "
                              f"{last_good.label}{notes}", fp, rev, plan, outcome, revert,
                              quarantined=True)
        assert revert is not None
        if after is rollback.AfterRevert.RETRY:  # the candidate stays quarantined: the next pass
            return PassResult(PassStatus.FAILED, f"{reason}\nthe revert was interrupted: the "
                              f"engine did not answer ({revert.failure}); the next pass "
                              "converges to last-good", fp, rev, plan, outcome, revert,
                              quarantined=True, engine_unavailable=True)
        return PassResult(PassStatus.FAILED, f"{reason}\nREVERT FAILED: {revert.failure}; the "
                          "controller stops here and will not start another rollout", fp, rev,
                          plan, outcome, revert, quarantined=True, halt=True)

    def report_line(self, message: str) -> None:
        self.report(Progress("note", message=message))

    def _keep_good(self, loaded: LoadedSpec, *, fingerprint: str, revision: str | None,
                   good: GoodRevision | None = None) -> None:
        # env files inside the spec tree are kept too (the state dir is private, copies keep
        # their 0600 mode): without them a kept revision cannot load, so it cannot be reverted to
        paths = (list(loaded.files) + [m.host_path for ms in loaded.mounted.values() for m in ms]
                 + [e.path for envs in loaded.env_files.values() for e in envs if e.readable]
                 + [f for b in loaded.builds.values() for f in b.files])  # what builds send
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
        failed = [r.step.id for o in (res.outcome, res.revert, res.rest) if o for r in o.results
                  if not r.ok]
        steps = len(res.plan.steps) if res.plan else 0
        if res.result is PassStatus.NOOP and (not res.held_last_good or kind == "run"):
            return  # a pass that changed nothing is not history
        self.state.append_history(HistoryEntry(
            at=self.wall(), kind=kind, result=res.result.value, fingerprint=res.fingerprint,
            revision=res.revision, duration_s=round(res.seconds, 3), steps=steps,
            message=res.message.splitlines()[0] if res.message else "",
            failed_steps=failed,
            jobs={k: v for o in (res.outcome, res.revert) if o for k, v in o.jobs.items()},
            notes=[n for o in (res.outcome, res.revert, res.rest) if o for n in o.notes],
        ))
