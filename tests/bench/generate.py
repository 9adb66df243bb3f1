"""One stack description -> a reconciler spec directory AND an equivalent docker-compose file.

The benchmark compares the two tools on the same stack, so both files come from the same
`Stack`: same services, images, environment, health checks, replicas, networks, named volumes
and dependency edges. Compose has no tiers; its equivalent of a health-gated dependency is
`depends_on: {x: {condition: service_healthy}}`, which docker-compose 1.29 accepts in file
format `version: "2.4"` (format 3.x dropped `condition`). Replicas become `scale:` (2.4 only).

Pure apart from the two writers; no Docker.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

APP_IMAGE = "reconciler-demo/app:1.0"
NGINX_IMAGE = "reconciler-demo/nginx:1.22"
TIERS: tuple[str, ...] = ("infrastructure", "core", "business", "external")
HEALTH_TEST = ("CMD", "wget", "-qO-", "http://127.0.0.1:8080/health")
NGINX_HEALTH_TEST = ("CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health")
REPO = Path(__file__).resolve().parents[2]


def ms(seconds: float) -> str:
    """A duration both tools parse the same way (`500ms`, `4s`; compose 1.29 sends `2000ms`
    as the float 2.0 for stop_grace_period, which the engine rejects)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


@dataclass(frozen=True, slots=True)
class Svc:
    name: str
    tier: str
    health_delay: int = 0              # HEALTH_DELAY of the demo app (whole seconds)
    interval_s: float = 0.5            # healthcheck interval (Docker probes first after one)
    depends_on: tuple[str, ...] = ()
    replicas: int = 1
    volume: str | None = None          # named volume mounted at /data
    version: str = "1.0"               # APP_VERSION: change it to change the service
    networks: tuple[str, ...] = ("backend",)
    expose_port: int | None = None     # behind the edge (reconciler: `expose`)
    # production cadence (B8): timeout 15s, retries 5, start_period 90s (interval: interval_s)
    prod_health: bool = False


@dataclass(frozen=True, slots=True)
class Stack:
    project: str
    services: tuple[Svc, ...]
    edge_port: int | None = None       # publish an nginx edge on 127.0.0.1:<port>
    min_ready_s: float = 0.0           # the reconciler's extra stability wait (compose: none)
    stop_grace_s: float = 2.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]

    def replicas_total(self) -> int:
        return sum(s.replicas for s in self.services) + (1 if self.edge_port else 0)

    def with_version(self, service: str, version: str) -> Stack:
        return replace(self, services=tuple(
            replace(s, version=version) if s.name == service else s for s in self.services))

    def tier_delays(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.services:
            out[s.tier] = max(out.get(s.tier, 0), s.health_delay)
        return out


# --- stack shapes ------------------------------------------------------------------------------


def demo_stack(project: str, *, interval_s: float = 0.5, edge_port: int | None = None,
               ready_s: int | None = None, prod_health: bool = False) -> Stack:
    """The shape of deploy/demo: 4 tiers, HEALTH_DELAY 2/1/1/0 s, two gateway replicas.

    Without an edge the external tier is one app (`web`) instead of nginx. `ready_s`: one
    HEALTH_DELAY for every app; `prod_health`: the production probe settings (B8)."""
    def s(name: str, tier: str, delay: int, deps: Sequence[str] = (), **kw: Any) -> Svc:
        return Svc(name, tier, delay if ready_s is None else ready_s, interval_s, tuple(deps),
                   prod_health=prod_health, **kw)

    services = [
        s("db", "infrastructure", 2, volume="db-data"),
        s("cache", "infrastructure", 2),
        s("broker", "infrastructure", 2),
        s("auth-service", "core", 1, ["db", "cache"]),
        s("user-service", "core", 1, ["db", "broker", "auth-service"]),
        s("notification-service", "core", 1, ["broker"]),
        s("api-gateway", "business", 1,
          ["auth-service", "user-service", "order-service", "catalog-service",
           "payment-service"], replicas=2,
          networks=("backend", "edge") if edge_port else ("backend",),
          expose_port=8080 if edge_port else None),
        s("order-service", "business", 1, ["db", "broker", "catalog-service"]),
        s("catalog-service", "business", 1, ["db", "cache"]),
        s("payment-service", "business", 1, ["db", "broker", "order-service"]),
    ]
    if edge_port is None:
        services.append(s("web", "external", 0, ["api-gateway"]))
    return Stack(project, tuple(services), edge_port=edge_port)


def chain_levels(stack: Stack) -> tuple[dict[str, int], int]:
    """(per tier: the longest same-tier `depends_on` chain in services, the longest chain
    over the whole graph ignoring tiers). Every dependency here is health-gated (the
    reconciler's default, `service_healthy` in the compose file), so one level costs one
    start plus the app's readiness whoever deploys it."""
    per_tier, graph = _heaviest_chains(stack, lambda s: 1)
    return {t: int(v) for t, v in per_tier.items()}, int(graph)


def chain_delays(stack: Stack) -> tuple[float, float]:
    """The readiness a cold start cannot beat, in HEALTH_DELAY seconds: tier by tier (Σ over
    tiers of the slowest same-tier chain, as the reconciler's health-gated tiers run it), and
    the slowest chain over the bare graph (compose, which has no tiers). Each level also
    costs one start, and the demo app counts HEALTH_DELAY in whole wall-clock seconds (ready
    at a second boundary), so a level whose start plus detection stays under a second costs
    exactly its delay."""
    per_tier, graph = _heaviest_chains(stack, lambda s: s.health_delay)
    return sum(per_tier.values()), graph


def _heaviest_chains(stack: Stack, weight: Callable[[Svc], float]
                     ) -> tuple[dict[str, float], float]:
    """(per tier: the heaviest same-tier `depends_on` chain, the heaviest over the graph)."""
    by_name = {s.name: s for s in stack.services}
    memo_tier: dict[str, float] = {}
    memo_all: dict[str, float] = {}

    def depth(name: str, memo: dict[str, float], same_tier: bool) -> float:
        if name not in memo:
            svc = by_name[name]
            deps = [d for d in svc.depends_on if d in by_name
                    and (not same_tier or by_name[d].tier == svc.tier)]
            memo[name] = weight(svc) + max((depth(d, memo, same_tier) for d in deps),
                                           default=0)
        return memo[name]

    per_tier: dict[str, float] = {}
    for s in stack.services:
        per_tier[s.tier] = max(per_tier.get(s.tier, 0), depth(s.name, memo_tier, True))
    return per_tier, max((depth(n, memo_all, False) for n in by_name), default=0)


def tier_sizes(n: int) -> list[int]:
    """n services over 4 tiers: a tenth infrastructure, the rest spread evenly."""
    if n < 4:
        raise ValueError("at least 4 services (one per tier)")
    infra = max(1, n // 10)
    rest = n - infra
    sizes = [infra] + [rest // 3] * 3
    for i in range(rest - 3 * (rest // 3)):
        sizes[1 + i] += 1
    return sizes


TIER_PREFIX = {"infrastructure": "infra", "core": "core", "business": "biz", "external": "ext"}


def scale_stack(project: str, n: int, *, interval_s: float = 5.0,
                delays: Sequence[int] = (0, 0, 0, 0), fast: Iterable[str] = (),
                fast_interval_s: float = 0.5) -> Stack:
    """n services across 4 tiers; service i of a tier depends on service i % len(previous tier)
    of the tier before (a chain between tiers); every infrastructure service has a named volume.
    `fast` names get a short health interval (the ones a scenario waits on)."""
    fast = set(fast)
    services: list[Svc] = []
    prev: list[str] = []
    for tier, size, delay in zip(TIERS, tier_sizes(n), delays, strict=True):
        names = [f"{TIER_PREFIX[tier]}-{i + 1:0{len(str(size))}d}" for i in range(size)]
        for i, name in enumerate(names):
            services.append(Svc(
                name, tier, delay, fast_interval_s if name in fast else interval_s,
                (prev[i % len(prev)],) if prev else (),
                volume=f"{name}-data" if tier == "infrastructure" else None))
        prev = names
    return Stack(project, tuple(services))


def last_of_tier(stack: Stack, tier: str, *, index: int = -1) -> str:
    return [s.name for s in stack.services if s.tier == tier][index]


# --- writers -----------------------------------------------------------------------------------


def _healthcheck(s: Svc) -> dict[str, Any]:
    if s.prod_health:
        return {"test": list(HEALTH_TEST), "interval": ms(s.interval_s), "timeout": "15s",
                "retries": 5, "start_period": "90s"}
    return {"test": list(HEALTH_TEST), "interval": ms(s.interval_s), "timeout": "10s",
            "retries": 3, "start_period": "10s"}  # failures while starting do not count


def _env(s: Svc) -> dict[str, str]:
    return {"APP_NAME": s.name, "APP_VERSION": s.version, "HEALTH_DELAY": str(s.health_delay)}


def reconciler_spec(stack: Stack) -> dict[str, Any]:
    """The reconciler spec as one mapping (written as one file)."""
    services: dict[str, Any] = {}
    for s in stack.services:
        body: dict[str, Any] = {"tier": s.tier, "image": APP_IMAGE, "environment": _env(s),
                                "networks": list(s.networks), "healthcheck": _healthcheck(s)}
        if s.replicas != 1:
            body["replicas"] = s.replicas
        if s.depends_on:
            body["depends_on"] = list(s.depends_on)
        if s.volume:
            body["volumes"] = [f"{s.volume}:/data"]
        if s.expose_port:
            body["expose"] = {"port": s.expose_port}
        services[s.name] = body
    doc: dict[str, Any] = {
        "project": stack.project,
        "tiers": list(TIERS),
        "defaults": {
            "restart": "unless-stopped",
            "stop_grace_period": ms(stack.stop_grace_s),
            "update": {"order": "auto", "parallelism": 1, "min_ready": ms(stack.min_ready_s),
                       "deadline": "300s", "drain": "0s"},
        },
        "networks": {"backend": {}},
    }
    volumes = sorted({s.volume for s in stack.services if s.volume})
    if volumes:
        doc["volumes"] = {v: {} for v in volumes}
    if stack.edge_port:
        doc["networks"]["edge"] = {}
        doc["edge"] = {"service": "nginx", "upstreams_file": "/etc/nginx/conf.d/upstreams.conf"}
        services["nginx"] = {
            "tier": "external", "image": NGINX_IMAGE,
            "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro"],
            "ports": [f"127.0.0.1:{stack.edge_port}:80"], "networks": ["edge"],
            "healthcheck": {"test": list(NGINX_HEALTH_TEST), "interval": "500ms",
                            "timeout": "10s", "retries": 3},
            "stop_signal": "SIGQUIT",
            "depends_on": [s.name for s in stack.services if s.expose_port],
        }
    doc["services"] = services
    return doc


def compose_file(stack: Stack, *, upstreams_dir: str = "./conf.d") -> dict[str, Any]:
    """The docker-compose 1.29 equivalent (file format 2.4)."""
    services: dict[str, Any] = {}
    for s in stack.services:
        body: dict[str, Any] = {"image": APP_IMAGE, "environment": _env(s),
                                "networks": list(s.networks), "healthcheck": _healthcheck(s),
                                "restart": "unless-stopped",
                                "stop_grace_period": ms(stack.stop_grace_s)}
        if s.replicas != 1:
            body["scale"] = s.replicas
        if s.depends_on:
            body["depends_on"] = {d: {"condition": "service_healthy"} for d in s.depends_on}
        if s.volume:
            body["volumes"] = [f"{s.volume}:/data"]
        services[s.name] = body
    doc: dict[str, Any] = {"version": "2.4", "services": services,
                           "networks": {"backend": {}}}
    volumes = sorted({s.volume for s in stack.services if s.volume})
    if volumes:
        doc["volumes"] = {v: {} for v in volumes}
    if stack.edge_port:
        doc["networks"]["edge"] = {}
        services["nginx"] = {
            "image": NGINX_IMAGE,
            "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro",
                        f"{upstreams_dir}:/etc/nginx/conf.d:ro"],
            "ports": [f"127.0.0.1:{stack.edge_port}:80"], "networks": ["edge"],
            "healthcheck": {"test": list(NGINX_HEALTH_TEST), "interval": "500ms",
                            "timeout": "10s", "retries": 3},
            "stop_signal": "SIGQUIT", "restart": "unless-stopped",
            "depends_on": {s.name: {"condition": "service_healthy"}
                           for s in stack.services if s.expose_port},
        }
    return doc


def static_upstreams(served: Sequence[tuple[str, int]]) -> str:
    """What operators have under compose: each upstream names the service (Docker DNS,
    resolved once when nginx starts), plus the enabled-services map nginx/nginx.conf reads
    (the reconciler renders both)."""
    out = [f"upstream {name} {{\n    server {name}:{port};\n    keepalive 16;\n}}\n"
           for name, port in served]
    out.append("map $edge_service $edge_service_enabled {\n    default 0;\n"
               + "".join(f"    {name} 1;\n" for name, _ in served) + "}\n")
    return "".join(out)


def compose_upstreams(stack: Stack) -> str:
    """Compose has no upstream management: a static file naming the services."""
    return static_upstreams([(s.name, s.expose_port) for s in stack.services if s.expose_port])


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML that both YAML 1.2 (ruamel) and YAML 1.1 (PyYAML, compose) read the
    same way: every string double-quoted (JSON escapes), insertion order kept. A small emitter
    of our own: ruamel's pure-Python dumper needs ~20 s for 5,000 services."""
    lines: list[str] = []
    _emit(doc, 0, lines)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "null"
    return json.dumps(str(value))


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping):
        for k, v in value.items():
            key = json.dumps(str(k)) if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(k)) else k
            if isinstance(v, Mapping | list | tuple) and v:
                lines.append(f"{pad}{key}:")
                _emit(v, indent + 2, lines)
            else:
                empty = "{}" if isinstance(v, Mapping) else "[]" if isinstance(v, list | tuple) \
                    else _scalar(v)
                lines.append(f"{pad}{key}: {empty}")
    else:
        for item in value:
            if isinstance(item, Mapping | list | tuple) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")


CHUNK = 400  # services per file: the loader caps a file at 1 MiB


def write_reconciler(stack: Stack, directory: Path) -> Path:
    """Write the spec directory: `00-project.yaml` with everything but the services, then one
    file per tier (split every CHUNK services), plus nginx.conf with an edge."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    doc = reconciler_spec(stack)
    services = doc.pop("services")
    (directory / "00-project.yaml").write_text(dump_yaml(doc))
    tier_of = {name: body["tier"] for name, body in services.items()}
    for t, tier in enumerate(TIERS):
        names = [n for n in services if tier_of[n] == tier]
        for c in range(0, len(names), CHUNK):
            part = {n: services[n] for n in names[c:c + CHUNK]}
            (directory / f"{t + 1}0-{tier}-{c // CHUNK + 1:02d}.yaml").write_text(
                dump_yaml({"services": part}))
    if stack.edge_port:
        shutil.copyfile(REPO / "nginx" / "nginx.conf", directory / "nginx.conf")
    return directory


def write_compose(stack: Stack, directory: Path) -> Path:
    """Write `docker-compose.yml` (plus nginx.conf and conf.d/ with an edge); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker-compose.yml"
    path.write_text(dump_yaml(compose_file(stack)))
    if stack.edge_port:
        shutil.copyfile(REPO / "nginx" / "nginx.conf", directory / "nginx.conf")
        (directory / "conf.d").mkdir(exist_ok=True)
        (directory / "conf.d" / "upstreams.conf").write_text(compose_upstreams(stack))
    return path
