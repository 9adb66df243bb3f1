"""The executor: applies a `Plan` to the engine with health gates. It decides nothing.

Order of work, all from the plan: images first (nothing is stopped before every image is
present), then networks and volumes, then tier by tier (services of a tier in parallel,
replicas of one service `update.parallelism` at a time, each step gated on health), then
removal of services gone from the spec. The first failed step cancels the tier's other
steps at their next await and fails the run; every state that can leave behind is one the
planner has a defined step for, so the next plan (forward or revert) finishes the job.
Time and sleep are injected: component tests run it on a fake clock without real sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler import buildctx
from reconciler.core import labels
from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.envfiles import Secret, redact
from reconciler.core.health import Failure, Gate, Probe, Verdict, health_command, judge, vouched
from reconciler.core.plans import (
    Action,
    BuildNeed,
    ContainerRef,
    ImageAction,
    Lane,
    Phase,
    Plan,
    Step,
    Until,
)
from reconciler.core.snapshots import ContainerState, parse_container
from reconciler.core.specs import Network
from reconciler.faults import crash_point
from reconciler.runtimes import (
    BuildFailed,
    Conflict,
    EngineError,
    EngineUnavailable,
    ImageUnavailable,
    NotFound,
    Runtime,
)

LOG_TAIL = 15
EXEC_FIRST_S = 0.1  # exec probes until the first success: this cadence (start to start)...
EXEC_FAST_S = 4.0  # ...for this long after the gate began, then backing off by 1.25x...
EXEC_MAX_S = 1.0  # ...to at most this
EVENTS_CONNECT_S = 5.0  # the run's event subscription; without it, gates only poll
EXEC_CONCURRENCY = 4  # exec probes starting at once (each is a runc exec: host CPU)...
EXEC_SLOT_S = 1.0  # ...a probe holds its slot at most this long


class FailureKind(StrEnum):
    """What kind of failure failed a run (the `reconciler_rollbacks_total{reason}` label)."""

    HEALTH_GATE = Failure.HEALTH_GATE.value
    DEADLINE = Failure.DEADLINE.value
    CRASH_LOOP = Failure.CRASH_LOOP.value
    PULL_ERROR = "pull_error"
    EDGE_RELOAD = "edge_reload"
    ENGINE_ERROR = "engine_error"
    OTHER = "other"


class StepFailed(Exception):
    """A step could not complete; the message is for humans and carries no secret.
    `engine_down`: the cause was an engine that did not answer (not the rollout itself);
    `kind`: the failure as a kind, for metrics (never parsed out of the message)."""

    def __init__(self, step_id: str, message: str, *, engine_down: bool = False,
                 kind: FailureKind = FailureKind.OTHER) -> None:
        self.step_id = step_id
        self.message = message
        self.engine_down = engine_down
        self.kind = kind
        super().__init__(f"{step_id}: {message}")


def engine_failed(step_id: str, what: str, exc: EngineError, *,
                  kind: FailureKind = FailureKind.ENGINE_ERROR) -> StepFailed:
    """A `StepFailed` for an engine error (`engine_down` when the engine did not answer)."""
    return StepFailed(step_id, f"{what}: {exc}", engine_down=isinstance(exc, EngineUnavailable),
                      kind=kind)


@dataclass(frozen=True, slots=True)
class Progress:
    kind: str  # images | build | tier-start | tier-done | step-start | step-done | step-failed
    tier: str = ""
    step: str = ""
    message: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class StepResult:
    step: Step
    ok: bool
    seconds: float
    message: str = ""


@dataclass(slots=True)
class ExecutionReport:
    ok: bool = True
    results: list[StepResult] = field(default_factory=list)
    failure: StepFailed | None = None
    tier_seconds: dict[str, float] = field(default_factory=dict)
    health_waits: dict[str, float] = field(default_factory=dict)  # service -> longest wait
    jobs: dict[str, int] = field(default_factory=dict)  # job service -> exit code of its run
    images_ok: bool = True
    # the failure came from an engine that did not answer (socket gone, refused, timeout):
    # a fact for the controller to decide on, not a verdict on the rollout
    engine_unavailable: bool = False
    # what went wrong without failing the run (a best-effort backup in a revert)
    notes: list[str] = field(default_factory=list)

    @property
    def failure_kind(self) -> FailureKind | None:
        """The kind of the failure (any failure before every image was present is a pull
        error), or None when the run succeeded."""
        if self.failure is None:
            return None
        return FailureKind.PULL_ERROR if not self.images_ok else self.failure.kind

    @property
    def touched(self) -> bool:
        return any(r.step.action not in (Action.CREATE_NETWORK, Action.CREATE_VOLUME,
                                         Action.BACKUP)
                   for r in self.results)


Reporter = Callable[[Progress], None]
Sleeper = Callable[[float], Awaitable[None]]


def ignore_progress(_: Progress) -> None:
    """The default reporter: progress goes nowhere."""
    return None


class Executor:
    def __init__(
        self, runtime: Runtime, *, clock: Callable[[], float] = time.monotonic,
        sleep: Sleeper = asyncio.sleep, report: Reporter = ignore_progress, poll_s: float = 0.25,
        edge: EdgeHook | None = None, backups: BackupHook | None = None,
        files: FilesHook | None = None,
    ) -> None:
        self.rt = runtime
        self.backups = backups
        self.files = files
        self.clock = clock
        self.sleep = sleep
        self.report = report
        self.poll_s = poll_s
        self.edge = edge
        self._marks: dict[str, _Marks] = {}
        self._fps: dict[str, str] = {}  # service -> desired fingerprint (of the running plan)
        self._windows: list[asyncio.Task[None]] = []  # min_ready windows in the background
        self._retiring: dict[str, list[asyncio.Task[None]]] = {}  # service -> background stops
        self._wake = _Wakeups()
        self._exec_slots = asyncio.Semaphore(EXEC_CONCURRENCY)
        self._ahead = _Ahead()

    async def run(self, plan: Plan, desired: Desired, *,
                  edge: EdgeHook | None = None) -> ExecutionReport:
        if edge is not None:
            self.edge = edge
        self._fps = {name: svc.fingerprint for name, svc in desired.services.items()}
        outcome = ExecutionReport()
        try:
            await self._images(plan, desired)
        except StepFailed as exc:
            outcome.ok, outcome.failure, outcome.images_ok = False, exc, False
            outcome.engine_unavailable = exc.engine_down
            self.report(Progress("step-failed", step=exc.step_id, message=exc.message))
            return outcome
        self._wake = _Wakeups()
        watcher = (await self._watch(desired.project)
                   if any(s.phase is Phase.TIER for s in plan.steps) else None)
        try:
            for step in plan.backups():  # before anything is touched
                await self._backup(step, desired, outcome)
            if self.edge is not None:
                await self.edge.prepare(desired)
            for step in plan.objects():
                await self._timed(step, desired, outcome)
            tiers = [(tier, plan.in_tier(tier)) for tier in plan.tiers if plan.in_tier(tier)]
            # an executor that runs tiers its own way (the migration stops compose's
            # containers around them and creates ours there) creates nothing ahead
            early = creatable_ahead(plan, desired) if type(self)._tier is Executor._tier else set()
            for i, (tier, steps) in enumerate(tiers):
                await self._windows_passed(wait=False)
                started = self.clock()
                self.report(Progress("tier-start", tier=tier, message=f"{len(steps)} step(s)"))
                # created while this tier starts up: what waits in it, then the next tier
                # (what starts there at once first)
                following = tiers[i + 1][1] if i + 1 < len(tiers) else []
                ahead = ([s for s in steps if s.after] + [s for s in following if not s.after]
                         + [s for s in following if s.after])
                await self._tier_ahead(steps, desired, outcome, [s for s in ahead if s.id in early])
                outcome.tier_seconds[tier] = self.clock() - started
                self.report(Progress("tier-done", tier=tier, seconds=outcome.tier_seconds[tier]))
            await self._windows_passed(wait=True)
            await self._retired()
            for step in plan.orphans():
                await self._timed(step, desired, outcome)
            if self.edge is not None:
                await self.edge.settle(desired)
        except EngineError as exc:  # an engine call of a hook (edge) that it did not wrap
            failure = engine_failed("edge", "engine error", exc, kind=FailureKind.EDGE_RELOAD)
            outcome.ok, outcome.failure = False, failure
            outcome.engine_unavailable = failure.engine_down
        except StepFailed as exc:
            outcome.ok, outcome.failure = False, exc
            outcome.engine_unavailable = exc.engine_down
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            for window in self._windows:
                window.cancel()
            self._windows = []
            # a stop in flight is finished either way (the host is left clean)
            retiring, self._retiring = [t for ts in self._retiring.values() for t in ts], {}
            await asyncio.gather(*retiring, return_exceptions=True)
            await self._ahead_cleared()
        return outcome

    async def _watch(self, project: str) -> asyncio.Task[None] | None:
        """Container events for the run: a gate wakes as soon as one of its container's
        events arrives (`health_status`, die, oom, ...) instead of at its next poll. Polling
        goes on at the same cadence (events can be lost); no stream, no harm."""
        stream = self.rt.events(label=labels.project_selector(project))
        try:
            async with asyncio.timeout(EVENTS_CONNECT_S):
                await stream.connect()
        except (EngineError, TimeoutError):
            await stream.aclose()
            return None
        self._wake.live = True

        async def pump() -> None:
            try:
                async for event in stream:
                    self._wake.notify(event.container_id)
            except EngineError:
                pass
            finally:
                self._wake.live = False
                await stream.aclose()

        return asyncio.create_task(pump())

    async def _pause(self, cid: str, seconds: float) -> None:
        """Sleep `seconds`, or less when an event of the container arrives first."""
        if not self._wake.live:
            await self.sleep(seconds)
            return
        event = self._wake.event(cid)
        if not event.is_set():
            sleeper = asyncio.ensure_future(self.sleep(seconds))
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()
        event.clear()
    async def _backup(self, step: Step, desired: Desired, outcome: ExecutionReport) -> None:
        """A backup step; a failed best-effort one (a revert's) is noted and the run goes
        on, any other stops the run before anything is touched."""
        try:
            await self._timed(step, desired, outcome)
        except StepFailed as exc:
            if not step.best_effort:
                raise
            note = (f"backup of {step.service} failed ({exc.message}); best effort in a "
                    "revert: the revert goes on")
            outcome.notes.append(note)
            self.report(Progress("note", tier=step.tier, step=step.id, message=note))

    async def _windows_passed(self, *, wait: bool) -> None:
        """Raise the failure of a min_ready window that runs in the background (`wait`:
        first let every such window finish)."""
        if wait and self._windows:
            await asyncio.wait(self._windows)
        for window in [w for w in self._windows if w.done()]:
            self._windows.remove(window)
            window.result()

    # --- images ----------------------------------------------------------------------------

    async def _images(self, plan: Plan, desired: Desired) -> None:
        for build in plan.builds:  # built from the spec checkout, never pulled
            if not await self._call(build.id, self.rt.image_present(build.ref)):
                await self._build(build, desired)
            for name in build.context.tags:  # the service's `image:` names it too
                await self._call(build.id, self.rt.tag_image(build.ref, name))
        for need in plan.images:
            present = await self._call("image", self.rt.image_present(need.ref))
            action = need.if_present if present else need.if_missing
            if action is ImageAction.USE:
                continue
            if action is ImageAction.FAIL:
                raise StepFailed(f"image {need.ref}", "not present and pull_policy is never")
            self.report(Progress("images", message=f"pulling {need.ref}"))
            try:
                await self.rt.pull_image(need.ref)
            except ImageUnavailable as exc:
                raise StepFailed(f"image {need.ref}", f"cannot pull: {exc}") from None
            except EngineError as exc:
                raise engine_failed(f"image {need.ref}", "engine error", exc) from None

    async def _build(self, need: BuildNeed, desired: Desired) -> None:
        """Archive the context (hashed again on the way: it must still be what named the
        image) and build it; a failure shows the error and the output's last lines."""
        ctx = need.context
        self.report(Progress("images", message=f"building {need.service}: {need.ref} from "
                                               f"{ctx.context}"))
        with tempfile.TemporaryFile(prefix="reconciler-build-") as archive:
            try:
                await asyncio.to_thread(buildctx.write_archive, ctx, archive)
            except buildctx.BuildRefused as exc:
                raise StepFailed(need.id, exc.reason) from None
            except OSError as exc:
                raise StepFailed(need.id, f"cannot write the build context archive: "
                                          f"{exc.strerror or exc}") from None
            archive.seek(0)

            def line(text: str) -> None:
                self.report(Progress("build", step=need.id, message=text))

            try:
                await self.rt.build_image(
                    archive, ref=need.ref, dockerfile=ctx.dockerfile_name, args=dict(ctx.args),
                    target=ctx.target, progress=line,
                    labels={labels.PROJECT: desired.project, labels.SERVICE: need.service})
            except BuildFailed as exc:
                tail = "".join(f"\n      | {ln}" for ln in exc.tail[-LOG_TAIL:])
                raise StepFailed(need.id, f"build failed: {exc}"
                                          + (f"\n    last output lines:{tail}" if tail else ""),
                                 kind=FailureKind.PULL_ERROR) from None
            except EngineError as exc:
                raise engine_failed(need.id, "engine error", exc) from None

    # --- tiers and services ----------------------------------------------------------------

    async def _tier(self, steps: list[Step], desired: Desired, outcome: ExecutionReport) -> None:
        by_service: dict[str, list[Step]] = {}
        for step in steps:
            by_service.setdefault(step.service, []).append(step)
        self._marks = {name: _Marks.of(service_steps)
                       for name, service_steps in by_service.items()}
        await _gather_first_failure([
            self._service(service_steps, desired, outcome)
            for service_steps in by_service.values()
        ])

    async def _tier_ahead(self, steps: list[Step], desired: Desired, outcome: ExecutionReport,
                          ahead: list[Step]) -> None:
        """`_tier`, with the containers of `ahead` (the tier's steps that wait, then the next
        tier's) created meanwhile (`_create_ahead`) until the tier ends."""
        if not ahead:
            await self._tier(steps, desired, outcome)
            return
        first = {s.id for s in steps if not s.after and s.action in _STARTS}
        loop = asyncio.create_task(self._create_ahead(ahead, desired, first))
        self._ahead.loops.append(loop)
        try:
            await self._tier(steps, desired, outcome)
        finally:
            loop.cancel()  # a create in flight goes on (shielded): its step takes it

    async def _service(self, steps: list[Step], desired: Desired,
                       outcome: ExecutionReport) -> None:
        """One service's steps, each in the lane the planner put it in, once the services
        the planner put before it (`Step.after`) got that far."""
        for wait in sorted({w for s in steps for w in s.after}, key=lambda w: w.service):
            marks = self._marks.get(wait.service)
            if marks is not None:
                await {Until.STARTED: marks.started, Until.HEALTHY: marks.healthy,
                       Until.READY: marks.ready, Until.STOPPED: marks.ready}[wait.until].wait()
            if wait.until is Until.STOPPED:  # its old containers' background stops, too
                await asyncio.gather(*self._retiring.get(wait.service, []))
        await self._service_steps(steps, desired, outcome)
        done = self._marks.get(steps[0].service) if steps else None
        if done is not None:
            done.started.set()
            done.healthy.set()
            done.ready.set()

    async def _service_steps(self, steps: list[Step], desired: Desired,
                             outcome: ExecutionReport) -> None:
        gate = asyncio.Semaphore(max((s.parallelism for s in steps), default=1))

        async def one(step: Step) -> None:
            if step.lane is Lane.FREE:
                await self._timed(step, desired, outcome)
                return
            async with gate:
                await self._timed(step, desired, outcome)

        await _gather_first_failure([one(s) for s in steps if s.lane is not Lane.AFTER])
        for step in steps:
            if step.lane is Lane.AFTER:
                await self._timed(step, desired, outcome)

    async def _timed(self, step: Step, desired: Desired, outcome: ExecutionReport) -> None:
        started = self.clock()
        self.report(Progress("step-start", tier=step.tier, step=step.id))
        try:
            await self._step(step, desired, outcome)
        except StepFailed as exc:
            seconds = self.clock() - started
            outcome.results.append(StepResult(step, False, seconds, exc.message))
            self.report(Progress("step-failed", tier=step.tier, step=step.id,
                                 message=exc.message, seconds=seconds))
            raise
        seconds = self.clock() - started
        outcome.results.append(StepResult(step, True, seconds))
        self.report(Progress("step-done", tier=step.tier, step=step.id, seconds=seconds))

    # --- one step --------------------------------------------------------------------------

    async def _step(self, step: Step, desired: Desired, outcome: ExecutionReport) -> None:
        if step.action is Action.CREATE_NETWORK:
            net = desired.networks[step.object_name]
            crash_point("network-create:before")
            await self._call(step.id, self.rt.create_network(
                step.object_name, labels=labels.object_labels(desired.project),
                internal=net.internal, ipam=ipam_config(net)))
            crash_point("network-create:after")
            return
        if step.action is Action.CREATE_VOLUME:
            crash_point("volume-create:before")
            await self._call(step.id, self.rt.create_volume(
                step.object_name, labels=labels.object_labels(desired.project)))
            crash_point("volume-create:after")
            return
        if step.action is Action.BACKUP:
            if self.backups is None:
                raise StepFailed(step.id, "no backup store: refusing to stop the service")
            await self.backups.take(desired, step)
            return
        if step.action is Action.RELOAD:
            assert step.target is not None
            if self.edge is None:
                raise StepFailed(step.id, "no edge in this run to reload",
                                 kind=FailureKind.EDGE_RELOAD)
            await self.edge.reload_config(desired, desired.services[step.service],
                                          step.target.id)
            return
        if step.stage_config and self.edge is not None:
            started = step.target.id if step.action is Action.START and step.target else None
            await self.edge.stage(desired, desired.services[step.service], started=started)
        # the edge is told about a step's containers when the planner says they serve in an
        # upstream and this run has an edge to tell
        edge = self.edge if step.upstream is not None else None
        if step.action is Action.REMOVE:
            svc = desired.services.get(step.service)
            if edge is not None and svc is not None:
                await edge.retire(desired, svc, old_ids=[o.id for o in step.old])
            for old in step.old:
                await self._retire(step, old)
            return
        svc = desired.services[step.service]
        if step.action is Action.START:
            assert step.target is not None
            await self._start(step, step.target.id)
            await self._ready(step, svc, step.target.id, outcome)
            if edge is not None:
                edge.vouch(step.target.id)
                await edge.after_step(desired, svc)
            return
        cid = step.adopt.id if step.adopt is not None else None
        # at most one surplus copy per service: an earlier replacement's old container
        # finishes stopping before this step adds a new one
        await self._retired(step.service)
        if cid is None and step.action is Action.REPLACE:
            # a new generation has its own name: create it before the old one stops, so a
            # stop-first gap is only stop -> start (creating never binds ports or runs code)
            cid = await self._create(step, svc)
        if step.stop_first:
            if edge is not None and step.old:
                # out of the upstreams (other replicas keep serving) and drained first
                await edge.retire(desired, svc, old_ids=[o.id for o in step.old])
            for old in step.old:
                await self._retire(step, old)
        if cid is None:
            cid = await self._new_container(step, svc)
        await self._start(step, cid)
        await self._ready(step, svc, cid, outcome)
        if edge is not None:
            edge.vouch(cid)
        if not step.stop_first and step.old:
            if edge is not None:
                await edge.cutover(desired, svc, new_id=cid, old_ids=[o.id for o in step.old])
            if step.retire_later:
                self._retiring.setdefault(step.service, []).append(
                    asyncio.create_task(self._retire_all(step)))
                return
            await self._retire_all(step)
        elif edge is not None:
            await edge.after_step(desired, svc)

    async def _create(self, step: Step, svc: DesiredService) -> str:
        assert step.new_name is not None
        name = step.new_name
        body = container_config(svc, step.replica or 1)
        if svc.files:
            if self.files is None:
                raise StepFailed(step.id, "secrets and configs need a files directory; none "
                                          "was given to the executor")
            try:
                self.files.materialise(svc)
            except (OSError, ValueError) as exc:  # FileStoreError too: no content in it
                raise StepFailed(step.id, f"secrets/configs not written: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
        if svc.joins is not None:
            joined = await self._joined(step, desired_fp=self._fps.get(svc.joins),
                                        project=svc.project, service=svc.joins)
            body["HostConfig"] = {**body["HostConfig"], "NetworkMode": f"container:{joined}"}
        crash_point("container-create:before")
        try:
            cid = await self.rt.create_container(name, body)
        except Conflict:
            # a crash between create and start left the name behind: adopt it only when it
            # carries every label of the planner's claim
            try:
                info = await self.rt.inspect_container(name)
            except EngineError as exc:
                raise engine_failed(step.id, f"name {name} is taken and cannot be "
                                              "inspected", exc) from None
            found = (info.get("Config") or {}).get("Labels") or {}
            if step.claim and all(found.get(k) == v for k, v in step.claim):
                return str(info["Id"])
            raise StepFailed(step.id, f"name {name} is taken by a container that is not ours; "
                                      "it was left untouched") from None
        except EngineError as exc:
            raise engine_failed(step.id, "create failed", exc) from None
        crash_point("container-create:after")
        return cid

    async def _new_container(self, step: Step, svc: DesiredService) -> str:
        """The step's new container: the one created ahead for it, or one created now."""
        self._ahead.claimed.add(step.id)
        early = self._ahead.tasks.get(step.id)
        if early is None:
            return await self._create(step, svc)
        return await asyncio.shield(early)  # a cancelled step leaves it to `_ahead_cleared`

    async def _create_ahead(self, steps: list[Step], desired: Desired, first: set[str]) -> None:
        """Create the containers of `steps` before their turn, one at a time, once the steps
        `first` started theirs (a create never competes with those starts); a step that gets
        there first creates its own. Creating runs no code and binds no port: gates,
        `depends_on` and tiers still decide when each container starts. A failed create stops
        the look-ahead; the step meets the failure when it needs it."""
        while not first <= self._ahead.started:
            self._ahead.wake.clear()
            await self._ahead.wake.wait()
        for step in steps:
            if step.id in self._ahead.claimed or step.id in self._ahead.tasks:
                continue
            task = asyncio.ensure_future(self._create_early(step, desired.services[step.service]))
            self._ahead.tasks[step.id] = task
            try:
                await asyncio.shield(task)
            except StepFailed:
                return

    async def _create_early(self, step: Step, svc: DesiredService) -> str:
        cid = await self._create(step, svc)
        self._ahead.unstarted[cid] = step.new_name or cid
        return cid

    async def _ahead_cleared(self) -> None:
        """End of a run: the look-ahead stops; containers it created that no step started (the
        run failed before their turn) are removed while still just created (best effort; one
        left behind is a created container the next plan starts)."""
        ahead, self._ahead = self._ahead, _Ahead()
        for loop in ahead.loops:
            loop.cancel()
        await asyncio.gather(*ahead.loops, *ahead.tasks.values(), return_exceptions=True)
        for cid in ahead.unstarted:
            with contextlib.suppress(EngineError):
                info = await self.rt.inspect_container(cid)
                if (info.get("State") or {}).get("Status") == "created":
                    await self.rt.remove_container(cid)

    async def _joined(self, step: Step, *, desired_fp: str | None, project: str,
                      service: str) -> str:
        """The id of the running container of `service` (its desired generation, lowest
        replica) whose network namespace a `network_mode: service:X` container joins."""
        raw = await self._call(step.id, self.rt.list_containers(
            label=labels.project_selector(project)))
        found = [c for c in (parse_container(item) for item in raw) if c is not None
                 and c.service == service and c.state is ContainerState.RUNNING
                 and (desired_fp is None or c.fingerprint == desired_fp)]
        if not found:
            raise StepFailed(step.id, f"network_mode service:{service}: no running container "
                                      f"of {service} to join")
        return min(found, key=lambda c: (c.replica or 0, c.name)).id

    async def _start(self, step: Step, cid: str) -> None:
        self._ahead.unstarted.pop(cid, None)
        crash_point("container-start:before")
        await self._call(step.id, self.rt.start_container(cid))
        crash_point("container-start:after")
        self._ahead.started.add(step.id)
        self._ahead.wake.set()
        marks = self._marks.get(step.service)
        if marks is not None:
            marks.starting -= 1
            if marks.starting <= 0:
                marks.started.set()

    def _healthy_once(self, step: Step) -> None:
        """One container of the step's service passed its gate's health (or exited 0)."""
        marks = self._marks.get(step.service)
        if marks is not None:
            marks.unhealthy -= 1
            if marks.unhealthy <= 0:
                marks.healthy.set()

    async def _retire_all(self, step: Step) -> None:
        for old in step.old:
            await self._retire(step, old)

    async def _retired(self, service: str | None = None) -> None:
        """Wait for background stops (of one service, or all); raise the first failure."""
        names = [service] if service is not None else list(self._retiring)
        for task in [t for n in names for t in self._retiring.pop(n, [])]:
            await task

    async def _retire(self, step: Step, old: ContainerRef) -> None:
        """Stop (with the step's grace period) and remove one old container; gone is fine."""
        crash_point("container-stop:before")
        try:
            await self.rt.stop_container(old.id, timeout_s=step.stop_grace_s)
        except NotFound:
            return
        except EngineError as exc:
            raise engine_failed(step.id, f"stop {old.name} failed", exc) from None
        crash_point("container-stop:after")
        crash_point("container-remove:before")
        try:
            await self.rt.remove_container(old.id)
        except NotFound:
            return
        except EngineError as exc:
            raise engine_failed(step.id, f"remove {old.name} failed", exc) from None
        crash_point("container-remove:after")

    async def _ready(self, step: Step, svc: DesiredService, cid: str,
                     outcome: ExecutionReport) -> None:
        """Wait on the health gate; fail early on exit, OOM, restarts or `unhealthy`."""
        if step.job:
            await self._completed(step, svc, cid, outcome)
            return
        if not step.window_after:
            await self._gate(step, svc, cid, outcome, None)
            return
        # nothing serving yet: once healthy, the min_ready window goes on in the background
        # (the next tier may start); a failure inside it still fails the run
        healthy = asyncio.Event()
        gate = asyncio.create_task(self._gate(step, svc, cid, outcome, healthy))
        waiter = asyncio.create_task(healthy.wait())
        try:
            await asyncio.wait({gate, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gate.cancel()
            raise
        finally:
            waiter.cancel()
        if gate.done():
            gate.result()
            return
        self._windows.append(gate)

    async def _gate(self, step: Step, svc: DesiredService, cid: str,
                    outcome: ExecutionReport, healthy: asyncio.Event | None) -> None:
        """The health gate of one container (`healthy` is set when it is first healthy)."""
        update = svc.service.update
        started = self.clock()
        info = await self._call(step.id, self.rt.inspect_container(cid))
        probe = Probe.from_inspect(info)
        gate = Gate(started_at=started, min_ready=update.min_ready, deadline=update.deadline,
                    baseline_restarts=probe.restart_count)
        delay = min(0.05, self.poll_s)  # quick checks first, then every poll_s
        counted = False
        # without an engine-side StartInterval, the service's own health check is run by
        # exec at a short cadence until it first succeeds; Docker's status takes over then
        command = None if self.rt.start_interval else health_command(info)
        exec_ok, exec_every, exec_next = False, EXEC_FIRST_S, started
        while True:
            probing = (command is not None and not exec_ok and probe.status == "running"
                       and probe.health == "starting")
            if probing and self.clock() >= exec_next:
                assert command is not None
                began = self.clock()
                exec_ok = await self._exec_probe(cid, *command)
                # start to start: a slow exec does not stretch the cadence
                exec_next = max(began + exec_every, self.clock())
                if self.clock() - started >= EXEC_FAST_S:
                    exec_every = min(exec_every * 1.25, EXEC_MAX_S)
            if exec_ok:
                probe = vouched(probe)
            judgement = judge(gate, probe, self.clock())
            if not counted and judgement.gate.ready_since is not None:
                counted = True  # once per gate: a later dip is the gate's business
                self._healthy_once(step)
                if healthy is not None:
                    healthy.set()
            gate = judgement.gate
            if judgement.verdict is Verdict.READY:
                waited = self.clock() - started
                outcome.health_waits[svc.name] = max(outcome.health_waits.get(svc.name, 0.0),
                                                     waited)
                return
            if judgement.verdict is Verdict.FAILED:
                kind = (FailureKind(judgement.failure.value) if judgement.failure
                        else FailureKind.OTHER)
                raise StepFailed(step.id, f"{judgement.reason}"
                                          f"{await self._log_tail(cid, svc)}", kind=kind)
            # wake for the next exec probe on time, not on the next inspect tick, and
            # earlier when an event of the container arrives
            await self._pause(cid, min(delay, max(exec_next - self.clock(), 0.0))
                              if probing and not exec_ok else delay)
            delay = min(delay * 1.5, self.poll_s)
            info = await self._call(step.id, self.rt.inspect_container(cid))
            probe = Probe.from_inspect(info)

    async def _exec_probe(self, cid: str, cmd: list[str], timeout_s: float) -> bool:
        """One run of the container's own health check by exec: exit 0 within its timeout."""
        # the slots bound how many probes start at once (a runc exec costs its start); a probe
        # still running after EXEC_SLOT_S (an app holding the connection until the check's
        # timeout) frees its slot, so it never starves the other services' probes
        async with self._exec_slots:
            task = asyncio.ensure_future(self._exec_once(cid, cmd, timeout_s))
            try:
                await asyncio.wait({task}, timeout=EXEC_SLOT_S)
            except BaseException:
                task.cancel()
                raise
        try:
            return await task
        except BaseException:
            task.cancel()
            raise

    async def _exec_once(self, cid: str, cmd: list[str], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return (await self.rt.exec_in_container(cid, cmd)).exit_code == 0
        except (TimeoutError, EngineError):
            return False

    async def _completed(self, step: Step, svc: DesiredService, cid: str,
                         outcome: ExecutionReport) -> None:
        """A job's gate: its container exits 0 within the deadline (non-zero or the
        deadline fails the step like a failed health gate; its output is kept)."""
        started = self.clock()
        delay = min(0.05, self.poll_s)
        while True:
            info = await self._call(step.id, self.rt.inspect_container(cid))
            probe = Probe.from_inspect(info)
            if probe.status in ("exited", "dead"):
                outcome.jobs[svc.name] = probe.exit_code
                if probe.exit_code == 0 and not probe.oom_killed:
                    outcome.health_waits[svc.name] = self.clock() - started
                    self._healthy_once(step)
                    return
                raise StepFailed(step.id, f"job exited with code {probe.exit_code}"
                                          f"{await self._log_tail(cid, svc)}",
                                 kind=FailureKind.HEALTH_GATE)
            if self.clock() - started >= svc.service.update.deadline:
                raise StepFailed(step.id, f"job did not finish within the deadline of "
                                          f"{svc.service.update.deadline:g}s"
                                          f"{await self._log_tail(cid, svc)}",
                                 kind=FailureKind.DEADLINE)
            await self._pause(cid, delay)
            delay = min(delay * 1.5, self.poll_s)

    async def _log_tail(self, cid: str, svc: DesiredService) -> str:
        try:
            text = await self.rt.container_logs(cid, tail=LOG_TAIL)
        except EngineError:
            return ""
        # the values of the service's env-file secrets and secret files never reach a message
        text = redact(text, [*(v for _, v in svc.env if isinstance(v, Secret)),
                             *secret_file_values(svc)])
        lines = [ln for ln in text.splitlines() if ln.strip()][-LOG_TAIL:]
        if not lines:
            return ""
        return "\n    last log lines:\n" + "\n".join(f"      | {ln}" for ln in lines)

    async def _call(self, step_id: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except EngineError as exc:
            raise engine_failed(step_id, "engine error", exc) from None


async def _gather_first_failure(coros: list[Awaitable[None]]) -> None:
    """Run concurrently; the first `StepFailed` cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)  # type: ignore[arg-type]
    except BaseExceptionGroup as eg:
        raise _first_leaf(eg) from None


def _first_leaf(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_leaf(exc)
        if isinstance(exc, StepFailed):
            return exc
    return eg.exceptions[0]


def secret_file_values(svc: DesiredService) -> list[str]:
    """The content of a service's secret files as a log line could show it: whole, and each
    line (a key file printed line by line), for redaction."""
    out: list[str] = []
    for mount in svc.files:
        if mount.kind == "secrets" and mount.data:
            text = mount.data.decode("utf-8", "replace")
            out += [text, text.strip(), *(ln.strip() for ln in text.splitlines())]
    return [v for v in out if v]


def ipam_config(net: Network) -> dict[str, Any] | None:
    """The engine's `IPAM` body of a network with `ipam` (None: the engine chooses)."""
    if net.ipam is None:
        return None
    pools = [{k: v for k, v in (("Subnet", p.subnet), ("Gateway", p.gateway),
                                ("IPRange", p.ip_range)) if v} for p in net.ipam.config]
    return {"Driver": net.ipam.driver, "Config": pools}


class FilesHook:
    """Writes a service generation's secrets and configs before its container is created
    (`filestore.FileStore`)."""

    def materialise(self, svc: DesiredService) -> None:
        raise NotImplementedError


class BackupHook:
    """Takes a service's backup for a BACKUP step (`reconciler.backupstore.BackupStore`);
    raises `StepFailed` when the backup failed or is empty."""

    async def take(self, desired: Desired, step: Step) -> None:
        raise NotImplementedError


def creatable_ahead(plan: Plan, desired: Desired) -> set[str]:
    """The steps whose container may be created before the step's turn: plain creates of
    services the plan only creates containers for (nothing of theirs stops or retires), with
    no staged edge config and no joined network namespace (those need the moment itself)."""
    only_new: dict[str, bool] = {}
    for s in plan.steps:
        if s.phase is Phase.TIER:
            fresh = s.action is Action.CREATE and not s.old and s.adopt is None
            only_new[s.service] = only_new.get(s.service, True) and fresh
    return {s.id for s in plan.steps
            if s.phase is Phase.TIER and only_new.get(s.service) and s.new_name
            and not s.stage_config and s.service in desired.services
            and desired.services[s.service].joins is None}


@dataclass(slots=True)
class _Ahead:
    """The run's look-ahead creates: step id -> its create, the steps that took over their
    own create, containers created ahead and not started yet (id -> name), the loops (one
    per tier, cancelled when the tier ends), the steps that started their container (`wake`
    is set at each)."""

    tasks: dict[str, asyncio.Task[str]] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)
    unstarted: dict[str, str] = field(default_factory=dict)
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Wakeups:
    """Which containers had an event since their gate last looked (`live`: the run's event
    stream is connected; without it gates only poll)."""

    live: bool = False
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, cid: str) -> asyncio.Event:
        return self._events.setdefault(cid, asyncio.Event())

    def notify(self, cid: str) -> None:
        event = self._events.get(cid)
        if event is not None:
            event.set()


@dataclass(slots=True)
class _Marks:
    """How far one service of the running tier got (what `Step.after` waits on)."""

    starting: int  # containers still to start
    unhealthy: int  # started containers not yet healthy once
    started: asyncio.Event = field(default_factory=asyncio.Event)
    healthy: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def of(cls, steps: list[Step]) -> _Marks:
        count = sum(1 for s in steps if s.action in _STARTS)
        marks = cls(count, count)
        if count == 0:
            marks.started.set()
            marks.healthy.set()
        return marks


_STARTS = (Action.CREATE, Action.REPLACE, Action.RECREATE, Action.START)


class EdgeHook:
    """What the executor calls at the edge cutover points (implemented in `edges`)."""

    def vouch(self, cid: str) -> None:
        """The container passed its health gate (possibly by the executor's own exec probe,
        before Docker's first probe): the edge may serve it while Docker still says
        `starting`."""
        return None

    async def prepare(self, desired: Desired) -> None:
        return None

    async def stage(self, desired: Desired, svc: DesiredService, *,
                    started: str | None = None) -> None:
        """Before the edge container is created or `started`: its staged config is current."""
        return None

    async def reload_config(self, desired: Desired, svc: DesiredService, cid: str) -> None:
        """The edge's mounted config changed: test it, reload gracefully, record it."""
        return None

    async def after_step(self, desired: Desired, svc: DesiredService) -> None:
        return None

    async def cutover(self, desired: Desired, svc: DesiredService, *, new_id: str,
                      old_ids: list[str]) -> None:
        return None

    async def retire(self, desired: Desired, svc: DesiredService, *,
                     old_ids: list[str]) -> None:
        """Before the executor stops containers of an exposed service outside a cutover
        (stop-first, scale-down): take them out of the upstreams and drain."""
        return None

    async def settle(self, desired: Desired) -> None:
        return None
