"""Backups through the reconcile pass on the fake engine: taken before a stop-first update,
a failing or empty one fails the pass before any container is stopped or created."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from reconciler.reconcile import PassStatus
from tests.component.fakes import FakeContainer, FakeRuntime
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
