"""The Swarm engine's pure part: a desired service -> a Swarm ServiceSpec, Swarm's list JSON ->
an observed model, the plan against it, the rollout gate's verdict and the spec rules that
only hold on Swarm. Pure: no I/O, no clock (times are passed in), no Docker.

One spec service is one Swarm service named `<project>_<service>` (as `docker stack deploy`
names them), with the service name as a network alias on every network, so the names the
stack's services use for each other resolve as on one host. The service spec carries the
same `reconciler.*` labels as containers do (no replica: Swarm owns the tasks), plus
`reconciler.engine=swarm`; the container template carries them too. A config change is one
Swarm service update rolled out by Swarm itself (`update.order`, `parallelism`, `delay`,
`failure_action`, `monitor`), not per-replica steps; the plan says so in a note.

Health on Swarm: a task whose container has a health check is reported `running` only once
the check passed (Swarm's container adapter waits for `healthy` before it reports the task
started), and a running task that turns unhealthy is failed and replaced by Swarm. So
"running" tasks of the current generation are the healthy ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from reconciler.core import labels
from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.plans import (
    Action,
    ContainerRef,
    FieldChange,
    Phase,
    Plan,
    Reason,
    Step,
    Until,
    Wait,
    field_changes,
    held_services,
)
from reconciler.core.snapshots import ContainerState
from reconciler.core.specs import (
    Finding,
    Spec,
    UpdateOrder,
    active_services,
    parse_mount,
    parse_port,
    publishes_fixed_port,
)

NANO = 1_000_000_000
JSON = dict[str, Any]
ENGINE = "reconciler.engine"  # "swarm" on every Swarm service and overlay network we create
SWARM = "swarm"


class EndpointMode(StrEnum):
    """How a service's name resolves: `vip` (one virtual IP, needs IPVS in the kernel) or
    `dnsrr` (the name resolves to the addresses of its running tasks)."""

    VIP = "vip"
    DNSRR = "dnsrr"


def service_name(project: str, service: str) -> str:
    """The Swarm service name of a spec service: `<project>_<service>`."""
    return f"{project}_{service}"


def endpoint_mode_for(*, ipvs: bool) -> EndpointMode:
    """`vip` where the kernel has IPVS, `dnsrr` where it does not (a VIP would answer
    "no route to host" and ingress-published ports would never answer)."""
    return EndpointMode.VIP if ipvs else EndpointMode.DNSRR


# --- the spec: rules that hold only on Swarm ---------------------------------------------------


def findings(spec: Spec, profiles: Iterable[str] = ()) -> list[Finding]:
    """What a spec asks for that Swarm cannot do (errors), and what works differently there
    (warnings). Each names the key and says how to write it for Swarm."""
    out: list[Finding] = []
    for name, svc in sorted(active_services(spec, profiles).items()):
        base = ("services", name)
        for i, entry in enumerate(svc.ports):
            try:
                port = parse_port(entry)
            except ValueError:
                continue
            if port.host_ip:
                fixed = f"{port.host_port}:{port.container_port}" if port.host_port else (
                    port.container_port)
                out.append(Finding((*base, "ports", i), (
                    f"{entry!r} binds one host address ({port.host_ip}): Swarm publishes on "
                    f"every address of the node a task runs on; write {fixed!r} (published "
                    "in host mode on that node) and choose the node with "
                    "`placement: {constraints: [node.hostname==NAME]}`, or keep the port "
                    "private behind the edge (`expose`)")))
            elif not port.host_port:
                out.append(Finding((*base, "ports", i), (
                    f"{entry!r} publishes a random host port: Swarm in host mode needs the "
                    f"port written out (e.g. '8080:{port.container_port}')")))
        if svc.update.order is UpdateOrder.START_FIRST and publishes_fixed_port(svc):
            out.append(Finding((*base, "update", "order"), (
                "start-first cannot publish a fixed host port on Swarm (the new task would "
                "need the port the old one holds on its node)")))
        if svc.privileged:
            out.append(Finding((*base, "privileged"), "Swarm services cannot be privileged"))
        for key in ("network_mode", "pid", "ipc"):
            if getattr(svc, key):
                out.append(Finding((*base, key), f"`{key}` has no Swarm service equivalent"))
        if svc.security_opt:
            out.append(Finding((*base, "security_opt"),
                               "`security_opt` has no Swarm service equivalent"))
        binds = [i for i, v in enumerate(svc.volumes) if _is_bind(v)]
        pinned = svc.placement is not None and svc.placement.constraints
        if binds and not pinned and not (spec.edge is not None and spec.edge.service == name):
            out.append(Finding((*base, "volumes", binds[0]), (
                "a bind mount's source must exist on every node a task may land on: pin the "
                "service (`placement: {constraints: [node.role==manager]}`) or use a named "
                "volume"), warning=True))
        if svc.job:
            out.append(Finding((*base, "kind"), "`kind: job` is not supported with "
                                                "--engine swarm yet (run it with the docker "
                                                "engine)"))
    return out


def _is_bind(entry: str) -> bool:
    try:
        mount = parse_mount(entry)
    except ValueError:
        return False
    return bool(mount.source) and not mount.named


# --- a desired service -> a Swarm ServiceSpec --------------------------------------------------


def swarm_config(svc: DesiredService, *, mode: EndpointMode) -> JSON:
    """What Swarm-only keys add to a service's identity (placement, Swarm's update config,
    the endpoint mode); replicas are not part of it (a scale is not a new generation)."""
    s = svc.service
    u = s.update
    out: JSON = {
        "update": {"order": svc.order.value, "parallelism": u.parallelism, "delay": u.delay,
                   "failure_action": u.failure_action, "monitor": _monitor(svc),
                   "max_failure_ratio": u.max_failure_ratio},
        "endpoint_mode": mode.value,
    }
    if s.placement is not None:
        out["placement"] = s.placement.model_dump(mode="json", by_alias=True,
                                                  exclude_defaults=True)
    return out


def _monitor(svc: DesiredService) -> float:
    u = svc.service.update
    return u.monitor if u.monitor is not None else max(u.min_ready, 1.0)


def swarm_fingerprint(svc: DesiredService, *, mode: EndpointMode) -> str:
    """The generation of a Swarm service: the (keyed) container fingerprint combined with
    the Swarm-only config; nothing secret enters the part that is not keyed. The edge's
    mounted-config digest (keyed) is part of it: a Swarm edge mounts the checkout, so a
    changed nginx.conf is a rolling update of the edge service, not a graceful reload."""
    raw = svc.fingerprint + svc.config_digest + labels.canonical(swarm_config(svc, mode=mode))
    return hashlib.sha256(raw.encode()).hexdigest()[:labels.FINGERPRINT_LENGTH]


def _public(svc: DesiredService, mode: EndpointMode) -> JSON:
    return {**svc.public_config, "swarm": swarm_config(svc, mode=mode)}


def service_labels(svc: DesiredService, *, mode: EndpointMode) -> dict[str, str]:
    """The labels of a Swarm service (and of its container template): ours, no replica."""
    out = labels.container_labels(
        project=svc.project, service=svc.name, tier=svc.tier, replica=0,
        fp=swarm_fingerprint(svc, mode=mode), public_config=_public(svc, mode),
        user_labels=svc.service.labels, edge=svc.edge)
    out.pop(labels.REPLICA, None)
    out[ENGINE] = SWARM
    return out


def _mounts(binds: Iterable[str], tmpfs: Mapping[str, str], project: str) -> list[JSON]:
    out: list[JSON] = []
    for bind in binds:
        parts = bind.split(":")
        read_only = len(parts) > 2 and parts[2] == "ro"
        source, target = parts[0], parts[1]
        mount: JSON = {"Type": "bind" if source.startswith("/") else "volume",
                       "Source": source, "Target": target, "ReadOnly": read_only}
        if mount["Type"] == "volume":  # created on each node by the engine, with our label
            mount["VolumeOptions"] = {"Labels": labels.object_labels(project)}
        out.append(mount)
    for target in sorted(tmpfs):
        out.append({"Type": "tmpfs", "Target": target})
    return out


_RESTART = {"no": "none", "": "none", "on-failure": "on-failure", "always": "any",
            "unless-stopped": "any"}


def service_spec(svc: DesiredService, *, mode: EndpointMode, force: int = 0) -> JSON:
    """The ServiceSpec body (API 1.41) of one spec service. Built from the same container
    body as on one host (`blueprint`), so every field that reaches a container reaches a
    task; `force` is Swarm's ForceUpdate counter (bumped to redeploy an unchanged spec)."""
    body = container_config(svc, 1)
    host: JSON = body.get("HostConfig", {})
    s = svc.service
    lbl = service_labels(svc, mode=mode)
    cspec: JSON = {"Image": body["Image"], "Env": body.get("Env", []), "Labels": dict(lbl),
                   "Mounts": _mounts(host.get("Binds", []), host.get("Tmpfs", {}),
                                     svc.project)}
    for src, dst in (("Entrypoint", "Command"), ("Cmd", "Args"), ("User", "User"),
                     ("WorkingDir", "Dir"), ("Hostname", "Hostname"),
                     ("StopSignal", "StopSignal"), ("Healthcheck", "Healthcheck")):
        if src in body:
            cspec[dst] = body[src]
    if "StopTimeout" in body:
        cspec["StopGracePeriod"] = int(body["StopTimeout"]) * NANO
    for src, dst in (("Init", "Init"), ("ReadonlyRootfs", "ReadOnly"),
                     ("CapAdd", "CapabilityAdd"), ("CapDrop", "CapabilityDrop"),
                     ("Sysctls", "Sysctls"), ("Ulimits", "Ulimits")):
        if src in host:
            cspec[dst] = host[src]
    if host.get("ExtraHosts"):  # "name:ip" -> Swarm's "ip name"
        cspec["Hosts"] = [f"{h.split(':', 1)[1]} {h.split(':', 1)[0]}"
                          for h in host["ExtraHosts"] if ":" in h]
    if host.get("Dns") or host.get("DnsSearch"):
        cspec["DNSConfig"] = {"Nameservers": host.get("Dns", []),
                              "Search": host.get("DnsSearch", [])}
    limits: JSON = {}
    reservations: JSON = {}
    if "Memory" in host:
        limits["MemoryBytes"] = host["Memory"]
    if "NanoCpus" in host:
        limits["NanoCPUs"] = host["NanoCpus"]
    if "PidsLimit" in host:
        limits["Pids"] = host["PidsLimit"]
    if "MemoryReservation" in host:
        reservations["MemoryBytes"] = host["MemoryReservation"]
    task: JSON = {
        "ContainerSpec": cspec,
        "Resources": {"Limits": limits, "Reservations": reservations},
        "RestartPolicy": {"Condition": _RESTART.get(s.restart.value, "any"),
                          "Delay": NANO, "MaxAttempts": 0},
        "Networks": [{"Target": net, "Aliases": [svc.name, *s.network_aliases.get(short, ())]}
                     for short, net in zip(s.networks, svc.networks, strict=False)],
        "ForceUpdate": force,
    }
    placement: JSON = {}
    if s.placement is not None:
        placement["Constraints"] = list(s.placement.constraints)
        if s.placement.max_replicas_per_node:
            placement["MaxReplicas"] = s.placement.max_replicas_per_node
    if svc.edge and not placement.get("Constraints"):
        # the edge reads its upstreams from this node's state dir (a bind mount)
        placement["Constraints"] = ["node.role==manager"]
    if placement:
        task["Placement"] = placement
    if "LogConfig" in host:
        task["LogDriver"] = {"Name": host["LogConfig"]["Type"],
                             "Options": host["LogConfig"].get("Config", {})}
    u = s.update
    update: JSON = {"Parallelism": u.parallelism, "Delay": int(u.delay * NANO),
                    "FailureAction": u.failure_action, "Monitor": int(_monitor(svc) * NANO),
                    "MaxFailureRatio": u.max_failure_ratio, "Order": svc.order.value}
    ports = []
    for entry in s.ports:
        p = parse_port(entry)
        ports.append({"Protocol": p.protocol, "TargetPort": int(p.container_port.split("-")[0]),
                      "PublishedPort": int(p.host_port.split("-")[0]) if p.host_port else 0,
                      "PublishMode": "host"})
    glob = s.placement is not None and s.placement.global_
    return {
        "Name": service_name(svc.project, svc.name),
        "Labels": lbl,
        "TaskTemplate": task,
        "Mode": {"Global": {}} if glob else {"Replicated": {"Replicas": svc.replicas}},
        "UpdateConfig": update,
        "RollbackConfig": {**update, "FailureAction": "pause"},
        "EndpointSpec": {"Mode": mode.value, "Ports": ports},
    }


def network_spec(name: str, *, project: str, internal: bool = False) -> JSON:
    """The NetworkCreate body of an overlay network: attachable (so one-off containers and
    the reconciler's own probes can join), labelled as ours."""
    return {"Name": name, "CheckDuplicate": True, "Driver": "overlay", "Attachable": True,
            "Internal": internal, "Labels": {**labels.object_labels(project), ENGINE: SWARM}}


# --- what Swarm reports -----------------------------------------------------------------------


class TaskState(StrEnum):
    """Swarm's task states that matter to a gate (anything else is "in progress")."""

    RUNNING = "running"
    FAILED = "failed"
    REJECTED = "rejected"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    ORPHANED = "orphaned"


FAILED_STATES = frozenset({"failed", "rejected"})
LOST = "lost"  # our name for a task on a node that is down (Swarm still says its last state)
GONE_STATES = frozenset({"complete", "shutdown", "orphaned", "remove"})


@dataclass(frozen=True, slots=True)
class SwarmService:
    """One Swarm service of ours as the engine's list reported it."""

    id: str
    name: str  # the Swarm name, `<project>_<service>`
    service: str  # the spec service (label)
    tier: str
    fingerprint: str
    version: int
    replicas: int | None  # None: global mode
    update_state: str = ""  # UpdateStatus.State ("" when Swarm never updated it)
    update_message: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    edge: bool = False
    endpoint_mode: str = ""
    force: int = 0


@dataclass(frozen=True, slots=True)
class SwarmTask:
    """One task as the engine's list reported it (the node resolved to its hostname)."""

    id: str
    service_id: str
    service: str  # the spec service ("" when its service is not ours)
    slot: int | None
    node_id: str
    node: str
    state: str
    desired_state: str
    message: str = ""
    error: str = ""
    fingerprint: str = ""
    container_id: str = ""
    exit_code: int | None = None
    addresses: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv4
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class SwarmNode:
    """One node of the cluster."""

    id: str
    hostname: str
    role: str
    availability: str  # active | pause | drain
    state: str  # ready | down | unknown | disconnected
    address: str = ""
    leader: bool = False

    @property
    def usable(self) -> bool:
        """True when Swarm schedules tasks on it."""
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True, slots=True)
class SwarmSnapshot:
    """Everything of one project on the cluster: services, their tasks, nodes, networks."""

    project: str
    services: tuple[SwarmService, ...] = ()
    tasks: tuple[SwarmTask, ...] = ()
    nodes: tuple[SwarmNode, ...] = ()
    networks: frozenset[str] = frozenset()
    engine_available: bool = True

    def service(self, name: str) -> SwarmService | None:
        """The Swarm service of spec service `name` (the first, if a name is doubled)."""
        return next((s for s in self.services if s.service == name), None)

    def tasks_of(self, name: str) -> list[SwarmTask]:
        """The tasks of spec service `name`, by slot then node."""
        return sorted((t for t in self.tasks if t.service == name),
                      key=lambda t: (t.slot or 0, t.node, t.timestamp, t.id))


def _labels_of(item: Mapping[str, Any]) -> Mapping[str, str]:
    spec = item.get("Spec") or {}
    return spec.get("Labels") or {}


def parse_service(item: Mapping[str, Any]) -> SwarmService:
    """One `GET /services` item -> `SwarmService`."""
    spec = item.get("Spec") or {}
    lbl = _labels_of(item)
    mode = spec.get("Mode") or {}
    replicated = mode.get("Replicated")
    try:
        config = json.loads(lbl.get(labels.CONFIG, "{}"))
    except ValueError:
        config = {}
    status = item.get("UpdateStatus") or {}
    task = spec.get("TaskTemplate") or {}
    return SwarmService(
        id=str(item.get("ID", "")), name=str(spec.get("Name", "")),
        service=lbl.get(labels.SERVICE, ""), tier=lbl.get(labels.TIER, ""),
        fingerprint=lbl.get(labels.FINGERPRINT, ""),
        version=int((item.get("Version") or {}).get("Index") or 0),
        replicas=int(replicated.get("Replicas") or 0) if isinstance(replicated, dict) else None,
        update_state=str(status.get("State") or ""),
        update_message=str(status.get("Message") or ""),
        config=config if isinstance(config, dict) else {},
        edge=lbl.get(labels.EDGE) == "true",
        endpoint_mode=str((spec.get("EndpointSpec") or {}).get("Mode") or ""),
        force=int(task.get("ForceUpdate") or 0),
    )


def parse_node(item: Mapping[str, Any]) -> SwarmNode:
    """One `GET /nodes` item -> `SwarmNode`."""
    spec = item.get("Spec") or {}
    status = item.get("Status") or {}
    manager = item.get("ManagerStatus") or {}
    return SwarmNode(
        id=str(item.get("ID", "")),
        hostname=str((item.get("Description") or {}).get("Hostname") or item.get("ID", "")),
        role=str(spec.get("Role") or ""), availability=str(spec.get("Availability") or ""),
        state=str(status.get("State") or "unknown"), address=str(status.get("Addr") or ""),
        leader=bool(manager.get("Leader")),
    )


def parse_task(item: Mapping[str, Any], *, services: Mapping[str, str],
               nodes: Mapping[str, str]) -> SwarmTask:
    """One `GET /tasks` item -> `SwarmTask`; `services` maps service ids to spec service
    names, `nodes` node ids to hostnames."""
    status = item.get("Status") or {}
    cstatus = status.get("ContainerStatus") or {}
    spec = item.get("Spec") or {}
    clabels = ((spec.get("ContainerSpec") or {}).get("Labels")) or {}
    addresses: dict[str, str] = {}
    for att in item.get("NetworksAttachments") or []:
        net = ((att.get("Network") or {}).get("Spec") or {}).get("Name")
        addrs = att.get("Addresses") or []
        if net and addrs:
            addresses[str(net)] = str(addrs[0]).split("/")[0]
    node_id = str(item.get("NodeID") or "")
    exit_code = cstatus.get("ExitCode")
    return SwarmTask(
        id=str(item.get("ID", "")), service_id=str(item.get("ServiceID", "")),
        service=services.get(str(item.get("ServiceID", "")), ""),
        slot=int(item["Slot"]) if isinstance(item.get("Slot"), int) else None,
        node_id=node_id, node=nodes.get(node_id, node_id[:12]),
        state=str(status.get("State") or ""), desired_state=str(item.get("DesiredState") or ""),
        message=str(status.get("Message") or ""), error=str(status.get("Err") or ""),
        fingerprint=str(clabels.get(labels.FINGERPRINT, "")),
        container_id=str(cstatus.get("ContainerID") or ""),
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        addresses=addresses, timestamp=str(status.get("Timestamp") or ""),
    )


def parse(project: str, services: Iterable[Mapping[str, Any]],
          tasks: Iterable[Mapping[str, Any]] = (), nodes: Iterable[Mapping[str, Any]] = (),
          networks: Iterable[Mapping[str, Any]] = ()) -> SwarmSnapshot:
    """Build a snapshot of one project; services without `reconciler.project=<project>`
    (and their tasks) are dropped."""
    ours = [parse_service(s) for s in services
            if _labels_of(s).get(labels.PROJECT) == project]
    node_list = [parse_node(n) for n in nodes]
    by_id = {s.id: s.service for s in ours}
    hostnames = {n.id: n.hostname for n in node_list}
    down = {n.id for n in node_list if n.state != "ready"}
    task_list = [parse_task(t, services=by_id, nodes=hostnames) for t in tasks
                 if str(t.get("ServiceID", "")) in by_id]
    # a node that is down keeps reporting its tasks' last state ("running") until it comes
    # back: those tasks are lost (Swarm starts replacements elsewhere)
    task_list = [replace(t, state=LOST, message=f"node {t.node} is down")
                 if t.node_id in down and t.state not in GONE_STATES | FAILED_STATES else t
                 for t in task_list]
    return SwarmSnapshot(
        project=project,
        services=tuple(sorted(ours, key=lambda s: (s.service, s.name, s.id))),
        tasks=tuple(sorted(task_list, key=lambda t: (t.service, t.slot or 0, t.node, t.id))),
        nodes=tuple(sorted(node_list, key=lambda n: (n.hostname, n.id))),
        # a bridge network of the same name (the docker engine's) is no overlay network:
        # not counted, so creating ours reports the clash instead of services failing
        networks=frozenset(str(n.get("Name")) for n in networks
                           if (n.get("Labels") or {}).get(labels.PROJECT) == project
                           and n.get("Driver", "overlay") == "overlay"),
    )


# --- the plan ----------------------------------------------------------------------------------


PLAN_NOTE = ("engine swarm: each service is one Swarm service; a replace is one rolling "
             "service update carried out by Swarm (order, parallelism, delay from `update`), "
             "gated per tier; images are resolved by each node")


def _ref(s: SwarmService) -> ContainerRef:
    return ContainerRef(id=s.id, name=s.name, state=ContainerState.RUNNING)


def _desired_replicas(svc: DesiredService) -> int | None:
    p = svc.service.placement
    return None if p is not None and p.global_ else svc.replicas


def compute(desired: Desired, snapshot: SwarmSnapshot, *, mode: EndpointMode,
            hold: Iterable[str] = (), retry: Iterable[str] = ()) -> Plan:
    """The steps that take the cluster to `desired`. Total: never raises.

    Per service at most one step: `create` (no Swarm service), `replace` (another
    generation: one Swarm rolling update in the service's resolved order), `scale` (same
    generation, another replica count) or `replace` of an update Swarm left paused or
    rolled back (redeployed, forced). Services gone from the spec are removed last."""
    del retry  # Swarm retries failed tasks by itself
    held = held_services(desired, hold)
    steps: list[Step] = []
    for name in sorted(set(desired.networks) - snapshot.networks):
        if not desired.networks[name].external:
            steps.append(Step(Action.CREATE_NETWORK, Reason.NETWORK_MISSING, object_name=name,
                              phase=Phase.OBJECTS))
    changing: dict[str, set[str]] = {}  # tier -> services with a step
    tier_steps: list[Step] = []
    for tier in desired.tiers:
        for svc in desired.in_tier(tier):
            if svc.name in held:
                continue
            step = _service_step(svc, snapshot, mode=mode)
            if step is not None:
                tier_steps.append(step)
                changing.setdefault(tier, set()).add(svc.name)
    # a tier of fresh creates only (nothing of it serves yet): once its tasks run, the
    # next tier may start while min_ready is checked in the background
    cold = {t for t in changing if all(s.action is Action.CREATE
                                       for s in tier_steps if s.tier == t)}
    for step in tier_steps:  # same-tier depends_on: its tasks run (healthy) first
        deps = desired.services[step.service].service.depends_on
        waits = tuple(Wait(d, Until.HEALTHY) for d in sorted(deps)
                      if d in changing.get(step.tier, set()))
        steps.append(replace(step, after=waits, window_after=step.tier in cold))
    for s in snapshot.services:
        if s.service not in desired.services:
            steps.append(Step(Action.REMOVE, Reason.ORPHAN if s.service else Reason.UNLABELLED,
                              tier=s.tier, service=s.service or s.name, old=(_ref(s),),
                              phase=Phase.LAST))
    notes = [PLAN_NOTE]
    if mode is EndpointMode.DNSRR:
        notes.append("endpoint mode dnsrr (no IPVS on this engine): service names resolve "
                     "to the addresses of running (healthy) tasks; ports are published in "
                     "host mode")
    for n in snapshot.nodes:
        if n.state != "ready":
            notes.append(f"node {n.hostname} is {n.state}: Swarm reschedules its tasks")
    failed = [n for n, on in held.items() if not on]
    if failed:
        notes.append(f"held back (failed before): {', '.join(failed)}")
    return Plan(project=desired.project, tiers=desired.tiers, steps=tuple(steps),
                engine_available=snapshot.engine_available, edge=desired.edge_service,
                notes=tuple(notes), held=tuple(held.items()))


def _service_step(svc: DesiredService, snapshot: SwarmSnapshot, *,
                  mode: EndpointMode) -> Step | None:
    base: JSON = {"tier": svc.tier, "service": svc.name,
                  "new_name": service_name(svc.project, svc.name),
                  "parallelism": svc.service.update.parallelism,
                  "upstream": svc.name if svc.service.expose is not None else None}
    found = snapshot.service(svc.name)
    fp = swarm_fingerprint(svc, mode=mode)
    if found is None:
        shown = (FieldChange("image", None, svc.service.image),
                 FieldChange("replicas", None, _desired_replicas(svc) or "global"),
                 FieldChange("update.order", None, svc.order.value))
        return Step(Action.CREATE, Reason.NEW_SERVICE, changes=shown, **base)
    if found.fingerprint != fp:
        return Step(Action.REPLACE, Reason.CONFIG_CHANGED, order=svc.order, old=(_ref(found),),
                    changes=field_changes(found.config, _public(svc, mode)), **base)
    if found.update_state in ("paused", "rollback_paused", "rollback_completed",
                              "rollback_started"):
        return Step(Action.REPLACE, Reason.INTERRUPTED, order=svc.order, old=(_ref(found),),
                    adopt=_ref(found), **base)
    want = _desired_replicas(svc)
    if want is not None and found.replicas != want:
        return Step(Action.SCALE, Reason.SCALED_UP if (found.replicas or 0) < want
                    else Reason.SCALED_DOWN, old=(_ref(found),),
                    changes=(FieldChange("replicas", found.replicas, want),), **base)
    return None


# --- the rollout gate --------------------------------------------------------------------------


class Gate(StrEnum):
    """Where a service's rollout stands."""

    WAITING = "waiting"
    READY = "ready"  # every desired task of the current generation runs (and is healthy)
    FAILED = "failed"


FAILED_UPDATE_STATES = frozenset({"paused", "rollback_started", "rollback_paused",
                                  "rollback_completed"})


@dataclass(frozen=True, slots=True)
class GateView:
    """The gate's verdict on one service, with what it counted."""

    gate: Gate
    message: str = ""
    running: int = 0
    wanted: int = 0
    failed: int = 0


def gate(svc: SwarmService | None, tasks: Sequence[SwarmTask], *, fingerprint: str,
         replicas: int | None, crash_limit: int = 3) -> GateView:
    """The verdict on one service's rollout from one observation (the caller holds READY
    for `min_ready` and bounds the wait by `deadline`).

    Failed: the service is gone, Swarm paused or rolled back its update, or `crash_limit`
    (at least) tasks of the current generation failed. Ready: the update is completed (or
    there never was one), the current generation runs `replicas` tasks (global: one on every
    node Swarm placed one), and no task of another generation still runs."""
    if svc is None:
        return GateView(Gate.FAILED, "the Swarm service disappeared during the rollout")
    if svc.update_state in FAILED_UPDATE_STATES:
        return GateView(Gate.FAILED, f"Swarm update {svc.update_state.replace('_', ' ')}: "
                        f"{svc.update_message}".rstrip(": "))
    current = [t for t in tasks if t.fingerprint == fingerprint]
    failed = [t for t in current if t.state in FAILED_STATES]
    running = [t for t in current if t.state == "running" and t.desired_state == "running"]
    wanted = replicas if replicas is not None else len(
        [t for t in current if t.desired_state == "running"])
    if len(failed) >= max(crash_limit, 1):
        last = max(failed, key=lambda t: t.timestamp)
        why = last.error or last.message or last.state
        return GateView(Gate.FAILED, f"{len(failed)} task(s) of the new generation failed "
                        f"(last on {last.node}: {why})", len(running), wanted, len(failed))
    stale = [t for t in tasks if t.fingerprint != fingerprint and t.state == "running"
             and t.desired_state == "running"]
    done = svc.update_state in ("", "completed")
    if done and len(running) >= wanted and not stale and (wanted > 0 or replicas == 0):
        return GateView(Gate.READY, "", len(running), wanted, len(failed))
    if done and replicas == 0 and not stale:
        return GateView(Gate.READY, "", 0, 0, len(failed))
    return GateView(Gate.WAITING, svc.update_state or "starting", len(running), wanted,
                    len(failed))
