"""The loaded spec as plain data: what the shell read from disk for one spec directory
(validated spec, env files, digests of mounted files, key locations), and located problems.

Pure: the loader (`reconciler.loading`, shell) builds these; the core only reads them. No
I/O, no clock, no randomness here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core.builds import BuildContext
from reconciler.core.envfiles import EnvFile
from reconciler.core.labels import keyed_digest
from reconciler.core.nginxconf import Reuse
from reconciler.core.specs import Spec

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value came from: file and line (None when unknown)."""

    file: str
    line: int | None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Problem:
    """A located finding: `file:line: key.path: message`."""

    location: Location
    path: KeyPath
    message: str
    warning: bool = False

    def __str__(self) -> str:
        key = format_path(self.path)
        prefix = "warning: " if self.warning else ""
        return f"{self.location}: {prefix}{key + ': ' if key else ''}{self.message}"


class SpecError(Exception):
    """The spec cannot be used. `problems` holds every error (and warning) found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class MountedFile:
    """A file bind-mounted from the spec tree, with the digest of its contents."""

    host_path: str
    digest: str  # sha256 of the content (a directory: of its tree); "" when missing


@dataclass(frozen=True, slots=True)
class FileContent:
    """The content of one top-level secret or config, as the loader read it. `data` is
    None when it could not be read (a preview plans with the fingerprint unknown); it is
    never shown (not in repr, not in errors)."""

    kind: str  # "secrets" or "configs"
    name: str
    path: str | None  # the host file (file sources), for change detection
    data: bytes | None = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        """sha256 of the content ("" when unreadable): only ever keyed before it is shown."""
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else ""


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A validated spec with everything read from disk for it (env files, mounted
    files, digests), so the core never reads files itself."""

    directory: str
    spec: Spec  # defaults merged into every service
    profiles: tuple[str, ...]
    files: Mapping[str, str]  # file path -> sha256 of its bytes
    service_files: Mapping[str, str]  # service -> file that defines it
    env_files: Mapping[str, tuple[EnvFile, ...]]
    mounted: Mapping[str, tuple[MountedFile, ...]]  # service -> bind-mounted spec files
    bind_sources: Mapping[tuple[str, int], str]  # (service, volume index) -> absolute host path
    warnings: tuple[Problem, ...] = ()
    revision: str | None = None
    locations: Mapping[KeyPath, Location] = field(default_factory=dict)
    root: str = ""  # the repo (or spec dir) bind sources are relative to in fingerprints
    key: bytes = field(default=b"", repr=False)  # the host key (the loader always sets one)
    builds: Mapping[str, BuildContext] = field(default_factory=dict)  # service -> its build
    # ("secrets" | "configs", name) -> content, for the ones enabled services use
    contents: Mapping[tuple[str, str], FileContent] = field(default_factory=dict)
    # the edge's mounted nginx config: does every listening socket carry `reuseport` (then
    # the edge can be replaced start-first next to the old one)? None: no edge
    edge_reuse: Reuse | None = None
    # the host's kernel has net.ipv4.tcp_migrate_req (a closing listener's queued
    # connections move to another listener of the same reuseport group)
    tcp_migrate_req: bool = False

    @property
    def digest(self) -> str:
        """Digest of the spec files (base name and content digest of each)."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name.rsplit('/', 1)[-1]}\0{self.files[name]}\n".encode())
        return h.hexdigest()

    @property
    def fingerprint(self) -> str:
        """Identity of the whole desired state: spec files + env files + mounted files, as an
        HMAC with the host key (it is shown in metrics, status and history, and it covers
        env-file contents: unkeyed, a weak password could be brute-forced from it)."""
        parts = [self.digest]
        for service in sorted(self.env_files):
            for env in self.env_files[service]:
                content = "\n".join(f"{k}={v.value}" for k, v in sorted(env.values.items()))
                parts.append(f"{env.path}\0{env.readable}\0{content}")
        for service in sorted(self.mounted):
            for mounted in self.mounted[service]:
                parts.append(f"{mounted.host_path}\0{mounted.digest}")
        for service in sorted(self.builds):
            parts.append(f"build {service}\0{self.builds[service].digest}")
        for kind, name in sorted(self.contents):
            parts.append(f"{kind}\0{name}\0{self.contents[(kind, name)].digest}")
        parts.append(",".join(self.profiles))
        if not self.key:
            raise ValueError("a LoadedSpec carries the host key: fingerprints are never unkeyed")
        return keyed_digest(self.key, "\1".join(parts), length=12)

    @property
    def unknown_env(self) -> bool:
        """True when an env file could not be read (the fingerprint is then unknown)."""
        return (any(not e.readable for envs in self.env_files.values() for e in envs)
                or any(c.data is None for c in self.contents.values()))


def format_path(path: KeyPath) -> str:
    """A key path as written in YAML: `services.api.ports[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def lookup(path: KeyPath, locations: Mapping[KeyPath, Location], fallback: Location) -> Location:
    """The line of the most specific known key on `path`. A service key that came from
    `defaults` (deep-merged) points at the key under `defaults` when that is more specific."""
    best, depth = fallback, -1
    candidates: list[tuple[KeyPath, int]] = [(path, 2 if path[:1] == ("services",) else 0)]
    if len(path) > 2 and path[0] == "services":
        candidates.append((("defaults", *path[2:]), 1))
    for cand, prefix in candidates:
        for n in range(len(cand), 0, -1):
            if cand[:n] in locations:
                if n - prefix > depth:
                    best, depth = locations[cand[:n]], n - prefix
                break
    return best
