"""Staged copies of the spec files the edge mounts, and the record of the config it serves.

The edge does not mount its config files from the spec checkout: a single-file bind mount
pins the file's inode, and a `git checkout`/`git pull` replaces a file by writing a new one
and renaming it, which such a mount never sees. The edge mounts copies in the state dir
instead, and this module keeps them equal to the spec: a staged file is rewritten in place
(same inode, so the running container sees the new bytes); a staged directory gets its
files replaced atomically (a directory mount sees renames inside it). A `Staged` value holds
what the copies held before, so a config that fails `nginx -t` is put back.

`applied.json` records, per edge container id, the config digest a graceful reload applied
after the container was created (its `reconciler.config-digest` label says what it was
created with; labels cannot change).

Shell (file I/O only): it never talks to the engine and decides nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler import hostfiles
from reconciler.persistence import StateError, atomic_write, read_state_file

APPLIED = "applied.json"
MOUNTS = "mounts"
MAX_FILE_BYTES = 64 << 20  # one staged file (the load's digest budget bounds the total)


def conf_dir(state_dir: Path, project: str) -> Path:
    """The edge's staged config (`mounts/`) and its `applied.json`."""
    return state_dir / "edge-conf" / project


# a staged path's former content: file bytes and mode, or {relative path: entry} of a tree
# (an entry: ("file", mode, bytes) or ("link", 0, target bytes)); None: it did not exist
Entry = tuple[str, int, bytes]
Former = Entry | dict[str, Entry] | None


@dataclass(frozen=True, slots=True)
class Staged:
    """What the staged copies held before a `stage` call (to put them back)."""

    former: tuple[tuple[str, Former], ...]


def _tree(root: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames
                                        if os.path.islink(os.path.join(dirpath, d))]):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.fsencode(os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_mode & 0o777,
                            hostfiles.read_regular(full, limit=MAX_FILE_BYTES))
    return out


def _read(path: Path) -> Former:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return _tree(path)
    # a regular file only (never a FIFO, device or symlink, even one swapped in since the load)
    return ("file", st.st_mode & 0o777, hostfiles.read_regular(path, limit=MAX_FILE_BYTES))


def _overwrite(path: Path, data: bytes, mode: int) -> None:
    """Rewrite a file in place (the same inode: a single-file bind mount sees it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    try:
        if os.fstat(fd).st_size == len(data) and os.pread(fd, len(data), 0) == data:
            return
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(root: Path, wanted: Mapping[str, Entry]) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    have = _tree(root)
    for rel, entry in sorted(wanted.items()):
        if have.get(rel) == entry:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        kind, mode, data = entry
        if kind == "link":
            tmp = path.with_name(f".{path.name}.link.tmp")
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(os.fsdecode(data), tmp)
            os.replace(tmp, path)
        else:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            atomic_write(path, data, mode=mode)
    for rel in sorted(set(have) - set(wanted), reverse=True):
        (root / rel).unlink(missing_ok=True)


def _put(path: Path, content: Former, *, fresh: bool) -> None:
    """Make `path` hold `content`. A file stays the same inode unless `fresh` (no running
    container mounts it yet) and its kind changed."""
    current = _read(path)
    if content is None:
        return  # never delete a staged copy a container may mount
    if isinstance(content, dict) != isinstance(current, dict) and current is not None:
        if not fresh:
            raise StateError(f"{path}: a mounted file became a directory (or the other way "
                             "round); the edge must be recreated")
        if isinstance(current, dict):
            shutil.rmtree(path)
        else:
            path.unlink()
    if isinstance(content, dict):
        _write_tree(path, content)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        _overwrite(path, content[2], content[1])


def stage(pairs: Iterable[tuple[str, str]], *, fresh: bool = False) -> Staged:
    """Copy each spec source to its staged path (see the module doc); returns what the
    staged paths held before. `fresh`: for a container about to be created."""
    pairs = list(pairs)
    former: list[tuple[str, Former]] = []
    try:
        for _, target in pairs:
            former.append((target, _read(Path(target))))
        for source, target in pairs:
            # the source's real path was confined to the checkout by the load: a symlink
            # inside it (nginx.conf -> conf/prod.conf) stages the file it names
            content = _read(Path(os.path.realpath(source)))
            if content is None:
                raise StateError(f"{source}: the mounted spec file is gone")
            _put(Path(target), content, fresh=fresh)
    except OSError as exc:
        raise StateError(f"cannot stage the edge config: {exc}") from None
    return Staged(tuple(former))


def restore(staged: Staged) -> None:
    """Put the staged copies back as `stage` found them."""
    try:
        for target, content in staged.former:
            _put(Path(target), content, fresh=False)
    except OSError as exc:
        raise StateError(f"cannot restore the edge config: {exc}") from None


def read_applied(directory: Path) -> dict[str, str]:
    """Container id -> the config digest a reload applied ({} when none or unreadable)."""
    try:
        data = json.loads(read_state_file(directory / APPLIED))
    except (OSError, StateError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def record_applied(directory: Path, container_id: str, digest: str, *,
                   alive: Iterable[str] = ()) -> None:
    """Record the digest a reload applied to a container (entries of containers not in
    `alive` are dropped, so the file never grows)."""
    keep = set(alive) | {container_id}
    data = {k: v for k, v in read_applied(directory).items() if k in keep}
    data[container_id] = digest
    atomic_write(directory / APPLIED, json.dumps(data, sort_keys=True).encode(), mode=0o600)
