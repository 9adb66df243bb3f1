"""Backups as data: file names, the manifest, retention and the free-space rule. Pure.

A service's backups live in `<state>/backups/<project>/<service>/`, one file per backup named
`<UTC time>-<fingerprint8>.<ext>` (`dump` for a backup command's stdout, `tar` for a copy of
the service's named volumes), next to `manifest.json` (one entry per file: time, size,
sha256, the generation it was taken from, its kind). `backupstore` does the I/O; this module
decides names, what retention removes and whether there is room. It must not touch files,
clocks or the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.core.desired import DesiredService

MANIFEST = "manifest.json"
HELPER_ROOT = "/reconciler-backup"  # where a volume-copy helper mounts the volumes
# room to leave after a backup the size of the previous one (the state dir also holds
# last-good copies and history)
SPARE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    """One backup file as the manifest records it."""

    file: str
    service: str
    kind: str  # "dump" (a backup command) or "volumes" (a tar of the named volumes)
    time: float  # seconds since the epoch, UTC
    size: int
    sha256: str
    fingerprint: str  # the generation the backup was taken from ("" when unknown)

    def as_json(self) -> dict[str, Any]:
        """The entry as manifest JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Entry | None:
        """An entry from manifest JSON, or None when it is malformed."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls(file=str(raw["file"]), service=str(raw["service"]),
                       kind=str(raw["kind"]), time=float(raw["time"]), size=int(raw["size"]),
                       sha256=str(raw["sha256"]), fingerprint=str(raw.get("fingerprint", "")))
        except (KeyError, TypeError, ValueError):
            return None


def file_name(when: float, fingerprint: str, *, kind: str) -> str:
    """`20261130T104233Z-3f9c2a1b.dump`: sortable by time, names the generation."""
    stamp = datetime.fromtimestamp(when, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{(fingerprint or 'unknown')[:8]}.{'tar' if kind == 'volumes' else 'dump'}"


def named_volumes(svc: DesiredService) -> list[tuple[str, str]]:
    """(engine volume name, mount target) for each named volume the service mounts."""
    out = []
    for bind in svc.binds:
        source, _, rest = bind.partition(":")
        target = rest.split(":", 1)[0]
        if source and not source.startswith("/"):
            out.append((source, target))
    return out


def helper_config(svc: DesiredService, *, read_only: bool, marker: tuple[str, str]) -> dict[
        str, Any]:
    """The create body of a volume-copy helper: the service's image with its named volumes
    mounted under HELPER_ROOT. It is never started (the engine copies archives from a created
    container) and carries no `reconciler.project` label, so no plan ever sees it."""
    mounts = [{"Type": "volume", "Source": name, "Target": f"{HELPER_ROOT}/{name}",
               "ReadOnly": read_only} for name, _ in named_volumes(svc)]
    return {"Image": svc.service.image, "Entrypoint": ["/reconciler-backup-never-started"],
            "Labels": {marker[0]: marker[1]}, "HostConfig": {"Mounts": mounts},
            "NetworkDisabled": True}


def expired(entries: Sequence[Entry], *, keep: int) -> list[Entry]:
    """The entries retention removes: all but the newest `keep`."""
    newest_first = sorted(entries, key=lambda e: (e.time, e.file), reverse=True)
    return newest_first[keep:]


def room_problem(free: int, entries: Iterable[Entry]) -> str | None:
    """Why there is no room for the next backup (it is assumed as large as the previous
    one plus a spare margin), or None when there is."""
    previous = max(entries, key=lambda e: e.time, default=None)
    needed = (previous.size if previous else 0) + SPARE_BYTES
    if free < needed:
        return (f"only {free // (1024 * 1024)} MiB free in the state dir; the previous "
                f"backup needed {(previous.size if previous else 0) // (1024 * 1024)} MiB "
                f"(+{SPARE_BYTES // (1024 * 1024)} MiB spare)")
    return None


def pick(entries: Sequence[Entry], name: str | None) -> Entry | None:
    """The backup to restore: the named one (file name or its unique prefix), else the
    newest."""
    if not entries:
        return None
    if name is None:
        return max(entries, key=lambda e: (e.time, e.file))
    found = [e for e in entries if e.file == name] or [
        e for e in entries if e.file.startswith(name)]
    return found[0] if len(found) == 1 else None
