"""Read a spec directory into a validated `LoadedSpec`, mapping every error to file:line.

Reads files only (spec YAML, env files, bind-mounted config files, the git HEAD); never
touches Docker, never writes. YAML is parsed as 1.2 by ruamel.yaml with duplicate keys
rejected and caps on size, nesting depth and aliases. No value from an env file ever
appears in an error.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler import yamlread
from reconciler.envfiles import EnvFile, EnvFinding, check_env_files, parse_dotenv
from reconciler.safefiles import UnsafeFile, kind_of, read_regular_file
from reconciler.specs import Finding, HostPolicy, Spec, merge_defaults, parse_mount, validate
from reconciler.yamlread import Budget, YamlRefused

MAX_BOUND_TREE_FILES = 2000
MAX_SPEC_FILES = 200  # *.yaml/*.yml files in one spec directory
MAX_SPEC_BYTES = 8 * 1024 * 1024  # all of them together (each: yamlread.MAX_FILE_BYTES)
MAX_ENV_FILE_BYTES = 256 * 1024  # one env file

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Location:
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
    host_path: str
    digest: str  # sha256 of the content (a directory: of its tree); "" when missing


@dataclass(frozen=True, slots=True)
class LoadedSpec:
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

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{os.path.basename(name)}\0{self.files[name]}\n".encode())
        return h.hexdigest()

    @property
    def fingerprint(self) -> str:
        """Identity of the whole desired state: spec files + env files + mounted files."""
        h = hashlib.sha256(self.digest.encode())
        for service in sorted(self.env_files):
            for env in self.env_files[service]:
                content = "\n".join(f"{k}={v.value}" for k, v in sorted(env.values.items()))
                h.update(f"{env.path}\0{env.readable}\0{content}".encode())
        for service in sorted(self.mounted):
            for mounted in self.mounted[service]:
                h.update(f"{mounted.host_path}\0{mounted.digest}".encode())
        h.update(",".join(self.profiles).encode())
        return h.hexdigest()[:12]

    @property
    def unknown_env(self) -> bool:
        return any(not e.readable for envs in self.env_files.values() for e in envs)


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- YAML -----------------------------------------------------------------------------------


def _refused(exc: YamlRefused) -> SpecError:
    return SpecError([Problem(Location(exc.file, exc.line), exc.path, exc.message)])


def read_yaml(path: Path, display: str, *, lines: bool = True, data: bytes | None = None,
              budget: Budget | None = None) -> tuple[dict[str, Any], dict[KeyPath, Location]]:
    """Parse one file with the shared capped reader (`yamlread`: YAML 1.2, duplicate keys
    rejected, depth/alias/size caps checked before anything is built). `lines=False` takes
    the fast C parser and records no key lines; the loader re-reads with lines only to report
    problems. `data`: the file's bytes when the caller has read them already."""
    try:
        text = (yamlread.decode(data, display) if data is not None
                else yamlread.read_text(str(path), display))
        root = yamlread.parse(text, display, lines=lines, budget=budget)
    except YamlRefused as exc:
        raise _refused(exc) from None
    if root is None:
        return {}, {}
    if not isinstance(root.value, dict):
        raise SpecError([Problem(Location(display, 1), (), "the file must be a mapping")])
    locations = {k: Location(display, line) for k, line in yamlread.lines_of(root).items()}
    return yamlread.to_plain(root), locations


# --- loading --------------------------------------------------------------------------------

_MERGED = ("services", "networks", "volumes")
_SINGLE = ("project", "tiers", "defaults", "edge")


def _display(path: Path) -> str:
    """Paths are shown as the user gave them (relative stays relative)."""
    return os.path.normpath(path)


def load(
    directory: str | os.PathLike[str],
    *,
    strict: bool = True,
    profiles: Iterable[str] = (),
    policy: HostPolicy | None = None,
    bind_root: str | os.PathLike[str] | None = None,
) -> LoadedSpec:
    """Load, merge and validate a spec directory. Raises `SpecError` with every problem.

    `bind_root`: the tree bind mounts may come from (default: the git checkout holding the spec
    dir, else the spec dir); a kept last-good copy passes its own copy root. A valid spec is
    read once with the fast C parser; only a spec with problems is read again with key lines
    (the round-trip parser is several times slower)."""
    kwargs = {"strict": strict, "profiles": profiles, "policy": policy, "bind_root": bind_root}
    try:
        return _load(directory, lines=False, **kwargs)  # type: ignore[arg-type]
    except _NeedLines:
        return _load(directory, lines=True, **kwargs)  # type: ignore[arg-type]


class _NeedLines(Exception):
    """Raised by the fast path when a problem must be reported with its line."""


def _load(
    directory: str | os.PathLike[str],
    *,
    lines: bool,
    strict: bool,
    profiles: Iterable[str],
    policy: HostPolicy | None,
    bind_root: str | os.PathLike[str] | None,
) -> LoadedSpec:
    root = Path(directory)
    if not root.is_dir():
        raise SpecError([Problem(Location(_display(root), None), (),
                                 "spec directory not found")])
    contents, problems = _spec_files(root)
    files = list(contents)
    if not files and not problems:
        raise SpecError([Problem(Location(_display(root), None), (),
                                 "no *.yaml or *.yml files in the spec directory")])
    raw: dict[str, Any] = {}
    origin: dict[KeyPath, str] = {}  # top-level key / (section, name) -> file
    locations: dict[KeyPath, Location] = {}
    digests: dict[str, str] = {}
    budget = Budget()  # the YAML caps hold for the whole directory
    for path in files:
        display = _display(path)
        digests[str(path)] = hashlib.sha256(contents[path]).hexdigest()
        try:
            data, locs = read_yaml(path, display, lines=lines, data=contents[path],
                                   budget=budget)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        for key, value in data.items():
            here = locs.get((key,), Location(display, None))
            if key in _MERGED and isinstance(value, dict):
                section = raw.setdefault(key, {})
                if not isinstance(section, dict):
                    continue
                for name, item in value.items():
                    if name in section:
                        first = origin[(key, name)]
                        problems.append(Problem(locs.get((key, name), here), (key, name),
                                                f"already defined in {first}"))
                        continue
                    section[name] = item
                    origin[(key, name)] = display
            elif key in raw and key in _SINGLE:
                if raw[key] != value:
                    problems.append(Problem(here, (key,), f"defined differently in "
                                                          f"{origin[(key,)]}"))
                continue
            elif key in raw:
                problems.append(Problem(here, (key,), f"already defined in {origin[(key,)]}"))
                continue
            else:
                raw[key] = value
                origin[(key,)] = display
        for kpath, loc in locs.items():
            locations.setdefault(kpath, loc)
    if "services" not in raw and not problems:
        # a half-deleted spec directory must not read as "remove every container"
        problems.append(Problem(Location(_display(root), None), ("services",),
                                "no services defined in any file; to remove every service "
                                "on purpose, say so with `services: {}`"))
    if problems:
        if not lines and any(p.location.line is None and p.path for p in problems):
            raise _NeedLines
        raise SpecError(problems)

    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    services = raw.get("services")
    merged = dict(raw)
    if isinstance(services, dict) and isinstance(defaults, dict):
        merged["services"] = {
            name: merge_defaults(defaults, svc) if isinstance(svc, dict) else svc
            for name, svc in services.items()
        }
    dummy = Location(_display(files[0]), None)
    try:
        spec = Spec.model_validate(merged)
    except ValidationError as exc:
        if not lines:
            raise _NeedLines from None
        raise SpecError(_pydantic_problems(exc, merged, locations, dummy)) from None

    service_files = {name: origin[("services", name)] for name in spec.services}
    profile_list = tuple(sorted(set(profiles)))
    spec_dir = root.resolve()
    repo = (Path(bind_root).resolve() if bind_root is not None
            else (_git_root(spec_dir) or spec_dir))
    allowed_roots = [str(spec_dir), str(repo)]

    bind_sources: dict[tuple[str, int], str] = {}
    env_files: dict[str, tuple[EnvFile, ...]] = {}
    mounted: dict[str, tuple[MountedFile, ...]] = {}
    for name, svc in spec.services.items():
        base = Path(service_files[name]).resolve().parent
        for i, entry in enumerate(svc.volumes):
            mount = parse_mount(entry)
            if mount.source and not mount.named:
                source = os.path.expanduser(mount.source)
                bind_sources[(name, i)] = os.path.normpath(base / source)
        env_files[name] = tuple(_read_env_file(base, declared) for declared in svc.env_file)

    findings = validate(spec, profiles=profile_list, policy=policy,
                        allowed_roots=allowed_roots, resolve_path=bind_sources)
    for (name, i), host in sorted(bind_sources.items()):
        if any(_inside(host, r) for r in allowed_roots):
            digest = _digest_tree(Path(host))
            if digest == "":
                findings.append(Finding(("services", name, "volumes", i),
                                        f"bind source {host} does not exist"))
            mounted.setdefault(name, ())
            mounted[name] = (*mounted[name], MountedFile(host, digest))

    if findings and not lines:
        raise _NeedLines
    problems = [_locate(f, locations, dummy) for f in findings]
    env_problems = [_env_problem(f, warning=not strict)
                    for f in check_env_files({n: env_files[n] for n in env_files})]
    errors = [p for p in problems + env_problems if not p.warning]
    warnings = [p for p in problems + env_problems if p.warning]
    if errors:
        raise SpecError(errors + warnings)
    return LoadedSpec(
        directory=str(root), spec=spec, profiles=profile_list, files=digests,
        service_files=service_files, env_files=env_files, mounted=mounted,
        bind_sources=bind_sources, warnings=tuple(warnings),
        revision=None if bind_root is not None else _git_revision(spec_dir),
        locations=locations, root=str(repo),
    )


def _spec_files(root: Path) -> tuple[dict[Path, bytes], list[Problem]]:
    """The spec files of `root` (not hidden, `*.yaml`/`*.yml`), each read once and bounded:
    regular files, or symlinks to regular files inside the spec directory (resolved with
    every link on the way); FIFOs, devices, sockets and links that leave the directory are
    refused by name, never opened. At most MAX_SPEC_FILES files and MAX_SPEC_BYTES in all."""
    here = Location(_display(root), None)
    try:
        names = sorted(e.name for e in os.scandir(root)
                       if e.name.endswith((".yaml", ".yml")) and not e.name.startswith("."))
    except OSError as exc:
        return {}, [Problem(here, (), f"cannot read the spec directory: {exc.strerror}")]
    if len(names) > MAX_SPEC_FILES:
        return {}, [Problem(here, (), f"{len(names)} spec files: more than {MAX_SPEC_FILES} "
                                      "*.yaml/*.yml files in one spec directory")]
    real_root = os.path.realpath(root)
    contents: dict[Path, bytes] = {}
    problems: list[Problem] = []
    total = 0
    for name in names:
        path = root / name
        where = Location(_display(path), None)
        target = str(path)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not _inside(target, real_root):
                    problems.append(Problem(where, (), "is a symlink to a file outside the "
                                                       "spec directory (refused)"))
                    continue
                st = os.stat(target)
        except OSError as exc:
            problems.append(Problem(where, (), f"cannot read: {exc.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            continue  # a directory named *.yaml is not a spec file
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(where, (), f"is {kind_of(st.st_mode)}, not a regular file "
                                               "(refused, never opened)"))
            continue
        try:
            contents[path] = read_regular_file(target, yamlread.MAX_FILE_BYTES)
        except UnsafeFile as exc:
            problems.append(Problem(where, (), exc.reason))
            continue
        total += len(contents[path])
        if total > MAX_SPEC_BYTES:
            return {}, [Problem(here, (), f"the spec files hold more than {MAX_SPEC_BYTES} "
                                          "bytes together")]
    return contents, problems


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _read_env_file(base: Path, declared: str) -> EnvFile:
    path = Path(os.path.expanduser(declared))
    path = path if path.is_absolute() else base / path
    shown = os.path.normpath(path)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return EnvFile(shown, declared, readable=False, problem="file not found")
    except OSError as exc:
        return EnvFile(shown, declared, readable=False, problem=exc.strerror or "unreadable")
    is_link = stat.S_ISLNK(lst.st_mode)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return EnvFile(shown, declared, readable=False, problem="not a regular file",
                           is_symlink=is_link)
        text = read_regular_file(path, MAX_ENV_FILE_BYTES, follow=True).decode("utf-8")
    except UnsafeFile as exc:
        return EnvFile(shown, declared, readable=False, problem=exc.reason, is_symlink=is_link)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "unreadable"
        return EnvFile(shown, declared, readable=False, problem=reason, is_symlink=is_link)
    values, lines, _errors = parse_dotenv(text)
    return EnvFile(shown, declared, readable=True, is_symlink=is_link,
                   mode=stat.S_IMODE(st.st_mode), values=values, lines=lines)


def _env_problem(finding: EnvFinding, *, warning: bool) -> Problem:
    path: KeyPath = (finding.key,) if finding.key else ()
    return Problem(Location(_display(Path(finding.path)), finding.line), path, finding.message,
                   warning=warning)


def _digest_tree(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names + contents); "" when missing."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    if path.is_dir():
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for name in sorted(filenames):
                count += 1
                if count > MAX_BOUND_TREE_FILES:
                    return h.hexdigest()
                full = Path(dirpath) / name
                h.update(str(full.relative_to(path)).encode() + b"\0")
                try:
                    h.update(full.read_bytes())
                except OSError:
                    h.update(b"(unreadable)")
        return h.hexdigest()
    return ""


def _git_root(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _git_revision(start: Path) -> str | None:
    """The commit id of HEAD when the spec dir is in a git checkout (read, no subprocess)."""
    root = _git_root(start)
    if root is None:
        return None
    git = root / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:40] or None
        ref = head.split(":", 1)[1].strip()
        ref_file = git / ref
        if ref_file.exists():
            return ref_file.read_text().strip()[:40] or None
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def _pydantic_problems(
    exc: ValidationError, data: Mapping[str, Any], locations: Mapping[KeyPath, Location],
    fallback: Location,
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = _data_path(error["loc"], data)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {path[-1]!r}" if path else "unknown key"
        elif error["type"] == "missing":
            message = f"missing required key {error['loc'][-1]!r}"
        problems.append(Problem(lookup(path, locations, fallback), path, message))
    # keep one problem per (path, message); drop union-branch noise on the same path
    seen: set[tuple[KeyPath, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def _data_path(loc: tuple[str | int, ...], data: Any) -> KeyPath:
    """Keep only the parts of a pydantic `loc` that exist in the data (union tags and
    validator names are skipped); a missing key, always last in `loc`, is kept."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and str(part) in node:
            out.append(str(part))
            node = node[str(part)]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out)


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


def _locate(finding: Finding, locations: Mapping[KeyPath, Location],
            fallback: Location) -> Problem:
    return Problem(lookup(finding.path, locations, fallback), finding.path, finding.message,
                   warning=finding.warning)


POLICY_PATH = "/etc/reconciler/policy.yaml"


def load_policy(path: str | None = None) -> HostPolicy:
    """The host's own allow-list (never from the spec repo): `$RECONCILER_POLICY` or
    /etc/reconciler/policy.yaml. Absent file: nothing dangerous is allowed."""
    where = Path(path or os.environ.get("RECONCILER_POLICY") or POLICY_PATH)
    if not where.exists():
        return HostPolicy()
    data, locations = read_yaml(where, str(where))
    allowed = {"allow_privileged", "allow_host_namespaces", "allow_capabilities",
               "allow_docker_socket", "allow_bind_mounts"}
    problems = [Problem(locations.get((k,), Location(str(where), None)), (k,), "unknown key")
                for k in data if k not in allowed]
    if problems:
        raise SpecError(problems)
    return HostPolicy(
        allow_privileged=bool(data.get("allow_privileged", False)),
        allow_host_namespaces=bool(data.get("allow_host_namespaces", False)),
        allow_capabilities=frozenset(str(c).upper() for c in data.get("allow_capabilities", [])),
        allow_docker_socket=bool(data.get("allow_docker_socket", False)),
        allow_bind_mounts=tuple(str(p) for p in data.get("allow_bind_mounts", [])),
    )


def input_stamp(loaded: LoadedSpec, *, now_ns: int | None = None) -> tuple[Any, ...] | None:
    """Cheap identity of everything `loaded` was read from (stat of the spec dir, its files,
    env files and bind-mounted files, and the git HEAD): equal stamps mean an equal spec, so
    the controller can skip re-reading an unchanged spec. None when a file changed in the
    last two seconds (a write may still be in flight: never cache a racy read)."""
    paths = [loaded.directory, *loaded.files]
    paths += [e.path for envs in loaded.env_files.values() for e in envs]
    for mounts in loaded.mounted.values():
        for m in mounts:
            paths.append(m.host_path)
            if os.path.isdir(m.host_path):
                for dirpath, dirnames, filenames in os.walk(m.host_path):
                    dirnames[:] = sorted(dirnames)
                    paths += [dirpath, *(os.path.join(dirpath, f) for f in sorted(filenames))]
    newest = 0
    stamp: list[Any] = [_git_revision(Path(loaded.directory).resolve())]
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamp.append((path, None))
            continue
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        stamp.append((path, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    now = now_ns if now_ns is not None else time.time_ns()
    if now - newest < 2_000_000_000:
        return None
    return tuple(stamp)
