"""Secrets and configs on the host: the files the containers bind-mount read-only (shell).

Each service generation gets `<state>/files/<project>/<service>-<fingerprint>/` (directories
0700, owned by the reconciler's user: no one else on the host can reach them), holding one
file per secret or config with the mode (and owner, when the spec gives uid/gid) that the
container must see. Why files bind-mounted read-only rather than copied into the container
before start (`put_archive`):
- read-only in the container, as compose mounts them; a copy is writable by root in it;
- works with `read_only: true` (the engine refuses archive uploads to a read-only rootfs) and
  with a tmpfs over /run (which would hide a copy);
- the content never enters the container's writable layer, so `docker commit`/`export` of
  the container does not carry it, and `docker inspect` shows only the host path.
The content is written once per generation (its directory name carries the fingerprint, which
covers the content), through a fresh temp file renamed into place; directories of
generations that no container and no desired service uses any more are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Collection
from pathlib import Path

from reconciler.core.desired import DesiredService, FileMount
from reconciler.execute import FilesHook

_GENERATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{6,64}$")


class FileStoreError(ValueError):
    """A secret or config could not be written (the message names the file, never data)."""


def files_dir(state_root: Path) -> Path:
    """Where every project's secrets and configs live under the state dir."""
    return state_root / "files"


class FileStore(FilesHook):
    """Writes the secrets and configs of a service generation before its container is
    created, and prunes generations nothing uses."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def materialise(self, svc: DesiredService) -> None:
        """Every file of `svc` present with its content, mode and owner (idempotent)."""
        for mount in svc.files:
            self._write(mount)

    def _write(self, mount: FileMount) -> None:
        what = f"{mount.kind[:-1]} {mount.name}"
        if mount.data is None:
            raise FileStoreError(f"{what}: its content could not be read")
        target = Path(mount.host_path)
        root = os.path.realpath(self.root)
        if os.path.commonpath([os.path.realpath(target.parent), root]) != root \
                or target.parent.parent.parent != Path(self.root):
            raise FileStoreError(f"{what}: {target} is outside the files directory "
                                 f"{self.root}")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self.root, target.parent.parent, target.parent):
            directory.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode):
                raise FileStoreError(f"{what}: {directory} is not a directory")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(directory, 0o700)
        if self._current(target, mount):
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(mount.data)
                handle.flush()
                if mount.uid is not None or mount.gid is not None:
                    try:
                        os.fchown(handle.fileno(), -1 if mount.uid is None else mount.uid,
                                  -1 if mount.gid is None else mount.gid)
                    except PermissionError:
                        raise FileStoreError(
                            f"{what}: uid/gid {mount.uid}:{mount.gid} need the reconciler to "
                            "run as root (or leave them out)") from None
                os.fchmod(handle.fileno(), mount.mode)
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _current(target: Path, mount: FileMount) -> bool:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mount.mode:
            return False
        if (mount.uid is not None and st.st_uid != mount.uid) or (
                mount.gid is not None and st.st_gid != mount.gid):
            return False
        if st.st_size != len(mount.data or b""):
            return False
        with open(target, "rb") as handle:  # lstat said: a regular file, not a link
            return handle.read(len(mount.data or b"") + 1) == mount.data

    def prune(self, project: str, keep: Collection[str]) -> list[str]:
        """Remove the generation directories of `project` not named in `keep`
        (`<service>-<fingerprint>`); returns the removed names."""
        directory = self.root / project
        try:
            entries = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        removed = []
        for name in entries:
            path = directory / name
            if name in keep or not _GENERATION.match(name) or path.is_symlink() \
                    or not path.is_dir():
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        return removed
