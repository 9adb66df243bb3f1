"""A full disk under the state dir (a small tmpfs mounted for the test): the apply fails
cleanly before it touches a container, no state file is torn, the previous last-good stays
readable, and once there is room again the next apply converges. Also: a write that hits
ENOSPC leaves the old file intact (atomic write)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.persistence import HistoryEntry, State, StateError
from tests.dockerkit import Host
from tests.faults import kit


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True,
                              check=False).returncode == 0:
                break
            time.sleep(0.2)


def fill(directory: Path) -> int:
    """Fill the filesystem of `directory` until ENOSPC; returns the bytes written."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written
    finally:
        os.close(fd)


def test_enospc_never_tears_a_state_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "128k") as root:
        state = State(root)
        state.key(create=True)
        entry = HistoryEntry(at=1.0, kind="apply", result="converged", fingerprint="f" * 12,
                             revision=None, duration_s=1.0)
        state.append_history(entry)
        state.quarantine("a" * 12, revision=None, reason="r", now=1.0)
        before = {p.name: p.read_bytes() for p in root.iterdir()}
        fill(root)
        with pytest.raises(StateError):
            state.append_history(entry)
        with pytest.raises(StateError):
            state.quarantine("b" * 12, revision=None, reason="r" * 5000, now=2.0)
        with pytest.raises(StateError, match="full"):
            state.ensure_room()
        after = {p.name: p.read_bytes() for p in root.iterdir() if p.name != "filler"}
        assert after == before  # nothing torn, nothing half-written, no temp file left
        assert state.history() == [entry]


@pytest.mark.docker
def test_disk_full_state_dir_fails_cleanly_before_touching_containers(host: Host) -> None:
    figures = kit.Figures("disk full")
    with tmpfs(host.state, "1m"):
        kit.write_stack(host, kit.DUO)
        first = kit.cli(host, "apply")
        assert first.returncode == 0, first.stdout + first.stderr
        good = json.loads((host.state / "last-good.json").read_text())
        before = host.ids()
        filled = fill(host.state)
        kit.write_stack(host, kit.version(kit.DUO, "web", "2"))
        with host.watch("create", "start", "kill", "stop", "die", "destroy") as events:
            res = kit.cli(host, "apply")
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "state dir" in out and "full" in out and "Traceback" not in out, out
        assert events == [] and host.ids() == before  # failed before touching containers
        assert kit.state_consistent(host.state) == []
        assert json.loads((host.state / "last-good.json").read_text()) == good
        history = kit.cli(host, "history")
        assert history.returncode == 0 and "converged" in history.stdout
        figures.trial(True, 0.0)
        # room again: the next apply converges
        (host.state / "filler").unlink()
        t0 = time.monotonic()
        again = kit.cli(host, "apply")
        assert again.returncode == 0, again.stdout + again.stderr
        figures.trial(True, time.monotonic() - t0)
        assert "APP_VERSION=2" in host.by_service()["web"][0]["Config"]["Env"]
        assert kit.state_consistent(host.state) == []
        kit.record_host(host)
    figures.notes.append(f"tmpfs 1 MiB filled with {filled // 1024} KiB; the apply refused "
                         "before any engine write, last-good intact; converged after cleanup")
    figures.show()
