"""Backups on disk: take, list, verify and restore a service's backups. The shell side of
`backups` (which decides names, retention and room).

`BackupStore.take` is the executor's `BackupHook`: it streams a backup command's stdout (or
the tar of a volume-copy helper container) into a 0600 file under a 0700 directory, records
its sha256 in the manifest, and fails the step (before anything was stopped) when the command
fails, the output is empty or there is no room. Backup content never reaches a log, a message
or the terminal. It must not decide when a backup is taken: the planner does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from reconciler.core import backups
from reconciler.core.backups import Entry
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.plans import Step
from reconciler.core.specs import Backup
from reconciler.execute import BackupHook, StepFailed
from reconciler.persistence import atomic_write
from reconciler.runtimes import EngineError, Runtime

HELPER_LABEL = "reconciler.backup-helper"
CHUNK = 1 << 16


class BackupError(Exception):
    """A backup or restore could not be done; the message names no content or secret."""


class BackupStore(BackupHook):
    """Backups of one state dir."""

    def __init__(self, state_root: Path, runtime: Runtime | None = None, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.root = state_root / "backups"
        self.rt = runtime
        self.wall = wall

    # --- reading -----------------------------------------------------------------------

    def directory(self, project: str, service: str) -> Path:
        return self.root / project / service

    def entries(self, project: str, service: str) -> list[Entry]:
        """The manifest of one service, oldest first (an unreadable manifest is empty)."""
        try:
            raw = json.loads((self.directory(project, service) / backups.MANIFEST).read_text())
        except (OSError, ValueError):
            return []
        found = [Entry.from_json(x) for x in raw] if isinstance(raw, list) else []
        return sorted((e for e in found if e is not None), key=lambda e: (e.time, e.file))

    def services(self, project: str) -> list[str]:
        base = self.root / project
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def verify(self, project: str, entry: Entry) -> bool:
        """True when the file exists and its sha256 matches the manifest."""
        path = self.directory(project, entry.service) / entry.file
        try:
            return _sha256(path) == entry.sha256
        except OSError:
            return False

    def path_of(self, project: str, entry: Entry) -> Path:
        return self.directory(project, entry.service) / entry.file

    # --- taking --------------------------------------------------------------------------

    async def take(self, desired: Desired, step: Step) -> None:
        """The executor's hook: take the step's service's backup or raise StepFailed."""
        svc = desired.services[step.service]
        try:
            await self.backup(svc, source=step.target.id if step.target else None)
        except BackupError as exc:
            raise StepFailed(step.id, str(exc)) from None

    async def backup(self, svc: DesiredService, *, source: str | None,
                     spec: Backup | None = None) -> Entry:
        """Take one backup of `svc` (from the running container `source` for a backup
        command), record it, apply retention; BackupError when it failed or is empty.
        `spec` overrides the service's own `backup` (a migration copies volumes of services
        without one)."""
        spec = spec or svc.service.backup
        if spec is None:
            raise BackupError(f"service {svc.name} has no backup configured")
        assert self.rt is not None
        directory = self.directory(svc.project, svc.name)
        _ensure_dir(directory)
        entries = self.entries(svc.project, svc.name)
        problem = backups.room_problem(shutil.disk_usage(directory).free, entries)
        if problem is not None:
            raise BackupError(f"backup of {svc.name}: {problem}")
        kind = "volumes" if spec.volumes else "dump"
        fingerprint = svc.fingerprint
        if source is not None:
            with contextlib.suppress(EngineError):
                info = await self.rt.inspect_container(source)
                fingerprint = str((info.get("Config") or {}).get("Labels", {}).get(
                    "reconciler.fingerprint", fingerprint))
        when = self.wall()
        name = backups.file_name(when, fingerprint, kind=kind)
        final = directory / name
        partial = directory / f".{name}.{uuid.uuid4().hex[:8]}.partial"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                def sink(chunk: bytes) -> None:
                    nonlocal size
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)

                if spec.command is not None:
                    await self._dump(svc, source, spec.command, sink)
                else:
                    await self._copy_volumes(svc, sink)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise BackupError(f"backup of {svc.name} is empty")
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        entry = Entry(file=name, service=svc.name, kind=kind, time=when, size=size,
                      sha256=digest.hexdigest(), fingerprint=fingerprint[:8])
        kept = [e for e in entries if e.file != name] + [entry]
        gone = backups.expired(kept, keep=spec.keep)
        self._write_manifest(directory, [e for e in kept if e not in gone])
        for old in gone:
            with contextlib.suppress(OSError):
                (directory / old.file).unlink()
        return entry

    async def _dump(self, svc: DesiredService, source: str | None, cmd: tuple[str, ...],
                    sink: Callable[[bytes], None]) -> None:
        assert self.rt is not None
        if source is None:
            raise BackupError(f"backup of {svc.name}: no running container to run it in")
        try:
            result = await self.rt.exec_stream(source, cmd, sink=sink)
        except EngineError as exc:
            raise BackupError(f"backup of {svc.name}: {exc}") from None
        if result.exit_code != 0:
            raise BackupError(f"backup command of {svc.name} exited {result.exit_code}")

    async def _copy_volumes(self, svc: DesiredService, sink: Callable[[bytes], None]) -> None:
        if not backups.named_volumes(svc):
            raise BackupError(f"backup of {svc.name}: it mounts no named volume")
        async with self._helper(svc, read_only=True) as helper:
            assert self.rt is not None
            try:
                await self.rt.get_archive(helper, backups.HELPER_ROOT, sink=sink)
            except EngineError as exc:
                raise BackupError(f"volume copy of {svc.name}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _helper(self, svc: DesiredService, *, read_only: bool) -> AsyncIterator[str]:
        assert self.rt is not None
        name = f"{svc.project}-{svc.name}-backup-{uuid.uuid4().hex[:8]}"
        body = backups.helper_config(svc, read_only=read_only,
                                     marker=(HELPER_LABEL, svc.project))
        try:
            cid = await self.rt.create_container(name, body)
        except EngineError as exc:
            raise BackupError(f"volume helper for {svc.name}: {exc}") from None
        try:
            yield cid
        finally:
            with contextlib.suppress(EngineError):
                await self.rt.remove_container(cid)

    def _write_manifest(self, directory: Path, entries: list[Entry]) -> None:
        data = json.dumps([e.as_json() for e in entries], indent=1, sort_keys=True)
        atomic_write(directory / backups.MANIFEST, data.encode(), mode=0o600)

    # --- restoring ------------------------------------------------------------------------

    async def restore_dump(self, svc: DesiredService, entry: Entry, *, target: str) -> None:
        """Pipe a dump into the service's `restore` command in its running container."""
        spec = svc.service.backup
        assert self.rt is not None and spec is not None
        if spec.restore is None:
            raise BackupError(f"service {svc.name} has no backup `restore` command")
        path = self.path_of(svc.project, entry)
        try:
            result = await self.rt.exec_stream(target, spec.restore, stdin=_chunks(path))
        except EngineError as exc:
            raise BackupError(f"restore of {svc.name}: {exc}") from None
        if result.exit_code != 0:
            raise BackupError(f"restore command of {svc.name} exited {result.exit_code}")

    async def restore_volumes(self, svc: DesiredService, entry: Entry) -> None:
        """Copy a volume tar back into the service's volumes (the service is stopped)."""
        data = self.path_of(svc.project, entry).read_bytes()
        async with self._helper(svc, read_only=False) as helper:
            assert self.rt is not None
            try:
                await self.rt.put_archive(helper, "/", data)
            except EngineError as exc:
                raise BackupError(f"restore of {svc.name}: {exc}") from None


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in (path, path.parent, path.parent.parent):
        with contextlib.suppress(OSError):
            os.chmod(p, 0o700)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk
