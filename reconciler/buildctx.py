"""Build contexts read from the spec checkout: confined, bounded, hashed, archived.

The context directory and the Dockerfile must resolve (real path, every symlink followed)
inside the spec checkout, like bind-mount sources; `.git` is never read nor sent; a FIFO,
socket or device is refused by name and never opened; a symlink is sent as a link, and only
when it points inside the checkout; `.dockerignore` is honoured; the whole context is
bounded in files and bytes. One walk serves both the loader (the content digest that names
the image) and the build (the tar archive sent to the engine, hashed again as it is written:
a context that changed since the spec was loaded fails the build instead of running an
image under another content's name). Reads files only; never talks to Docker.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO

from reconciler import hostfiles
from reconciler.core.builds import (
    OUTSIDE_DOCKERFILE,
    BuildContext,
    IgnoreRule,
    finish_digest,
    ignored,
    image_ref,
    may_hold_exceptions,
    parse_dockerignore,
)
from reconciler.core.specs import Build

MAX_CONTEXT_BYTES = 256 * 1024 * 1024  # all regular files of one context
MAX_CONTEXT_FILES = 20_000
MAX_DOCKERFILE_BYTES = 1024 * 1024
MAX_DOCKERIGNORE_BYTES = 256 * 1024
_CHUNK = 1024 * 1024


class BuildRefused(Exception):
    """The build context cannot be used: `reason` says why, in words (never content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_OUTSIDE = ("outside the spec checkout (the spec directory, or the git repository holding "
            "it) or into its .git: refused")


def _confined(path: str, roots: Sequence[str], forbidden: Sequence[str]) -> bool:
    return (any(hostfiles.inside(path, r) for r in roots)
            and not any(hostfiles.inside(path, f) for f in forbidden))


def resolve(spec_dir: str, build: Build, *, roots: Sequence[str],
            forbidden: Sequence[str]) -> tuple[str, str, str]:
    """(context, Dockerfile, the Dockerfile's name in the archive), as real paths inside
    the spec checkout. The Dockerfile is relative to the context, as in compose."""
    written = os.path.join(spec_dir, os.path.expanduser(build.context))
    context = os.path.realpath(written)
    if not _confined(context, roots, forbidden):
        raise BuildRefused(f"build context {build.context!r} resolves to {context}, "
                           + _OUTSIDE)
    try:
        st = os.stat(context)
    except OSError:
        raise BuildRefused(f"build context {build.context!r} ({context}) does not exist") \
            from None
    if not stat.S_ISDIR(st.st_mode):
        raise BuildRefused(f"build context {build.context!r} is {hostfiles.kind(st.st_mode)}, "
                           "not a directory")
    dockerfile = os.path.realpath(os.path.join(written, build.dockerfile))
    if not _confined(dockerfile, roots, forbidden):
        raise BuildRefused(f"dockerfile {build.dockerfile!r} resolves to {dockerfile}, "
                           + _OUTSIDE)
    if hostfiles.inside(dockerfile, context) and dockerfile != context:
        name = os.path.relpath(dockerfile, context).replace(os.sep, "/")
    else:
        name = OUTSIDE_DOCKERFILE
    return context, dockerfile, name


def _read_dockerfile(path: str, shown: str) -> bytes:
    try:
        return hostfiles.read_regular_file(path, MAX_DOCKERFILE_BYTES)
    except hostfiles.Refused as exc:
        raise BuildRefused(f"dockerfile {shown!r} ({path}): {exc.reason}") from None


def _rules(context: str) -> tuple[IgnoreRule, ...]:
    path = os.path.join(context, ".dockerignore")
    if not os.path.lexists(path):
        return ()
    try:
        data = hostfiles.read_regular_file(path, MAX_DOCKERIGNORE_BYTES)
    except hostfiles.Refused as exc:
        raise BuildRefused(f"{path}: {exc.reason}") from None
    return parse_dockerignore(data.decode("utf-8", "replace"))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_at(dir_fd: int, name: str) -> tuple[int, os.stat_result]:
    """An fd on the regular file `name` in `dir_fd` (not a symlink: `O_NOFOLLOW`), checked by
    `lstat` before and `fstat` after opening, as `hostfiles.open_regular` does by path."""
    before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(before.st_mode):
        raise hostfiles.Refused(f"is {hostfiles.kind(before.st_mode)}, not a regular file")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise hostfiles.Refused("changed while it was opened")
    return fd, st


class _Hashing:
    """A file object over an fd that feeds what is read to a hash (tarfile reads it)."""

    def __init__(self, fd: int, update: Callable[[bytes], object]) -> None:
        self.fd, self.update = fd, update

    def read(self, n: int = -1) -> bytes:
        chunk = os.read(self.fd, _CHUNK if n < 0 else min(n, _CHUNK))
        self.update(chunk)
        return chunk


def walk(context: str, dockerfile: str, dockerfile_name: str, *, roots: Sequence[str],
         forbidden: Sequence[str], withheld: Collection[str] = (),
         tar: tarfile.TarFile | None = None) -> tuple[str, tuple[str, ...]]:
    """The digest of what is sent from `context` (sorted walk; names, file modes, contents
    and link targets) and the host paths of the files and links sent, adding each entry to
    `tar` when given. `withheld`: real paths never sent (the spec's env files): one in the
    context is refused unless `.dockerignore` leaves it out. Raises `BuildRefused`."""
    rules = _rules(context)
    h = hashlib.sha256()
    sent: list[str] = []
    budget = [MAX_CONTEXT_BYTES, MAX_CONTEXT_FILES]

    def count(size: int, rel: str) -> None:
        budget[0] -= size
        budget[1] -= 1
        if budget[0] < 0:
            raise BuildRefused(
                f"build context {context} holds more than "
                f"{MAX_CONTEXT_BYTES // (1024 * 1024)} MiB (at {rel}): refused; leave out "
                "what the build does not need with a .dockerignore")
        if budget[1] < 0:
            raise BuildRefused(f"build context {context} holds more than {MAX_CONTEXT_FILES} "
                               "files: refused; leave out what the build does not need with "
                               "a .dockerignore")

    def add_file(rel: str, path: str, opened: tuple[int, os.stat_result]) -> None:
        fd, st = opened
        try:
            count(st.st_size, rel)
            sent.append(path)
            mode = stat.S_IMODE(st.st_mode)
            h.update(f"\0file {rel} {mode:o} {st.st_size}\0".encode())
            reader = _Hashing(fd, h.update)
            if tar is None:
                while reader.read(_CHUNK):
                    pass
                return
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = st.st_size, mode, int(st.st_mtime)
            try:
                tar.addfile(info, reader)
            except OSError:
                raise BuildRefused(f"build context {context}: {rel} changed while it was "
                                   "read: build again") from None
        finally:
            os.close(fd)

    def refused(rel: str, exc: OSError) -> BuildRefused:
        if isinstance(exc, hostfiles.Refused):
            return BuildRefused(f"build context {context}: {rel or '.'} {exc.reason}")
        return BuildRefused(f"build context {context}: {rel or '.'}: "
                            f"{exc.strerror or 'unreadable'}")

    def visit(dir_fd: int, prefix: str) -> None:
        # by directory fd, never by path: a directory swapped for a symlink after it was
        # looked at is not followed (O_NOFOLLOW on every step down)
        try:
            entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
        except OSError as exc:
            raise refused(prefix.rstrip("/"), exc) from None
        for entry in entries:
            rel = prefix + entry.name
            path = os.path.join(context, rel)
            if entry.name == ".git":
                continue  # never read, never sent (remote URL, credentials)
            st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if rel == dockerfile_name:
                continue  # added once, below, even when .dockerignore leaves it out
            skip = ignored(rules, rel)
            if skip and not (is_dir and may_hold_exceptions(rules, rel)):
                continue
            if is_dir:
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    raise refused(rel, exc) from None
                try:
                    if not skip:
                        count(0, rel)
                        h.update(f"\0dir {rel}".encode())
                        if tar is not None:
                            info = tarfile.TarInfo(rel)
                            info.type, info.mode = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode)
                            info.mtime = int(st.st_mtime)
                            tar.addfile(info)
                    visit(sub, rel + "/")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                if os.path.realpath(path) in withheld:
                    raise BuildRefused(f"build context {context}: {rel} is an env file of the "
                                       "spec (secrets): it is never sent to a build; leave it "
                                       "out with a .dockerignore")
                try:
                    opened = _open_at(dir_fd, entry.name)
                except OSError as exc:
                    raise refused(rel, exc) from None
                add_file(rel, path, opened)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.name, dir_fd=dir_fd)
                real = os.path.realpath(path)
                if not _confined(real, roots, forbidden):
                    raise BuildRefused(f"build context {context}: {rel} is a symlink to {real}, "
                                       + _OUTSIDE)
                count(0, rel)
                sent.append(path)
                h.update(f"\0link {rel}\0{target}".encode())
                if tar is not None:
                    info = tarfile.TarInfo(rel)
                    info.type, info.linkname = tarfile.SYMTYPE, target
                    tar.addfile(info)
            else:
                raise BuildRefused(f"build context {context}: {rel} is "
                                   f"{hostfiles.kind(st.st_mode)}: only regular files, "
                                   "directories and symlinks are sent (never opened)")

    try:
        top = os.open(context, _DIR_FLAGS)
    except OSError as exc:
        raise refused("", exc) from None
    try:
        visit(top, "")
    finally:
        os.close(top)
    try:
        opened = hostfiles.open_regular(dockerfile)
    except OSError as exc:
        raise BuildRefused(f"dockerfile {dockerfile}: "
                           + (exc.reason if isinstance(exc, hostfiles.Refused)
                              else exc.strerror or "unreadable")) from None
    add_file(dockerfile_name, dockerfile, opened)
    if os.path.lexists(os.path.join(context, ".dockerignore")):
        sent.append(os.path.join(context, ".dockerignore"))
    return h.hexdigest(), tuple(sent)


def prepare(project: str, service: str, spec_dir: str, build: Build, *, image: str,
            roots: Sequence[str], forbidden: Sequence[str],
            withheld: Collection[str] = ()) -> BuildContext:
    """Resolve, check and hash one service's build (the loader's part). `image`: the
    service's `image:` (one more tag of the built image), or ""."""
    context, dockerfile, name = resolve(spec_dir, build, roots=roots, forbidden=forbidden)
    content = _read_dockerfile(dockerfile, build.dockerfile)
    files, sent = walk(context, dockerfile, name, roots=roots, forbidden=forbidden,
                       withheld=withheld)
    digest = finish_digest(files, name, content, build.args, build.target)
    return BuildContext(
        service=service, context=context, dockerfile=dockerfile, dockerfile_name=name,
        args=tuple(sorted(build.args.items())), target=build.target, digest=digest,
        ref=image_ref(project, service, digest), tags=(image,) if image.strip() else (),
        roots=tuple(roots), forbidden=tuple(forbidden), files=sent,
        withheld=tuple(sorted(withheld)),
    )


def write_archive(ctx: BuildContext, out: IO[bytes]) -> None:
    """Write the context of `ctx` to `out` as a tar archive; `BuildRefused` when what was
    read is no longer what the loader hashed (the context changed: load again)."""
    content = _read_dockerfile(ctx.dockerfile, ctx.dockerfile_name)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files, _ = walk(ctx.context, ctx.dockerfile, ctx.dockerfile_name, roots=ctx.roots,
                     forbidden=ctx.forbidden, withheld=ctx.withheld, tar=tar)
    args: Mapping[str, str] = dict(ctx.args)
    if finish_digest(files, ctx.dockerfile_name, content, args, ctx.target) != ctx.digest:
        raise BuildRefused(f"build context {ctx.context} changed since the spec was read: "
                           "the next pass builds it under its new name")
