"""Backup steps in plans and the pure backup rules (names, retention, room, pick), and the
revert rule: a revert's backups are best effort (`rollback.for_revert`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.core import backups, render, rollback
from reconciler.core.backups import Entry
from reconciler.core.desired import Desired
from reconciler.core.plans import Action, Phase, Plan, compute
from tests.specfactory import container_json, desired_from
from tests.unit.test_planner import BASE, observed

HOOK = '    volumes: ["db-data:/data"]\n    backup: {command: [dump], restore: [load], keep: 2}\n'


def with_backup(tmp: Path, image: str = "db:1") -> Desired:
    return desired_from(tmp, BASE.replace('    volumes: ["db-data:/data"]\n', HOOK)
                        .replace("image: db:1", f"image: {image}"))


def test_a_replace_of_a_service_with_backup_is_preceded_by_a_backup(tmp_path: Path) -> None:
    old = with_backup(tmp_path / "old")
    new = with_backup(tmp_path / "new", image="db:2")
    snap = observed(new, container_json(old, "db", 1), container_json(new, "api", 1),
                    container_json(new, "api", 2))
    plan = compute(new, snap)
    assert [s.id for s in plan.steps][:2] == ["backup db", "replace db[1] stop-first"]
    (b,) = plan.backups()
    assert b.phase is Phase.BACKUP and b.action is Action.BACKUP
    assert b.target is not None and b.target.name == plan.steps[1].old[0].name
    assert plan.counts() == {"create": 0, "replace": 1, "start": 0, "remove": 0}
    assert "* backup db from" in render.text(plan)


def test_no_backup_when_nothing_of_the_service_stops(tmp_path: Path) -> None:
    d = with_backup(tmp_path)
    assert compute(d, observed(d)).backups() == []  # cold start
    in_sync = observed(d, container_json(d, "db", 1), container_json(d, "api", 1),
                       container_json(d, "api", 2))
    assert compute(d, in_sync).empty
    # a stopped (exited) container is started, not stopped: no backup
    stopped = observed(d, container_json(d, "db", 1, state="exited", status="Exited (0)"),
                       container_json(d, "api", 1), container_json(d, "api", 2))
    assert compute(d, stopped).backups() == []


def entry(t: float, size: int = 10) -> Entry:
    return Entry(file=backups.file_name(t, "abcdef0123", kind="dump"), service="db",
                 kind="dump", time=t, size=size, sha256="x", fingerprint="abcdef01")


def test_names_retention_room_and_pick() -> None:
    assert backups.file_name(0, "abcdef0123", kind="volumes") == "19700101T000000Z-abcdef01.tar"
    es = [entry(t) for t in (10, 30, 20)]
    assert [e.time for e in backups.expired(es, keep=2)] == [10]
    assert backups.room_problem(10 ** 12, es) is None
    assert backups.room_problem(1000, [entry(1, size=10 ** 9)]) is not None
    assert backups.pick(es, None) == es[1]
    assert backups.pick(es, es[2].file) == es[2]
    assert backups.pick(es, "nope") is None
    assert Entry.from_json(es[0].as_json()) == es[0]
    assert Entry.from_json({"file": 1}) is None


def revert_case(tmp: Path, name: str) -> Plan:
    """Plans the revert rule is applied to, by name."""
    old = with_backup(tmp / "old")
    new = with_backup(tmp / "new", image="db:2")
    running = observed(new, container_json(old, "db", 1), container_json(new, "api", 1),
                       container_json(new, "api", 2))
    cases = {
        "a stop-first replace of db": compute(new, running),
        "a cold start": compute(new, observed(new)),
        "in sync": compute(old, observed(old, container_json(old, "db", 1),
                                         container_json(old, "api", 1),
                                         container_json(old, "api", 2))),
    }
    return cases[name]


# (plan, backups in the forward plan, best-effort backups after for_revert, a note added)
REVERT = [
    ("a stop-first replace of db", 1, 1, True),
    ("a cold start", 0, 0, False),
    ("in sync", 0, 0, False),
]


@pytest.mark.parametrize(("name", "forward", "best_effort", "noted"), REVERT)
def test_for_revert_table(tmp_path: Path, name: str, forward: int, best_effort: int,
                          noted: bool) -> None:
    plan = revert_case(tmp_path, name)
    assert [s.best_effort for s in plan.backups()] == [False] * forward  # forward: must pass
    reverted = rollback.for_revert(plan)
    assert [s.best_effort for s in reverted.backups()] == [True] * best_effort
    # nothing else changes: same steps in the same order, other steps untouched
    assert [s.id for s in reverted.steps] == [s.id for s in plan.steps]
    assert [s for s in reverted.steps if s.action is not Action.BACKUP] == [
        s for s in plan.steps if s.action is not Action.BACKUP]
    assert (len(reverted.notes) == len(plan.notes) + 1) is noted
    if noted:
        assert "the revert goes on" in reverted.notes[-1]
        assert "best effort" in render.text(reverted)
        assert json.loads(render.as_json(reverted))["steps"][0]["best_effort"] is True
        assert "best_effort" not in json.loads(render.as_json(plan))["steps"][0]
    else:
        assert reverted is plan
