"""Reading host files the spec points at without being led astray: by real path, regular
files only, bounded.

A FIFO, socket or device is refused by its `lstat`, never opened (opening a FIFO blocks, a
device may have side effects); a symlink is never followed where the caller asked for the
file itself (`O_NOFOLLOW`); a read stops at its byte limit. Reads and stats only: no
Docker, no writes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1024 * 1024


class Refused(OSError):
    """The path is not something we read: `reason` says why, in words (no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.strerror = reason


def kind(mode: int) -> str:
    """`a FIFO`, `a socket`, ... for a file type (as shown in refusals)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """An fd on `path` when it is a regular file (not a symlink): checked by `lstat` before
    opening, and by `fstat` after (the file was not swapped in between)."""
    before = os.lstat(path)
    if not stat.S_ISREG(before.st_mode):
        raise Refused(f"is {kind(before.st_mode)}, not a regular file")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: swapped for a symlink since the lstat
            raise Refused("is a symlink, not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise Refused("changed while it was opened")
    return fd, st


def read_regular(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (else `Refused`)."""
    return read_regular_stat(path, limit=limit)[0]


def read_regular_stat(path: str | os.PathLike[str], *,
                      limit: int) -> tuple[bytes, os.stat_result]:
    """`read_regular`, with the `fstat` of what was read (mode, owner)."""
    fd, st = open_regular(path)
    try:
        if st.st_size > limit:
            raise Refused(f"is larger than {limit} bytes")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise Refused(f"is larger than {limit} bytes")
        return data, st
    finally:
        os.close(fd)


def hash_regular(path: str | os.PathLike[str], update: Callable[[bytes], object], *,
                 budget: int) -> int:
    """Feed a regular file to `update` (a hash's `update`) in chunks; returns the bytes read.
    Raises `Refused` once more than `budget` bytes would be read."""
    fd, st = open_regular(path)
    try:
        if st.st_size > budget:
            raise Refused(f"is larger than the {budget} bytes left to fingerprint")
        total = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return total
            total += len(chunk)
            if total > budget:
                raise Refused(f"is larger than the {budget} bytes left to fingerprint")
            update(chunk)
    finally:
        os.close(fd)


def inside(path: str, root: str) -> bool:
    """`path` is `root` or below it (both absolute and normalised; `/` contains everything)."""
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def loose_dirs(path: str, root: str) -> list[str]:
    """The directories from `root` down to `path`'s parent (both real paths) that are group-
    or world-writable: someone else could swap a file on the way."""
    out = []
    parent = os.path.dirname(path)
    chain: list[str] = []
    while inside(parent, root):
        chain.append(parent)
        if parent == root or parent == "/":
            break
        parent = os.path.dirname(parent)
    for directory in reversed(chain):
        try:
            st = os.stat(directory)
        except OSError:
            continue
        if st.st_mode & 0o022:
            out.append(directory)
    return out



def read_regular_file(path: str | os.PathLike[str], limit: int, *,
                      follow: bool = False) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or `Refused` with a short,
    content-free reason (missing, unreadable, a symlink when `follow` is False, a FIFO, a
    device, a socket, too large). `follow=True` reads the file a symlink resolves to; callers
    confine that real path first."""
    target = os.path.realpath(path) if follow else path
    try:
        return read_regular(target, limit=limit)
    except Refused:
        raise
    except FileNotFoundError:
        raise Refused("file not found") from None
    except OSError as exc:
        raise Refused(f"cannot read: {exc.strerror or 'unreadable'}") from None
