"""Backups against the real dockerd: taken before a stop-first update of a service with a
volume, listed, restored after the data was deleted; a failed or empty backup touches
nothing; retention keeps N. The demo "database" is the demo app with a named volume at /data
into which the test writes a sentinel file (as a database writes its files)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from tests.dockerkit import APP, Host, docker, swap

pytestmark = pytest.mark.docker

DB = f"""
project: PROJECT
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 2s, retries: 2, start_period: 5s}}
  update: {{min_ready: 300ms, deadline: 20s, drain: 100ms}}
  stop_grace_period: 2s
volumes: {{data: {{}}}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    environment: {{APP_NAME: db, APP_VERSION: "1.0"}}
    volumes: ["data:/data"]
    update: {{order: stop-first}}
    BACKUP
"""
TAR_HOOK = ('backup: {command: ["tar", "cf", "-", "-C", "/data", "."], '
            'restore: ["tar", "xf", "-", "-C", "/data"], keep: 3}')


def db_id(h: Host) -> str:
    (c,) = h.by_service()["db"]
    assert c["State"]["Running"]
    return str(c["Id"])


def write_sentinel(h: Host, text: str) -> None:
    docker("exec", db_id(h), "sh", "-c", f"echo {text} > /data/sentinel")


def sentinel(h: Host) -> str:
    return docker("exec", db_id(h), "sh", "-c", "cat /data/sentinel 2>/dev/null || true").strip()


def listed(h: Host) -> list[dict[str, object]]:
    res = h.cli("backups", "db", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return list(json.loads(res.stdout))


def test_dump_hook_backup_before_stop_first_update_then_restore(host: Host) -> None:
    host.write(DB.replace("BACKUP", TAR_HOOK))
    assert host.cli("apply").returncode == 0
    write_sentinel(host, "precious-1")
    host.write(swap(DB.replace("BACKUP", TAR_HOOK), 'APP_VERSION: "1.0"', 'APP_VERSION: "1.1"'))
    plan = host.cli("plan")
    assert "* backup db from" in plan.stdout, plan.stdout
    started = time.monotonic()
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"\napply with backup (stop-first update): {time.monotonic() - started:.2f}s")
    (entry,) = listed(host)
    assert entry["checksum_ok"] is True and entry["kind"] == "dump"
    assert int(str(entry["size"])) > 0
    directory = host.state / "backups" / host.project / "db"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / str(entry["file"])).st_mode) == 0o600
    # the data is lost ...
    docker("exec", db_id(host), "rm", "-f", "/data/sentinel")
    assert sentinel(host) == ""
    # ... and restored through the hook
    started = time.monotonic()
    res = host.cli("restore", "db")
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"restore (dump hook): {time.monotonic() - started:.2f}s; {res.stdout.strip()}")
    assert sentinel(host) == "precious-1"
    assert "precious" not in res.stdout + res.stderr  # never prints backup content


def test_volume_copy_with_retention_and_restore(host: Host) -> None:
    spec = DB.replace("BACKUP", "backup: {volumes: true, keep: 2}")
    host.write(spec)
    assert host.cli("apply").returncode == 0
    write_sentinel(host, "precious-2")
    took = []
    for version in ("1.1", "1.2", "1.3"):
        host.write(swap(spec, 'APP_VERSION: "1.0"', f'APP_VERSION: "{version}"'))
        started = time.monotonic()
        res = host.cli("apply")
        took.append(time.monotonic() - started)
        assert res.returncode == 0, res.stdout + res.stderr
        time.sleep(1.1)  # backup names have second resolution
    entries = listed(host)
    assert len(entries) == 2, entries  # keep: 2
    assert all(e["checksum_ok"] and e["kind"] == "volumes" for e in entries)
    files = sorted(p.name for p in (host.state / "backups" / host.project / "db").iterdir()
                   if not p.name.startswith("."))
    assert len(files) == 3  # two backups + manifest.json
    # no helper container is left behind
    assert docker("ps", "-aq", "--filter",
                  f"label=reconciler.backup-helper={host.project}").split() == []
    docker("exec", db_id(host), "rm", "-f", "/data/sentinel")
    before = db_id(host)
    started = time.monotonic()
    res = host.cli("restore", "db")
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"\napplies with volume backup: {', '.join(f'{t:.2f}s' for t in took)}; "
          f"restore (volume copy, stop + copy + start + health): "
          f"{time.monotonic() - started:.2f}s; {res.stdout.strip()}")
    assert db_id(host) == before  # the same container, stopped and started again
    assert sentinel(host) == "precious-2"


@pytest.mark.parametrize("hook", [
    'backup: {command: ["sh", "-c", "exit 3"]}',  # fails
    'backup: {command: ["true"]}',  # succeeds with nothing
])
def test_failed_or_empty_backup_fails_the_rollout_before_anything_is_touched(
        host: Host, hook: str) -> None:
    host.write(DB.replace("BACKUP", hook))
    assert host.cli("apply").returncode == 0
    before = host.ids()
    host.write(swap(DB.replace("BACKUP", hook), 'APP_VERSION: "1.0"', 'APP_VERSION: "1.1"'))
    with host.watch("create", "kill", "stop", "die", "destroy") as events:
        res = host.cli("apply")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "backup" in (res.stdout + res.stderr)
    assert host.ids() == before
    assert all(c["State"]["Running"] for c in host.containers())
    assert events == []  # no container was created, stopped or removed
    assert listed(host) == []
    leftovers = list((host.state / "backups" / host.project / "db").iterdir())
    assert [p.name for p in leftovers if p.name.endswith(".partial")] == []
