"""Read a spec directory into a validated `LoadedSpec`, mapping every error to file:line.

Reads files only (spec YAML, env files, bind-mounted config files, the git HEAD); never
touches Docker, never writes. YAML is parsed as 1.2 by ruamel.yaml with duplicate keys
rejected and caps on size, nesting depth and aliases. No value from an env file ever
appears in an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler import buildctx, filesources, hostfiles, yamlread
from reconciler.core import nginxconf
from reconciler.core.builds import BuildContext
from reconciler.core.envfiles import EnvFile, EnvFinding, check_env_files, parse_dotenv
from reconciler.core.model import (
    KeyPath,
    LoadedSpec,
    Location,
    MountedFile,
    Problem,
    SpecError,
    lookup,
)
from reconciler.core.nginxconf import Reuse
from reconciler.core.specs import (
    Finding,
    HostPolicy,
    Spec,
    active_services,
    merge_defaults,
    parse_mount,
    validate,
)
from reconciler.hostfiles import Refused, read_regular_file
from reconciler.yamlread import Budget, YamlRefused

MAX_BOUND_TREE_FILES = 2000
MAX_DIGEST_BYTES = 128 * 1024 * 1024  # bind-mounted spec files read into fingerprints, per load
MAX_ENV_FILE_BYTES = 256 * 1024  # one env file
MAX_POLICY_BYTES = 64 * 1024
MAX_SPEC_FILES = 200  # *.yaml/*.yml files in one spec directory
MAX_SPEC_BYTES = 8 * 1024 * 1024  # all of them together (each: yamlread.MAX_FILE_BYTES)

# Without the host's key (a preview on a host that never applied), fingerprints are keyed
# with a key of this process: never an unkeyed hash over env-file contents.
_PROCESS_KEY = secrets.token_bytes(32)

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

_MERGED = ("services", "networks", "volumes", "secrets", "configs")
_SINGLE = ("project", "tiers", "defaults", "edge", "tier_parallelism", "engine")


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
    key: bytes | None = None,
) -> LoadedSpec:
    """Load, merge and validate a spec directory. Raises `SpecError` with every problem.

    `key`: the host key the spec-wide fingerprint is keyed with (None: a key of this
    process, for previews on a host without one).

    `bind_root`: the tree bind mounts may come from (default: the git checkout holding the spec
    dir, else the spec dir); a kept last-good copy passes its own copy root. A valid spec is
    read once with the fast C parser; only a spec with problems is read again with key lines
    (the round-trip parser is several times slower)."""
    kwargs = {"strict": strict, "profiles": profiles, "policy": policy, "bind_root": bind_root}
    try:
        loaded = _load(directory, lines=False, **kwargs)  # type: ignore[arg-type]
    except _NeedLines:
        loaded = _load(directory, lines=True, **kwargs)  # type: ignore[arg-type]
    return replace(loaded, key=key or _PROCESS_KEY)


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
                origin.setdefault((key,), display)
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
                first = origin.get((key,), "another file")
                problems.append(Problem(here, (key,), f"already defined in {first}"))
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
    # the repo's .git (remote URL, tokens) is never mountable, nor a directory holding it
    forbidden = [str(d / ".git") for d in {spec_dir, repo} if os.path.lexists(d / ".git")]
    host_policy = policy or HostPolicy()
    env_roots = [*allowed_roots, *(os.path.realpath(r) for r in host_policy.env_file_roots)]

    bind_sources: dict[tuple[str, int], str] = {}
    env_files: dict[str, tuple[EnvFile, ...]] = {}
    mounted: dict[str, tuple[MountedFile, ...]] = {}
    env_findings: list[Finding] = []
    for name, svc in spec.services.items():
        # relative paths are relative to the spec dir (spec files are regular files in it):
        # resolved with every symlink, so a committed `./hostroot -> /` is seen as `/`
        for i, entry in enumerate(svc.volumes):
            mount = parse_mount(entry)
            if mount.source and not mount.named:
                source = os.path.expanduser(mount.source)
                bind_sources[(name, i)] = os.path.realpath(spec_dir / source)
        read = []
        for j, declared in enumerate(svc.env_file):
            env, problems_here = _read_env_file(spec_dir, declared, roots=env_roots,
                                                policy=host_policy, strict=strict)
            read.append(env)
            env_findings.extend(Finding(("services", name, "env_file", j), message,
                                        warning=warn) for message, warn in problems_here)
        env_files[name] = tuple(read)

    file_contents, content_findings = filesources.read_all(
        spec, active_services(spec, profile_list), spec_dir=spec_dir, roots=env_roots,
        policy=host_policy, strict=strict)
    findings = validate(spec, profiles=profile_list, policy=host_policy,
                        allowed_roots=allowed_roots, resolve_path=bind_sources,
                        forbidden=forbidden)
    findings += env_findings + content_findings
    refused = {(f.path[1], f.path[3]) for f in findings if not f.warning
               and len(f.path) == 4 and f.path[0] == "services" and f.path[2] == "volumes"}
    digest_budget = [MAX_DIGEST_BYTES]
    digested: dict[str, tuple[str, str | None]] = {}
    for (name, i), host in sorted(bind_sources.items()):
        if (name, i) in refused or not any(_inside(host, r) for r in allowed_roots):
            continue  # refused or outside the spec tree: never read
        if host not in digested:
            digested[host] = _digest_tree(Path(host), digest_budget)
        digest, problem = digested[host]
        if problem:
            findings.append(Finding(("services", name, "volumes", i), problem))
        elif digest == "" and _looks_like_file(host):
            findings.append(Finding(("services", name, "volumes", i),
                                    f"bind source {host} does not exist: it looks like a file "
                                    "(compose would create an empty directory by that name); "
                                    "create the file"))
        elif digest == "":
            # created by the engine at create time (`Binds`), 0755, like compose does; its
            # digest is an empty directory's, so creating it changes no fingerprint
            digest = EMPTY_TREE_DIGEST
            findings.append(Finding(("services", name, "volumes", i),
                                    f"bind source directory {host} does not exist: it is "
                                    "created (empty, mode 0755) when the container is created, "
                                    "as compose does", warning=True))
        mounted.setdefault(name, ())
        mounted[name] = (*mounted[name], MountedFile(host, digest))

    builds: dict[str, BuildContext] = {}
    withheld = {os.path.realpath(e.path) for envs in env_files.values() for e in envs}
    for name, svc in sorted(active_services(spec, profile_list).items()):
        if svc.build is None:
            continue
        try:
            builds[name] = buildctx.prepare(spec.project, name, str(spec_dir), svc.build,
                                            image=svc.image, roots=allowed_roots,
                                            forbidden=forbidden, withheld=withheld)
        except buildctx.BuildRefused as exc:
            findings.append(Finding(("services", name, "build"), exc.reason))

    if findings and not lines:
        raise _NeedLines
    problems = [_locate(f, locations, dummy) for f in findings]
    refused_env = {e.path for envs in env_files.values() for e in envs
                   if e.problem and _OUTSIDE in e.problem}
    env_problems = [_env_problem(f, warning=not strict)
                    for f in check_env_files({n: env_files[n] for n in env_files})
                    if f.path not in refused_env]
    errors = [p for p in problems + env_problems if not p.warning]
    warnings = [p for p in problems + env_problems if p.warning]
    warnings += _policy_notices(host_policy)
    if errors:
        raise SpecError(errors + warnings)
    edge_reuse = _edge_reuse(spec, bind_sources, set(digested) - {
        bind_sources[k] for k in refused if k in bind_sources})
    if builds:  # containers run the built image, by its content-addressed name
        spec = spec.model_copy(update={"services": {
            name: svc.model_copy(update={"image": builds[name].ref}) if name in builds else svc
            for name, svc in spec.services.items()}})
    return LoadedSpec(
        directory=str(root), spec=spec, profiles=profile_list, files=digests,
        service_files=service_files, env_files=env_files, mounted=mounted,
        bind_sources=bind_sources, warnings=tuple(warnings),
        revision=None if bind_root is not None else _git_revision(spec_dir),
        locations=locations, root=str(repo), builds=builds,
        contents=file_contents, edge_reuse=edge_reuse,
        tcp_migrate_req=os.path.exists("/proc/sys/net/ipv4/tcp_migrate_req"),
    )


def spec_locations(loaded: LoadedSpec, *, show: Callable[[str], str] = os.path.normpath,
                   ) -> dict[KeyPath, Location]:
    """file:line of every key, each file shown as `show(path)` (a valid spec is loaded by
    the fast path without lines: this reads its files again, with lines)."""
    out: dict[KeyPath, Location] = {}
    for name in sorted(loaded.files):
        try:
            _data, locs = read_yaml(Path(name), show(name), lines=True)
        except SpecError:
            continue
        for path, loc in locs.items():
            out.setdefault(path, loc)
    return out


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
            problems.append(Problem(where, (), f"is {hostfiles.kind(st.st_mode)}, not a "
                                               "regular file (refused, never opened)"))
            continue
        try:
            contents[path] = read_regular_file(target, yamlread.MAX_FILE_BYTES)
        except Refused as exc:
            problems.append(Problem(where, (), exc.reason))
            continue
        total += len(contents[path])
        if total > MAX_SPEC_BYTES:
            return {}, [Problem(here, (), f"the spec files hold more than {MAX_SPEC_BYTES} "
                                          "bytes together")]
    return contents, problems


def _inside(path: str, root: str) -> bool:
    return hostfiles.inside(path, root)


def _policy_notices(policy: HostPolicy) -> list[Problem]:
    return [Problem(Location(policy.source, line), (key,), message, warning=True)
            for line, key, message in policy.notices]


_OUTSIDE = "outside the spec checkout"


def _read_env_file(base: Path, declared: str, *, roots: list[str], policy: HostPolicy,
                   strict: bool) -> tuple[EnvFile, list[tuple[str, bool]]]:
    """Read one env file if it lies in an allowed place (the spec checkout or the host's
    `env_file_roots`, by real path; anywhere else it is never read: an error, a warning in
    a preview). Returns the file and findings (message, warning) for the spec key that
    names it; findings name the file, never a value."""
    path = Path(os.path.expanduser(declared))
    path = path if path.is_absolute() else base / path
    shown = os.path.normpath(path)
    if os.path.islink(path):  # never followed: the hygiene check reports it
        return EnvFile(shown, declared, readable=False, is_symlink=True,
                       problem="is a symlink: env files must be regular files"), []
    real = os.path.realpath(path)
    root = next((r for r in roots if _inside(real, r)), None)
    if root is None or ".git" in real.split("/"):
        where = ", ".join(policy.env_file_roots) or "none"
        problem = (f"{_OUTSIDE} and the host's env_file_roots ({where}): not read"
                   if root is None else f"inside .git: never read ({_OUTSIDE} is allowed)")
        return (EnvFile(shown, declared, readable=False, problem=problem),
                [(f"env file {shown}" + (f" (really {real})" if real != shown else "")
                  + f" is {problem} (host policy: env_file_roots)", not strict)])
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return EnvFile(shown, declared, readable=False, problem="file not found"), []
    except OSError as exc:
        return EnvFile(shown, declared, readable=False,
                       problem=exc.strerror or "unreadable"), []
    if not stat.S_ISREG(lst.st_mode):
        return EnvFile(shown, declared, readable=False,
                       problem=f"is {hostfiles.kind(lst.st_mode)}, not a regular file"), []
    try:
        raw, st = hostfiles.read_regular_stat(real, limit=MAX_ENV_FILE_BYTES)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        return EnvFile(shown, declared, readable=False, problem=reason), []
    found = []
    loose = hostfiles.loose_dirs(real, root)
    if loose:
        found.append((f"env file {shown}: directory {loose[0]} is group- or world-writable "
                      "(someone else could replace the file): chmod go-w", not strict))
    values, lines, _errors = parse_dotenv(text)
    return EnvFile(shown, declared, readable=True, mode=stat.S_IMODE(st.st_mode),
                   values=values, lines=lines), found


def _env_problem(finding: EnvFinding, *, warning: bool) -> Problem:
    path: KeyPath = (finding.key,) if finding.key else ()
    return Problem(Location(_display(Path(finding.path)), finding.line), path, finding.message,
                   warning=warning)


EMPTY_TREE_DIGEST = hashlib.sha256().hexdigest()  # what `_digest_tree` gives an empty dir


def _looks_like_file(path: str) -> bool:
    """A missing bind source named like a file (`nginx.conf`, `init.sql`): not a directory
    to create."""
    base = os.path.basename(path.rstrip("/"))
    stem, dot, ext = base.rpartition(".")
    return bool(dot and stem and ext.isalnum() and not ext.isdigit() and ext != "d")


def _digest_tree(path: Path, budget: list[int]) -> tuple[str, str | None]:
    """sha256 of a file, or of a directory's tree (names, contents, link targets), by lstat:
    links are hashed as their target text, never followed; a FIFO, socket or device is
    refused by name, never opened; `budget[0]` bytes at most are read (shared by a load).
    Returns (digest, problem); digest "" when missing."""
    h = hashlib.sha256()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "", None
    except OSError as exc:
        return "", f"bind source {path}: {exc.strerror}"
    try:
        if stat.S_ISREG(st.st_mode):
            budget[0] -= hostfiles.hash_regular(path, h.update, budget=budget[0])
            return h.hexdigest(), None
        if not stat.S_ISDIR(st.st_mode):
            return "", (f"bind source {path} is {hostfiles.kind(st.st_mode)}: only regular "
                        "files and directories are mounted from the spec")
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                rel = str(full.relative_to(path))
                if name == ".git":
                    return "", (f"bind source {path} contains {rel}: a .git is never "
                                "mountable (remote URL, credentials)")
                lst = os.lstat(full)
                if stat.S_ISDIR(lst.st_mode):
                    continue
                count += 1
                if count > MAX_BOUND_TREE_FILES:
                    return h.hexdigest(), None
                h.update(rel.encode() + b"\0")
                if stat.S_ISLNK(lst.st_mode):  # resolved in the container, not on the host
                    h.update(b"(symlink) " + os.fsencode(os.readlink(full)))
                elif stat.S_ISREG(lst.st_mode):
                    try:
                        budget[0] -= hostfiles.hash_regular(full, h.update, budget=budget[0])
                    except hostfiles.Refused:
                        raise
                    except OSError:
                        h.update(b"(unreadable)")
                else:
                    return "", (f"bind source {path} contains {rel}, which is "
                                f"{hostfiles.kind(lst.st_mode)}: only regular files and "
                                "directories are mounted from the spec (never opened)")
        return h.hexdigest(), None
    except hostfiles.Refused as exc:
        return "", (f"bind source {path}: more than {MAX_DIGEST_BYTES // (1024 * 1024)} MiB "
                    "of bind-mounted spec files to fingerprint: refused"
                    if "fingerprint" in exc.reason else f"bind source {path}: {exc.reason}")
    except OSError as exc:
        return "", f"bind source {path}: {exc.strerror or 'unreadable'}"


MAX_EDGE_CONF_FILES = 200
MAX_EDGE_CONF_BYTES = 1024 * 1024  # per file


def _edge_reuse(spec: Spec, bind_sources: Mapping[tuple[str, int], str],
                readable: set[str]) -> Reuse | None:
    """Whether the edge's nginx configuration, as mounted from the spec, opens every
    listening socket with `reuseport` (see `core.nginxconf`). Reads only bind sources that
    were digested (inside the spec tree, not refused), as bounded regular files, never
    following a link."""
    if spec.edge is None or spec.edge.service not in spec.services:
        return None
    name = spec.edge.service
    svc = spec.services[name]
    files: dict[str, str] = {}
    dirs: list[str] = []
    for i, entry in enumerate(svc.volumes):
        mount = parse_mount(entry)
        host = bind_sources.get((name, i))
        if mount.named or host is None or host not in readable:
            continue
        target = posixpath.normpath(mount.target)
        try:
            if os.path.isdir(host) and not os.path.islink(host):
                dirs.append(target)
                for dirpath, dirnames, filenames in os.walk(host):
                    dirnames[:] = sorted(d for d in dirnames if d != ".git")
                    for fname in sorted(filenames):
                        if len(files) >= MAX_EDGE_CONF_FILES:
                            return Reuse(False, "too many mounted files to read")
                        full = os.path.join(dirpath, fname)
                        rel = os.path.relpath(full, host)
                        with contextlib.suppress(OSError, hostfiles.Refused):
                            files[posixpath.join(target, rel)] = hostfiles.read_regular(
                                full, limit=MAX_EDGE_CONF_BYTES).decode("utf-8", "replace")
            else:
                files[target] = hostfiles.read_regular(
                    host, limit=MAX_EDGE_CONF_BYTES).decode("utf-8", "replace")
        except (OSError, hostfiles.Refused):
            continue
    own = (posixpath.dirname(spec.edge.upstreams_file),)
    return nginxconf.reuseport(files, tuple(dirs), own)


def _git_root(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


_GIT_REF = re.compile(r"refs/[A-Za-z0-9._/+-]+")
_GIT_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
MAX_GIT_FILE_BYTES = 4096
MAX_PACKED_REFS_BYTES = 8 * 1024 * 1024


def _git_text(path: Path, limit: int = MAX_GIT_FILE_BYTES) -> str:
    return hostfiles.read_regular(path, limit=limit).decode("utf-8", "replace")


def _git_revision(start: Path) -> str | None:
    """The commit id of HEAD when the spec dir is in a git checkout (read, no subprocess).
    HEAD's ref must be a `refs/...` name that stays inside the git dir; what is read must be
    a small regular file, and only a commit id is returned (never other file content)."""
    root = _git_root(start)
    if root is None:
        return None
    git = root / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: <path>"
            git = Path(os.path.realpath(root / _git_text(git).split(":", 1)[1].strip()))
        head = _git_text(git / "HEAD").strip()
        if not head.startswith("ref:"):
            return head if _GIT_SHA.fullmatch(head) else None
        ref = head.split(":", 1)[1].strip()
        if not _GIT_REF.fullmatch(ref) or ".." in ref.split("/"):
            return None
        bases = [git]
        if (git / "commondir").is_file():  # a linked worktree: refs live in the main git dir
            bases.append(Path(os.path.realpath(git / _git_text(git / "commondir").strip())))
        for base in bases:
            ref_file = base / ref
            if not _inside(os.path.realpath(ref_file), os.path.realpath(base)):
                return None
            if os.path.lexists(ref_file):
                sha = _git_text(ref_file).strip()
                return sha if _GIT_SHA.fullmatch(sha) else None
        for base in bases:
            packed = base / "packed-refs"
            if os.path.lexists(packed):
                for line in _git_text(packed, MAX_PACKED_REFS_BYTES).splitlines():
                    sha, _, name = line.partition(" ")
                    if name == ref and _GIT_SHA.fullmatch(sha):
                        return sha
    except (OSError, IndexError):
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


def _locate(finding: Finding, locations: Mapping[KeyPath, Location],
            fallback: Location) -> Problem:
    return Problem(lookup(finding.path, locations, fallback), finding.path, finding.message,
                   warning=finding.warning)


POLICY_PATH = "/etc/reconciler/policy.yaml"


_POLICY_BOOLS = ("allow_privileged", "allow_host_namespaces", "allow_docker_socket")
_POLICY_PATHS = ("allow_bind_mounts", "env_file_roots")
POLICY_KEYS = (*_POLICY_BOOLS, "allow_capabilities", "allow_sysctls", *_POLICY_PATHS)


def load_policy(path: str | None = None) -> HostPolicy:
    """The host's own allow-list (never from the spec repo): `$RECONCILER_POLICY` or
    /etc/reconciler/policy.yaml. Absent file: nothing dangerous is allowed.

    Fails closed: a policy file not owned by root (or the running user), group- or
    world-writable, or with any key of the wrong type (`no`, "false" or a string where a
    list belongs) raises `SpecError` naming the file, line and key; nothing is allowed."""
    where = Path(path or os.environ.get("RECONCILER_POLICY") or POLICY_PATH)
    shown = str(where)

    def refuse(message: str, line: int | None = None, key: str | None = None) -> SpecError:
        return SpecError([Problem(Location(shown, line), (key,) if key else (),
                                  f"{message}; host policy refused, nothing dangerous is "
                                  "allowed")])

    try:
        st = os.stat(where)
    except FileNotFoundError:
        return HostPolicy()
    except OSError as exc:
        raise refuse(f"cannot read the host policy: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse(f"the host policy is {hostfiles.kind(st.st_mode)}, not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise refuse(f"the host policy is owned by uid {st.st_uid}: it must be owned by root "
                     "(or the user running reconciler)")
    if st.st_mode & 0o022:
        raise refuse(f"the host policy has mode {stat.S_IMODE(st.st_mode):04o}: it must not "
                     "be group- or world-writable (chmod go-w)")
    if st.st_size > MAX_POLICY_BYTES:
        raise refuse(f"the host policy is larger than {MAX_POLICY_BYTES} bytes")
    data, locations = read_yaml(where, shown)
    values, problems, notices = parse_policy(data)
    if problems:
        raise SpecError(Problem(locations.get((key,), Location(shown, None)), (key,),
                                f"{message}; host policy refused, nothing dangerous is "
                                "allowed") for key, message in problems)
    return HostPolicy(
        **values,
        source=shown,
        notices=tuple((locations.get((key,), Location(shown, None)).line, key, message)
                      for key, message in notices),
    )


def parse_policy(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]],
                                                  list[tuple[str, str]]]:
    """Policy mapping -> (HostPolicy keyword values, problems, notices), each problem and
    notice as (key, message). Strict: YAML booleans only, lists of absolute paths only."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    notices: list[tuple[str, str]] = []
    for key, value in data.items():
        if key not in POLICY_KEYS:
            problems.append((key, "unknown key (known: " + ", ".join(POLICY_KEYS) + ")"))
        elif key in _POLICY_BOOLS:
            if isinstance(value, bool):
                values[key] = value
            else:
                problems.append((key, f"must be true or false (a YAML boolean), not "
                                      f"{_shown(value)}"))
        elif key == "allow_capabilities":
            caps = _policy_list(key, value, problems)
            bad = [c for c in caps if not re.fullmatch(r"[A-Za-z_]+", c)]
            if bad:
                problems.append((key, f"{_shown(bad[0])} is not a capability name"))
            values[key] = frozenset(c.upper().removeprefix("CAP_") for c in caps)
        elif key == "allow_sysctls":
            names = _policy_list(key, value, problems)
            bad = [n for n in names if not re.fullmatch(r"[a-z0-9_.]+\*?", n)]
            if bad:
                problems.append((key, f"{_shown(bad[0])} is not a sysctl name or prefix"))
            values[key] = tuple(names)
        else:
            paths = _policy_list(key, value, problems)
            for item in paths:
                problem = _policy_path_problem(item)
                if problem:
                    problems.append((key, problem))
                elif item == "/":
                    notices.append((key, "`/` allows every path of the host "
                                         + ("to be bind-mounted" if key == "allow_bind_mounts"
                                            else "to hold env files")))
            values[key] = tuple(p.rstrip("/") or "/" for p in paths)
    return values, problems, notices


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _policy_list(key: str, value: object, problems: list[tuple[str, str]]) -> list[str]:
    if not isinstance(value, list):
        problems.append((key, f"must be a list (e.g. [a, b]), not {_shown(value)}"))
        return []
    if not all(isinstance(v, str) for v in value):
        problems.append((key, "must be a list of strings"))
        return []
    return list(value)


def _policy_path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"{_shown(path)} is not an absolute path"
    if "\0" in path or any(p in (".", "..") for p in path.split("/")):
        return f"{_shown(path)} must be a plain absolute path (no . or .. parts)"
    if path != "/" and not path.strip("/"):
        return f"{_shown(path)} means the whole host: write exactly / to allow that"
    return None


def input_stamp(loaded: LoadedSpec, *, now_ns: int | None = None) -> tuple[Any, ...] | None:
    """Cheap identity of everything `loaded` was read from (stat of the spec dir, its files,
    env files and bind-mounted files, and the git HEAD): equal stamps mean an equal spec, so
    the controller can skip re-reading an unchanged spec. None when a file changed in the
    last two seconds (a write may still be in flight: never cache a racy read)."""
    paths = [loaded.directory, *loaded.files]
    paths += [e.path for envs in loaded.env_files.values() for e in envs]
    paths += [c.path for c in loaded.contents.values() if c.path]
    for mounts in loaded.mounted.values():
        for m in mounts:
            paths.append(m.host_path)
            if os.path.isdir(m.host_path):
                for dirpath, dirnames, filenames in os.walk(m.host_path):
                    dirnames[:] = sorted(dirnames)
                    paths += [dirpath, *(os.path.join(dirpath, f) for f in sorted(filenames))]
    for build in loaded.builds.values():  # a changed build context is a changed image
        paths.append(build.dockerfile)
        for dirpath, dirnames, filenames in os.walk(build.context):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
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
