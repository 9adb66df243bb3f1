"""Spec models (pydantic v2, strict, frozen) and the semantic rules of DESIGN.md §2.

Pure: no I/O, no clock, no Docker. `loading` turns files into the raw mapping validated here
and maps every finding back to file:line. Findings carry a key path, never a secret value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from reconciler.core.envfiles import SECRET_KEY

DEFAULT_TIERS: tuple[str, ...] = ("infrastructure", "core", "business", "external")

_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
_SERVICE_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def parse_duration(value: object) -> float:
    """Compose-style duration (`1m30s`, `45s`, `300ms`, or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 45s, 1m30s or 300ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"invalid duration {value!r} (use e.g. 45s, 1m30s or 300ms)")


def _duration(value: object) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object) -> int:
    """Compose-style byte size (`512m`, `1g`, `1024`) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"invalid size {value!r} (use e.g. 512m or 1g)")


Size = Annotated[int, BeforeValidator(parse_size)]


def _str_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


StrList = Annotated[tuple[str, ...], BeforeValidator(_str_list)]


def _env_map(value: object) -> object:
    """Compose allows `environment` as a mapping or a list of `KEY=VALUE`."""
    if isinstance(value, list):
        out: dict[str, object] = {}
        for item in value:
            if not isinstance(item, str):
                raise ValueError("environment list items must be KEY=VALUE strings")
            key, sep, val = item.partition("=")
            out[key] = val if sep else ""
        return out
    if isinstance(value, dict):
        return {k: ("" if v is None else v) for k, v in value.items()}
    return value


def _scalar_str(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvMap = Annotated[
    dict[str, Annotated[str, BeforeValidator(_scalar_str)]], BeforeValidator(_env_map)
]


class UpdateOrder(StrEnum):
    """How a service is updated: `auto` resolves to stop-first or start-first."""

    AUTO = "auto"
    START_FIRST = "start-first"
    STOP_FIRST = "stop-first"


class PullPolicy(StrEnum):
    """compose `pull_policy`: when an image is pulled."""

    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"


class Restart(StrEnum):
    """compose `restart`: Docker's restart policy."""

    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"


class Kind(StrEnum):
    """What a service is: a long-running `service`, or a `job` that runs to completion."""

    SERVICE = "service"
    JOB = "job"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Healthcheck(_Model):
    """compose `healthcheck` (durations in seconds)."""

    test: StrList | None = None
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: int = Field(default=3, ge=1)
    start_period: Duration = 0.0
    # probe cadence during start_period (engine API >= 1.44; older engines: the executor's
    # own exec probes do the fast start)
    start_interval: Duration | None = None
    disable: bool = False

    @field_validator("test")
    @classmethod
    def _check_test(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(value) == 1:  # compose: a plain string is run by the shell
            return ("CMD-SHELL", value[0])
        if value[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise ValueError("healthcheck test must start with CMD, CMD-SHELL or NONE")
        return value

    @property
    def active(self) -> bool:
        """True when the spec defines a test and does not disable it."""
        return not self.disable and self.test is not None and self.test[0] != "NONE"


class Update(_Model):
    """How a service rolls out: order, parallelism, health gate timing, drain."""

    order: UpdateOrder = UpdateOrder.AUTO
    parallelism: int = Field(default=1, ge=1)
    min_ready: Duration = 5.0
    deadline: Duration = 300.0
    drain: Duration = 3.0
    # Swarm only (`--engine swarm`): Swarm's own UpdateConfig/RollbackConfig
    delay: Duration = 0.0  # between batches of `parallelism` tasks
    failure_action: Literal["rollback", "pause", "continue"] = "pause"
    monitor: Duration | None = None  # how long a new task is watched (default: min_ready)
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


class Resources(_Model):
    """Memory (bytes) and CPU limits of each container."""

    memory: Size | None = None
    memory_reservation: Size | None = None  # compose `mem_reservation`: a soft floor
    cpus: float | None = Field(default=None, gt=0)


class Placement(_Model):
    """Where a service's tasks may run (Swarm only; one host ignores it): Swarm placement
    constraints such as `node.role==manager` or `node.hostname==web-1`, at most
    `max_replicas_per_node` tasks per node, and `global: true` for one task on every node
    that matches (an edge that listens on every node)."""

    constraints: tuple[str, ...] = ()
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    global_: bool = Field(default=False, alias="global")

    @field_validator("constraints")
    @classmethod
    def _check_constraints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for c in value:
            if not re.fullmatch(r"\s*[A-Za-z0-9_.\-]+\s*(==|!=)\s*\S+\s*", c):
                raise ValueError(f"invalid placement constraint {c!r} (use e.g. "
                                 "node.role==manager or node.hostname!=web-2)")
        return value


class Expose(_Model):
    """The port the edge's upstream for this service targets."""

    port: int = Field(ge=1, le=65535)
    path: str = "/"


class DependsOn(_Model):
    """compose `depends_on` entry (same or earlier tier only)."""

    condition: Literal["service_healthy", "service_started", "service_completed_successfully"] = (
        "service_healthy"
    )


def _depends(value: object) -> object:
    if isinstance(value, list):
        return {name: {} for name in value}
    return value


class Backup(_Model):
    """A service's backup, taken before any step stops or replaces it: either `command` (run
    in the running container; its stdout is the backup, e.g. `pg_dump -Fc`) with `restore`
    (run in the running container with the backup on stdin, e.g. `pg_restore --clean -d db`),
    or `volumes: true` (a tar of the service's named volumes through a short-lived helper
    container of the same image). `keep` backups are retained per service."""

    command: StrList | None = None
    restore: StrList | None = None
    volumes: bool = False
    keep: int = Field(default=5, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> Backup:
        if (self.command is None) == (not self.volumes):
            raise ValueError("backup needs exactly one of `command` or `volumes: true`")
        if self.volumes and self.restore is not None:
            raise ValueError("backup `restore` goes with `command`, not with `volumes`")
        return self


def _build(value: object) -> object:
    """compose's two forms: `build: ./dir` (the context) or a mapping."""
    return {"context": value} if isinstance(value, str) else value


class Build(_Model):
    """compose `build`: an image built on the host from the spec checkout (context and
    Dockerfile confined to it like bind mounts). `args` are literal values of the spec: no
    interpolation, nothing from an env file."""

    context: str = "."
    dockerfile: str = "Dockerfile"  # relative to the context (as in compose)
    args: EnvMap = Field(default_factory=dict)
    target: str | None = None


_MODE = re.compile(r"^0?[0-7]{3}$")


def _file_ref(value: object) -> object:
    return {"source": value} if isinstance(value, str) else value


class FileRef(_Model):
    """A service's use of a top-level secret or config (compose short or long syntax):
    mounted read-only at `target` (secrets: /run/secrets/<target or source>; configs:
    /<target or source>), with `mode` (a quoted octal string, default "0444") and the
    owner `uid`/`gid` (default: the reconciler's user)."""

    source: str
    target: str | None = None
    mode: str | None = None
    uid: Annotated[str, BeforeValidator(_scalar_str)] | None = None
    gid: Annotated[str, BeforeValidator(_scalar_str)] | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str) or not _MODE.match(value):
            raise ValueError('mode must be a quoted octal string such as "0440" (YAML 1.2 '
                             "reads an unquoted 0440 as the decimal number 440)")
        return value.rjust(4, "0")

    @field_validator("uid", "gid")
    @classmethod
    def _numeric_id(cls, value: str | None) -> str | None:
        if value is not None and not value.isdigit():
            raise ValueError("uid and gid are numeric ids")
        return value

    def mount_path(self, kind: str) -> str:
        """Where the file appears in the container (`kind`: "secrets" or "configs")."""
        name = self.target or self.source
        if name.startswith("/"):
            return name
        return f"/run/secrets/{name}" if kind == "secrets" else f"/{name}"

    @property
    def file_mode(self) -> int:
        """The mode as a number (compose's default 0444)."""
        return int(self.mode or "0444", 8)


FileRefs = Annotated[tuple[Annotated[FileRef, BeforeValidator(_file_ref)], ...],
                     BeforeValidator(_str_list)]


class Service(_Model):
    """One service of the spec: compose keys plus `tier`, `update` and `expose`."""

    tier: str | None = None
    kind: Kind = Kind.SERVICE
    # with `build`, the loader sets it to the built image's content-addressed name (an
    # `image:` given next to `build:` becomes one more tag of it, as in compose)
    image: str = ""
    build: Annotated[Build, BeforeValidator(_build)] | None = None
    pull_policy: PullPolicy = PullPolicy.MISSING
    command: StrList | None = None
    entrypoint: StrList | None = None
    environment: EnvMap = Field(default_factory=dict)
    env_file: StrList = ()
    volumes: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    ports: tuple[Annotated[str, BeforeValidator(_scalar_str)], ...] = ()
    expose: Expose | None = None
    healthcheck: Healthcheck | None = None
    update: Update = Update()
    resources: Resources = Resources()
    replicas: int = Field(default=1, ge=0)
    depends_on: Annotated[dict[str, DependsOn], BeforeValidator(_depends)] = Field(
        default_factory=dict
    )
    restart: Restart = Restart.UNLESS_STOPPED
    labels: dict[str, Annotated[str, BeforeValidator(_scalar_str)]] = Field(default_factory=dict)
    stop_grace_period: Duration = 10.0
    stop_signal: str | None = None
    user: Annotated[str, BeforeValidator(_scalar_str)] | None = None
    working_dir: str | None = None
    hostname: str | None = None
    profiles: tuple[str, ...] = ()
    privileged: bool = False
    network_mode: str | None = None
    pid: str | None = None
    ipc: str | None = None
    cap_add: tuple[str, ...] = ()
    shm_size: Size | None = None
    logging: Logging | None = None
    ulimits: Annotated[dict[str, Ulimit], BeforeValidator(_ulimits)] = Field(
        default_factory=dict)
    init: bool = False
    read_only: bool = False
    tmpfs: StrList = ()
    security_opt: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    pids_limit: int | None = Field(default=None, ge=-1)
    sysctls: Annotated[dict[str, str], BeforeValidator(_sysctls)] = Field(
        default_factory=dict)
    # more DNS names per network (compose's networks.<net>.aliases); the service name is one
    network_aliases: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    # a fixed address per network (the network needs an `ipam` subnet that holds it)
    ipv4_address: dict[str, str] = Field(default_factory=dict)
    secrets: FileRefs = ()  # top-level `secrets`, mounted read-only under /run/secrets
    configs: FileRefs = ()  # top-level `configs`, mounted read-only at /<name> or target
    backup: Backup | None = None
    placement: Placement | None = None  # Swarm only

    @model_validator(mode="before")
    @classmethod
    def _job_never_restarts(cls, data: Any) -> Any:
        # a job runs to completion once: Docker must not restart it (whatever `defaults` say)
        if isinstance(data, Mapping) and data.get("kind") == Kind.JOB.value:
            return {**data, "restart": Restart.NO.value}
        return data

    @model_validator(mode="after")
    def _image_or_build(self) -> Service:
        if not self.image.strip() and self.build is None:
            raise ValueError("a service needs `image` or `build`")
        return self

    @property
    def job(self) -> bool:
        """True for a service that runs to completion (`kind: job`)."""
        return self.kind is Kind.JOB

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("reconciler."):
                raise ValueError(f"label {key!r} uses the reserved prefix 'reconciler.'")
        return value


class Logging(_Model):
    """compose `logging`: e.g. json-file with max-size/max-file, so logs never fill a disk."""

    driver: str = "json-file"
    options: dict[str, Annotated[str, BeforeValidator(_scalar_str)]] = Field(
        default_factory=dict)


class Ulimit(_Model):
    """One ulimit: soft and hard."""

    soft: int
    hard: int


def _sysctls(value: object) -> object:
    """compose's two forms: a mapping (numbers as text) or a list of `name=value`."""
    if isinstance(value, list):
        out: dict[str, object] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError("a sysctls list entry must be name=value")
            key, _, val = item.partition("=")
            out[key.strip()] = val.strip()
        return out
    if isinstance(value, dict):
        return {k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in value.items()}
    return value


def _ulimits(value: object) -> object:
    """compose: `nofile: 65536` or `nofile: {soft: 1024, hard: 65536}`."""
    if isinstance(value, dict):
        return {k: {"soft": v, "hard": v} if isinstance(v, int) and not isinstance(v, bool)
                else v for k, v in value.items()}
    return value


class IpamPool(_Model):
    """One address pool of a network (compose `ipam.config` entry)."""

    subnet: str
    gateway: str | None = None
    ip_range: str | None = None


class Ipam(_Model):
    """compose `ipam`: the network's subnets (needed for static `ipv4_address`)."""

    driver: str = "default"
    config: tuple[IpamPool, ...] = ()


class Network(_Model):
    """A network of the spec (created as `<project>_<name>` unless external)."""

    internal: bool = False
    driver: str = "bridge"
    external: bool = False
    name: str | None = None
    ipam: Ipam | None = None


class FileSource(_Model):
    """A top-level secret or config: exactly one of `file` (a host file: inside the spec
    checkout or the host's env_file_roots, like env files), `environment` (a variable of the
    reconciler's environment) or, for configs only, `content` (the text itself)."""

    file: str | None = None
    environment: str | None = None
    content: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileSource:
        if sum(x is not None for x in (self.file, self.environment, self.content)) != 1:
            raise ValueError("needs exactly one of `file`, `environment` or `content`")
        return self


class Volume(_Model):
    """A named volume of the spec (created as `<project>_<name>` unless external)."""

    external: bool = False
    name: str | None = None
    driver: str = "local"


class Edge(_Model):
    """The nginx service whose upstreams the reconciler renders, and where."""

    service: str
    upstreams_file: str = "/etc/nginx/conf.d/upstreams.conf"


class Spec(_Model):
    """The whole spec: project, tiers, defaults for services, networks, volumes, edge."""

    project: Annotated[str, Field(pattern=_NAME, max_length=40)]
    tiers: tuple[str, ...] = DEFAULT_TIERS
    defaults: dict[str, Any] = Field(default_factory=dict)
    networks: dict[str, Network | None] = Field(default_factory=dict)
    volumes: dict[str, Volume | None] = Field(default_factory=dict)
    secrets: dict[str, FileSource] = Field(default_factory=dict)
    configs: dict[str, FileSource] = Field(default_factory=dict)
    edge: Edge | None = None
    # how many services of a tier may replace running containers at once (default 1)
    tier_parallelism: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    # the engine `apply`/`run`/... use unless `--engine` says otherwise (default docker)
    engine: Literal["docker", "swarm"] | None = None
    services: dict[Annotated[str, Field(pattern=_SERVICE_NAME)], Service] = Field(
        default_factory=dict
    )

    def network(self, name: str) -> Network:
        """The definition of network `name` (defaults for `name: {}` or `name:`)."""
        return self.networks.get(name) or Network()

    def volume(self, name: str) -> Volume:
        """The definition of volume `name` (defaults for `name: {}` or `name:`)."""
        return self.volumes.get(name) or Volume()

    def network_name(self, name: str) -> str:
        """The engine name of network `name`."""
        net = self.network(name)
        return net.name or (name if net.external else f"{self.project}_{name}")

    def volume_name(self, name: str) -> str:
        """The engine name of volume `name`."""
        vol = self.volume(name)
        return vol.name or (name if vol.external else f"{self.project}_{name}")


# --- semantic rules --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem with a spec, addressed by key path. `warning` findings never block a preview."""

    path: tuple[str | int, ...]
    message: str
    warning: bool = False


DEFAULT_ENV_FILE_ROOTS: tuple[str, ...] = ("/opt/env",)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """What the host (never the spec repo) allows. Default: nothing dangerous."""

    allow_privileged: bool = False
    allow_host_namespaces: bool = False
    allow_capabilities: frozenset[str] = frozenset()
    allow_sysctls: tuple[str, ...] = ()  # names, or prefixes ending in "." or "*"
    allow_docker_socket: bool = False
    allow_bind_mounts: tuple[str, ...] = ()  # absolute path prefixes
    env_file_roots: tuple[str, ...] = DEFAULT_ENV_FILE_ROOTS  # env files may come from here
    source: str = ""  # the policy file it was read from ("" = built-in default)
    # what the operator must see (e.g. `/` allowed): (line in `source`, key, message)
    notices: tuple[tuple[int | None, str, str], ...] = ()


# Docker's grammar for volume and network names; anything else (a path, `container:x`) is
# not a name and would be taken by Docker for something else (a bind mount, a namespace).
DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_NAME_LENGTH = 128
# network names (and network_mode values) that are the host's or another container's stack
HOST_NETWORKS = frozenset({"host", "none", "bridge", "default"})


def name_problem(value: str) -> str | None:
    """Why `value` is not a Docker volume/network name (None when it is one)."""
    if not DOCKER_NAME.fullmatch(value):
        shown = value if len(value) <= 60 else value[:60] + "..."
        what = "a path" if "/" in value or value.startswith(("~", ".")) else "not a name"
        return (f"{shown!r} is {what}: names match [a-zA-Z0-9][a-zA-Z0-9_.-]* (host paths "
                "are bind mounts, which the host policy governs)")
    if len(value) > MAX_NAME_LENGTH:
        return f"name is longer than {MAX_NAME_LENGTH} characters"
    return None


@dataclass(frozen=True, slots=True)
class Mount:
    """A parsed `volumes:` entry of a service."""

    source: str
    target: str
    read_only: bool
    named: bool  # True for a named volume, False for a bind mount


def parse_mount(entry: str) -> Mount:
    """Compose short syntax `SRC:DST[:MODE]` (or an anonymous `DST`)."""
    parts = entry.split(":")
    if len(parts) == 1:
        return Mount(source="", target=parts[0], read_only=False, named=False)
    source, target = parts[0], parts[1]
    modes = set(parts[2].split(",")) if len(parts) > 2 else set()
    named = not (source.startswith(("/", ".", "~")))
    return Mount(source=source, target=target, read_only="ro" in modes, named=named)


@dataclass(frozen=True, slots=True)
class PortBinding:
    """A parsed `ports:` entry of a service."""

    host_ip: str
    host_port: str  # "" when only the container port is given (random host port)
    container_port: str
    protocol: str


def parse_port(entry: str) -> PortBinding:
    """Compose short syntax: `80`, `8080:80`, `127.0.0.1:8080:80`, `8080:80/udp`."""
    spec, _, proto = entry.partition("/")
    parts = spec.rsplit(":", 2)
    if len(parts) == 1:
        ip, host, cont = "", "", parts[0]
    elif len(parts) == 2:
        ip, (host, cont) = "", parts
    else:
        ip, host, cont = parts
    for part in (host, cont):
        if part and not re.fullmatch(r"\d+(-\d+)?", part):
            raise ValueError(f"invalid port {entry!r}")
    if not cont:
        raise ValueError(f"invalid port {entry!r}")
    return PortBinding(host_ip=ip, host_port=host, container_port=cont, protocol=proto or "tcp")


def merge_defaults(defaults: Mapping[str, Any], service: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `defaults` under a service's raw mapping; the service's keys win."""
    out: dict[str, Any] = dict(defaults)
    for key, value in service.items():
        base = out.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            out[key] = merge_defaults(base, value)
        else:
            out[key] = value
    return out


def resolved_order(spec: Spec, service: Service) -> UpdateOrder:
    """`auto` -> stop-first with published host ports or named volumes, else start-first."""
    if service.update.order is not UpdateOrder.AUTO:
        return service.update.order
    if publishes_fixed_port(service):
        return UpdateOrder.STOP_FIRST
    if any(parse_mount(v).named and parse_mount(v).source for v in service.volumes):
        return UpdateOrder.STOP_FIRST
    if service.ipv4_address:  # one address: never two containers at once
        return UpdateOrder.STOP_FIRST
    return UpdateOrder.START_FIRST


def _port_ok(entry: str) -> bool:
    try:
        parse_port(entry)
    except ValueError:
        return False
    return True


def publishes_fixed_port(service: Service) -> bool:
    """True when the service publishes a fixed host port (invalid entries never count)."""
    return any(_port_ok(p) and parse_port(p).host_port for p in service.ports)


def active_services(spec: Spec, profiles: Iterable[str] = ()) -> dict[str, Service]:
    """Services enabled for the given compose-style profiles (no profiles = always on)."""
    wanted = set(profiles)
    return {
        name: svc
        for name, svc in spec.services.items()
        if not svc.profiles or wanted.intersection(svc.profiles)
    }


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every elementary cycle reachable by DFS, each once, as `a -> b -> a` paths (sorted)."""
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):]
                pivot = cycle.index(min(cycle))
                canon = tuple(cycle[pivot:] + cycle[:pivot])
                if canon not in seen:
                    seen.add(canon)
                    cycles.append([*canon, canon[0]])
            elif state.get(dep) is None:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)
    return cycles


_DANGEROUS_CAPS_OK: frozenset[str] = frozenset({"NET_BIND_SERVICE", "CHOWN", "SETUID", "SETGID"})
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def validate(
    spec: Spec,
    *,
    profiles: Iterable[str] = (),
    policy: HostPolicy | None = None,
    allowed_roots: Sequence[str] = (),
    resolve_path: Mapping[tuple[str, int], str] | None = None,
    forbidden: Sequence[str] = (),
) -> list[Finding]:
    """Semantic rules over a structurally valid spec. Returns findings in key-path order.

    `allowed_roots`: absolute directories bind mounts may come from (the spec dir, its repo).
    `resolve_path`: (service, volume index) -> absolute host path of a relative bind source,
    computed by the loader (which knows which file defined the service), symlinks resolved.
    `forbidden`: paths no bind mount may reach or contain (the spec repo's `.git`).
    """
    policy = policy or HostPolicy()
    findings: list[Finding] = []
    services = active_services(spec, profiles)
    tier_index = {tier: i for i, tier in enumerate(spec.tiers)}

    if len(set(spec.tiers)) != len(spec.tiers):
        findings.append(Finding(("tiers",), "tiers must be unique"))
    for tier in sorted(set(spec.tier_parallelism) - set(spec.tiers)):
        findings.append(Finding(("tier_parallelism", tier),
                                f"unknown tier {tier!r} (tiers: {', '.join(spec.tiers)})"))
    for name, svc in sorted(services.items()):
        base: tuple[str | int, ...] = ("services", name)
        if svc.tier is None:
            findings.append(Finding((*base, "tier"), f"service {name!r} has no tier"))
        elif svc.tier not in tier_index:
            findings.append(Finding(
                (*base, "tier"),
                f"unknown tier {svc.tier!r} (tiers: {', '.join(spec.tiers)})",
            ))
        for dep in svc.depends_on:
            path = (*base, "depends_on", dep)
            if dep not in spec.services:
                findings.append(Finding(path, f"{name} depends on unknown service {dep!r}"))
            elif dep not in services:
                findings.append(Finding(path, f"{name} depends on {dep!r}, which is not enabled "
                                              "by the active profiles"))
            elif dep == name:
                findings.append(Finding(path, f"{name} depends on itself"))
            else:
                dep_tier = services[dep].tier
                if (svc.tier in tier_index and dep_tier in tier_index
                        and tier_index[dep_tier] > tier_index[svc.tier]):
                    findings.append(Finding(
                        path,
                        f"{name} ({svc.tier}) depends on {dep} ({dep_tier}): depends_on may "
                        "point only to the same or an earlier tier",
                    ))
        for i, net in enumerate(svc.networks):
            if net not in spec.networks:
                findings.append(Finding((*base, "networks", i), f"undefined network {net!r}"))
        for net, aliases in svc.network_aliases.items():
            if net not in svc.networks:
                findings.append(Finding((*base, "network_aliases", net),
                                        f"{net!r} is not one of the service's networks"))
            for alias in aliases:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,252})", alias):
                    findings.append(Finding((*base, "network_aliases", net),
                                            f"{alias!r} is not a DNS name"))
        for i, entry in enumerate(svc.ports):
            if not _port_ok(entry):
                findings.append(Finding((*base, "ports", i), f"invalid port {entry!r}"))
        for i, entry in enumerate(svc.volumes):
            findings.extend(_check_mount(spec, name, i, entry, policy, allowed_roots,
                                         resolve_path or {}, forbidden))
        if svc.job:
            findings.extend(_check_job(base, svc))
        if svc.build is not None:
            findings.extend(_check_build(base, svc.build))
        findings.extend(_check_files(spec, base, svc))
        findings.extend(_check_addresses(spec, base, svc))
        findings.extend(_check_joined(services, tier_index, base, svc))
        if svc.expose is not None and spec.edge is None:
            findings.append(Finding((*base, "expose"), "expose needs a top-level `edge`"))
        order = resolved_order(spec, svc)
        # one host: the edge's ports are held by its holder container and a new nginx binds
        # next to the old one (`reuseport`), so an explicit start-first edge is allowed (Swarm
        # validation refuses it)
        held_edge = (spec.edge is not None and spec.edge.service == name
                     and not svc.network_mode and svc.replicas <= 1)
        if order is UpdateOrder.START_FIRST and held_edge:
            if any(parse_mount(v).named and parse_mount(v).source
                   and not parse_mount(v).read_only for v in svc.volumes):
                findings.append(Finding((*base, "update", "order"), "start-first cannot mount a "
                                        "named volume writable (two writers on one volume)"))
        elif order is UpdateOrder.START_FIRST:
            if publishes_fixed_port(svc):
                findings.append(Finding((*base, "update", "order"), "start-first cannot publish a "
                                        "fixed host port (two containers would need it)"))
            if any(parse_mount(v).named and parse_mount(v).source for v in svc.volumes):
                findings.append(Finding((*base, "update", "order"), "start-first cannot mount a "
                                        "named volume (two writers on one volume)"))
            if svc.ipv4_address:
                findings.append(Finding((*base, "update", "order"), "start-first cannot keep a "
                                        "fixed ipv4_address (two containers would need it)"))
        if svc.replicas > 1 and publishes_fixed_port(svc):
            findings.append(Finding((*base, "replicas"), "more than one replica cannot publish a "
                                    "fixed host port"))
        findings.extend(_check_security(name, svc, policy, spec.services))
        for key in sorted(svc.environment):
            value = svc.environment[key]
            if key.endswith("_FILE") and value.startswith("/"):
                continue  # the path of a secret file (e.g. /run/secrets/x), not a secret
            if SECRET_KEY.search(key) and value:
                findings.append(Finding((*base, "environment", key), "looks like a secret in "
                                        "plain environment: move it to an env_file",
                                        warning=True))

    # host-port conflicts
    owners: dict[tuple[str, str, str], str] = {}
    for name, svc in sorted(services.items()):
        for i, entry in enumerate(svc.ports):
            if not _port_ok(entry):
                continue
            port = parse_port(entry)
            if not port.host_port:
                continue
            slot = (port.host_ip or "0.0.0.0", port.host_port, port.protocol)
            clash = [k for k in owners if (k[1:] == slot[1:] and
                     "0.0.0.0" in (k[0], slot[0])) or k == slot]
            if clash:
                findings.append(Finding(
                    ("services", name, "ports", i),
                    f"host port {port.host_port}/{port.protocol} is already published by "
                    f"{owners[clash[0]]}",
                ))
            else:
                owners[slot] = name

    findings.extend(_check_unique_addresses(services))
    for kind in ("secrets", "configs"):
        for obj, source in sorted(getattr(spec, kind).items()):
            problem = name_problem(obj)
            if problem:
                findings.append(Finding((kind, obj), f"invalid name: {problem}"))
            if kind == "secrets" and source.content is not None:
                findings.append(Finding((kind, obj, "content"), "a secret's value does not "
                                        "belong in the spec: use `file` or `environment`"))

    # cycles (within enabled services)
    graph = {name: [*svc.depends_on, *([joined] if (joined := joined_service(svc))
                                          and joined != name else [])]
             for name, svc in services.items()}
    for cycle in find_cycles(graph):
        findings.append(Finding(("services", cycle[0], "depends_on"),
                                "dependency cycle: " + " -> ".join(cycle)))

    if spec.edge is not None:
        edge_svc = services.get(spec.edge.service)
        if edge_svc is None:
            findings.append(Finding(("edge", "service"),
                                    f"edge service {spec.edge.service!r} is not defined"))
        elif not spec.edge.upstreams_file.startswith("/"):
            findings.append(Finding(("edge", "upstreams_file"), "must be an absolute path"))
    findings.extend(_check_names(spec, policy))
    findings.extend(_check_network_pools(spec))
    return sorted(findings, key=lambda f: tuple(str(p) for p in f.path))


def _check_build(base: tuple[str | int, ...], build: Build) -> list[Finding]:
    """Build args are literal spec values (they stay in the image's history): no `${VAR}`
    to fill from an env file or the environment, and nothing that looks like a secret."""
    out = []
    for key, value in sorted(build.args.items()):
        path = (*base, "build", "args", key)
        if "${" in value or re.search(r"\$[A-Za-z_]", value):
            out.append(Finding(path, "build args are literal: no ${VAR} interpolation "
                                     "(nothing from an env file or the environment reaches "
                                     "a build)"))
        elif SECRET_KEY.search(key) and value:
            out.append(Finding(path, "looks like a secret: build args stay readable in the "
                                     "image's history (docker history), never put one here",
                               warning=True))
    if build.target is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                                                     build.target):
        out.append(Finding((*base, "build", "target"), f"{build.target!r} is not a stage name"))
    return out


def joined_service(svc: Service) -> str | None:
    """X of `network_mode: service:X` (the service whose network namespace `svc` joins)."""
    mode, sep, target = (svc.network_mode or "").partition(":")
    return target if sep and mode == "service" and target else None


# keys Docker refuses next to a joined network namespace (`container:` network mode)
_NOT_WITH_JOINED = ("networks", "ports", "hostname", "dns", "dns_search", "extra_hosts",
                    "network_aliases", "ipv4_address", "expose")


def _check_joined(services: Mapping[str, Service], tier_index: Mapping[str, int],
                  base: tuple[str | int, ...], svc: Service) -> list[Finding]:
    """`network_mode: service:X`: X runs first (same or earlier tier; an implied
    service_started dependency) and the joining service has no network settings of its own."""
    target = joined_service(svc)
    if target is None:
        return []
    if target == base[-1]:
        return [Finding((*base, "network_mode"), f"service:{target} is the service itself")]
    out = []
    for key in _NOT_WITH_JOINED:
        if getattr(svc, key):
            out.append(Finding((*base, key), f"{key} cannot be set with network_mode: "
                                             f"service:{target} (the network is {target}'s)"))
    other = services.get(target)
    if other is not None and other.tier is not None and svc.tier is not None \
            and other.tier in tier_index and svc.tier in tier_index \
            and tier_index[other.tier] > tier_index[svc.tier]:
        out.append(Finding((*base, "network_mode"), f"service:{target} is in a later tier "
                                                    f"({other.tier}): it must run first"))
    if other is not None and other.job:
        out.append(Finding((*base, "network_mode"), f"service:{target} is a job: its network "
                                                    "ends when it exits"))
    return out


def _check_files(spec: Spec, base: tuple[str | int, ...], svc: Service) -> list[Finding]:
    """Each secret/config a service uses is defined; every mount target is unique and a
    clean path."""
    out: list[Finding] = []
    targets: dict[str, tuple[str | int, ...]] = {}
    for entry in svc.volumes:
        targets.setdefault(parse_mount(entry).target.rstrip("/"), (*base, "volumes"))
    for kind in ("secrets", "configs"):
        defined = getattr(spec, kind)
        for i, ref in enumerate(getattr(svc, kind)):
            path = (*base, kind, i)
            if ref.source not in defined:
                out.append(Finding(path, f"undefined {kind[:-1]} {ref.source!r} (define it "
                                         f"under the top-level `{kind}:`)"))
            target = ref.mount_path(kind)
            parts = target.split("/")
            if ".." in parts or "" in parts[1:] or "\0" in target:
                out.append(Finding((*path, "target"), f"target {target[:80]!r} is not a "
                                                      "clean path"))
            elif target in targets:
                out.append(Finding((*path, "target"), f"{target} is mounted twice"))
            else:
                targets[target] = path
    return out


def _check_addresses(spec: Spec, base: tuple[str | int, ...], svc: Service) -> list[Finding]:
    """A static address lies in a subnet of its network's `ipam`, on one of the service's
    networks, for one container only."""
    out: list[Finding] = []
    for net, address in sorted(svc.ipv4_address.items()):
        path = (*base, "ipv4_address", net)
        if net not in svc.networks:
            out.append(Finding(path, f"{net!r} is not one of the service's networks"))
            continue
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            out.append(Finding(path, f"{address[:40]!r} is not an IPv4 address"))
            continue
        definition = spec.network(net) if net in spec.networks else None
        pools = definition.ipam.config if definition and definition.ipam else ()
        subnets = []
        for pool in pools:
            try:
                subnets.append(ipaddress.ip_network(pool.subnet, strict=False))
            except ValueError:
                continue
        if not any(ip in subnet for subnet in subnets):
            out.append(Finding(path, f"{address} is not in a subnet of network {net!r} (give "
                                     "the network `ipam: {config: [{subnet: ...}]}`)"))
        if svc.replicas > 1:
            out.append(Finding(path, "a fixed address is for one container: replicas must be "
                                     "0 or 1"))
    return out


def _check_unique_addresses(services: Mapping[str, Service]) -> list[Finding]:
    seen: dict[tuple[str, str], str] = {}
    out = []
    for name, svc in sorted(services.items()):
        for net, address in sorted(svc.ipv4_address.items()):
            other = seen.setdefault((net, address), name)
            if other != name:
                out.append(Finding(("services", name, "ipv4_address", net),
                                   f"{address} on {net} is already {other}'s address"))
    return out


def _check_network_pools(spec: Spec) -> list[Finding]:
    out = []
    for name, net in sorted(spec.networks.items()):
        for i, pool in enumerate(net.ipam.config if net and net.ipam else ()):
            for key in ("subnet", "ip_range"):
                value = getattr(pool, key)
                if value is None:
                    continue
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    out.append(Finding(("networks", name, "ipam", "config", i, key),
                                       f"{value[:60]!r} is not a subnet (CIDR)"))
            if pool.gateway is not None:
                try:
                    ipaddress.ip_address(pool.gateway)
                except ValueError:
                    out.append(Finding(("networks", name, "ipam", "config", i, "gateway"),
                                       f"{pool.gateway[:60]!r} is not an address"))
    return out


def _check_job(base: tuple[str | int, ...], svc: Service) -> list[Finding]:
    """A job runs once to completion: one replica, nothing served, nothing published."""
    out = []
    if svc.replicas > 1:
        out.append(Finding((*base, "replicas"), "a job runs as one container: replicas must "
                                                "be 0 or 1"))
    if svc.expose is not None:
        out.append(Finding((*base, "expose"), "a job serves nothing: it cannot have `expose`"))
    if svc.ports:
        out.append(Finding((*base, "ports"), "a job serves nothing: it cannot publish `ports`"))
    return out


def _check_names(spec: Spec, policy: HostPolicy) -> list[Finding]:
    """Volume and network names (keys and `name:`) are Docker names, never paths; a network
    that is the host's stack (`host`, `bridge`, ...) is host-namespace access."""
    out: list[Finding] = []
    sections: tuple[tuple[str, Mapping[str, Network | Volume | None]], ...] = (
        ("networks", spec.networks), ("volumes", spec.volumes))
    for key, mapping in sections:
        for obj, item in mapping.items():
            problem = name_problem(obj)
            if problem:
                out.append(Finding((key, obj), f"invalid name: {problem}"))
                continue
            if item is not None and item.name is not None:
                problem = name_problem(item.name)
                if problem:
                    out.append(Finding((key, obj, "name"), f"invalid name: {problem}"))
                    continue
            resolved = (spec.network_name(obj) if key == "networks" else spec.volume_name(obj))
            if (key == "networks" and resolved.lower() in HOST_NETWORKS
                    and not policy.allow_host_namespaces):
                where = (key, obj, "name") if item is not None and item.name else (key, obj)
                out.append(Finding(where, f"network {resolved!r} is the host's network stack, "
                                          "not a network of this project: refused (host "
                                          "policy: allow_host_namespaces)"))
    return out


def _check_mount(
    spec: Spec, service: str, index: int, entry: str, policy: HostPolicy,
    allowed_roots: Sequence[str], resolve_path: Mapping[tuple[str, int], str],
    forbidden: Sequence[str] = (),
) -> list[Finding]:
    path: tuple[str | int, ...] = ("services", service, "volumes", index)
    mount = parse_mount(entry)
    if not mount.target.startswith("/"):
        return [Finding(path, f"mount target must be an absolute path in {entry!r}")]
    if not mount.source:
        return []
    if mount.named:
        if mount.source not in spec.volumes:
            return [Finding(path, f"undefined volume {mount.source!r}")]
        return []
    host = resolve_path.get((service, index), mount.source)
    if ".git" in host.split("/") or any(_inside(f, host) for f in forbidden):
        return [Finding(path, f"bind mount of {host} would expose the spec repository's .git "
                              "(its remote URL and credentials): never mountable")]
    if host in DOCKER_SOCKETS or host.endswith("/docker.sock"):
        if policy.allow_docker_socket:
            return []
        return [Finding(path, "mounting the Docker socket is refused (host policy: "
                              "allow_docker_socket)")]
    roots = [*allowed_roots, *policy.allow_bind_mounts]
    if not any(_inside(host, root) for root in roots):
        return [Finding(path, f"bind mount of {host} is outside the spec directory and the "
                              "host's allow-list (host policy: allow_bind_mounts)")]
    if any(_inside(sock, host) for sock in DOCKER_SOCKETS) and not policy.allow_docker_socket:
        return [Finding(path, f"bind mount of {host} contains the Docker socket: refused "
                              "(host policy: allow_docker_socket)")]
    return []


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


# namespace modes that stay inside the container (or the project) without any policy
_OWN_MODES = {"network_mode": frozenset({"none"}), "pid": frozenset(),
              "ipc": frozenset({"private", "shareable", "none"})}


def _check_namespace(base: tuple[str | int, ...], key: str, value: str, policy: HostPolicy,
                     services: Iterable[str]) -> list[Finding]:
    """`host`, `bridge` and `container:<any container>` join the host's or a foreign
    container's namespaces (host policy); `service:<name>` must name a service of this
    project; anything else is refused rather than handed to Docker to interpret."""
    mode, sep, target = value.partition(":")
    if value in _OWN_MODES[key]:
        return []
    if sep and mode == "service":
        if target in services:
            return []
        return [Finding((*base, key), f"{key}: service:{target[:60]} is not a service of "
                                      "this project")]
    host_modes = ("host", "bridge", "default") if key == "network_mode" else ("host",)
    if value in host_modes or (sep and mode == "container"):
        if policy.allow_host_namespaces:
            return []
        what = f"{mode}:..." if sep else value
        return [Finding((*base, key), f"{key}: {what} joins the host's or another container's "
                                      "namespace: refused (host policy: "
                                      "allow_host_namespaces)")]
    allowed = [*sorted(_OWN_MODES[key]), "host", "container:NAME", "service:NAME"]
    return [Finding((*base, key), f"{key}: unsupported value (use one of "
                                  f"{', '.join(allowed)}; to join a network, use `networks`)")]


def _check_security(name: str, svc: Service, policy: HostPolicy,
                    services: Iterable[str] = ()) -> list[Finding]:
    base: tuple[str | int, ...] = ("services", name)
    out: list[Finding] = []
    if svc.privileged and not policy.allow_privileged:
        out.append(Finding((*base, "privileged"),
                           "privileged containers are refused (host policy: allow_privileged)"))
    for key in ("network_mode", "pid", "ipc"):
        value = getattr(svc, key)
        if value is not None:
            out.extend(_check_namespace(base, key, value, policy, services))
    for i, opt in enumerate(svc.security_opt):
        if opt.replace("=", ":").split(":")[0] != "no-new-privileges" and (
                not policy.allow_privileged):
            out.append(Finding((*base, "security_opt", i), f"security_opt {opt!r} is refused "
                                                           "(host policy: allow_privileged)"))
    for i, cap in enumerate(svc.cap_add):
        cap_name = cap.upper().removeprefix("CAP_")
        if cap_name not in _DANGEROUS_CAPS_OK and cap_name not in policy.allow_capabilities:
            out.append(Finding((*base, "cap_add", i), f"capability {cap_name} is refused "
                                                      "(host policy: allow_capabilities)"))
    for key in sorted(svc.sysctls):
        if not any(key == a or (a.endswith((".", "*")) and key.startswith(a.rstrip("*")))
                   for a in policy.allow_sysctls):
            out.append(Finding((*base, "sysctls", key), f"sysctl {key} is refused "
                                                        "(host policy: allow_sysctls)"))
    return out
