"""`reconciler backups` and `reconciler restore`: the data commands of the CLI.

A restore through a `restore` hook runs in the service's running container with the backup
on stdin: dump tools (`pg_restore`, `mongorestore --archive`) talk to their server, so the
server must be up, and `--clean`-style flags replace what is there. A volume copy is restored
with every container of the service stopped, copied back through a helper container of the
same image (the files of the backup overwrite the volume's; files created after the backup
stay), then the containers are started again and gated on health. Nothing here prints backup
content. It decides nothing about the spec's desired state: a later pass converges as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from typing import Any

from reconciler.backupstore import BackupError, BackupStore
from reconciler.core.backups import pick
from reconciler.core.desired import DesiredService, build
from reconciler.core.snapshots import ContainerState
from reconciler.persistence import State
from reconciler.runtimes import Runtime

EXIT_OK, EXIT_FAILED = 0, 1


def add_parsers(sub: Any, common: Any) -> None:
    """Add `backups` and `restore` to the CLI's subparsers (`common` adds --spec etc.)."""
    backups = sub.add_parser("backups", help="list the backups of the services")
    common(backups, suppress=True)
    backups.add_argument("service", nargs="?", metavar="SERVICE")
    backups.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    restore = sub.add_parser("restore", help="restore a service from a backup (default: the "
                                             "newest), health-gated")
    common(restore, suppress=True)
    restore.add_argument("service", metavar="SERVICE")
    restore.add_argument("backup", nargs="?", metavar="BACKUP",
                         help="file name (or unique prefix) as `reconciler backups` lists it")


def cmd_backups(args: argparse.Namespace, *, state_root: Any, project: str) -> int:
    store = BackupStore(state_root)
    services = [args.service] if args.service else store.services(project)
    rows = []
    for service in services:
        for e in store.entries(project, service):
            rows.append({"service": service, "file": e.file, "kind": e.kind,
                         "time": dt.datetime.fromtimestamp(e.time, tz=dt.UTC).strftime(
                             "%Y-%m-%dT%H:%M:%SZ"),
                         "size": e.size, "sha256": e.sha256,
                         "checksum_ok": store.verify(project, e)})
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no backups" + (f" of {args.service}" if args.service else ""))
        return EXIT_OK
    print(f"{'SERVICE':<20} {'TIME':<21} {'SIZE':>10}  {'CHECKSUM':<8}  FILE")
    for r in rows:
        print(f"{r['service']:<20} {r['time']:<21} {r['size']:>10}  "
              f"{'ok' if r['checksum_ok'] else 'BAD':<8}  {r['file']}")
    return EXIT_OK if all(r["checksum_ok"] for r in rows) else EXIT_FAILED


async def cmd_restore(args: argparse.Namespace, *, state: State, loaded: Any,
                      runtime: Runtime) -> int:
    from reconciler.reconcile import observe

    key = state.key(create=True)
    assert key is not None
    desired = build(loaded, key, edge_holder=True)
    svc = desired.services.get(args.service)
    if svc is None or svc.service.backup is None:
        print(f"reconciler: service {args.service!r} is not in the spec or has no `backup`",
              file=sys.stderr)
        return EXIT_FAILED
    store = BackupStore(state.root, runtime)
    entry = pick(store.entries(desired.project, svc.name), args.backup)
    if entry is None:
        print(f"reconciler: no backup {args.backup or ''} of {svc.name} (see "
              "`reconciler backups`)", file=sys.stderr)
        return EXIT_FAILED
    if not store.verify(desired.project, entry):
        print(f"reconciler: backup {entry.file} fails its checksum: refused", file=sys.stderr)
        return EXIT_FAILED
    snapshot = await observe(runtime, desired.project)
    mine = sorted(snapshot.of_service(svc.name), key=lambda c: c.name)
    started = time.monotonic()
    try:
        if entry.kind == "dump":
            running = [c for c in mine if c.state is ContainerState.RUNNING]
            if not running:
                print(f"reconciler: {svc.name} has no running container to restore into",
                      file=sys.stderr)
                return EXIT_FAILED
            await store.restore_dump(svc, entry, target=running[0].id)
            ids = [running[0].id]
        else:
            ids = [c.id for c in mine]
            for c in mine:
                await runtime.stop_container(c.id, timeout_s=svc.service.stop_grace_period)
            await store.restore_volumes(svc, entry)
            for cid in ids:
                await runtime.start_container(cid)
    except BackupError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_FAILED
    problem = await wait_healthy(runtime, svc, ids)
    if problem:
        print(f"reconciler: restored {entry.file} but {svc.name} is not healthy: {problem}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"Restored {svc.name} from {entry.file} in {time.monotonic() - started:.1f}s; "
          "healthy.")
    return EXIT_OK


async def wait_healthy(runtime: Runtime, svc: DesiredService, ids: list[str]) -> str | None:
    """Wait until every container runs and is healthy (or, without a healthcheck, has run
    `min_ready`); the problem, or None."""
    update = svc.service.update
    deadline = time.monotonic() + update.deadline
    while True:
        waiting = None
        for cid in ids:
            state = (await runtime.inspect_container(cid)).get("State") or {}
            if not state.get("Running"):
                return f"container {cid[:12]} is {state.get('Status', 'gone')}"
            health = (state.get("Health") or {}).get("Status")
            if health == "unhealthy":
                return f"container {cid[:12]} is unhealthy"
            if health not in (None, "healthy"):
                waiting = cid
        if waiting is None:
            await asyncio.sleep(update.min_ready)
            return None
        if time.monotonic() > deadline:
            return f"not healthy within {update.deadline:.0f}s"
        await asyncio.sleep(0.25)
