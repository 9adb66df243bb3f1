"""The desired state: a loaded spec resolved into what the host must run.

Pure: given a `LoadedSpec` and the per-host key, resolves update orders, full network and
volume names, env values and fingerprints. The planner compares this with a snapshot; the
executor turns a `DesiredService` into a container through `blueprint`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.core import labels
from reconciler.core.builds import BuildContext
from reconciler.core.envfiles import SECRET_KEY, Secret
from reconciler.core.fields import public_fields
from reconciler.core.model import LoadedSpec
from reconciler.core.specs import (
    Healthcheck,
    Network,
    Restart,
    Service,
    Spec,
    Update,
    UpdateOrder,
    Volume,
    active_services,
    joined_service,
    parse_mount,
    publishes_fixed_port,
    resolved_order,
)


@dataclass(frozen=True, slots=True)
class FileMount:
    """A secret or config of one service: bind-mounted read-only from `host_path` (the
    executor writes `data` there, with `mode` and owner, before the container is created).
    `data` never appears in a repr, a label or a plan: those carry keyed digests only."""

    kind: str  # "secrets" or "configs"
    name: str
    target: str  # absolute path in the container
    mode: int
    uid: int | None
    gid: int | None
    host_path: str
    data: bytes | None = field(default=None, repr=False)  # None: unreadable (a preview)

    @property
    def bind(self) -> str:
        """The Docker `Binds` entry (read-only)."""
        return f"{self.host_path}:{self.target}:ro"


@dataclass(frozen=True, slots=True)
class DesiredService:
    """One service resolved for this host: names, env, binds, fingerprint."""

    project: str
    name: str
    tier: str
    service: Service
    order: UpdateOrder
    fingerprint: str
    public_config: Mapping[str, Any]
    env: tuple[tuple[str, Secret | str], ...]  # final container env, env files first
    networks: tuple[str, ...]  # full engine names, in spec order
    binds: tuple[str, ...]  # Docker `Binds` entries
    edge: bool = False
    # the edge only: digest of the spec files it mounts (not in its fingerprint: a changed
    # config is applied by a graceful reload), and (spec source, staged copy) of each of them
    config_digest: str = ""
    staged: tuple[tuple[str, str], ...] = ()
    build: BuildContext | None = None  # `build:`: the image is built on the host, not pulled
    files: tuple[FileMount, ...] = ()  # secrets and configs (their binds are in `binds`)
    joins: str | None = None  # network_mode service:X -> X

    @property
    def replicas(self) -> int:
        """How many replicas the spec asks for."""
        return self.service.replicas

    def container_name(self, replica: int) -> str:
        """The container name of one replica of this generation."""
        return labels.container_name(self.project, self.name, replica, self.fingerprint)


@dataclass(frozen=True, slots=True)
class Desired:
    """The whole desired state of one project, as the planner compares it."""

    project: str
    tiers: tuple[str, ...]
    services: Mapping[str, DesiredService]
    networks: Mapping[str, Network]  # full name -> definition
    volumes: Mapping[str, Volume]  # full name -> definition
    edge_service: str | None
    revision: str | None
    spec_fingerprint: str
    tier_parallelism: Mapping[str, int] = field(default_factory=dict)
    edge_holder: str | None = None  # the service holding the edge's network namespace
    edge_note: str = ""  # why a held edge is replaced stop-first (shown when it is replaced)

    def in_tier(self, tier: str) -> list[DesiredService]:
        """The services of one tier, by name."""
        return sorted((s for s in self.services.values() if s.tier == tier),
                      key=lambda s: s.name)


def _chain_joined(services: dict[str, DesiredService],
                  key: bytes) -> dict[str, DesiredService]:
    """Fold X's fingerprint into every service that joins X's network namespace, in join
    order (X first); validation rules out cycles."""
    done: dict[str, DesiredService] = {}

    def finish(name: str, depth: int = 0) -> DesiredService:
        if name in done:
            return done[name]
        svc = services[name]
        target = svc.joins
        if target is not None and target in services and depth < len(services):
            other = finish(target, depth + 1)
            public = {**svc.public_config, "network_of": other.fingerprint}
            svc = replace(svc, public_config=public,
                          fingerprint=labels.fingerprint(key, public))
        done[name] = svc
        return svc

    return {name: finish(name) for name in services}


def _with_file_paths(svc: DesiredService, files_dir: str) -> DesiredService:
    if not svc.files:
        return svc
    directory = files_host_dir(files_dir, svc.project, svc.name, svc.fingerprint)
    files = tuple(replace(f, host_path=posixpath.join(directory, f"{f.kind}-{i}-{f.name}"))
                  for i, f in enumerate(svc.files))
    return replace(svc, files=files, binds=(*svc.binds, *(f.bind for f in files)))


def _mask(key: str, value: str, hkey: bytes) -> str:
    return f"(sensitive:{labels.keyed_digest(hkey, value, length=8)})" if SECRET_KEY.search(
        key) else value


def _relative(path: str, root: str) -> str:
    """Bind sources inside the spec's repo enter fingerprints relative to it, so a kept
    last-good copy of the same files fingerprints the same as the original checkout."""
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return "./" + posixpath.relpath(path, root)
    return path


EDGE_LOG_TARGET = "/var/log/nginx/edge"


# where secrets and configs are materialised when `build` is given no files directory (a
# preview); the executor refuses any host path outside its own files directory
PREVIEW_FILES_DIR = "/nonexistent/reconciler-files"


def files_host_dir(files_dir: str, project: str, service: str, fingerprint: str) -> str:
    """The directory holding one service generation's secrets and configs."""
    return posixpath.join(files_dir, project, f"{service}-{fingerprint}")


def _file_mounts(loaded: LoadedSpec, svc: Service, key: bytes,
                 ) -> tuple[list[FileMount], dict[str, dict[str, str]]]:
    """The service's secrets and configs (host paths filled in later) and their public
    form: target -> "name mode owner sha:<keyed digest>" (never the content)."""
    mounts: list[FileMount] = []
    public: dict[str, dict[str, str]] = {}
    for kind in ("secrets", "configs"):
        for ref in getattr(svc, kind):
            content = loaded.contents.get((kind, ref.source))
            data = content.data if content is not None else None
            digest = (labels.keyed_digest(key, data) if data is not None else labels.UNKNOWN)
            target = ref.mount_path(kind)
            owner = f" {ref.uid or '-'}:{ref.gid or '-'}" if ref.uid or ref.gid else ""
            public.setdefault(kind, {})[target] = (
                f"{ref.source} {ref.file_mode:04o}{owner} sha:{digest}")
            mounts.append(FileMount(kind, ref.source, target, ref.file_mode,
                                    int(ref.uid) if ref.uid else None,
                                    int(ref.gid) if ref.gid else None, "", data))
    return mounts, public


HOLDER_SUFFIX = ".net"
# the holder's own keys: what Docker keeps on the container that owns a network namespace
_HOLDER_KEYS = ("ports", "networks", "network_aliases", "hostname", "dns", "dns_search",
                "extra_hosts", "ipv4_address")
MIGRATE_REQ = "net.ipv4.tcp_migrate_req"


def holder_name(edge: str, taken: Mapping[str, object]) -> str:
    """The edge's network holder service: `<edge>.net` (one more `.net` while a service of
    the spec already has the name)."""
    name = edge + HOLDER_SUFFIX
    while name in taken:
        name += HOLDER_SUFFIX
    return name


def _holds(svc: Service) -> bool:
    """The edge gets a network holder when it publishes a fixed host port and owns its
    network namespace (no `network_mode`, nothing exposed, one replica)."""
    return (publishes_fixed_port(svc) and not svc.network_mode and svc.expose is None
            and svc.replicas <= 1 and not svc.job)


def _split_edge(spec: Spec, loaded: LoadedSpec, services: dict[str, Service]
                ) -> tuple[dict[str, Service], str | None, UpdateOrder | None]:
    """One host: the edge's network namespace (its networks, aliases and published ports) is
    held by a container of its own, `<edge>.net`, running `sleep infinity` from the edge's
    image; nginx runs in it (`network_mode: service:<edge>.net`). A new nginx container then
    starts next to the old one in the same namespace, on the same ports, without Docker
    releasing and re-binding them: when the configuration opens every listening socket with
    `reuseport` (`LoadedSpec.edge_reuse`), the edge is replaced start-first with no moment
    when nothing listens, and the old nginx quits gracefully (with `tcp_migrate_req`, its
    queued connections move to the new one). Returns the services, the holder's name and the
    edge's update order (`auto`: start-first when reuseport is proven and no named volume is
    mounted writable, else stop-first)."""
    edge = spec.edge.service if spec.edge is not None else None
    if edge is None or edge not in services or not _holds(services[edge]):
        return services, None, None
    svc = services[edge]
    name = holder_name(edge, spec.services)
    sysctls = {k: v for k, v in svc.sysctls.items() if k.startswith("net.")}
    if loaded.tcp_migrate_req:
        sysctls.setdefault(MIGRATE_REQ, "1")
    holder = Service(
        tier=svc.tier, image=svc.image, pull_policy=svc.pull_policy,
        entrypoint=("sleep",), command=("infinity",),
        healthcheck=Healthcheck(disable=True), restart=Restart.UNLESS_STOPPED,
        update=Update(order=UpdateOrder.STOP_FIRST, min_ready=0.0, drain=0.0,
                      deadline=svc.update.deadline),
        stop_signal="SIGKILL", stop_grace_period=1.0, sysctls=sysctls,
        network_aliases={net: (edge, *svc.network_aliases.get(net, ()))
                         for net in svc.networks},
        **{k: getattr(svc, k) for k in _HOLDER_KEYS if k != "network_aliases"},
    )
    joined = svc.model_copy(update={
        "network_mode": f"service:{name}", "ports": (), "networks": (), "network_aliases": {},
        "hostname": None, "dns": (), "dns_search": (), "extra_hosts": (), "ipv4_address": {},
        "sysctls": {k: v for k, v in svc.sysctls.items() if not k.startswith("net.")}})
    order = svc.update.order
    if order is UpdateOrder.AUTO:
        writable = any(parse_mount(v).named and parse_mount(v).source
                       and not parse_mount(v).read_only for v in svc.volumes)
        reuse = loaded.edge_reuse is not None and loaded.edge_reuse.ok
        order = (UpdateOrder.START_FIRST if reuse and not writable
                 else UpdateOrder.STOP_FIRST)
    return {**services, edge: joined, name: holder}, name, order


def _edge_note(loaded: LoadedSpec, edge: str, order: UpdateOrder | None) -> str:
    if order is not UpdateOrder.STOP_FIRST:
        return ""
    why = (loaded.edge_reuse.reason if loaded.edge_reuse is not None
           and not loaded.edge_reuse.ok else "a named volume is mounted writable"
           if loaded.spec.services[edge].update.order is UpdateOrder.AUTO
           else "update.order: stop-first")
    return (f"{edge} is replaced stop-first in {edge}{HOLDER_SUFFIX}'s namespace (a short gap): "
            f"{why[:200]}; with `reuseport` on every listen it starts next to the old one")


def build(loaded: LoadedSpec, key: bytes, *, edge_dir: str | None = None,
          edge_log_dir: str | None = None, edge_conf_dir: str | None = None,
          files_dir: str | None = None, edge_holder: bool = False) -> Desired:
    """The edge's mounted spec files are digested apart from its fingerprint (a changed
    nginx.conf is reloaded, not a new container). `edge_conf_dir`: host directory of staged
    copies of them, which the edge mounts instead of the checkout (the reconciler rewrites a
    staged file in place, so even a single-file bind mount, which pins an inode, sees a
    changed file; a `git checkout` replaces files by rename, which such a mount never sees).
    `edge_dir`: host directory holding the rendered upstreams; the edge container gets it
    bind-mounted at the upstreams file's directory (not part of the fingerprint).
    `edge_log_dir`: host directory mounted writable at /var/log/nginx/edge, where nginx writes
    the JSON access log the reconciler reads into edge metrics (not part of the fingerprint).
    `files_dir`: host directory the executor materialises secrets and configs in (one
    directory per service generation, see `files_host_dir`).

    A service with `network_mode: service:X` carries X's fingerprint in its own: when X gets
    a new container, the service (whose network namespace was X's old container's) too.

    `edge_holder` (one host; Swarm publishes ports its own way): the edge runs in the
    network namespace of a holder container (see `_split_edge`)."""
    spec = loaded.spec
    services: dict[str, DesiredService] = {}
    active = active_services(spec, loaded.profiles)
    holder, edge_order = None, None
    if edge_holder:
        active, holder, edge_order = _split_edge(spec, loaded, active)
    for name, svc in sorted(active.items()):
        envs = loaded.env_files.get(name, ())
        env: dict[str, Secret | str] = {}
        env_digests: dict[str, str] = {}
        for env_file in envs:
            if env_file.readable:
                env.update(env_file.values)
                content = "\n".join(f"{k}={v.value}" for k, v in sorted(env_file.values.items()))
                env_digests[env_file.declared] = labels.keyed_digest(key, content)
            else:
                env_digests[env_file.declared] = labels.UNKNOWN
        env.update(svc.environment)
        networks = tuple(spec.network_name(n) for n in svc.networks)
        is_edge = spec.edge is not None and spec.edge.service == name
        spec_files = {m.host_path for m in loaded.mounted.get(name, ())}
        staged: list[tuple[str, str]] = []
        binds, shown_binds = [], []
        for i, entry in enumerate(svc.volumes):
            mount = parse_mount(entry)
            mode = ":ro" if mount.read_only else ""
            if not mount.source:
                continue
            source = (spec.volume_name(mount.source) if mount.named
                      else loaded.bind_sources[(name, i)])
            shown_binds.append(f"{_relative(source, loaded.root)}:{mount.target}{mode}")
            if is_edge and edge_conf_dir is not None and source in spec_files:
                staged.append((source, f"{edge_conf_dir}/{i}-{posixpath.basename(source)}"))
                source = staged[-1][1]
            binds.append(f"{source}:{mount.target}{mode}")
        mounted = {_relative(m.host_path, loaded.root): labels.keyed_digest(key, m.digest)
                   for m in loaded.mounted.get(name, ())}
        public: dict[str, Any] = {
            **public_fields(svc),
            # resolved against the host: the same values `blueprint` writes
            "project": spec.project,
            "environment": {k: _mask(k, v, key) for k, v in sorted(svc.environment.items())},
            "env_file": env_digests,
            "volumes": shown_binds,
            "mounted_files": {} if is_edge else mounted,
            "networks": list(networks),
            "labels": dict(sorted(svc.labels.items())),
        }
        if name == holder:
            # the holder never follows the edge's image: a new nginx image is a new nginx
            # container in the same namespace, not new ports
            public.pop("image", None)
        files, public_files = _file_mounts(loaded, svc, key)
        public.update(public_files)
        public = {k: v for k, v in public.items() if v not in (None, [], {}, False)}
        assert svc.tier is not None  # validated
        if is_edge and edge_dir is not None and spec.edge is not None:
            binds.append(f"{edge_dir}:{posixpath.dirname(spec.edge.upstreams_file)}:ro")
        if is_edge and edge_log_dir is not None:
            binds.append(f"{edge_log_dir}:{EDGE_LOG_TARGET}")
        services[name] = DesiredService(
            project=spec.project, name=name, tier=svc.tier, service=svc,
            order=(edge_order if is_edge and edge_order is not None
                   else resolved_order(spec, svc)),
            fingerprint=labels.fingerprint(key, public), public_config=public,
            env=tuple(env.items()), networks=networks, binds=tuple(binds),
            edge=is_edge,
            config_digest=(labels.keyed_digest(key, labels.canonical(mounted), length=16)
                           if is_edge and mounted else ""),
            staged=tuple(staged), build=loaded.builds.get(name),
            files=tuple(files), joins=joined_service(svc),
        )
    services = _chain_joined(services, key)
    services = {name: _with_file_paths(d, files_dir or PREVIEW_FILES_DIR)
                for name, d in services.items()}
    return Desired(
        project=spec.project,
        tiers=spec.tiers,
        services=services,
        networks={spec.network_name(n): spec.network(n) for n in sorted(spec.networks)},
        volumes={spec.volume_name(v): spec.volume(v) for v in sorted(spec.volumes)},
        edge_service=spec.edge.service if spec.edge else None,
        revision=loaded.revision,
        spec_fingerprint=loaded.fingerprint,
        tier_parallelism=dict(spec.tier_parallelism),
        edge_holder=holder,
        edge_note=(_edge_note(loaded, spec.edge.service, edge_order)
                   if holder is not None and spec.edge is not None else ""),
    )
