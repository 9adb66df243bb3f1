"""Translate docker compose files into a reconciler spec (`reconciler import-compose`).

Pure: compose text in, spec data, rendered spec files and remarks out. It reads no file (the
CLI passes the compose texts, the environment, the `.env` values and the overrides), writes no
file, never touches Docker and never reads the clock. Every compose key it cannot carry over is
reported as a remark with file, line and key path; nothing is dropped silently (except `x-`
extension keys, which compose itself ignores).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from io import StringIO
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, merge_attrib
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

from reconciler.loading import format_path
from reconciler.specs import DEFAULT_TIERS, find_cycles, parse_duration

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 5000
SCHEMA_COMMENT = "# yaml-language-server: $schema=../reconciler.schema.json"

# Well-known images, matched on the last path component of the repository (no registry/tag).
_INFRA_NAMES = frozenset({
    "postgres", "postgresql", "postgis", "mysql", "mariadb", "redis", "redis-stack",
    "redis-stack-server", "redis-sentinel", "valkey", "mongo", "mongodb",
    "mongodb-community-server", "kafka", "zookeeper", "rabbitmq", "elasticsearch", "opensearch",
    "nats", "nats-streaming", "minio",
    "cp-kafka", "cp-zookeeper", "cp-server", "cp-enterprise-kafka",  # confluentinc
})
_EXTERNAL_NAMES = frozenset({
    "nginx", "nginx-unprivileged", "openresty", "traefik", "caddy", "haproxy", "kong",
})
_HEALTH_FRIENDLY = {"timeout": 15.0, "retries": 5, "start_period": 90.0}


class Kind(StrEnum):
    ERROR = "error"  # the import cannot produce a spec (nothing is written)
    UNSUPPORTED = "unsupported"  # a compose key that is not carried over
    NOTE = "note"  # carried over differently, or something the operator should know
    WARNING = "warning"  # carried over as is, but risky in production


@dataclass(frozen=True, slots=True)
class Remark:
    kind: Kind
    file: str
    line: int | None
    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = format_path(self.path)
        return f"{where}: {key + ': ' if key else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class Source:
    """One compose file: the name shown in remarks and its text."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class CycleReport:
    cycles: tuple[tuple[str, ...], ...] = ()  # each `a -> b -> a`
    upward: tuple[tuple[str, str, str, str], ...] = ()  # (service, tier, dependency, tier)
    drop: tuple[tuple[str, str], ...] = ()  # (service, dependency) edges proposed for removal
    reasons: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out: list[str] = []
        if not self.cycles:
            return out
        out.append(f"{len(self.cycles)} dependency cycle(s):")
        out.extend("  " + " -> ".join(c) for c in self.cycles)
        if self.upward:
            out.append("edges that point upward (a service may depend only on its own or an "
                       "earlier tier):")
            out.extend(f"  {a} ({ta}) -> {b} ({tb})" for a, ta, b, tb in self.upward)
        out.append("proposed edges to drop:")
        for a, b in self.drop:
            reason = self.reasons.get((a, b), "")
            out.append(f"  {a} -> {b}" + (f"   ({reason})" if reason else ""))
        return out


@dataclass(frozen=True, slots=True)
class ImportResult:
    project: str
    tiers: tuple[str, ...]
    services: Mapping[str, Mapping[str, Any]]  # spec service mappings (plain data)
    placement: Mapping[str, str]  # service -> tier
    files: Mapping[str, str]  # spec file name -> YAML text ({} when nothing may be written)
    remarks: tuple[Remark, ...]
    cycles: CycleReport

    @property
    def errors(self) -> list[Remark]:
        return [r for r in self.remarks if r.kind is Kind.ERROR]

    @property
    def ok(self) -> bool:
        return bool(self.files)


# --- YAML with locations ------------------------------------------------------------------


@dataclass(slots=True)
class Y:
    """A YAML value and where it was written (a mapping entry: the key's line)."""

    value: Any  # dict[str, Y] | list[Y] | str | int | float | bool | None
    file: str
    line: int | None


class ComposeError(Exception):
    def __init__(self, remark: Remark) -> None:
        self.remark = remark
        super().__init__(str(remark))


def _err(file: str, line: int | None, path: tuple[str | int, ...], message: str) -> Remark:
    return Remark(Kind.ERROR, file, line, path, message)


def _key_line(node: CommentedMap, key: Any, default: int | None) -> int | None:
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, TypeError, AttributeError):
        pass
    for source in getattr(node, merge_attrib, None) or ():  # `<<` merge keys
        if isinstance(source, CommentedMap) and key in source:
            return _key_line(source, key, default)
    return default


def _wrap(node: Any, file: str, line: int | None) -> Y:
    if isinstance(node, CommentedMap):
        out: dict[str, Y] = {}
        for key, value in node.items():
            if isinstance(key, bool):
                skey = str(key).lower()
            elif isinstance(key, str | int | float):
                skey = str(key)
            else:
                raise ComposeError(_err(file, line, (), "mapping keys must be strings"))
            out[skey] = _wrap(value, file, _key_line(node, key, line))
        return Y(out, file, line)
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            try:
                iline: int | None = int(node.lc.item(i)[0]) + 1
            except (KeyError, TypeError, AttributeError, IndexError):
                iline = line
            items.append(_wrap(value, file, iline))
        return Y(items, file, line)
    if node is None or isinstance(node, bool | int | float):
        return Y(node, file, line)
    return Y(str(node), file, line)


def parse(source: Source) -> Y:
    """Parse one compose file (YAML 1.2, duplicates rejected, alias/depth caps)."""
    if len(source.text) > MAX_BYTES:
        raise ComposeError(_err(source.name, None, (), f"larger than {MAX_BYTES} bytes"))
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        depth = aliases = 0
        for event in yaml.parse(source.text):
            if isinstance(event, MappingStartEvent | SequenceStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ComposeError(_err(source.name, None, (), "nesting too deep"))
            elif isinstance(event, MappingEndEvent | SequenceEndEvent):
                depth -= 1
            elif isinstance(event, AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise ComposeError(_err(source.name, None, (), "too many aliases"))
        docs = [d for d in yaml.load_all(source.text) if d is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise ComposeError(_err(source.name, line, (), message.split(" with value")[0])) from None
    except YAMLError as exc:
        raise ComposeError(_err(source.name, None, (), " ".join(str(exc).split())[:200])) from None
    if not docs:
        return Y({}, source.name, 1)
    if len(docs) > 1:
        raise ComposeError(_err(source.name, None, (), "one YAML document per compose file"))
    root = _wrap(docs[0], source.name, 1)
    if not isinstance(root.value, dict):
        raise ComposeError(_err(source.name, 1, (), "a compose file must be a mapping"))
    return root


def plain(y: Y | None) -> Any:
    if y is None:
        return None
    if isinstance(y.value, dict):
        return {k: plain(v) for k, v in y.value.items()}
    if isinstance(y.value, list):
        return [plain(v) for v in y.value]
    return y.value


# --- interpolation ------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Interpolator:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.unset: dict[str, tuple[str, int | None, tuple[str | int, ...]]] = {}
        self.errors: list[Remark] = []

    def walk(self, y: Y, path: tuple[str | int, ...]) -> None:
        if isinstance(y.value, dict):
            for key, value in y.value.items():
                self.walk(value, (*path, key))
        elif isinstance(y.value, list):
            for i, value in enumerate(y.value):
                self.walk(value, (*path, i))
        elif isinstance(y.value, str) and "$" in y.value:
            try:
                y.value = self.expand(y.value, y, path)
            except ValueError as exc:
                self.errors.append(_err(y.file, y.line, path, str(exc)))

    def expand(self, text: str, y: Y, path: tuple[str | int, ...]) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch != "$":
                out.append(ch)
                i += 1
                continue
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt == "{":
                end, depth = i + 2, 1
                while end < len(text) and depth:
                    if text[end] == "{":
                        depth += 1
                    elif text[end] == "}":
                        depth -= 1
                    end += 1
                if depth:
                    raise ValueError(f"invalid interpolation format in {text!r}")
                out.append(self.braced(text[i + 2:end - 1], y, path))
                i = end
            else:
                match = _NAME.match(text, i + 1)
                if match is None:
                    out.append("$")  # compose keeps a lone `$`
                    i += 1
                else:
                    out.append(self.lookup(match.group(0), y, path) or "")
                    i = match.end()
        return "".join(out)

    def lookup(self, name: str, y: Y, path: tuple[str | int, ...]) -> str | None:
        if name in self.environ:
            return self.environ[name]
        self.unset.setdefault(name, (y.file, y.line, path))
        return None

    def braced(self, body: str, y: Y, path: tuple[str | int, ...]) -> str:
        match = _NAME.match(body)
        if match is None:
            raise ValueError(f"invalid interpolation format ${{{body}}}")
        name, rest = match.group(0), body[match.end():]
        value = self.environ.get(name)
        if not rest:
            return self.lookup(name, y, path) or ""
        for op in (":-", ":?", ":+", "-", "?", "+"):
            if rest.startswith(op):
                word = rest[len(op):]
                break
        else:
            raise ValueError(f"invalid interpolation format ${{{body}}}")
        empty = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return self.expand(word, y, path) if empty else str(value)
        if op in (":+", "+"):
            return "" if empty else self.expand(word, y, path)
        if empty:
            message = self.expand(word, y, path) or f"{name} is required"
            raise ValueError(f"required variable {name} is missing a value: {message}")
        return str(value)


# --- merging (docker compose -f a -f b) ---------------------------------------------------

_LIST_TO_MAP = ("environment", "labels", "depends_on", "networks", "extra_hosts")
_REPLACED = ("command", "entrypoint")
_APPEND_UNIQUE = ("ports", "expose", "env_file", "cap_add", "cap_drop", "dns", "dns_search",
                  "profiles", "devices", "security_opt", "links", "external_links", "tmpfs")


def _split_entry(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    return key.strip(), (value if sep else None)


def _normalise_service(svc: Y) -> Y:
    """List forms that compose merges as mappings become mappings (their lines kept)."""
    if not isinstance(svc.value, dict):
        return svc
    for key in _LIST_TO_MAP:
        y = svc.value.get(key)
        if y is None or not isinstance(y.value, list):
            continue
        mapping: dict[str, Y] = {}
        for item in y.value:
            if key in ("environment", "labels", "extra_hosts") and isinstance(item.value, str):
                name, value = _split_entry(item.value)
                if key == "extra_hosts" and value is None:
                    name, _, value = item.value.partition(":")
                mapping[name] = Y(value, item.file, item.line)
            elif isinstance(item.value, str | int | float):
                mapping[str(item.value)] = Y(None, item.file, item.line)
        if key == "depends_on":  # the short form: remembered, written back as a list
            for item in mapping.values():
                item.value = {"__short__": Y(True, item.file, item.line)}
        svc.value[key] = Y(mapping, y.file, y.line)
    for key in ("env_file", "volumes", "ports", "expose", "profiles", "cap_add", "tmpfs",
                "dns"):
        y = svc.value.get(key)
        if y is not None and not isinstance(y.value, list | dict) and y.value is not None:
            svc.value[key] = Y([Y(y.value, y.file, y.line)], y.file, y.line)
    return svc


def _volume_target(item: Y) -> str | None:
    if isinstance(item.value, dict):
        target = item.value.get("target")
        return str(target.value) if target is not None else None
    if isinstance(item.value, str):
        parts = item.value.split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    return None


def _merge(base: Y, over: Y, key: str | None = None) -> Y:
    """Compose's merge rules for one value: mappings merged, later scalars win."""
    if key in _REPLACED:
        return over
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        out = dict(base.value)
        for k, v in over.value.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        return Y(out, over.file, over.line)
    if isinstance(base.value, list) and isinstance(over.value, list):
        if key == "volumes":
            targets = {_volume_target(i) for i in over.value}
            kept = [i for i in base.value if _volume_target(i) not in targets]
            return Y(kept + list(over.value), over.file, over.line)
        if key in _APPEND_UNIQUE:
            seen = {repr(plain(i)) for i in base.value}
            extra = [i for i in over.value if repr(plain(i)) not in seen]
            return Y(list(base.value) + extra, over.file, over.line)
        return over
    return over


def merge_files(roots: Sequence[Y]) -> Y:
    merged = roots[0]
    for root in roots[1:]:
        merged = _merge_root(merged, root)
    return merged


def _merge_root(base: Y, over: Y) -> Y:
    out = dict(base.value)
    for key, value in over.value.items():
        if key == "services" and key in out and isinstance(value.value, dict) \
                and isinstance(out[key].value, dict):
            services = dict(out[key].value)
            for name, svc in value.value.items():
                services[name] = (_merge_service(services[name], svc) if name in services
                                  else svc)
            out[key] = Y(services, value.file, value.line)
        elif key in out:
            out[key] = _merge(out[key], value, key)
        else:
            out[key] = value
    return Y(out, over.file, over.line)


def _merge_service(base: Y, over: Y) -> Y:
    if not (isinstance(base.value, dict) and isinstance(over.value, dict)):
        return over
    out = dict(base.value)
    for key, value in over.value.items():
        out[key] = _merge(out[key], value, key) if key in out else value
    return Y(out, over.file, over.line)


# --- paths --------------------------------------------------------------------------------


def rebase(path: str, *, project_dir: str, out_dir: str) -> str:
    """A path relative to the compose project dir -> relative to the spec dir (`./` or `../`)."""
    if path.startswith(("/", "~")) or not project_dir or not out_dir:
        return path
    full = os.path.normpath(os.path.join(project_dir, path))
    if os.path.commonpath([full, out_dir]) == os.path.sep:  # nothing in common: stay absolute
        return full
    rel = os.path.relpath(full, out_dir)
    return rel if rel.startswith("..") else "./" + rel


def sanitise_project(name: str) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    text = re.sub(r"-{2,}", "-", text)[:40].strip("-")
    return text or "app"


def compose_project_name(name: str) -> str:
    """How compose itself normalises a project name (used in its volume names)."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def image_role(image: str) -> str | None:
    """'infrastructure' / 'external' for well-known images, else None."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    if last in _EXTERNAL_NAMES:
        return "external"
    if last in _INFRA_NAMES:
        return "infrastructure"
    return None


# --- one service --------------------------------------------------------------------------

_SERVICE_ORDER = (
    "tier", "image", "pull_policy", "replicas", "profiles", "command", "entrypoint",
    "env_file", "environment", "ports", "volumes", "networks", "depends_on", "healthcheck",
    "update", "resources", "restart", "labels", "stop_grace_period", "stop_signal", "user",
    "working_dir", "hostname", "privileged", "network_mode", "pid", "ipc", "cap_add",
    "shm_size", "logging", "ulimits", "init", "read_only", "tmpfs", "security_opt", "cap_drop",
    "extra_hosts",
)
_COPY_STR = ("stop_signal", "user", "working_dir", "hostname", "pid", "ipc")
_HINTS = {
    "links": "service names resolve over shared networks without links",
    "external_links": "service names resolve over shared networks",
    "secrets": "put the values into an env_file on the host (mode 0600)",
    "configs": "bind-mount the file from the spec repository instead",
    "platform": "pin an image built for the host's architecture",
    "volumes_from": "mount the same named volume in both services",
    "extends": "merge the base file with an extra -f instead",
}


def _s(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class _Service:
    name: str
    y: Y
    data: dict[str, Any] = field(default_factory=dict)
    remarks: list[Remark] = field(default_factory=list)
    depends: dict[str, str] = field(default_factory=dict)  # dep -> condition
    depends_short: bool = True
    exposed: list[str] = field(default_factory=list)  # container ports (expose + ports)

    def where(self, y: Y | None) -> tuple[str, int | None]:
        return (y.file, y.line) if y is not None else (self.y.file, self.y.line)

    def remark(self, kind: Kind, y: Y | None, path: Sequence[str | int], message: str) -> None:
        file, line = self.where(y)
        self.remarks.append(Remark(kind, file, line, ("services", self.name, *path), message))

    def number(self, y: Y, path: Sequence[str | int], *, integer: bool) -> int | float | None:
        """A number (interpolated values arrive as strings); an error remark otherwise."""
        try:
            if isinstance(y.value, bool):
                raise ValueError
            return int(str(y.value)) if integer else float(str(y.value))
        except ValueError:
            self.remark(Kind.ERROR, y, path, f"expected {'an integer' if integer else 'a number'}"
                        f", got {y.value!r}")
            return None

    def unsupported(self, y: Y | None, path: Sequence[str | int], hint: str = "") -> None:
        self.remark(Kind.UNSUPPORTED, y, path,
                    "not supported (dropped)" + (f": {hint}" if hint else ""))


class _Converter:
    def __init__(self, *, project_dir: str, out_dir: str) -> None:
        self.project_dir = project_dir
        self.out_dir = out_dir

    def path(self, text: str) -> str:
        return rebase(text, project_dir=self.project_dir, out_dir=self.out_dir)

    def service(self, name: str, y: Y) -> _Service:
        svc = _Service(name, y)
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, (), "a service must be a mapping")
            return svc
        items: dict[str, Y] = y.value
        image, build = items.get("image"), items.get("build")
        if image is None or not isinstance(image.value, str) or not image.value.strip():
            if build is not None:
                svc.remark(Kind.ERROR, build, ("build",),
                           "build-only service: the reconciler runs images, it does not build "
                           "them. Build and push the image in CI, then add `image: <ref>` (for "
                           "example in an extra -f file), or leave the service out")
            elif image is not None and not isinstance(image.value, str | None):
                svc.remark(Kind.ERROR, image, ("image",), "the image must be a string")
            elif image is not None:
                svc.remark(Kind.ERROR, image, ("image",), "the image is empty after "
                           "interpolation: set its variable (environment, .env or --env-file)")
            else:
                svc.remark(Kind.ERROR, y, ("image",), "a service needs an image")
        else:
            svc.data["image"] = image.value.strip()
        if build is not None and "image" in svc.data:
            svc.remark(Kind.NOTE, build, ("build",), "dropped: the image is kept; build and push "
                       "it in CI (the reconciler never builds)")
        for key, value in items.items():
            if key.startswith("x-") or key in ("image", "build"):
                continue
            handler = getattr(self, "k_" + key.replace("-", "_"), None)
            if handler is None:
                svc.unsupported(value, (key,), _HINTS.get(key, ""))
            else:
                handler(svc, value, items)
        if "replicas" in svc.data and svc.data["replicas"] == 1:
            del svc.data["replicas"]
        return svc

    # -- keys (each k_<name>(svc, value, all items)) --

    def _strlist(self, svc: _Service, y: Y, key: str) -> list[str] | None:
        if y.value is None:
            return None
        if isinstance(y.value, list):
            return [_s(i.value) for i in y.value]
        if isinstance(y.value, str):
            try:
                return shlex.split(y.value)
            except ValueError:
                svc.remark(Kind.ERROR, y, (key,), "cannot split the command into arguments "
                           "(unbalanced quotes)")
                return None
        return [_s(y.value)]

    def k_command(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = self._strlist(svc, y, "command")
        if value is not None:
            svc.data["command"] = value

    def k_entrypoint(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = self._strlist(svc, y, "entrypoint")
        if value is not None:
            svc.data["entrypoint"] = value

    def k_environment(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, ("environment",), "expected a mapping or a list")
            return
        env: dict[str, str] = {}
        for key, item in y.value.items():
            if item.value is None:
                svc.remark(Kind.NOTE, item, ("environment", key), "has no value (compose "
                           "passes it from the shell): dropped; put it into an env_file")
                continue
            env[key] = _s(item.value)
        if env:
            svc.data["environment"] = env

    def k_env_file(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        items = y.value if isinstance(y.value, list) else [y]
        out: list[str] = []
        for i, item in enumerate(items):
            if isinstance(item.value, dict):
                path = item.value.get("path")
                if path is None:
                    svc.remark(Kind.ERROR, item, ("env_file", i), "env_file entry without path")
                    continue
                required = item.value.get("required")
                if required is not None and required.value is False:
                    svc.remark(Kind.NOTE, required, ("env_file", i, "required"),
                               "required: false is not supported: the file must exist on the "
                               "host (a preview only warns)")
                for extra in item.value:
                    if extra not in ("path", "required"):
                        svc.unsupported(item.value[extra], ("env_file", i, extra))
                out.append(self.path(_s(path.value)))
            elif item.value is not None:
                out.append(self.path(_s(item.value)))
        if out:
            svc.data["env_file"] = out

    def k_ports(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        out: list[str] = []
        if not isinstance(y.value, list):
            svc.remark(Kind.ERROR, y, ("ports",), "expected a list")
            return
        for i, item in enumerate(y.value if isinstance(y.value, list) else []):
            if isinstance(item.value, dict):
                d = {k: plain(v) for k, v in item.value.items()}
                target = d.get("target")
                if target is None:
                    svc.remark(Kind.ERROR, item, ("ports", i), "long-form port without target")
                    continue
                for extra in d:
                    if extra in ("mode", "name", "app_protocol"):
                        svc.remark(Kind.NOTE, item.value[extra], ("ports", i, extra),
                                   "ignored (not needed on one host)")
                    elif extra not in ("target", "published", "host_ip", "protocol"):
                        svc.unsupported(item.value[extra], ("ports", i, extra))
                text = str(target)
                if d.get("published") not in (None, ""):
                    text = f"{d['published']}:{text}"
                    if d.get("host_ip"):
                        text = f"{d['host_ip']}:{text}"
                if d.get("protocol") and d["protocol"] != "tcp":
                    text += f"/{d['protocol']}"
                out.append(text)
                svc.exposed.append(str(target))
            elif item.value is not None:
                text = _s(item.value)
                out.append(text)
                svc.exposed.append(text.split("/")[0].rsplit(":", 1)[-1])
        if out:
            svc.data["ports"] = out

    def k_expose(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        ports = [_s(i.value) for i in (y.value if isinstance(y.value, list) else [])]
        svc.exposed.extend(p.split("/")[0] for p in ports)
        svc.remark(Kind.NOTE, y, ("expose",),
                   "dropped: containers on a shared network reach every port without it (to "
                   "route the edge to it, give it `expose: {port: N}` and set a top-level "
                   "`edge:`)")

    def k_volumes(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        out: list[str] = []
        for i, item in enumerate(y.value if isinstance(y.value, list) else []):
            path: tuple[str | int, ...] = ("volumes", i)
            if isinstance(item.value, dict):
                entry = self._long_volume(svc, item, path)
            elif isinstance(item.value, str):
                entry = self._short_volume(svc, item, path)
            else:
                svc.remark(Kind.ERROR, item, path, "expected a string or a mapping")
                entry = None
            if entry is not None:
                out.append(entry)
        if out:
            svc.data["volumes"] = out

    def _short_volume(self, svc: _Service, item: Y, path: tuple[str | int, ...]) -> str | None:
        parts = str(item.value).split(":")
        if len(parts) == 1:
            svc.remark(Kind.UNSUPPORTED, item, path, "not supported (dropped): anonymous "
                       "volume; give it a name (a top-level volume) to keep its data")
            return None
        source, target = parts[0], parts[1]
        modes = parts[2].split(",") if len(parts) > 2 else []
        kept: list[str] = []
        for mode in modes:
            if mode in ("z", "Z"):
                svc.remark(Kind.NOTE, item, path, f"SELinux relabel suffix :{mode} dropped "
                           "(relabel the host path once with chcon if SELinux enforces)")
            elif mode == "ro":
                kept.append(mode)
            elif mode and mode != "rw":
                svc.remark(Kind.NOTE, item, path, f"mount option {mode!r} dropped")
        if source.startswith(".") or (not source.startswith(("/", "~")) and "/" in source):
            source = self.path(source)
        return f"{source}:{target}" + (":ro" if "ro" in kept else "")

    def _long_volume(self, svc: _Service, item: Y, path: tuple[str | int, ...]) -> str | None:
        d: dict[str, Y] = item.value
        kind = _s(d["type"].value) if "type" in d else "volume"
        source = _s(d["source"].value) if "source" in d and d["source"].value else ""
        target = _s(d["target"].value) if "target" in d else ""
        if kind not in ("volume", "bind"):
            svc.remark(Kind.UNSUPPORTED, item, path, f"not supported (dropped): {kind} mount")
            return None
        if not target:
            svc.remark(Kind.ERROR, item, path, "mount without target")
            return None
        if not source:
            svc.remark(Kind.UNSUPPORTED, item, path, "not supported (dropped): anonymous "
                       "volume; give it a name (a top-level volume) to keep its data")
            return None
        read_only = "read_only" in d and d["read_only"].value is True
        for key, value in d.items():
            if key in ("type", "source", "target", "read_only"):
                continue
            if key == "bind" and isinstance(value.value, dict):
                for sub, subval in value.value.items():
                    if sub == "selinux":
                        svc.remark(Kind.NOTE, subval, (*path, "bind", sub),
                                   "SELinux relabel dropped")
                    elif sub == "create_host_path":
                        svc.remark(Kind.NOTE, subval, (*path, "bind", sub), "dropped: the "
                                   "bind source must exist")
                    else:
                        svc.unsupported(subval, (*path, "bind", sub))
            elif key == "consistency":
                svc.remark(Kind.NOTE, value, (*path, key), "dropped (no effect on Linux)")
            else:
                svc.unsupported(value, (*path, key))
        if kind == "bind" and not source.startswith(("/", "~")):
            source = self.path(source if source.startswith(".") else "./" + source)
        return f"{source}:{target}" + (":ro" if read_only else "")

    def k_networks(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, ("networks",), "expected a list or a mapping")
            return
        names: list[str] = []
        for net, conf in y.value.items():
            names.append(net)
            if isinstance(conf.value, dict):
                for key, value in conf.value.items():
                    if key == "aliases":
                        svc.remark(Kind.NOTE, value, ("networks", net, key),
                                   f"dropped: each container is reachable as {svc.name!r}; "
                                   "other aliases are not supported")
                    else:
                        svc.unsupported(value, ("networks", net, key))
        svc.data["networks"] = names

    def k_healthcheck(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, ("healthcheck",), "expected a mapping")
            return
        out: dict[str, Any] = {}
        for key, value in y.value.items():
            if key == "test":
                if isinstance(value.value, str):
                    out["test"] = ["CMD-SHELL", value.value]
                elif isinstance(value.value, list):
                    out["test"] = [_s(i.value) for i in value.value]
                else:
                    svc.remark(Kind.ERROR, value, ("healthcheck", key),
                               "expected a string or a list")
            elif key in ("interval", "timeout", "start_period"):
                out[key] = _s(value.value)
            elif key == "retries":
                retries = svc.number(value, ("healthcheck", key), integer=True)
                if retries is not None:
                    out[key] = retries
            elif key == "disable":
                if value.value is True:
                    out["disable"] = True
            else:
                svc.unsupported(value, ("healthcheck", key),
                                "needs a newer engine" if key == "start_interval" else "")
        if out:
            svc.data["healthcheck"] = out

    def k_depends_on(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, ("depends_on",), "expected a list or a mapping")
            return
        for dep, conf in y.value.items():
            condition = "service_healthy"
            if isinstance(conf.value, dict):
                if "__short__" not in conf.value:
                    svc.depends_short = False
                for key, value in conf.value.items():
                    if key == "condition":
                        condition = _s(value.value)
                    elif key == "required" and value.value is False:
                        svc.remark(Kind.NOTE, value, ("depends_on", dep, key),
                                   "required: false dropped (the dependency must exist)")
                    elif key == "restart":
                        svc.remark(Kind.NOTE, value, ("depends_on", dep, key), "dropped: the "
                                   "reconciler restarts dependents only when their config "
                                   "changes")
                    elif key not in ("__short__", "required"):
                        svc.unsupported(value, ("depends_on", dep, key))
            svc.depends[dep] = condition

    def k_restart(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = "no" if y.value is False else _s(y.value)
        if value.startswith("on-failure:"):
            svc.remark(Kind.NOTE, y, ("restart",), "the retry count is dropped "
                       "(on-failure retries without limit)")
            value = "on-failure"
        if value not in ("no", "always", "on-failure", "unless-stopped"):
            svc.remark(Kind.ERROR, y, ("restart",), f"unknown restart policy {value!r}")
            return
        svc.data["restart"] = value

    def k_labels(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            svc.remark(Kind.ERROR, y, ("labels",), "expected a mapping or a list")
            return
        out: dict[str, str] = {}
        for key, value in y.value.items():
            if key.startswith("reconciler."):
                svc.remark(Kind.NOTE, value, ("labels", key), "dropped: the reconciler. prefix "
                           "is reserved")
            else:
                out[key] = "" if value.value is None else _s(value.value)
        if out:
            svc.data["labels"] = out

    def k_stop_grace_period(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data["stop_grace_period"] = _s(y.value)

    def k_profiles(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if isinstance(y.value, list) and y.value:
            svc.data["profiles"] = [_s(i.value) for i in y.value]

    def k_privileged(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if y.value is True:
            svc.data["privileged"] = True

    def k_network_mode(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = _s(y.value)
        if value.startswith(("service:", "container:")):
            svc.unsupported(y, ("network_mode",), "join a shared network instead")
        else:
            svc.data["network_mode"] = value

    def k_cap_add(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if isinstance(y.value, list) and y.value:
            svc.data["cap_add"] = [_s(i.value) for i in y.value]

    def k_logging(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        data = plain(y) or {}
        svc.data["logging"] = {k: v for k, v in data.items() if k in ("driver", "options")}

    def k_ulimits(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data["ulimits"] = plain(y)

    def k_init(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if y.value is True:
            svc.data["init"] = True

    def k_read_only(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        if y.value is True:
            svc.data["read_only"] = True

    def k_tmpfs(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = plain(y)
        svc.data["tmpfs"] = [value] if isinstance(value, str) else list(value or [])

    def k_security_opt(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data["security_opt"] = [_s(v) for v in plain(y) or []]

    def k_cap_drop(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data["cap_drop"] = [_s(v) for v in plain(y) or []]

    def k_extra_hosts(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = plain(y)
        if isinstance(value, dict):
            value = [f"{k}:{v}" for k, v in value.items()]
        svc.data["extra_hosts"] = [_s(v) for v in value or []]

    def k_shm_size(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data["shm_size"] = _s(y.value) if not isinstance(y.value, int) else y.value

    def k_container_name(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.remark(Kind.NOTE, y, ("container_name",), "dropped: the reconciler names "
                   f"containers (<project>-{svc.name}-<replica>-<fingerprint>); other "
                   f"containers reach it as {svc.name!r}")

    def k_mem_limit(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        svc.data.setdefault("resources", {}).setdefault("memory", _s(y.value))

    def k_cpus(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = svc.number(y, ("cpus",), integer=False)
        if value is not None:
            svc.data.setdefault("resources", {}).setdefault("cpus", value)

    def k_scale(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = svc.number(y, ("scale",), integer=True)
        if value is not None:
            svc.data.setdefault("replicas", value)

    def k_pull_policy(self, svc: _Service, y: Y, _: Mapping[str, Y]) -> None:
        value = _s(y.value)
        mapped = {"always": "always", "never": "never", "missing": "missing",
                  "if_not_present": "missing"}.get(value)
        if (mapped is None and value in ("daily", "weekly")) or value.startswith("every_"):
            mapped = "always"
            svc.remark(Kind.NOTE, y, ("pull_policy",), f"{value} -> always")
        if mapped is None:
            svc.unsupported(y, ("pull_policy",))
        elif mapped != "missing":
            svc.data["pull_policy"] = mapped

    def k_deploy(self, svc: _Service, y: Y, items: Mapping[str, Y]) -> None:
        if not isinstance(y.value, dict):
            return
        for key, value in y.value.items():
            path: tuple[str | int, ...] = ("deploy", key)
            if key == "replicas":
                replicas = svc.number(value, path, integer=True)
                if replicas is not None:
                    svc.data["replicas"] = replicas
            elif key == "resources" and isinstance(value.value, dict):
                for sub, subval in value.value.items():
                    if sub == "limits" and isinstance(subval.value, dict):
                        res = svc.data.setdefault("resources", {})
                        for lim, limval in subval.value.items():
                            if lim == "memory":
                                res["memory"] = _s(limval.value)
                            elif lim == "cpus":
                                cpus = svc.number(limval, (*path, sub, lim), integer=False)
                                if cpus is not None:
                                    res["cpus"] = cpus
                            else:
                                svc.unsupported(limval, (*path, sub, lim))
                    else:
                        svc.unsupported(subval, (*path, sub),
                                        "only limits are enforced" if sub == "reservations"
                                        else "")
            elif key == "update_config" and isinstance(value.value, dict):
                self._update_config(svc, value, path)
            elif key == "restart_policy" and isinstance(value.value, dict):
                self._restart_policy(svc, value, path, "restart" in items)
            elif key == "mode" and value.value == "replicated":
                continue
            else:
                svc.unsupported(value, path, "swarm only" if key in (
                    "placement", "endpoint_mode", "mode") else (
                    "the reconciler reverts to the last good spec by itself"
                    if key == "rollback_config" else ""))

    def _update_config(self, svc: _Service, y: Y, path: tuple[str | int, ...]) -> None:
        update: dict[str, Any] = {}
        waits: list[tuple[float, str]] = []
        for key, value in y.value.items():
            if key == "order":
                update["order"] = _s(value.value)
            elif key == "parallelism":
                count = svc.number(value, (*path, key), integer=True)
                if count == 0:
                    svc.remark(Kind.NOTE, value, (*path, key), "0 (all at once) -> 1")
                    update["parallelism"] = 1
                elif count is not None:
                    update["parallelism"] = count
            elif key in ("delay", "monitor"):
                try:
                    waits.append((parse_duration(value.value), _s(value.value)))
                except ValueError:
                    svc.remark(Kind.ERROR, value, (*path, key), "invalid duration")
            elif key == "failure_action":
                svc.remark(Kind.NOTE, value, (*path, key), "dropped: on failure the "
                           "reconciler always reverts to the last good spec")
            else:
                svc.unsupported(value, (*path, key))
        if waits:
            update["min_ready"] = max(waits)[1]
        if update:
            svc.data["update"] = update

    def _restart_policy(self, svc: _Service, y: Y, path: tuple[str | int, ...],
                        has_restart: bool) -> None:
        for key, value in y.value.items():
            if key == "condition" and not has_restart:
                mapped = {"none": "no", "on-failure": "on-failure",
                          "any": "always"}.get(_s(value.value))
                if mapped is None:
                    svc.unsupported(value, (*path, key))
                else:
                    svc.data["restart"] = mapped
            elif key == "condition":
                svc.remark(Kind.NOTE, value, (*path, key), "dropped: `restart` is set")
            else:
                svc.unsupported(value, (*path, key))


for _key in _COPY_STR:
    def _copy(self: _Converter, svc: _Service, y: Y, _: Mapping[str, Y],
              key: str = _key) -> None:
        if y.value is not None:
            svc.data[key] = _s(y.value)
    setattr(_Converter, "k_" + _key, _copy)


# --- top level ----------------------------------------------------------------------------


def _top_networks(y: Y, remarks: list[Remark]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(y.value, dict):
        return out
    for name, conf in y.value.items():
        entry: dict[str, Any] = {}
        for key, value in (conf.value.items() if isinstance(conf.value, dict) else ()):
            path = ("networks", name, key)
            if key in ("internal", "external"):
                if isinstance(value.value, dict):  # legacy `external: {name: x}`
                    entry["external"] = True
                    if "name" in value.value:
                        entry["name"] = _s(value.value["name"].value)
                elif value.value is True:
                    entry[key] = True
            elif key in ("driver", "name"):
                entry[key] = _s(value.value)
            elif key == "attachable":
                remarks.append(Remark(Kind.NOTE, value.file, value.line, path, "dropped "
                                      "(swarm only)"))
            else:
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, path,
                                      "not supported (dropped)"))
        out[name] = entry
    return out


def _top_volumes(y: Y, remarks: list[Remark]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(y.value, dict):
        return out
    for name, conf in y.value.items():
        entry: dict[str, Any] = {}
        for key, value in (conf.value.items() if isinstance(conf.value, dict) else ()):
            path = ("volumes", name, key)
            if key == "external":
                if isinstance(value.value, dict):
                    entry["external"] = True
                    if "name" in value.value:
                        entry["name"] = _s(value.value["name"].value)
                elif value.value is True:
                    entry["external"] = True
            elif key in ("driver", "name"):
                entry[key] = _s(value.value)
            else:
                hint = ("create the volume yourself (docker volume create ... with these "
                        "options) and mark it `external: true`") if key == "driver_opts" else ""
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, path,
                                      "not supported (dropped)" + (f": {hint}" if hint else "")))
        out[name] = entry
    return out


# --- tiers and cycles ---------------------------------------------------------------------


def _depths(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Longest path from the roots (services without dependencies); graph must be acyclic."""
    memo: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in memo:
            return memo[node]
        deps = [d for d in graph.get(node, ()) if d in graph and d not in seen]
        value = 1 + max((depth(d, seen | {node}) for d in deps), default=-1)
        memo[node] = value
        return value

    for node in sorted(graph):
        depth(node, frozenset())
    return memo


@dataclass(frozen=True, slots=True)
class Placement:
    tiers: Mapping[str, str]
    moved: Mapping[str, tuple[str, str, str]]  # service -> (from tier, to tier, because of)


def place(
    graph: Mapping[str, Sequence[str]],
    *,
    tiers: Sequence[str],
    roles: Mapping[str, str],
    fixed: Mapping[str, str],
) -> Placement:
    """Tier per service on an acyclic graph.

    `roles`: service -> 'infrastructure'/'external' for well-known images (first/last tier);
    `fixed`: operator overrides (never moved). Others: services depending only on
    infrastructure (or nothing) go to the first middle tier, each further level of
    dependencies one tier later, capped at the last middle tier. Then every service that is
    not fixed moves up to the latest tier among its dependencies.
    """
    index = {t: i for i, t in enumerate(tiers)}
    last = len(tiers) - 1
    middle = list(range(1, last)) if len(tiers) >= 3 else [min(1, last)]
    level: dict[str, int] = {}  # -1: first tier; len(middle): last tier

    def lvl(node: str, stack: frozenset[str]) -> int:
        if node in level:
            return level[node]
        if node in fixed:
            i = index[fixed[node]]
            value = -1 if i == 0 else (len(middle) if i == last and len(tiers) >= 3
                                       else middle.index(i) if i in middle else 0)
        elif roles.get(node) == "infrastructure":
            value = -1
        elif roles.get(node) == "external":
            value = len(middle)
        else:
            deps = [d for d in graph.get(node, ()) if d in graph and d not in stack]
            value = max((lvl(d, stack | {node}) + 1 for d in deps), default=0)
            value = max(0, min(value, len(middle) - 1))
        level[node] = value
        return value

    result: dict[str, int] = {}
    for node in sorted(graph):
        v = lvl(node, frozenset())
        result[node] = 0 if v < 0 else (last if v >= len(middle) else middle[v])
    # a service is in the same or a later tier than its dependencies
    moved: dict[str, tuple[str, str, str]] = {}
    depth = _depths(graph)
    order = sorted(graph, key=lambda n: (depth.get(n, 0), n))
    for node in order:
        if node in fixed:
            continue
        for dep in graph.get(node, ()):
            if dep in result and result[dep] > result[node]:
                before = moved.get(node, (tiers[result[node]], "", ""))[0]
                result[node] = result[dep]
                moved[node] = (before, tiers[result[node]], dep)
    return Placement({n: tiers[i] for n, i in result.items()}, moved)


def break_cycles(
    graph: Mapping[str, Sequence[str]], roles: Mapping[str, str]
) -> tuple[list[list[str]], list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Every cycle (as reported by `find_cycles`, repeated until none is left) and the edges
    proposed for removal, each with a reason."""
    work = {n: list(d) for n, d in graph.items()}
    cycles_all: list[list[str]] = []
    drops: list[tuple[str, str]] = []
    reasons: dict[tuple[str, str], str] = {}
    for _ in range(len(graph) + 1):
        cycles = find_cycles(work)
        if not cycles:
            break
        in_cycle = {(c[i], c[i + 1]) for c in cycles for i in range(len(c) - 1)}
        acyclic = {n: [d for d in deps if (n, d) not in in_cycle] for n, deps in work.items()}
        depth = _depths(acyclic)
        dependents: dict[str, int] = {}
        for deps in work.values():
            for d in deps:
                dependents[d] = dependents.get(d, 0) + 1
        for cycle in cycles:
            cycles_all.append(cycle)
            edges = [(cycle[i], cycle[i + 1]) for i in range(len(cycle) - 1)]
            if any(e in drops for e in edges):
                continue
            best = min(edges, key=lambda e: _drop_rank(e, roles, depth, dependents))
            drops.append(best)
            reasons[best] = _drop_reason(best, roles, depth)
            work[best[0]] = [d for d in work[best[0]] if d != best[1]]
    return cycles_all, drops, reasons


def _drop_rank(edge: tuple[str, str], roles: Mapping[str, str], depth: Mapping[str, int],
               dependents: Mapping[str, int]) -> tuple[int, int, int, str, str]:
    a, b = edge
    if roles.get(a) == "infrastructure" and roles.get(b) != "infrastructure":
        kind = 0  # infrastructure depending on an application
    elif roles.get(b) == "external":
        kind = 1  # nothing depends on the edge proxy
    else:
        kind = 2
    # an edge to a service with deeper dependencies points upward; among equals, drop the one
    # to the service fewer others depend on (the less foundational one)
    return (kind, -(depth.get(b, 0) - depth.get(a, 0)), dependents.get(b, 0), a, b)


def _drop_reason(edge: tuple[str, str], roles: Mapping[str, str],
                 depth: Mapping[str, int]) -> str:
    a, b = edge
    if roles.get(a) == "infrastructure" and roles.get(b) != "infrastructure":
        return f"{a} is infrastructure and should not depend on an application"
    if roles.get(b) == "external":
        return f"{b} is the edge proxy: nothing should depend on it"
    if depth.get(b, 0) > depth.get(a, 0):
        return f"{b} has deeper dependencies of its own than {a}"
    return f"{b} is the less depended-upon service in the cycle"


# --- the import ---------------------------------------------------------------------------


def import_compose(
    sources: Sequence[Source],
    *,
    environ: Mapping[str, str],
    project_dir: str = "",
    out_dir: str = "",
    project_fallback: str = "app",
    tiers: Sequence[str] = DEFAULT_TIERS,
    overrides: Mapping[str, str] | None = None,
    break_cycles_: bool = False,
) -> ImportResult:
    """Compose files (merged in order, like `docker compose -f a -f b`) -> spec files.

    `environ`: variables for interpolation (the shell's environment over the `.env` file);
    `project_dir`/`out_dir`: absolute directories that relative paths are rebased between.
    """
    remarks: list[Remark] = []
    overrides = dict(overrides or {})
    tiers = tuple(tiers)

    def failed(cycles: CycleReport | None = None, project: str = "") -> ImportResult:
        return ImportResult(project, tiers, {}, {}, {}, tuple(_sorted(remarks)),
                            cycles or CycleReport())

    if not tiers or len(set(tiers)) != len(tiers) or not all(
            re.fullmatch(r"[a-z0-9][a-z0-9-]*", t) for t in tiers):
        remarks.append(_err("--tiers", None, (), "tiers must be unique names of [a-z0-9-]"))
        return failed()
    roots: list[Y] = []
    interp = _Interpolator(environ)
    for source in sources:
        try:
            root = parse(source)
        except ComposeError as exc:
            remarks.append(exc.remark)
            continue
        root.value = {k: v for k, v in root.value.items() if not k.startswith("x-")}
        interp.walk(root, ())
        in_file = root.value.get("services")
        if in_file is not None and isinstance(in_file.value, dict):
            for svc_y in in_file.value.values():
                _normalise_service(svc_y)
        roots.append(root)
    remarks.extend(interp.errors)
    for name, (file, line, path) in sorted(interp.unset.items()):
        remarks.append(Remark(Kind.WARNING, file, line, path,
                              f"variable {name} is not set: an empty string was used"))
    if len(roots) != len(sources) or interp.errors:
        return failed()
    merged = merge_files(roots)
    top: dict[str, Y] = merged.value

    compose_project = compose_project_name(
        _s(top["name"].value) if "name" in top and top["name"].value
        else environ.get("COMPOSE_PROJECT_NAME") or project_fallback)
    project = sanitise_project(compose_project)
    for key, value in top.items():
        if key == "version":
            remarks.append(Remark(Kind.NOTE, value.file, value.line, (key,),
                                  "ignored (obsolete in compose too)"))
        elif key not in ("name", "services", "networks", "volumes"):
            remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, (key,),
                                  "not supported (dropped)" + (
                                      f": {_HINTS[key]}" if _HINTS.get(key) else "")))
    networks = _top_networks(top["networks"], remarks) if "networks" in top else {}
    volumes = _top_volumes(top["volumes"], remarks) if "volumes" in top else {}
    adopted = []
    for name, vol in volumes.items():
        if not vol.get("external"):  # compose created it: keep using it, by compose's name
            vol["external"] = True
            vol.setdefault("name", f"{compose_project}_{name}")
            adopted.append(vol["name"])
    if adopted:
        vloc = top["volumes"]
        remarks.append(Remark(
            Kind.NOTE, vloc.file, vloc.line, ("volumes",),
            "written as `external: true` with the names compose gave them ("
            + ", ".join(adopted) + "): the reconciler uses the data compose stored and "
            "never adopts or removes these volumes (Docker creates them on a fresh host); "
            "remove `external`/`name` to let the reconciler create and label new ones"))

    # services, with same-file `extends: {service: ...}` resolved
    svc_root = top.get("services")
    raw: dict[str, Y] = dict(svc_root.value) if svc_root and isinstance(svc_root.value,
                                                                         dict) else {}
    raw = _resolve_extends(raw, remarks)
    converter = _Converter(project_dir=project_dir, out_dir=out_dir)
    converted = {name: converter.service(name, y) for name, y in sorted(raw.items())}
    for svc in converted.values():
        remarks.extend(svc.remarks)
    if any(r.kind is Kind.ERROR for r in remarks):
        return failed(project=project)
    if not converted:
        remarks.append(_err(sources[0].name if sources else "-", None, ("services",),
                            "no services"))
        return failed(project=project)

    # depends_on graph
    graph: dict[str, list[str]] = {}
    for name, svc in converted.items():
        deps = []
        for dep in svc.depends:
            if dep not in converted:
                where = svc.y.value.get("depends_on")
                remarks.append(Remark(Kind.ERROR, where.file if where else svc.y.file,
                                      where.line if where else svc.y.line,
                                      ("services", name, "depends_on", dep),
                                      f"depends on undefined service {dep!r}"))
            else:
                deps.append(dep)
        graph[name] = deps
    roles = {n: r for n, s in converted.items() if (r := image_role(s.data["image"]))}
    for name, tier in sorted(overrides.items()):
        if name not in converted:
            remarks.append(Remark(Kind.WARNING, "--overrides", None, (name,),
                                  "no such service (ignored)"))
        elif tier not in tiers:
            remarks.append(_err("--overrides", None, (name,),
                                f"unknown tier {tier!r} (tiers: {', '.join(tiers)})"))
    if any(r.kind is Kind.ERROR for r in remarks):
        return failed(project=project)
    fixed = {n: t for n, t in overrides.items() if n in converted}

    cycles, drops, reasons = break_cycles(graph, roles)
    final_graph = {n: [d for d in deps if (n, d) not in drops] for n, deps in graph.items()}
    placement = place(final_graph, tiers=tiers, roles=roles, fixed=fixed)
    upward = tuple(
        (a, placement.tiers[a], b, placement.tiers[b])
        for a, b in sorted({(c[i], c[i + 1]) for c in cycles for i in range(len(c) - 1)})
        if tiers.index(placement.tiers[b]) > tiers.index(placement.tiers[a]))
    report = CycleReport(tuple(tuple(c) for c in cycles), upward, tuple(drops), reasons)
    if cycles and not break_cycles_:
        for cycle in cycles:
            first = converted[cycle[0]].y.value.get("depends_on")
            remarks.append(Remark(Kind.ERROR, first.file if first else "-",
                                  first.line if first else None,
                                  ("services", cycle[0], "depends_on"),
                                  "dependency cycle: " + " -> ".join(cycle)))
        return failed(report, project)
    for a, b in drops:
        where = converted[a].y.value.get("depends_on")
        remarks.append(Remark(Kind.NOTE, where.file if where else "-",
                              where.line if where else None, ("services", a, "depends_on", b),
                              f"dropped to break a cycle ({reasons[(a, b)]})"))
    for name, (before, after, dep) in sorted(placement.moved.items()):
        y = converted[name].y
        remarks.append(Remark(Kind.NOTE, y.file, y.line, ("services", name),
                              f"tier {after} instead of {before}: it depends on {dep} "
                              f"({after})"))
    for name, tier in sorted(fixed.items()):
        for dep in final_graph[name]:
            if tiers.index(placement.tiers[dep]) > tiers.index(tier):
                remarks.append(Remark(Kind.WARNING, "--overrides", None, (name,),
                                      f"{name} ({tier}) depends on {dep} "
                                      f"({placement.tiers[dep]}): the spec will not validate"))

    # default network: compose attaches services without networks to `<project>_default`
    needs_default = [n for n, s in converted.items()
                     if "networks" not in s.data and "network_mode" not in s.data]
    if needs_default or any("default" in s.data.get("networks", ()) for s in converted.values()):
        networks.setdefault("default", {})
    for name in needs_default:
        converted[name].data["networks"] = ["default"]

    services: dict[str, dict[str, Any]] = {}
    for name, svc in converted.items():
        data = dict(svc.data)
        data["tier"] = placement.tiers[name]
        deps = [d for d in svc.depends if d in final_graph[name]]
        if deps:
            if svc.depends_short or all(svc.depends[d] == "service_healthy" for d in deps):
                data["depends_on"] = deps
            else:
                data["depends_on"] = {d: {"condition": svc.depends[d]} for d in deps}
        services[name] = {k: data[k] for k in _SERVICE_ORDER if k in data}
        remarks.extend(_health_warnings(svc, data))
    remarks.extend(_edge_notes(converted, services))

    files = render_files(project=project, tiers=tiers, networks=networks, volumes=volumes,
                         services=services)
    return ImportResult(project, tiers, services, dict(placement.tiers), files,
                        tuple(_sorted(remarks)), report)


def _resolve_extends(raw: dict[str, Y], remarks: list[Remark]) -> dict[str, Y]:
    out: dict[str, Y] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> Y:
        if name in out:
            return out[name]
        y = raw[name]
        ext = y.value.get("extends") if isinstance(y.value, dict) else None
        if ext is None:
            out[name] = y
            return y
        rest = Y({k: v for k, v in y.value.items() if k != "extends"}, y.file, y.line)
        base_name = _s(ext.value) if isinstance(ext.value, str) else (
            _s(ext.value["service"].value) if isinstance(ext.value, dict)
            and "service" in ext.value else "")
        if isinstance(ext.value, dict) and "file" in ext.value:
            remarks.append(Remark(Kind.UNSUPPORTED, ext.file, ext.line,
                                  ("services", name, "extends"),
                                  "not supported (dropped): extends from another file; merge "
                                  "it with an extra -f instead"))
            out[name] = rest
            return rest
        if base_name not in raw or base_name in stack:
            remarks.append(_err(ext.file, ext.line, ("services", name, "extends"),
                                f"cannot extend {base_name!r}"))
            out[name] = rest
            return rest
        merged = _merge_service(resolve(base_name, (*stack, name)), rest)
        out[name] = merged
        return merged

    for name in raw:
        resolve(name, ())
    return out


def _health_warnings(svc: _Service, data: Mapping[str, Any]) -> list[Remark]:
    hc = data.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable") or not hc.get("test") \
            or hc["test"][0] == "NONE":
        return []
    try:
        values = {
            "timeout": parse_duration(hc.get("timeout", 30)),
            "retries": float(hc.get("retries", 3)),
            "start_period": parse_duration(hc.get("start_period", 0)),
        }
    except (ValueError, TypeError):
        return []
    tight = []
    for key, friendly in _HEALTH_FRIENDLY.items():
        if key == "start_period" and not data.get("depends_on"):
            continue
        if values[key] < friendly:
            unit = "" if key == "retries" else "s"
            tight.append(f"{key} {values[key]:g}{unit} (production: {friendly:g}{unit})")
    if not tight:
        return []
    y = svc.y.value.get("healthcheck")
    return [Remark(Kind.WARNING, y.file if y else svc.y.file, y.line if y else svc.y.line,
                   ("services", svc.name, "healthcheck"),
                   "too tight for production: " + ", ".join(tight)
                   + "; the import keeps the compose values")]


def _edge_notes(converted: Mapping[str, _Service],
                services: Mapping[str, Mapping[str, Any]]) -> list[Remark]:
    out = []
    for name, svc in converted.items():
        if image_role(svc.data["image"]) != "external":
            continue
        nets = set(services[name].get("networks", ()))
        candidates = sorted(
            f"{other}:{port}" for other, o in converted.items() if other != name
            and nets.intersection(services[other].get("networks", ()))
            for port in dict.fromkeys(o.exposed) if port.isdigit())
        if not candidates:
            continue
        out.append(Remark(
            Kind.NOTE, svc.y.file, svc.y.line, ("services", name),
            "looks like the edge proxy; no `edge:` was written. To let the reconciler manage "
            f"its upstreams, add `edge: {{service: {name}}}` to 00-project.yaml and "
            "`expose: {port: N}` to the services it routes to (candidates: "
            + ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "") + ")"))
    return out


def _sorted(remarks: Iterable[Remark]) -> list[Remark]:
    order = {Kind.ERROR: 0, Kind.UNSUPPORTED: 1, Kind.NOTE: 2, Kind.WARNING: 3}
    return sorted(remarks, key=lambda r: (order[r.kind], r.file, r.line or 0,
                                          format_path(r.path)))


# --- rendering ----------------------------------------------------------------------------

_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _node(value: Any) -> Any:
    if isinstance(value, dict):
        m = CommentedMap()
        for k, v in value.items():
            m[k] = _node(v)
        if not value:
            m.fa.set_flow_style()
        return m
    if isinstance(value, list | tuple):
        seq = CommentedSeq(_node(v) for v in value)
        scalars = all(isinstance(v, str | int | float) and not isinstance(v, bool)
                      and "\n" not in str(v) for v in value)
        if scalars and sum(len(str(v)) + 2 for v in value) <= 72 and not all(
                isinstance(v, DoubleQuotedScalarString) for v in value):
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, str):
        if "\n" in value and not any(line != line.rstrip() for line in value.split("\n")):
            return LiteralScalarString(value)
        if value.lower() in _YAML11_WORDS:
            return DoubleQuotedScalarString(value)
    return value


def dump(data: Mapping[str, Any]) -> str:
    yaml = YAML(typ="rt")
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    stream = StringIO()
    yaml.dump(_node(data), stream)
    return stream.getvalue()


def _quoted_ports(service: Mapping[str, Any]) -> dict[str, Any]:
    """`8080:80` is a base-60 number to YAML 1.1 readers: always quote ports."""
    out = dict(service)
    if "ports" in out:
        out["ports"] = [DoubleQuotedScalarString(str(p)) for p in out["ports"]]
    return out


def tier_file(index: int, tier: str) -> str:
    return f"{(index + 1) * 10:02d}-{tier}.yaml"


def render_files(
    *,
    project: str,
    tiers: Sequence[str],
    networks: Mapping[str, Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, Any]],
    services: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    head = f"{SCHEMA_COMMENT}\n# Imported from docker compose by `reconciler import-compose`.\n"
    project_doc: dict[str, Any] = {"project": project, "tiers": list(tiers)}
    if networks:
        project_doc["networks"] = {k: dict(v) for k, v in sorted(networks.items())}
    if volumes:
        project_doc["volumes"] = {k: dict(v) for k, v in sorted(volumes.items())}
    files = {"00-project.yaml": head + dump(project_doc)}
    for i, tier in enumerate(tiers):
        mine = {n: _quoted_ports(s) for n, s in sorted(services.items()) if s["tier"] == tier}
        if mine:
            files[tier_file(i, tier)] = (f"{SCHEMA_COMMENT}\n# Tier {i + 1}: {tier}.\n"
                                         + dump({"services": mine}))
    return files
