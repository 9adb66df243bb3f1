"""The planner: `compute(desired, snapshot) -> Plan`. Pure, total and deterministic.

Every container of ours in the snapshot and every desired replica ends up in exactly one
decision; every step carries a reason for humans (the executor never branches on it, and
neither does `Plan`). Steps are ordered: networks and volumes, then tier by tier in spec
order (services by name, replicas ascending), then removal of services gone from the spec,
last.

Everything the executor needs to act is a field the planner set: the phase a step runs in,
its lane (throttled by `update.parallelism`, free, or after the others), whether the old
containers stop before the new one starts, the stop grace, which upstream the step changes,
which labels prove that a container found under the new name is this step's own (adoption
after a crash between create and start), and per image what to do when it is present or
missing. The executor only reads them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from reconciler.core import labels
from reconciler.core.builds import BuildContext
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.snapshots import ContainerState, Health, Observed, Snapshot
from reconciler.core.specs import PullPolicy, Restart, UpdateOrder


class Action(StrEnum):
    """What a step does."""

    CREATE_NETWORK = "create-network"
    CREATE_VOLUME = "create-volume"
    CREATE = "create"
    REPLACE = "replace"  # new generation (order: start-first or stop-first)
    RECREATE = "recreate"  # same generation, broken container: remove, then create
    START = "start"
    REMOVE = "remove"
    BACKUP = "backup"  # copy a service's data before a step stops or replaces it
    RELOAD = "reload"  # the edge's mounted config changed: `nginx -t`, then a graceful reload
    SCALE = "scale"  # Swarm: the same generation with another replica count


class Phase(StrEnum):
    """When a step runs: before the tiers, inside its tier, or after every tier."""

    BACKUP = "backup"  # before anything else is touched: a failed backup touches nothing
    OBJECTS = "objects"  # networks and volumes
    TIER = "tier"
    LAST = "last"  # containers of services gone from the spec (or unlabelled ones)


class Lane(StrEnum):
    """How a container step of one service runs next to the service's other steps."""

    THROTTLED = "throttled"  # at most `Step.parallelism` at a time (it takes capacity away)
    FREE = "free"  # all at once: nothing serving is taken away (new replicas)
    AFTER = "after"  # one at a time, once the service's other steps are done (removals)


class ImageAction(StrEnum):
    """What the executor does with an image, for each of present / missing."""

    USE = "use"
    PULL = "pull"
    FAIL = "fail"


DEFAULT_STOP_GRACE_S = 10.0  # compose's default `stop_grace_period`


class Until(StrEnum):
    """How far another service of the same tier must have come before a step begins."""

    STARTED = "started"  # every new container of it started (compose `service_started`)
    HEALTHY = "healthy"  # every new container of it healthy once, or its job exited 0
    READY = "ready"  # every step of it done (healthy held for min_ready, cut over)
    STOPPED = "stopped"  # READY, and its old containers stopped (background stops too)


@dataclass(frozen=True, slots=True)
class Wait:
    """An ordering edge inside a tier: `service` must reach `until` first."""

    service: str
    until: Until


class Reason(StrEnum):
    """Why a step exists: for humans (plans, history, drift metrics), never for control."""

    NETWORK_MISSING = "network missing"
    VOLUME_MISSING = "volume missing"
    NEW_SERVICE = "new service"
    REPLICA_MISSING = "replica missing"
    SCALED_UP = "scaled up"
    CONFIG_CHANGED = "config changed"
    STOPPED = "container stopped"
    CREATED_NOT_STARTED = "container created but never started"
    UNHEALTHY = "container unhealthy"
    DEAD = "container dead"
    PAUSED = "container paused"
    RESTARTING = "container restarting"
    INTERRUPTED = "finish an interrupted update"
    SCALED_DOWN = "scaled down"
    ORPHAN = "service no longer in the spec"
    DUPLICATE = "duplicate container for one replica"
    UNLABELLED = "container of ours without a service or replica label"
    BACKUP = "data backup before the service stops"
    RETRY = "retry a service that failed to start"
    JOB_FAILED = "job failed before: run it again"
    JOB_RECORD = "older run of a job (pruned once every tier passed)"
    RESTART = "restart requested"  # `reconciler restart`: same generation, fresh containers
    EDGE_CONFIG = "mounted config changed"  # the edge reloads it (nothing is recreated)
    EDGE_UNSTAGED = "mounted config changed; this edge mounts the checkout, not staged copies"
    # network_mode service:X: X's container (whose network namespace this one shares) is
    # gone or gets replaced by this plan
    JOINED_REPLACED = "the container whose network it joins was replaced"


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container a step acts on, as the snapshot saw it."""

    id: str
    name: str
    state: ContainerState

    @classmethod
    def of(cls, c: Observed) -> ContainerRef:
        """The reference of an observed container."""
        return cls(id=c.id, name=c.name, state=c.state)


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of the public config that a step changes (shown in plans)."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Step:
    """One decision of the planner, with every fact the executor needs to carry it out."""

    action: Action
    reason: Reason
    tier: str = ""
    service: str = ""
    replica: int | None = None
    order: UpdateOrder | None = None  # REPLACE only (shown in plans)
    new_name: str | None = None  # CREATE / REPLACE / RECREATE
    old: tuple[ContainerRef, ...] = ()  # containers this step stops and removes (never `adopt`)
    adopt: ContainerRef | None = None  # an existing new-generation container to finish with
    target: ContainerRef | None = None  # START: the container to start
    object_name: str = ""  # CREATE_NETWORK / CREATE_VOLUME
    changes: tuple[FieldChange, ...] = ()
    phase: Phase = Phase.TIER
    lane: Lane = Lane.THROTTLED
    parallelism: int = 1  # THROTTLED: how many steps of the service run at once
    stop_first: bool = False  # stop and remove `old` before the new container starts
    stop_grace_s: float = DEFAULT_STOP_GRACE_S  # for stopping `old`
    upstream: str | None = None  # the edge upstream this step's containers serve in
    # labels that prove a container already under `new_name` is this step's own (left by a
    # crash between create and start): the executor adopts it on a name conflict
    claim: tuple[tuple[str, str], ...] = ()
    job: bool = False  # the gate waits for the container to exit 0 (not for health)
    # same-tier services this step waits for (depends_on conditions, one-by-one updates)
    after: tuple[Wait, ...] = ()
    # nothing of the tier serves yet (all cold creates): once healthy, the min_ready window
    # is checked in the background and the next tier may start
    window_after: bool = False
    # start-first: once the new container is ready and the old ones are out of the
    # upstream, they stop in the background (the service's next replacement waits for it)
    retire_later: bool = False
    # the edge: its staged config copies are brought up to date before the container is
    # created or started (RELOAD steps always do it)
    stage_config: bool = False
    # BACKUP: a failure is noted and the run goes on (a revert to last-good: restoring the
    # known-good generation matters more than a copy of the failed one, `rollback.for_revert`)
    best_effort: bool = False
    # the edge replaced start-first in its holder's namespace, and the snapshot does not yet
    # say whether the running nginx's whole config (`nginx -T`) has `reuseport` on every
    # socket: the shell reads it (`Snapshot.edge_reuse`) and plans again; a socket without it
    # (in a file the spec does not mount) makes the step stop-first, since the new nginx
    # could not bind next to the old one
    bind_check: bool = False

    @property
    def id(self) -> str:
        """Readable, unique within a plan: `replace api-gateway[1] start-first`."""
        if self.object_name:
            return f"{self.action} {self.object_name}"
        who = self.service + (f"[{self.replica}]" if self.replica is not None else "")
        if self.action is Action.REMOVE and self.old:
            who += " " + self.old[0].name
        extra = f" {self.order}" if self.order else ""
        return f"{self.action} {who}{extra}"


@dataclass(frozen=True, slots=True)
class ImageNeed:
    """An image the plan's steps need, and what to do when it is present or missing."""

    ref: str
    policy: PullPolicy
    if_present: ImageAction = ImageAction.USE
    if_missing: ImageAction = ImageAction.PULL

    @classmethod
    def of(cls, ref: str, policy: PullPolicy) -> ImageNeed:
        """`pull_policy` decided: always pulls, never fails when absent, missing pulls."""
        return cls(ref, policy,
                   if_present=ImageAction.PULL if policy is PullPolicy.ALWAYS else ImageAction.USE,
                   if_missing=ImageAction.FAIL if policy is PullPolicy.NEVER else ImageAction.PULL)


@dataclass(frozen=True, slots=True)
class BuildNeed:
    """An image the plan's steps need that is built on the host from the spec checkout
    (before anything is stopped): built when its content-addressed name is missing."""

    service: str
    ref: str
    context: BuildContext

    @property
    def id(self) -> str:
        """`build web -> metro-web:3f2a...` (as plans show it)."""
        return f"build {self.service} -> {self.ref}"


@dataclass(frozen=True, slots=True)
class UpstreamChange:
    """Servers (containers) an exposed service's `upstream` gains and loses by the plan."""

    upstream: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's whole answer for one pass: ordered steps plus what they imply."""

    project: str
    tiers: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    images: tuple[ImageNeed, ...] = ()  # what create/replace/recreate steps need, sorted
    builds: tuple[BuildNeed, ...] = ()  # images those steps need built first, by service
    engine_available: bool = True
    notes: tuple[str, ...] = field(default=())
    upstreams: tuple[UpstreamChange, ...] = ()  # edge upstream changes the steps imply
    edge: str | None = None  # the edge service, when the spec has one
    # services left out of this plan (first deploy, degraded): service -> the failed
    # services it waits on (empty for a failed service itself)
    held: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        """True when the host already matches the desired state."""
        return not self.steps

    def in_tier(self, tier: str) -> list[Step]:
        """The container steps of one tier, in plan order."""
        return [s for s in self.steps if s.phase is Phase.TIER and s.tier == tier]

    def orphans(self) -> list[Step]:
        """The steps that run after every tier (containers of services gone from the spec)."""
        return [s for s in self.steps if s.phase is Phase.LAST]

    def backups(self) -> list[Step]:
        """The backup steps (they run before anything is touched)."""
        return [s for s in self.steps if s.phase is Phase.BACKUP]

    def objects(self) -> list[Step]:
        """The network and volume steps (they run before the tiers)."""
        return [s for s in self.steps if s.phase is Phase.OBJECTS]

    def counts(self) -> dict[str, int]:
        """Steps by kind for the summary line: create, replace, start, remove (and reload,
        when the plan reloads the edge's config)."""
        counts = {"create": 0, "replace": 0, "start": 0, "remove": 0}
        for s in self.steps:
            if s.action is Action.BACKUP:
                continue
            if s.action is Action.RELOAD:
                counts["reload"] = counts.get("reload", 0) + 1
                continue
            if s.action in (Action.CREATE, Action.CREATE_NETWORK, Action.CREATE_VOLUME):
                counts["create"] += 1
            elif s.action in (Action.REPLACE, Action.RECREATE):
                counts["replace"] += 1
            elif s.action is Action.START:
                counts["start"] += 1
            elif s.action is Action.SCALE:
                counts["scale"] = counts.get("scale", 0) + 1
            else:
                counts["remove"] += 1
        return counts


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """Field-level differences between two public configs (the `reconciler.config` label)."""
    out: list[FieldChange] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            a_map: Mapping[str, Any] = a if isinstance(a, Mapping) else {}
            b_map: Mapping[str, Any] = b if isinstance(b, Mapping) else {}
            for sub in sorted(set(a_map) | set(b_map)):
                if a_map.get(sub) != b_map.get(sub):
                    out.append(FieldChange(f"{key}.{sub}", a_map.get(sub), b_map.get(sub)))
        else:
            out.append(FieldChange(key, a, b))
    return tuple(out)


def _replica_steps(
    svc: DesiredService, replica: int, found: list[Observed], *, service_exists: bool,
    retry: bool = False,
) -> list[Step]:
    base: dict[str, Any] = {"tier": svc.tier, "service": svc.name, "replica": replica}
    current = [c for c in found if c.fingerprint == svc.fingerprint]
    stale = [c for c in found if c.fingerprint != svc.fingerprint]
    # more than one container with the desired fingerprint cannot share a name; keep the first
    keep = current[0] if current else None
    extra = [ContainerRef.of(c) for c in current[1:]]
    steps: list[Step] = []
    if svc.service.job:
        return _job_steps(svc, keep, stale + [c for c in current[1:]], base)
    if keep is None:
        if stale:
            newest = max(stale, key=lambda c: (c.created, c.name))
            steps.append(Step(Action.REPLACE, Reason.CONFIG_CHANGED, order=svc.order,
                              new_name=svc.container_name(replica),
                              old=tuple(ContainerRef.of(c) for c in stale),
                              changes=field_changes(newest.config, svc.public_config), **base))
        else:
            reason = Reason.REPLICA_MISSING if service_exists else Reason.NEW_SERVICE
            shown = (FieldChange("image", None, svc.service.image),
                     FieldChange("update.order", None, svc.order.value))
            steps.append(Step(Action.CREATE, reason, new_name=svc.container_name(replica),
                              changes=shown, **base))
    elif stale and retry and not (keep.state is ContainerState.RUNNING
                                  and keep.health in (Health.HEALTHY, Health.NONE)):
        # the new generation failed to start in an earlier pass (degraded first deploy): a
        # new container of it, gated, then the old generation goes (it kept serving)
        steps.append(Step(Action.RECREATE, Reason.RETRY, new_name=keep.name,
                          old=(ContainerRef.of(keep),), **base))
        steps.append(Step(Action.REMOVE, Reason.INTERRUPTED,
                          old=tuple(ContainerRef.of(c) for c in stale), **base))
    elif stale:
        # a rollout was interrupted: the new generation exists next to the old one
        steps.append(Step(Action.REPLACE, Reason.INTERRUPTED, order=svc.order,
                          new_name=keep.name, old=tuple(ContainerRef.of(c) for c in stale),
                          adopt=ContainerRef.of(keep), **base))
    else:
        steps.extend(_repair(svc, keep, base, retry=retry)
                     or _config_steps(svc, keep, base))
    for ref in extra:
        steps.append(Step(Action.REMOVE, Reason.DUPLICATE, old=(ref,), **base))
    return steps


def _config_steps(svc: DesiredService, keep: Observed,
                  base: Mapping[str, Any]) -> list[Step]:
    """The edge serves a different mounted config than the spec's: a graceful reload when it
    mounts staged copies (its label says so); one created before staging is recreated."""
    if not svc.config_digest or keep.config_digest == svc.config_digest:
        return []
    change = (FieldChange("mounted_files", keep.config_digest or None, svc.config_digest),)
    ref = ContainerRef.of(keep)
    if not keep.config_digest:
        return [Step(Action.RECREATE, Reason.EDGE_UNSTAGED, new_name=keep.name, old=(ref,),
                     changes=change, **base)]
    return [Step(Action.RELOAD, Reason.EDGE_CONFIG, target=ref, changes=change, **base)]


def _job_steps(svc: DesiredService, keep: Observed | None, others: list[Observed],
               base: Mapping[str, Any]) -> list[Step]:
    """A job runs when no container of its current fingerprint exists (or the last one
    failed); an exited-0 container of the current fingerprint is "done". Older runs stay as
    the record until every tier passed (a revert then finds its own generation done and
    never re-runs an older job)."""
    steps: list[Step] = []
    if keep is None:
        steps.append(Step(Action.REPLACE if others else Action.CREATE,
                          Reason.CONFIG_CHANGED if others else Reason.NEW_SERVICE,
                          new_name=svc.container_name(base["replica"]),
                          changes=(FieldChange("image", None, svc.service.image),), **base))
    elif keep.state is ContainerState.EXITED and keep.exit_code != 0:
        steps.append(Step(Action.START, Reason.JOB_FAILED, target=ContainerRef.of(keep), **base))
    elif keep.state is not ContainerState.EXITED:
        steps.extend(_repair(svc, keep, base))
    for c in sorted(others, key=lambda c: (c.created, c.name)):
        steps.append(Step(Action.REMOVE, Reason.JOB_RECORD, old=(ContainerRef.of(c),),
                          phase=Phase.LAST, **base))
    return steps


def _repair(svc: DesiredService, c: Observed, base: Mapping[str, Any], *,
            retry: bool = False) -> list[Step]:
    """A container of the desired generation: in sync, or drift with a defined action.
    `retry`: the service failed to start in an earlier pass; a container of it that is
    not healthy yet is started again (and gated) instead of being taken as in sync."""
    ref = ContainerRef.of(c)
    recreate: dict[str, Any] = {"new_name": c.name, "old": (ref,)}
    if c.state is ContainerState.RUNNING:
        if c.health is Health.UNHEALTHY:
            return [Step(Action.RECREATE, Reason.UNHEALTHY, **recreate, **base)]
        if retry and c.health is Health.STARTING:
            return [Step(Action.RECREATE, Reason.RETRY, **recreate, **base)]
        return []
    if c.state is ContainerState.EXITED:
        if svc.service.restart is Restart.NO and c.exit_code == 0:
            return []  # a one-shot job that finished
        return [Step(Action.START, Reason.STOPPED, target=ref, **base)]
    if c.state is ContainerState.CREATED:
        return [Step(Action.START, Reason.CREATED_NOT_STARTED, target=ref, **base)]
    reason = {ContainerState.PAUSED: Reason.PAUSED,
              ContainerState.RESTARTING: Reason.RESTARTING}.get(
        c.state, Reason.DEAD)
    if c.state is ContainerState.REMOVING:
        return [Step(Action.CREATE, Reason.REPLICA_MISSING, new_name=c.name, old=(ref,),
                     **base)]
    return [Step(Action.RECREATE, reason, **recreate, **base)]


def waiting_on(depends_on: Mapping[str, Collection[str]],
               failed: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Services that cannot start because a failed service is among their (transitive)
    `depends_on`: service -> the failed services it waits on, sorted. The failed services
    themselves are not listed."""
    out: dict[str, tuple[str, ...]] = {}
    memo: dict[str, frozenset[str]] = {}

    def roots(name: str, seen: frozenset[str]) -> frozenset[str]:
        if name in memo:
            return memo[name]
        found: set[str] = set()
        for dep in depends_on.get(name, ()):
            if dep in failed:
                found.add(dep)
            if dep not in seen:
                found |= roots(dep, seen | {dep})
        memo[name] = frozenset(found)
        return memo[name]

    for name in sorted(depends_on):
        if name in failed:
            continue
        hit = roots(name, frozenset({name}))
        if hit:
            out[name] = tuple(sorted(hit))
    return out


def degraded_line(failed: Collection[str], waiting: Mapping[str, Collection[str]]) -> str:
    """`degraded: X failed, Y waiting on X` (for status, logs and `apply`)."""
    line = "degraded: " + ", ".join(sorted(failed)) + " failed"
    by_root: dict[tuple[str, ...], list[str]] = {}
    for svc, on in waiting.items():
        by_root.setdefault(tuple(sorted(on)), []).append(svc)
    for on, svcs in sorted(by_root.items()):
        line += f", {', '.join(sorted(svcs))} waiting on {', '.join(on)}"
    return line


def held_services(desired: Desired, failed: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The services a plan leaves out when `failed` failed to start (first deploy,
    degraded): each failed service (-> ()) and every service that depends on one,
    transitively (-> the failed services it waits on)."""
    failed = {f for f in failed if f in desired.services}
    depends = {name: tuple(joined_deps(s)) for name, s in desired.services.items()}
    held: dict[str, tuple[str, ...]] = {f: () for f in sorted(failed)}
    held.update(waiting_on(depends, failed))
    return held


def compute(desired: Desired, snapshot: Snapshot, *, hold: Iterable[str] = (),
            retry: Iterable[str] = ()) -> Plan:
    """The steps that take `snapshot` to `desired`. Total: never raises for any snapshot.

    `hold`: services that failed to start on a first deploy; they and the services that
    depend on them get no steps (the rest still converges). `retry`: services that failed
    in an earlier pass; a not-yet-healthy container of theirs is started again."""
    held = held_services(desired, hold)
    retrying = set(retry)
    steps: list[Step] = []
    for name in sorted(set(desired.networks) - snapshot.networks):
        if not desired.networks[name].external:
            steps.append(Step(Action.CREATE_NETWORK, Reason.NETWORK_MISSING, object_name=name,
                              phase=Phase.OBJECTS))
    for name in sorted(set(desired.volumes) - snapshot.volumes):
        if not desired.volumes[name].external:
            steps.append(Step(Action.CREATE_VOLUME, Reason.VOLUME_MISSING, object_name=name,
                              phase=Phase.OBJECTS))

    by_service: dict[str, list[Observed]] = {}
    for c in snapshot.containers:
        by_service.setdefault(c.service, []).append(c)

    for tier in desired.tiers:
        for svc in desired.in_tier(tier):
            if svc.name in held:
                continue
            found = by_service.get(svc.name, [])
            service_exists = bool(found)
            for replica in range(1, svc.replicas + 1):
                mine = [c for c in found if c.replica == replica]
                steps.extend(_replica_steps(svc, replica, mine, service_exists=service_exists,
                                            retry=svc.name in retrying))
            for c in sorted(found, key=lambda c: (c.replica or 0, c.name)):
                if c.replica is None or c.replica < 1:
                    steps.append(Step(Action.REMOVE, Reason.UNLABELLED, tier=svc.tier,
                                      service=svc.name, old=(ContainerRef.of(c),),
                                      phase=Phase.LAST))
                elif c.replica > svc.replicas:
                    steps.append(Step(Action.REMOVE, Reason.SCALED_DOWN, tier=svc.tier,
                                      service=svc.name, replica=c.replica,
                                      old=(ContainerRef.of(c),)))

    orphans = [c for c in snapshot.containers if c.service not in desired.services]
    for c in sorted(orphans, key=lambda c: (c.service, c.replica or 0, c.name, c.id)):
        reason = Reason.ORPHAN if c.service else Reason.UNLABELLED
        steps.append(Step(Action.REMOVE, reason, tier=c.tier, service=c.service,
                          replica=c.replica, old=(ContainerRef.of(c),), phase=Phase.LAST))

    steps += _rejoin(desired, by_service, steps, held)
    steps = _hand_ports([_how(s, desired) for s in steps], desired, by_service)
    steps, bind_notes = _bind_facts(steps, snapshot)
    steps = _order(steps, desired)
    steps = _backups(steps, desired) + steps
    needs: dict[str, PullPolicy] = {}
    builds: dict[str, BuildNeed] = {}
    for s in steps:
        if s.action in (Action.CREATE, Action.REPLACE, Action.RECREATE):
            built = desired.services[s.service].build
            wanted = desired.services[s.service].service
            if built is not None:  # built here, never pulled
                builds.setdefault(s.service, BuildNeed(s.service, built.ref, built))
            elif needs.get(wanted.image) is not PullPolicy.ALWAYS:
                needs[wanted.image] = wanted.pull_policy
    images = [ImageNeed.of(ref, needs[ref]) for ref in sorted(needs)]
    return Plan(project=desired.project, tiers=desired.tiers, steps=tuple(steps),
                images=tuple(images), builds=tuple(builds[n] for n in sorted(builds)),
                engine_available=snapshot.engine_available,
                upstreams=upstream_changes(steps), edge=desired.edge_service,
                held=tuple(held.items()), notes=_held_notes(held) + bind_notes + (
                    (desired.edge_note,) if desired.edge_note and any(
                        s.service == desired.edge_service and s.action in _NEW_CONTAINER
                        for s in steps) else ()))


_NEW_CONTAINER = (Action.CREATE, Action.REPLACE, Action.RECREATE)


def _rejoin(desired: Desired, by_service: Mapping[str, list[Observed]], steps: list[Step],
            held: Mapping[str, Any]) -> list[Step]:
    """`network_mode: service:X`: a container that joined X's network namespace lives only
    as long as that container of X. A container of the desired generation is recreated (after
    X) when the container it joined is not one of X's current containers, or when this plan
    gives X a new container; a service that already gets new containers needs nothing."""
    out: list[Step] = []
    renewing = {s.service for s in steps if s.action in _NEW_CONTAINER}
    # a START of X's stopped container gives it a new network namespace too
    restarted = renewing | {s.service for s in steps if s.action is Action.START}
    for name, svc in sorted(desired.services.items()):
        target = svc.joins
        if target is None or name in renewing or name in held or target not in desired.services:
            continue
        current_x = {c.id for c in by_service.get(target, ())
                     if c.fingerprint == desired.services[target].fingerprint
                     and c.state is ContainerState.RUNNING}
        for c in sorted(by_service.get(name, ()), key=lambda c: (c.replica or 0, c.name)):
            if c.fingerprint != svc.fingerprint or c.replica is None or c.replica < 1 \
                    or c.replica > svc.replicas:
                continue
            if target in restarted or (c.joined and c.joined not in current_x):
                out.append(Step(Action.RECREATE, Reason.JOINED_REPLACED, tier=svc.tier,
                                service=name, replica=c.replica, new_name=c.name,
                                old=(ContainerRef.of(c),)))
    return out


_PORTLESS = (ContainerState.CREATED, ContainerState.EXITED, ContainerState.DEAD)


def _hand_ports(steps: list[Step], desired: Desired,
                by_service: Mapping[str, list[Observed]]) -> list[Step]:
    """An edge container that owns its network namespace (created before the edge had a
    holder) holds the published ports the new holder needs: the holder's create stops it
    first (with the edge's grace), and the edge's own step becomes a plain create in the
    holder's namespace. A one-time, stop-first hand-over when upgrading."""
    holder, edge = desired.edge_holder, desired.edge_service
    if holder is None or edge is None or edge not in desired.services:
        return steps
    owning = {c.id for c in by_service.get(edge, ())
              if not c.joined and c.state not in _PORTLESS}
    creates = [i for i, s in enumerate(steps)
               if s.service == holder and s.action in _NEW_CONTAINER]
    if not owning or not creates:
        return steps
    moved: list[ContainerRef] = []
    out: list[Step] = []
    for s in steps:
        if s.service == edge and s.phase is Phase.TIER and any(o.id in owning for o in s.old):
            keep = tuple(o for o in s.old if o.id not in owning)
            moved += [o for o in s.old if o.id in owning]
            if not keep and s.action in _NEW_CONTAINER:
                s = replace(s, action=Action.CREATE, old=(), order=None, stop_first=False,
                            retire_later=False, lane=Lane.FREE)
            else:
                s = replace(s, old=keep)
        out.append(s)
    first = out[creates[0]]
    grace = max(first.stop_grace_s, desired.services[edge].service.stop_grace_period)
    out[creates[0]] = replace(first, old=(*first.old, *moved), stop_first=True,
                              lane=Lane.THROTTLED, stop_grace_s=grace)
    return out


def _bind_facts(steps: list[Step], snapshot: Snapshot) -> tuple[list[Step], tuple[str, ...]]:
    """A start-first edge step whose running nginx's config the snapshot knows: proven
    (`reuseport` on every socket) it stays start-first; otherwise it becomes stop-first in the
    holder's namespace, and the plan says why. Unknown: it keeps `bind_check` (the shell
    reads the config and plans again)."""
    out: list[Step] = []
    notes: list[str] = []
    for s in steps:
        running = [o.id for o in s.old if o.state is ContainerState.RUNNING]
        if not s.bind_check or not all(cid in snapshot.edge_reuse for cid in running):
            out.append(s)
            continue
        why = "; ".join(snapshot.edge_reuse[cid] for cid in running if snapshot.edge_reuse[cid])
        if why:
            s = replace(s, stop_first=True, retire_later=False, order=UpdateOrder.STOP_FIRST)
            notes.append(f"{s.service} is replaced stop-first after all: the running edge's "
                         f"config cannot share its ports ({why[:300]})")
        out.append(replace(s, bind_check=False))
    return out, tuple(notes)


def joined_deps(svc: DesiredService) -> dict[str, str]:
    """`depends_on` conditions plus the implied one of `network_mode: service:X`
    (service_started: X's container must exist to be joined)."""
    deps: dict[str, str] = {d: c.condition for d, c in svc.service.depends_on.items()}
    if svc.joins is not None and svc.joins != svc.name:
        deps.setdefault(svc.joins, "service_started")
    return deps


def _held_notes(held: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    failed = [name for name, on in held.items() if not on]
    if not failed:
        return ()
    waiting = {name: on for name, on in held.items() if on}
    return (degraded_line(failed, waiting)
            + " (held back; the failed services are retried with backoff)",)


def _backups(steps: list[Step], desired: Desired) -> list[Step]:
    """A backup step for each service with `backup` that a step stops or replaces (a running
    container of it is in some step's `old`). A dump command runs in that container; a volume
    copy needs no running container but is still taken only before a stop."""
    out: list[Step] = []
    stopping: dict[str, list[ContainerRef]] = {}
    for s in steps:
        running = [o for o in s.old if o.state is ContainerState.RUNNING]
        if s.service in desired.services and running:
            stopping.setdefault(s.service, []).extend(running)
    for name in sorted(stopping):
        svc = desired.services[name]
        if svc.service.backup is None:
            continue
        source = min(stopping[name], key=lambda ref: ref.name)
        out.append(Step(Action.BACKUP, Reason.BACKUP, tier=svc.tier, service=name,
                        target=source, phase=Phase.BACKUP))
    return out


def _how(step: Step, desired: Desired) -> Step:
    """Decide how the executor carries out a step: lane, stop order, grace, upstream and the
    labels that prove a leftover container under the new name is this step's own."""
    if step.phase is Phase.OBJECTS:
        return step
    svc = desired.services.get(step.service)
    grace = svc.service.stop_grace_period if svc is not None else DEFAULT_STOP_GRACE_S
    upstream = (svc.name if svc is not None and svc.service.expose is not None
                and desired.edge_service is not None else None)
    if step.action is Action.REMOVE:
        return replace(step, lane=Lane.AFTER, stop_grace_s=grace, upstream=upstream,
                       parallelism=svc.service.update.parallelism if svc is not None else 1,
                       job=svc is not None and svc.service.job)
    assert svc is not None  # every other container step is for a desired service
    stop_first = (step.action is Action.RECREATE
                  or (step.action is Action.CREATE and bool(step.old))
                  or (step.action is Action.REPLACE and step.order is UpdateOrder.STOP_FIRST
                      and not svc.service.job))
    # `parallelism` protects capacity during an update: new replicas that take nothing
    # serving away all start at once (as a cold start should)
    lane = (Lane.FREE if (step.action is Action.CREATE and not step.old)
            or step.action is Action.RELOAD else Lane.THROTTLED)
    claim: tuple[tuple[str, str], ...] = ()
    if step.new_name is not None:
        claim = ((labels.PROJECT, svc.project), (labels.SERVICE, svc.name),
                 (labels.REPLICA, str(step.replica or 1)),
                 (labels.FINGERPRINT, svc.fingerprint))
    retire_later = (step.action is Action.REPLACE and not stop_first and bool(step.old)
                    and not svc.service.job)
    stage_config = bool(svc.staged) and step.action in (
        Action.CREATE, Action.REPLACE, Action.RECREATE, Action.START)
    bind_check = (svc.edge and svc.joins is not None and svc.joins == desired.edge_holder
                  and step.action is Action.REPLACE and not stop_first)
    return replace(step, lane=lane, parallelism=svc.service.update.parallelism,
                   stop_first=stop_first, stop_grace_s=grace, upstream=upstream, claim=claim,
                   job=svc.service.job, retire_later=retire_later, stage_config=stage_config,
                   bind_check=bind_check)


_CONDITION = {"service_started": Until.STARTED, "service_healthy": Until.HEALTHY,
              "service_completed_successfully": Until.HEALTHY}


def _order(steps: list[Step], desired: Desired) -> list[Step]:
    """The order inside each tier, as `Step.after` edges: same-tier `depends_on` with its
    condition always; services that replace running containers go one at a time (or
    `tier_parallelism`) in dependency order, and a stateful one (stop-first) never together
    with another."""
    by_tier: dict[str, dict[str, list[Step]]] = {}
    for s in steps:
        if s.phase is Phase.TIER:
            by_tier.setdefault(s.tier, {}).setdefault(s.service, []).append(s)
    waits: dict[str, set[Wait]] = {}
    for tier, services in by_tier.items():
        for name in services:
            deps = joined_deps(desired.services[name])
            waits[name] = {Wait(d, _CONDITION[c]) for d, c in deps.items() if d in services}
        updating = [n for n in _topological(services, desired) if any(
            s.stop_first or any(o.state is ContainerState.RUNNING for o in s.old)
            for s in services[n])]
        width = desired.tier_parallelism.get(tier, 1)
        stateful: str | None = None
        for i, name in enumerate(updating):
            if any(s.stop_first for s in services[name]):
                waits[name] |= {Wait(n, Until.STOPPED) for n in updating[:i]}
            elif i >= width:
                waits[name].add(Wait(updating[i - width], Until.READY))
            if stateful is not None:
                waits[name].add(Wait(stateful, Until.READY))
            if any(s.stop_first for s in services[name]):
                stateful = name
    cold = {tier for tier, services in by_tier.items()
            if all(s.action is Action.CREATE and not s.old
                   for ss in services.values() for s in ss)}
    out = []
    for s in steps:
        if s.phase is Phase.TIER and s.tier in cold:
            s = replace(s, window_after=True)
        if s.phase is Phase.TIER and waits.get(s.service):
            s = replace(s, after=tuple(sorted(waits[s.service], key=lambda w: (w.service,
                                                                             w.until))))
        out.append(s)
    return out


def _topological(services: Mapping[str, list[Step]], desired: Desired) -> list[str]:
    """The services of one tier in dependency order (same-tier depends_on), ties by name."""
    done: list[str] = []
    left = sorted(services)
    while left:
        ready = [n for n in left if all(d in done or d not in services
                                        for d in joined_deps(desired.services[n]))]
        nxt = ready[0] if ready else left[0]  # a cycle cannot pass validation
        done.append(nxt)
        left.remove(nxt)
    return done


def upstream_changes(steps: Iterable[Step]) -> tuple[UpstreamChange, ...]:
    """Which containers each exposed service's upstream gains (created, replacing or
    started ones, once healthy) and loses (running ones the plan stops), from the steps."""
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    for s in steps:
        if s.upstream is None:
            continue
        gone = [o.name for o in s.old if o.state is ContainerState.RUNNING]
        removed.setdefault(s.upstream, []).extend(gone)
        if s.action is Action.START and s.target is not None:
            added.setdefault(s.upstream, []).append(s.target.name)
        elif (s.action in (Action.CREATE, Action.REPLACE, Action.RECREATE) and s.new_name
              and (s.adopt is None or s.adopt.state is not ContainerState.RUNNING)):
            # an adopted running container (an interrupted rollout) is already serving
            added.setdefault(s.upstream, []).append(s.new_name)
    out = []
    for name in sorted(set(added) | set(removed)):
        plus, minus = tuple(added.get(name, ())), tuple(removed.get(name, ()))
        if plus or minus:
            out.append(UpstreamChange(name, added=plus, removed=minus))
    return tuple(out)


# Plan step reasons that mean the host drifted from the spec, by `reconciler_drift_total{kind}`.
DRIFT_BY_REASON: Mapping[Reason, str] = {
    Reason.REPLICA_MISSING: "removed",
    Reason.STOPPED: "stopped",
    Reason.CREATED_NOT_STARTED: "stopped",
    Reason.DEAD: "dead",
    Reason.PAUSED: "stopped",
    Reason.RESTARTING: "dead",
    Reason.UNHEALTHY: "unhealthy",
}


def drift_kind(reason: Reason) -> str | None:
    """The drift kind of a step's reason, or None when the step is not a drift repair."""
    return DRIFT_BY_REASON.get(reason)


def drift_kinds(plan: Plan | None, *, spec_unchanged: bool) -> list[str]:
    """Repairs in a plan, by kind (a pass's plan is the single source of drift). With the
    spec unchanged since it last converged, a "new service" is one whose every container
    went away."""
    if plan is None:
        return []
    kinds = [k for s in plan.steps if (k := drift_kind(s.reason)) is not None]
    if spec_unchanged:
        kinds += ["removed" for s in plan.steps if s.reason is Reason.NEW_SERVICE]
    return kinds
