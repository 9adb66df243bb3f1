"""Backups through the reconcile pass on the fake engine: taken before a stop-first update,
a failing or empty one fails the pass before any container is stopped or created; inside a
revert a failing one is noted and the revert goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from reconciler.reconcile import PassStatus
from tests.component.fakes import FakeContainer, FakeRuntime, ImageBehaviour
from tests.component.test_reconcile_fake import IMAGES, make

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 2s, deadline: 30s}
volumes: {data: {}}
services:
  db:
    tier: infrastructure
    image: "db:1"
    volumes: ["data:/d"]
    backup: {command: [dump], keep: 2}
"""


Handler = Callable[[FakeContainer, tuple[str, ...], bytes | None], tuple[int, bytes, str]]


def dumper(out: bytes, code: int = 0) -> Handler:
    def handler(_c: FakeContainer, cmd: tuple[str, ...], _stdin: bytes | None
                ) -> tuple[int, bytes, str]:
        assert cmd == ("dump",)
        return code, out, ""
    return handler


async def test_backup_before_stop_first_update_and_retention(tmp_path: Path) -> None:
    fake = FakeRuntime(images=set(IMAGES) | {"db:2", "db:3", "db:4"})
    fake.stream_handler = dumper(b"\x00secret-rows\xff")
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    for n, image in enumerate(("db:2", "db:3", "db:4"), start=1):
        (tmp_path / "spec" / "spec.yaml").write_text(SPEC.replace('"db:1"', f'"{image}"'))
        fake.advance(1.5)  # backup names have second resolution
        res = await rec.reconcile()
        assert res.result is PassStatus.CONVERGED, res.message
        assert [k for _, k in fake.exec_log].count(("dump",)) == n
    directory = tmp_path / "state" / "backups" / "shop" / "db"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(manifest) == 2  # keep: 2
    for e in manifest:
        assert (directory / e["file"]).read_bytes() == b"\x00secret-rows\xff"


async def test_failed_or_empty_backup_touches_nothing(tmp_path: Path) -> None:
    for n, handler in enumerate((dumper(b"partial", code=1), dumper(b""))):
        fake = FakeRuntime(images=set(IMAGES) | {"db:2"})
        rec, _ = make(tmp_path / str(n), fake, SPEC)
        assert (await rec.reconcile()).result is PassStatus.CONVERGED
        before = {c.id: c.state for c in fake.containers.values()}
        fake.stream_handler = handler
        (tmp_path / str(n) / "spec" / "spec.yaml").write_text(SPEC.replace('"db:1"', '"db:2"'))
        writes = sum(fake.calls[m] for m in ("stop_container", "create_container",
                                             "remove_container", "kill_container"))
        res = await rec.reconcile()
        assert not res.ok
        assert "backup" in res.message
        assert {c.id: c.state for c in fake.containers.values()} == before
        assert sum(fake.calls[m] for m in ("stop_container", "create_container",
                                           "remove_container", "kill_container")) == writes
        leftover = list((tmp_path / str(n) / "state" / "backups" / "shop" / "db").iterdir())
        assert [p.name for p in leftover if not p.name.startswith("manifest")] == []


def dump_unless(broken_image: str) -> Handler:
    """A backup command that works in every container but those of `broken_image` (a new
    generation whose app is broken: the dump tool cannot reach it either)."""
    def handler(c: FakeContainer, cmd: tuple[str, ...], _stdin: bytes | None
                ) -> tuple[int, bytes, str]:
        assert cmd == ("dump",)
        if c.config["Image"] == broken_image:
            return 2, b"", "dump: could not connect to the server"
        return 0, b"rows of " + str(c.config["Image"]).encode(), ""
    return handler


async def test_a_failed_backup_inside_a_revert_does_not_halt_it(tmp_path: Path) -> None:
    """db:2 never gets healthy and its dump fails: the forward rollout backs up db:1 (ok),
    fails its health gate, and the revert -- whose backup of the broken db:2 fails -- still
    brings db:1 back: rolled back, not halted, and the skipped backup is in the message,
    the history and the steps (the controller's `reconciler_steps_total{action="backup",
    outcome="failed"}`)."""
    fake = FakeRuntime(images=set(IMAGES) | {"db:2"})
    fake.set_behaviour("db:2", ImageBehaviour(health="unhealthy"))
    fake.stream_handler = dump_unless("db:2")
    rec, events = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    (tmp_path / "spec" / "spec.yaml").write_text(SPEC.replace('"db:1"', '"db:2"'))
    fake.advance(1.5)
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK, res.message
    assert not res.halt
    assert "backup of db failed" in res.message and "the revert goes on" in res.message
    images = [c.config["Image"] for c in fake.containers.values()
              if c.labels.get("reconciler.service") == "db" and c.state == "running"]
    assert images == ["db:1"]
    assert res.outcome is not None and res.revert is not None
    # forward: the backup of db:1 passed; revert: the backup of db:2 failed, best effort
    assert [(r.step.id, r.ok) for r in res.outcome.results][:1] == [("backup db", True)]
    (revert_backup,) = [r for r in res.revert.results if r.step.id == "backup db"]
    assert not revert_backup.ok and revert_backup.step.best_effort
    assert res.revert.ok
    assert any(e.kind == "note" and "backup of db failed" in e.message for e in events)
    entry = rec.state.history()[-1]
    assert entry.result == "rolled_back"
    assert entry.notes and "backup of db failed" in entry.notes[0]
    assert "backup db" in entry.failed_steps
    # the forward backup (of db:1) is kept, no partial file from the failed one
    directory = tmp_path / "state" / "backups" / "shop" / "db"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(manifest) == 1
    assert (directory / manifest[0]["file"]).read_bytes() == b"rows of db:1"
    assert sorted(p.name for p in directory.iterdir()) == sorted(["manifest.json",
                                                                  manifest[0]["file"]])


async def test_a_failed_backup_in_a_forward_rollout_still_stops_it(tmp_path: Path) -> None:
    """The other side of the rule: forward, the same failing dump touches nothing."""
    fake = FakeRuntime(images=set(IMAGES) | {"db:2"})
    fake.stream_handler = dump_unless("db:1")
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    (tmp_path / "spec" / "spec.yaml").write_text(SPEC.replace('"db:1"', '"db:2"'))
    res = await rec.reconcile()
    assert not res.ok
    assert res.outcome is not None and res.outcome.failure is not None
    assert "backup" in str(res.outcome.failure)
    assert [r.step.id for r in res.outcome.results] == ["backup db"]
    assert [c.config["Image"] for c in fake.containers.values()] == ["db:1"]
