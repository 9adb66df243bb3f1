"""Property tests of the planner over random hosts: deterministic, converging, and blind to
containers that are not ours."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import snapshots
from reconciler.core.desired import Desired
from reconciler.core.plans import Action, Plan, compute
from tests.specfactory import container_json, desired_from, foreign_json

SPEC = """
project: prop
networks: {n: {}}
volumes: {v: {}}
services:
  a: {tier: infrastructure, image: "a:1", volumes: ["v:/d"], networks: [n]}
  b: {tier: core, image: "b:1", replicas: 3, networks: [n]}
  c: {tier: business, image: "c:1", replicas: 2, restart: "no"}
"""
_CACHE: dict[str, Desired] = {}


def desired(tmp: Path) -> Desired:
    if "d" not in _CACHE:
        _CACHE["d"] = desired_from(tmp, SPEC)
    return _CACHE["d"]


STATES = [("running", "Up 1 minute (healthy)"), ("running", "Up 1 minute"),
          ("running", "Up 2 seconds (health: starting)"), ("running", "Up 1 minute (unhealthy)"),
          ("exited", "Exited (1) 1 second ago"), ("exited", "Exited (0) 1 second ago"),
          ("created", "Created"), ("paused", "Up 1 minute (Paused)"), ("dead", "Dead"),
          ("restarting", "Restarting (1) 1 second ago"), ("removing", "Removal In Progress")]

container = st.tuples(
    st.sampled_from(["a", "b", "c", "gone"]),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(STATES),
    st.booleans(),  # current fingerprint?
    st.integers(min_value=1, max_value=5),
)


def host(d: Desired, items: list[tuple[Any, ...]], foreign: int) -> list[dict[str, Any]]:
    out = []
    for i, (service, replica, (state, status), current, created) in enumerate(items):
        fp = None if current else f"{i:016x}"
        item = container_json(d, service, replica, state=state, status=status, fingerprint=fp,
                              cid=f"c{i}", created=created)
        out.append(item)
    out += [lookalike(d, n) for n in range(foreign)]
    return out


def lookalike(d: Desired, n: int) -> dict[str, Any]:
    """A container that is not ours but looks it: another project's labels on the same
    service, replica and fingerprint (even `reconciler.project` with a suffix), or none."""
    if n % 3 == 2:
        return foreign_json(f"foreign-{n}")
    item = container_json(d, "b", 1, cid=f"id-foreign-{n}")
    item["Names"] = [f"/foreign-{n}"]
    item["Labels"] = {**item["Labels"],
                      "reconciler.project": d.project + ("-staging" if n % 3 else "")}
    if n % 3 == 0:  # the project label under a near-miss key
        item["Labels"]["reconciler.project.old"] = item["Labels"].pop("reconciler.project")
    return item


def apply_model(d: Desired, items: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """What the host looks like after a plan succeeded (a pure model of the executor)."""
    by_id = {c["Id"]: c for c in items}
    for step in plan.steps:
        for old in step.old:
            by_id.pop(old.id, None)
        if step.action in (Action.CREATE, Action.REPLACE, Action.RECREATE):
            if step.adopt is not None:
                by_id.pop(step.adopt.id, None)
            new = container_json(d, step.service, step.replica or 0, cid=f"new-{step.id}")
            by_id[new["Id"]] = new
        elif step.action is Action.START and step.target is not None:
            by_id[step.target.id] = {**by_id[step.target.id], "State": "running",
                                     "Status": "Up 1 second (healthy)"}
    return list(by_id.values())


def snap(d: Desired, items: list[dict[str, Any]], with_objects: bool = True) -> snapshots.Snapshot:
    ours = {"reconciler.project": d.project}
    return snapshots.parse(
        d.project, items,
        [{"Name": n, "Labels": ours} for n in d.networks] if with_objects else [],
        [{"Name": v, "Labels": ours} for v in d.volumes] if with_objects else [],
    )


@settings(max_examples=200, deadline=None)
@given(items=st.lists(container, max_size=12), foreign=st.integers(0, 3), seed=st.integers())
def test_plans_are_deterministic_and_ignore_foreign(tmp_path_factory: Any, items: list[Any],
                                                    foreign: int, seed: int) -> None:
    d = desired(tmp_path_factory.mktemp("p"))
    raw = host(d, items, foreign)
    shuffled = raw[:]
    random.Random(seed).shuffle(shuffled)
    snapshot = snap(d, raw)
    assert len(snapshot.containers) == len(items)  # every container of ours, no lookalike
    first, second = compute(d, snapshot), compute(d, snap(d, shuffled))
    assert first == second
    touched = {o.id for s in first.steps for o in s.old}
    touched |= {s.target.id for s in first.steps if s.target}
    assert not any(t.startswith("id-foreign") for t in touched)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(container, max_size=12), foreign=st.integers(0, 3))
def test_after_applying_a_plan_the_next_plan_is_empty(tmp_path_factory: Any, items: list[Any],
                                                      foreign: int) -> None:
    d = desired(tmp_path_factory.mktemp("p"))
    raw = host(d, items, foreign)
    plan = compute(d, snap(d, raw, with_objects=False))
    after = apply_model(d, raw, plan)
    assert compute(d, snap(d, after)).steps == ()
    assert sum(1 for c in after if c["Id"].startswith("id-foreign")) == foreign
