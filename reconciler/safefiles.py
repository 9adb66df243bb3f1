"""Bounded reads of regular files: the one way the loader and the importer read a file the
spec (or a compose project) names.

`read_regular_file` opens without following a final symlink and without blocking (a FIFO
never hangs the reader), checks with `fstat` on the open descriptor that it is a regular file
(never a FIFO, a device or a socket) and reads at most `limit` bytes: a larger file is refused
before anything of it is held in memory. Errors are `UnsafeFile` with a short reason that
never contains any of the file's content.
"""

from __future__ import annotations

import os
import stat

__all__ = ["UnsafeFile", "kind_of", "read_regular_file"]


class UnsafeFile(Exception):
    """The file was refused or could not be read; `reason` is a short, content-free text."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def kind_of(mode: int) -> str:
    """A human name for a file type (`a FIFO`, `a directory`, ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike[str], limit: int, *,
                      follow: bool = False) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    `follow=False` (the default) refuses a symlink as the last component (`O_NOFOLLOW`);
    callers that accept links resolve and confine the path first and pass the real path.
    Raises `UnsafeFile` for a missing or unreadable file, a symlink, anything that is not a
    regular file, and a file larger than `limit` (checked on the open descriptor, then
    enforced while reading, so a file that grows meanwhile is refused too)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:  # look before opening: a FIFO or a device is refused without ever being opened
        pre = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise UnsafeFile("file not found") from None
    except OSError as exc:
        raise UnsafeFile(f"cannot read: {exc.strerror or 'unreadable'}") from None
    if stat.S_ISLNK(pre.st_mode):
        raise UnsafeFile("is a symlink (refused)")
    if not stat.S_ISREG(pre.st_mode):
        raise UnsafeFile(f"is {kind_of(pre.st_mode)}, not a regular file (refused)")
    if pre.st_size > limit:
        raise UnsafeFile(f"file is larger than {limit} bytes")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFile("file not found") from None
    except OSError as exc:
        if not follow and os.path.islink(path):
            raise UnsafeFile("is a symlink (refused)") from None
        raise UnsafeFile(f"cannot read: {exc.strerror or 'unreadable'}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"is {kind_of(st.st_mode)}, not a regular file (refused)")
        if st.st_size > limit:
            raise UnsafeFile(f"file is larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeFile(f"file is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise UnsafeFile(f"cannot read: {exc.strerror or 'unreadable'}") from None
    finally:
        os.close(fd)
