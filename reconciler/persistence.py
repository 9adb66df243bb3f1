"""The state dir: host key, last-good spec, history, quarantine and the host lock.

Every write is atomic (temp file in the same dir, fsync, rename, fsync of the dir); a torn or
empty state file is detected (`StateCorrupt`) and never taken for an empty state. Nothing
here decides what to deploy: `rollback` and `controller` do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler import hostfiles
from reconciler.faults import crash_point

KEY_FILE = "host.key"
LAST_GOOD = "last-good.json"
HISTORY = "history.jsonl"
QUARANTINE = "quarantine.json"
DEGRADED = "degraded.json"  # first deploy: services that failed, and who waits on them
REVISIONS = "revisions"
LOCK = "lock"
KEY_BYTES = 32
HISTORY_KEEP = 500
REVISIONS_KEEP = 20
ROOM_BYTES = 256 * 1024  # headroom a pass needs besides a history rewrite and a spec copy
MAX_STATE_FILE_BYTES = 64 * 1024 * 1024


class StateError(Exception):
    """The state dir cannot be used (permissions, disk full, held lock)."""


class SpecChanged(StateError):
    """The spec files changed between load and record: the copy would not be what ran."""


class StateCorrupt(StateError):
    """A state file exists but is torn, empty or not what we wrote."""


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/reconciler")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "reconciler"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(f"cannot write {path}: {exc.strerror}") from None


def read_state_file(path: Path) -> bytes:
    """A state file's bytes, never through a symlink (`FileNotFoundError` when absent)."""
    try:
        return hostfiles.read_regular(path, limit=MAX_STATE_FILE_BYTES)
    except FileNotFoundError:
        raise
    except hostfiles.Refused as exc:
        raise StateError(f"refusing {path}: it {exc.reason}") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None


def check_state_dir(root: Path) -> None:
    """The state dir holds the host key and decides what runs: refuse one that another user
    owns or that others can write (they could plant a key, a lock link, a last-good)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"cannot use the state dir {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"the state dir {root} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateError(f"the state dir {root} is owned by uid {st.st_uid}, not by the user "
                         f"running reconciler (uid {os.geteuid()}): refused")
    if st.st_mode & 0o022:
        raise StateError(f"the state dir {root} has mode {stat.S_IMODE(st.st_mode):04o}: it "
                         "must not be group- or world-writable (chmod 0700)")


def _read_json(path: Path) -> Any:
    try:
        raw = read_state_file(path)
    except FileNotFoundError:
        return None
    if not raw.strip():
        raise StateCorrupt(f"{path} is empty (torn write?)")
    try:
        return json.loads(raw)
    except ValueError:
        raise StateCorrupt(f"{path} is not valid JSON (torn write?)") from None


def read_key(state_dir: Path) -> bytes | None:
    """The per-host HMAC key, or None when this host never applied anything."""
    check_state_dir(state_dir)
    try:
        raw = read_state_file(state_dir / KEY_FILE)
    except FileNotFoundError:
        return None
    if len(raw) != KEY_BYTES:
        raise StateCorrupt(f"{state_dir / KEY_FILE} is {len(raw)} bytes, expected {KEY_BYTES}")
    return raw


def ensure_key(state_dir: Path) -> bytes:
    key = read_key(state_dir)
    if key is None:
        key = secrets.token_bytes(KEY_BYTES)
        crash_point("state-key:before")
        atomic_write(state_dir / KEY_FILE, key)
        crash_point("state-key:after")
    return key


@dataclass(frozen=True, slots=True)
class GoodRevision:
    """A spec that converged: its files are kept so the host can go back to it."""

    fingerprint: str  # LoadedSpec.fingerprint
    revision: str | None  # git commit when known
    directory: str  # snapshot of the spec files in the state dir
    recorded_at: float
    source: str = ""  # the spec dir it came from
    root: str = ""  # the copy's root (bind sources resolve inside it)

    @property
    def label(self) -> str:
        return (self.revision or self.fingerprint)[:12]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: float
    kind: str  # apply | revert | rollback
    result: str  # converged | rolled_back | failed | noop | quarantined | invalid_spec
    fingerprint: str
    revision: str | None
    duration_s: float
    steps: int = 0
    message: str = ""
    failed_steps: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # job service -> exit code of its run
    notes: list[str] = field(default_factory=list)  # e.g. a backup a revert went on without


class State:
    """Access to one state dir. Use `lock()` around anything that acts on the host."""

    def __init__(self, root: Path) -> None:
        # absolute: paths under it are bind-mounted into containers (the edge's upstreams)
        self.root = Path(os.path.abspath(root))

    # lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_state_dir(self.root)
        try:
            fd = os.open(self.root / LOCK,
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the lock {self.root / LOCK}: {exc.strerror}"
                             + (" (a symlink: refused)" if exc.errno == 40 else "")) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"the lock {self.root / LOCK} is not a regular file: refused")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise StateError(f"another reconciler holds {self.root / LOCK}"
                                 + (f" (pid {holder})" if holder else "")) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def ensure_room(self, *, extra: int = 0) -> None:
        """Raise `StateError` when the state dir could not record what a pass is about to do
        (a full disk): checked before anything is changed on the host."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            st = os.statvfs(self.root)
            history = (self.root / HISTORY).stat().st_size if (
                self.root / HISTORY).exists() else 0
        except OSError as exc:
            raise StateError(f"cannot use the state dir {self.root}: {exc.strerror}") from None
        free, need = st.f_bavail * st.f_frsize, ROOM_BYTES + extra + history
        if free < need or (st.f_files and st.f_favail < 64):
            raise StateError(f"the state dir {self.root} is full ({free // 1024} KiB, "
                             f"{st.f_favail} inodes free; a pass needs about {need // 1024} "
                             "KiB): nothing was changed on the host")

    # key ---------------------------------------------------------------------------------
    def key(self, *, create: bool) -> bytes | None:
        return ensure_key(self.root) if create else read_key(self.root)

    # last-good ---------------------------------------------------------------------------
    def last_good(self) -> GoodRevision | None:
        data = _read_json(self.root / LAST_GOOD)
        if data is None:
            return None
        try:
            good = GoodRevision(**data)
        except TypeError:
            raise StateCorrupt(f"{self.root / LAST_GOOD} has unexpected content") from None
        if not Path(good.directory).is_dir():
            raise StateCorrupt(f"last-good spec copy {good.directory} is missing")
        return good

    def record_good(self, *, root: Path, spec_dir: Path, paths: list[str], fingerprint: str,
                    revision: str | None, now: float,
                    digests: dict[str, str] | None = None) -> GoodRevision:
        """Keep a copy of the spec files and the files they bind-mount (at the same places
        relative to `root`) and point last-good at it. `digests` (path -> sha256 as loaded):
        a copied file that no longer matches raises `SpecChanged` (a git pull or an edit
        landed during the pass) and nothing is recorded."""
        crash_point("state-last-good:before")
        target = self.root / REVISIONS / fingerprint
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=self._ensure(self.root / REVISIONS),
                                        prefix=f".{fingerprint}."))
            try:
                for name in paths:
                    rel = os.path.relpath(name, root)
                    if rel.startswith(".."):
                        continue
                    dest = tmp / "root" / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if Path(name).is_dir():
                        shutil.copytree(name, dest, symlinks=True, dirs_exist_ok=True)
                    elif Path(name).exists():
                        shutil.copy2(name, dest)
                        want = (digests or {}).get(name)
                        if want and hashlib.sha256(dest.read_bytes()).hexdigest() != want:
                            shutil.rmtree(tmp, ignore_errors=True)
                            raise SpecChanged(f"{name} changed during the pass; last-good "
                                              "stays where it was")
                os.replace(tmp, target)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StateError(f"cannot keep the spec copy: {exc.strerror}") from None
        good = GoodRevision(fingerprint=fingerprint, revision=revision,
                            directory=str(target / "root" / os.path.relpath(spec_dir, root)),
                            recorded_at=now, source=str(spec_dir), root=str(target / "root"))
        atomic_write(target / "good.json", json.dumps(asdict(good)).encode())
        atomic_write(self.root / LAST_GOOD, json.dumps(asdict(good)).encode())
        crash_point("state-last-good:after")
        self._prune_revisions(keep=good)
        return good

    def good_revisions(self) -> list[GoodRevision]:
        """Every recorded good revision still kept, newest first (from the history)."""
        seen: dict[str, GoodRevision] = {}
        for entry in reversed(self.history()):
            if entry.result == "converged" and entry.fingerprint not in seen:
                kept = self.root / REVISIONS / entry.fingerprint / "good.json"
                if kept.is_file():
                    seen[entry.fingerprint] = GoodRevision(**json.loads(read_state_file(kept)))
        return list(seen.values())

    def _prune_revisions(self, *, keep: GoodRevision) -> None:
        base = self.root / REVISIONS
        dirs = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for old in dirs[REVISIONS_KEEP:]:
            if not keep.directory.startswith(str(old) + "/"):
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    # quarantine --------------------------------------------------------------------------
    def quarantined(self) -> dict[str, dict[str, Any]]:
        data = _read_json(self.root / QUARANTINE)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise StateCorrupt(f"{self.root / QUARANTINE} has unexpected content")
        return data

    def quarantine(self, fingerprint: str, *, revision: str | None, reason: str,
                   now: float) -> None:
        data = self.quarantined()
        data[fingerprint] = {"revision": revision, "reason": reason, "at": now}
        crash_point("state-quarantine:before")
        atomic_write(self.root / QUARANTINE, json.dumps(data, sort_keys=True).encode())
        crash_point("state-quarantine:after")

    # degraded (first deploy without last-good) ----------------------------------------------
    def degraded(self) -> dict[str, Any] | None:
        """`{"failed": [...], "waiting": {service: [failed...]}, "fingerprint", "at"}` while a
        first deploy runs degraded, else None."""
        data = _read_json(self.root / DEGRADED)
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("failed"), list):
            raise StateCorrupt(f"{self.root / DEGRADED} has unexpected content")
        return data

    def record_degraded(self, *, fingerprint: str, failed: list[str],
                        waiting: dict[str, list[str]], now: float) -> None:
        data = {"fingerprint": fingerprint, "failed": sorted(failed), "waiting": waiting,
                "at": now}
        atomic_write(self.root / DEGRADED, json.dumps(data, sort_keys=True).encode())

    def clear_degraded(self) -> None:
        (self.root / DEGRADED).unlink(missing_ok=True)

    # history -----------------------------------------------------------------------------
    def append_history(self, entry: HistoryEntry) -> None:
        entries = self.history()[-(HISTORY_KEEP - 1):]
        entries.append(entry)
        data = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in entries)
        crash_point("state-history:before")
        atomic_write(self.root / HISTORY, data.encode())
        crash_point("state-history:after")

    def history(self) -> list[HistoryEntry]:
        try:
            text = read_state_file(self.root / HISTORY).decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                out.append(HistoryEntry(**json.loads(line)))
            except (ValueError, TypeError):
                raise StateCorrupt(f"{self.root / HISTORY} has a torn line") from None
        return out
