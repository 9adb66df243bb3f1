"""Reading the content of the spec's top-level `secrets` and `configs` (shell).

A `file` source is confined exactly like an env file: by real path inside the spec checkout
or the host's `env_file_roots` (anywhere else it is never opened), not a symlink, a regular
file (a FIFO or device is refused by its lstat, never opened), at most `MAX_CONTENT_BYTES`;
a secret file must also be unreadable by group and others, as env files are. An
`environment` source is a variable of the reconciler's own environment; `content` (configs
only) is the text in the spec. Findings name the file or the variable, never a value; a
preview (`strict=False`) only warns and plans with the fingerprint unknown.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from reconciler import hostfiles
from reconciler.core.model import FileContent
from reconciler.core.specs import FileSource, Finding, HostPolicy, Service, Spec

MAX_CONTENT_BYTES = 1024 * 1024  # one secret or config (Docker's own limit is ~500 KB-1 MB)
KINDS = ("secrets", "configs")


def used(services: Iterable[Service]) -> set[tuple[str, str]]:
    """The (kind, name) pairs the given services mount."""
    return {(kind, ref.source) for svc in services for kind in KINDS
            for ref in getattr(svc, kind)}


def read_all(spec: Spec, services: Mapping[str, Service], *, spec_dir: Path,
             roots: Sequence[str], policy: HostPolicy, strict: bool,
             environ: Mapping[str, str] | None = None,
             ) -> tuple[dict[tuple[str, str], FileContent], list[Finding]]:
    """The content of every secret and config an enabled service uses, and findings (keyed
    by the top-level definition's path)."""
    env = os.environ if environ is None else environ
    out: dict[tuple[str, str], FileContent] = {}
    findings: list[Finding] = []
    for kind, name in sorted(used(services.values())):
        source = getattr(spec, kind).get(name)
        if source is None:
            continue  # `validate` reports the undefined reference
        content, problems = read_one(kind, name, source, spec_dir=spec_dir, roots=roots,
                                     policy=policy, environ=env)
        out[(kind, name)] = content
        for key, message, always_error in problems:
            findings.append(Finding((kind, name, key), message,
                                    warning=not strict and not always_error))
    return out, findings


def read_one(kind: str, name: str, source: FileSource, *, spec_dir: Path,
             roots: Sequence[str], policy: HostPolicy, environ: Mapping[str, str],
             ) -> tuple[FileContent, list[tuple[str, str, bool]]]:
    """One secret or config: its content (data None when not read) and problems as
    (key, message, error even in a preview)."""
    what = kind[:-1]
    if source.content is not None:
        if kind == "secrets":  # `validate` refuses it; never mount a value from the spec
            return FileContent(kind, name, None), []
        data = source.content.encode()
        if len(data) > MAX_CONTENT_BYTES:
            return FileContent(kind, name, None), [
                ("content", f"is larger than {MAX_CONTENT_BYTES} bytes", True)]
        return FileContent(kind, name, None, data), []
    if source.environment is not None:
        var = source.environment
        if var not in environ:
            return FileContent(kind, name, None), [
                ("environment", f"{what} {name}: the variable {var} is not set in the "
                                "reconciler's environment", False)]
        data = environ[var].encode()
        if len(data) > MAX_CONTENT_BYTES:
            return FileContent(kind, name, None), [
                ("environment", f"{what} {name}: the variable {var} is larger than "
                                f"{MAX_CONTENT_BYTES} bytes", True)]
        return FileContent(kind, name, None, data), []
    assert source.file is not None
    path = Path(os.path.expanduser(source.file))
    path = path if path.is_absolute() else spec_dir / path
    shown = os.path.normpath(path)
    real = os.path.realpath(path)
    root = next((r for r in roots if hostfiles.inside(real, r)), None)
    if root is None or ".git" in real.split("/"):
        where = ", ".join(policy.env_file_roots) or "none"
        why = ("outside the spec checkout and the host's env_file_roots "
               f"({where}): not read (host policy: env_file_roots)" if root is None
               else "inside .git: never read")
        return FileContent(kind, name, shown), [
            ("file", f"{what} file {shown}" + (f" (really {real})" if real != shown else "")
             + f" is {why}", False)]
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return FileContent(kind, name, shown), [
            ("file", f"{what} file {shown}: file not found", False)]
    except OSError as exc:
        return FileContent(kind, name, shown), [
            ("file", f"{what} file {shown}: {exc.strerror or 'unreadable'}", False)]
    if not stat.S_ISREG(lst.st_mode):
        return FileContent(kind, name, shown), [
            ("file", f"{what} file {shown} is {hostfiles.kind(lst.st_mode)}, not a regular "
                     "file", False)]
    try:
        data, st = hostfiles.read_regular_stat(real, limit=MAX_CONTENT_BYTES)
    except hostfiles.Refused as exc:
        return FileContent(kind, name, shown), [("file", f"{what} file {shown} {exc.reason}",
                                                 False)]
    except OSError as exc:
        return FileContent(kind, name, shown), [
            ("file", f"{what} file {shown}: {exc.strerror or 'unreadable'}", False)]
    problems: list[tuple[str, str, bool]] = []
    if kind == "secrets" and stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(("file", f"secret file {shown} is readable by others (mode "
                                 f"{stat.S_IMODE(st.st_mode):04o}): chmod 600", False))
    loose = hostfiles.loose_dirs(real, root)
    if loose:
        problems.append(("file", f"{what} file {shown}: directory {loose[0]} is group- or "
                                 "world-writable (someone else could replace the file): "
                                 "chmod go-w", False))
    return FileContent(kind, name, shown, data), problems
