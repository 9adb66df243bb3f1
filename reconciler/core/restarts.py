"""The plan of `reconciler restart SERVICE`: a rolling, health-gated replace of every replica.

Pure (no I/O): from the desired state and a snapshot it builds a `Plan` whose steps replace
each running container of one service by a fresh one of the SAME generation (same config, same
fingerprint), so the executor carries it out exactly like an update: in the service's update
order, `parallelism` at a time, health-gated, with the edge cutover of a start-first update.
The new container needs a name the old one does not hold: the generation's name and the same
name with `-r` alternate. It refuses (`RestartRefused`) a service that is not in the spec or
not in sync with it: a restart never applies a spec change behind the operator's back. A
service joining the restarted one's network namespace (`network_mode: service:X`, the edge in
its holder) is recreated after it, in the new namespace.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.desired import Desired
from reconciler.core.plans import (
    Action,
    ImageAction,
    ImageNeed,
    Plan,
    Reason,
    Step,
    compute,
    upstream_changes,
)
from reconciler.core.snapshots import ContainerState, Snapshot
from reconciler.core.specs import PullPolicy

RESTART_SUFFIX = "-r"


class RestartRefused(Exception):
    """The service cannot be restarted as asked (message for the operator)."""


def restart_plan(desired: Desired, snapshot: Snapshot, service: str) -> Plan:
    """Replace steps for every container of `service`, as an update of the same generation."""
    svc = desired.services.get(service)
    if svc is None:
        known = ", ".join(sorted(desired.services)) or "none"
        raise RestartRefused(f"no service {service!r} in the spec (services: {known})")
    pending = [s for s in compute(desired, snapshot).steps if s.service == service]
    if pending:
        raise RestartRefused(
            f"{service} is not in sync with the spec ({len(pending)} pending step(s), e.g. "
            f"{pending[0].id}): run `reconciler apply` (or --dry-run to see why) first")
    mine = snapshot.of_service(service)
    if not any(c.state is ContainerState.RUNNING for c in mine):
        raise RestartRefused(f"{service} has no running container to restart")
    # the same containers seen as another generation: the planner replaces them as an update
    stale = tuple(replace(c, fingerprint=f"{c.fingerprint}~restart") if c.service == service
                  else c for c in snapshot.containers)
    names = {c.replica: c.name for c in mine}
    steps: list[Step] = []
    for step in compute(desired, replace(snapshot, containers=stale)).steps:
        joined = desired.services.get(step.service)
        if step.reason is Reason.JOINED_REPLACED and joined is not None \
                and joined.joins == service:
            steps.append(step)  # it lives in the old container's namespace: recreated after
            continue
        if step.service != service or step.action is not Action.REPLACE:
            continue
        name = svc.container_name(step.replica or 1)
        taken = names.get(step.replica) == name
        steps.append(replace(step, reason=Reason.RESTART, changes=(), after=(),
                             new_name=name + RESTART_SUFFIX if taken else name))
    image = svc.service.image
    return Plan(project=desired.project, tiers=desired.tiers, steps=tuple(steps),
                images=(ImageNeed(image, PullPolicy.NEVER, if_present=ImageAction.USE,
                                  if_missing=ImageAction.FAIL),),
                engine_available=snapshot.engine_available,
                notes=(f"restart {service}: {len(steps)} replica(s), order {svc.order}",),
                upstreams=upstream_changes(steps), edge=desired.edge_service)
