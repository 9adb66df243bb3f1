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
    Network,
    Service,
    UpdateOrder,
    Volume,
    active_services,
    joined_service,
    parse_mount,
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


def build(loaded: LoadedSpec, key: bytes, *, edge_dir: str | None = None,
          edge_log_dir: str | None = None, edge_conf_dir: str | None = None,
          files_dir: str | None = None) -> Desired:
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
    a new container, the service (whose network namespace was X's old container's) too."""
    spec = loaded.spec
    services: dict[str, DesiredService] = {}
    for name, svc in sorted(active_services(spec, loaded.profiles).items()):
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
            order=resolved_order(spec, svc),
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
    )
