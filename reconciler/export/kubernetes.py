"""Translate a loaded spec into Kubernetes manifests for kustomize / Argo CD.

Pure: no I/O, no clock, no Docker. Takes the `LoadedSpec` (of env files only the KEYS are
read, never a value), the text of the spec files that services bind-mount (read by the shell)
and the key lines of the spec files; returns the manifests as plain data per output file, the
text of the helper scripts, and every spec key that has no Kubernetes equivalent, with its
file:line. Nothing is dropped silently: a key that is not carried over is a finding.

What keeps the spec's meaning:
- tiers become `argocd.argoproj.io/sync-wave`s (tier i -> wave 10*i, plus the depth of
  `depends_on` inside the tier), so Argo CD applies tier N+1 only when tier N is healthy;
- the health check becomes readiness, liveness and startup probes with the same timings;
- `update` becomes the Deployment strategy, `minReadySeconds` and `progressDeadlineSeconds`;
- env files and top-level secrets become Secrets referenced by name (`envFrom.secretRef`,
  one-item secret volumes at the spec's paths), created out of git: no value is ever read
  into the output (of a secret only its name and where its value comes from);
- top-level configs become ConfigMaps (from the content the loader read), mounted alike;
- Swarm placement becomes nodeSelector / affinity, `global` a DaemonSet;
- networks become NetworkPolicies (members reach each other; internal: no route out).
"""

from __future__ import annotations

import base64
import hashlib
import math
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.core.model import KeyPath, LoadedSpec, Location, format_path, lookup
from reconciler.core.specs import (
    FileRef,
    Healthcheck,
    Restart,
    Service,
    Spec,
    Update,
    UpdateOrder,
    active_services,
    joined_service,
    parse_mount,
    parse_port,
    parse_size,
    resolved_order,
)

DEFAULT_KUBERNETES_VERSION = "1.33"
WAVE = "argocd.argoproj.io/sync-wave"
MANIFEST_KINDS_WITHOUT_SCHEMA = frozenset({"Application", "ExternalSecret", "SealedSecret",
                                           "Kustomization"})
KUSTOMIZATION = "kustomization.yaml"
APPLICATION = "argocd/application.yaml"
CONFIG_HASH = "reconciler.config-sha256"
MAX_CONFIGMAP_BYTES = 1_000_000
_PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_STARTUP_PERIOD_MAX_S = 10
_CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(_LABEL_NAME)
_NODE_LABELS = {"node.hostname": "kubernetes.io/hostname", "node.platform.os": "kubernetes.io/os",
                "node.platform.arch": "kubernetes.io/arch"}
# sysctls Kubernetes calls safe (and the baseline Pod Security Standard allows), by the
# version that added them; any other needs the kubelet's --allowed-unsafe-sysctls
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced": (1, 0), "net.ipv4.ip_local_port_range": (1, 0),
                 "net.ipv4.tcp_syncookies": (1, 0), "net.ipv4.ping_group_range": (1, 18),
                 "net.ipv4.ip_unprivileged_port_start": (1, 22),
                 "net.ipv4.ip_local_reserved_ports": (1, 27),
                 "net.ipv4.tcp_keepalive_time": (1, 29), "net.ipv4.tcp_fin_timeout": (1, 29),
                 "net.ipv4.tcp_keepalive_intvl": (1, 29),
                 "net.ipv4.tcp_keepalive_probes": (1, 29)}
_SWARM_UPDATE_KEYS = ("delay", "failure_action", "monitor", "max_failure_ratio")
_MAX_EXTRA_NAMESERVERS = 2  # the kubelet keeps 3 in all, the cluster DNS first


class SecretsMode(StrEnum):
    SCRIPT = "script"  # create-secrets.sh: kubectl create secret generic --from-env-file
    EXTERNAL_SECRET = "external-secret"  # external-secrets.io ExternalSecret stubs
    SEALED_SECRET = "sealed-secret"  # bitnami SealedSecret stubs + seal-secrets.sh


class EdgeMode(StrEnum):
    INGRESS = "ingress"  # an Ingress replaces the nginx edge service
    NGINX = "nginx"  # the nginx edge as a Deployment + LoadBalancer Service


class Kind(StrEnum):
    UNMAPPED = "no equivalent"
    WARNING = "warning"  # exported, but it works only after the user acts
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Options:
    namespace: str | None = None  # default: the spec's project
    secrets: SecretsMode = SecretsMode.SCRIPT
    edge: EdgeMode = EdgeMode.INGRESS
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    argocd_app: str | None = None
    repo: str | None = None
    path: str | None = None
    revision: str = "HEAD"
    storage: str = "10Gi"  # size of a volume claim (the spec has no size)
    registry: str | None = None  # prefix for images built on the host (kustomize `images:`)


@dataclass(frozen=True, slots=True)
class Mounted:
    """A bind-mounted spec file or directory as the shell read it: name -> text."""

    files: Mapping[str, str]  # relative path (a/b.yml in a tree) -> text
    directory: bool
    problem: str | None = None  # why it cannot become a ConfigMap (binary, too large, ...)


@dataclass(frozen=True, slots=True)
class _SecretSource:
    """Where one Kubernetes Secret's values come from (never the values): an env file, a
    secret file or a variable of the environment `create-secrets.sh` runs in."""

    keys: list[str] | None  # None: an env file that was not readable here
    env_file: str | None = None  # as declared (kubectl --from-env-file)
    file: str | None = None  # a top-level secret's `file`, as declared (--from-file)
    variable: str | None = None  # a top-level secret's `environment` (--from-file=/dev/stdin)


@dataclass(frozen=True, slots=True)
class Finding:
    location: Location
    path: KeyPath
    message: str
    kind: Kind = Kind.UNMAPPED

    def __str__(self) -> str:
        key = format_path(self.path)
        return f"{self.location}: {key + ': ' if key else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class Export:
    namespace: str
    manifests: Mapping[str, tuple[dict[str, Any], ...]]  # file -> documents, in order
    scripts: Mapping[str, str]  # file -> shell script text (no secret values)
    findings: tuple[Finding, ...]
    waves: Mapping[str, int] = field(default_factory=dict)  # service -> sync wave

    def documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, doc) for name, docs in self.manifests.items() for doc in docs]


# --- names ------------------------------------------------------------------------------------


def dns_label(text: str, *, limit: int = 63) -> str:
    """A DNS-1123 label (lowercase alphanumerics and '-', at most `limit` characters)."""
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if len(out) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        out = out[: limit - 7].rstrip("-") + "-" + digest
    return out or "x"


def _label_value(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    return out[:63].rstrip("-_.")


def _unique(names: Sequence[str], make: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = make(name)
        candidate, n = base, 2
        while candidate in taken:
            candidate = f"{base[:60]}-{n}"
            n += 1
        taken.add(candidate)
        out[name] = candidate
    return out


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def _memory(size: int) -> str:
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _cpu(cpus: float) -> str:
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _version_at_least(version: str, major: int, minor: int) -> bool:
    match = re.match(r"v?(\d+)\.(\d+)", version)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= (major, minor)


# --- the translation -----------------------------------------------------------------------


class _Builder:
    def __init__(self, loaded: LoadedSpec, options: Options,
                 locations: Mapping[KeyPath, Location],
                 contents: Mapping[str, Mounted]) -> None:
        self.loaded = loaded
        self.spec: Spec = loaded.spec
        self.options = options
        self.locations = {**loaded.locations, **locations}
        self.contents = contents
        self.ns = options.namespace or self.spec.project
        self.findings: list[Finding] = []
        self.inherited: dict[tuple[Location, KeyPath, str, Kind], list[str]] = {}
        self.active = active_services(self.spec, loaded.profiles)
        edge = self.spec.edge.service if self.spec.edge else None
        self.edge = edge if edge in self.active else None
        self.exported = sorted(n for n in self.active
                               if not (n == self.edge and options.edge is EdgeMode.INGRESS))
        self.names = _unique(sorted(self.active), dns_label)
        self.tier_index = {t: i for i, t in enumerate(self.spec.tiers)}
        self.waves = self._waves()
        self.secrets = self._secret_names()
        self.configs = self._config_docs()
        self.volume_users: dict[str, list[str]] = {}
        for name in self.exported:
            for entry in self.active[name].volumes:
                mount = parse_mount(entry)
                if mount.named and mount.source and name not in self.volume_users.get(
                        mount.source, []):
                    self.volume_users.setdefault(mount.source, []).append(name)
        completed = {dep for svc in self.active.values() for dep, cond in svc.depends_on.items()
                     if cond.condition == "service_completed_successfully"}
        self.gating_jobs = {n for n in self.exported if n in completed}
        self.jobs = self.gating_jobs | {n for n in self.exported if self._one_shot(n)}
        self.aliases = self._alias_names()

    # -- findings --

    def _where(self, path: KeyPath) -> Location:
        fallback = Location(self.loaded.directory, None)
        if len(path) >= 2 and path[0] == "services":
            fallback = Location(self.loaded.service_files.get(str(path[1]),
                                                              self.loaded.directory), None)
        return lookup(path, self.locations, fallback)

    def _add(self, path: KeyPath, message: str, kind: Kind) -> None:
        where = self._where(path)
        if len(path) > 2 and path[0] == "services":
            default = ("defaults", *path[2:])
            if self.locations.get(default) == where:  # inherited: one finding for all
                self.inherited.setdefault((where, default, message, kind), []).append(
                    str(path[1]))
                return
        self.findings.append(Finding(where, path, message, kind))

    def add(self, path: KeyPath, message: str, kind: Kind) -> None:
        self._add(path, message, kind)

    def unmapped(self, path: KeyPath, message: str) -> None:
        self._add(path, message, Kind.UNMAPPED)

    def note(self, path: KeyPath, message: str) -> None:
        self._add(path, message, Kind.NOTE)

    def _all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for (where, path, message, kind), names in self.inherited.items():
            names = sorted(set(names))
            out.append(Finding(where, path, f"{message} ({len(names)} service(s): "
                                            f"{', '.join(names)})", kind))
        order = {k: i for i, k in enumerate(Kind)}
        return sorted(dict.fromkeys(out), key=lambda f: (
            order[f.kind], f.location.file, f.location.line or 0, format_path(f.path)))

    # -- waves, names, kinds --

    def _waves(self) -> dict[str, int]:
        """Tier i -> wave 10*i; inside a tier, one more per level of same-tier depends_on."""
        depth: dict[str, int] = {}

        def level(name: str, seen: frozenset[str]) -> int:
            if name in depth:
                return depth[name]
            svc = self.active[name]
            same = [d for d in svc.depends_on if d in self.active and d not in seen
                    and self.active[d].tier == svc.tier]
            depth[name] = max((level(d, seen | {name}) + 1 for d in same), default=0)
            return depth[name]

        out = {}
        for name in sorted(self.active):
            tier = self.active[name].tier or ""
            d = level(name, frozenset())
            if d > 9:
                self.note(("services", name, "depends_on"), "depends_on chain inside the tier "
                          "is deeper than 9: later services share one sync wave")
            out[name] = 10 * self.tier_index.get(tier, 0) + min(d, 9)
        return out

    def _secret_names(self) -> dict[str, str]:
        """env file path -> Secret name, and NUL + top-level secret name -> Secret name."""
        paths = sorted({env.path for name in self.exported
                        for env in self.loaded.env_files.get(name, ())})
        files = sorted({"\0" + ref.source for name in self.exported
                        for ref in self.active[name].secrets})
        return _unique([*paths, *files], lambda p: dns_label(
            p[1:] + "-secret" if p.startswith("\0")
            else posixpath.basename(p).removesuffix(".env").removeprefix(".") + "-env"))

    def _config_docs(self) -> dict[str, dict[str, Any]]:
        """A ConfigMap per top-level config the exported services use (its one key is the
        config's name), from the content the loader read; unreadable ones are findings."""
        used = sorted({ref.source for name in self.exported
                       for ref in self.active[name].configs})
        names = _unique(used, lambda c: dns_label(c + "-config"))
        out: dict[str, dict[str, Any]] = {}
        for config in used:
            source = self.spec.configs.get(config)
            content = self.loaded.contents.get(("configs", config))
            if source is None or content is None or content.data is None:
                self.unmapped(("configs", config), f"config {config} was not readable at "
                              "export: no ConfigMap, and services do not mount it")
                continue
            try:
                data: dict[str, Any] = {"data": {config: content.data.decode("utf-8")}}
            except UnicodeDecodeError:
                data = {"binaryData": {config: base64.b64encode(content.data).decode()}}
            if source.environment is not None:
                self.note(("configs", config, "environment"), f"the ConfigMap holds the value "
                          f"of ${source.environment} in the environment of the export (a "
                          "config is not a secret: it is written into the manifests)")
            out[config] = {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": self.meta(names[config], wave=-1), **data}
        return out

    def _alias_names(self) -> dict[str, list[str]]:
        """service -> the extra headless Services its `network_aliases` become (aliases that
        are not DNS-1123 labels, or taken, are findings)."""
        taken = set(self.names.values())
        out: dict[str, list[str]] = {}
        for name in self.exported:
            svc = self.active[name]
            for net, aliases in sorted(svc.network_aliases.items()):
                path: KeyPath = ("services", name, "network_aliases", net)
                for alias in aliases:
                    if name in self.jobs:
                        self.unmapped(path, f"alias {alias!r}: a Job has no Service")
                    elif alias in out.get(name, []):
                        continue
                    elif dns_label(alias) != alias:
                        self.unmapped(path, f"alias {alias!r} is not a DNS-1123 label (a "
                                      "Service name): add it to the cluster DNS by hand, or "
                                      "use a name without dots, capitals or '_'")
                    elif alias in taken:
                        self.unmapped(path, f"alias {alias!r} is already the name of another "
                                      "Service")
                    else:
                        taken.add(alias)
                        out.setdefault(name, []).append(alias)
                        self.note(path, f"alias {alias!r}: a headless Service of that name "
                                  f"(it resolves in the whole namespace, not only on {net})")
        return out

    def _global(self, name: str) -> bool:
        placement = self.active[name].placement
        return placement is not None and placement.global_

    def _one_shot(self, name: str) -> bool:
        svc = self.active[name]
        hc = svc.healthcheck
        return svc.job or (svc.restart in (Restart.NO, Restart.ON_FAILURE)
                           and not (hc is not None and hc.active) and svc.expose is None
                           and not svc.ports)

    def labels(self, name: str) -> dict[str, str]:
        svc = self.active[name]
        out = {
            "app.kubernetes.io/name": self.names[name],
            "app.kubernetes.io/part-of": self.spec.project,
            "reconciler.project": self.spec.project,
            "reconciler.service": _label_value(name),
            "reconciler.tier": _label_value(svc.tier or ""),
        }
        for net in svc.networks:
            out[self.net_label(net)] = "true"
        return out

    def selector(self, name: str) -> dict[str, str]:
        return {"reconciler.project": self.spec.project,
                "reconciler.service": _label_value(name)}

    @staticmethod
    def net_label(net: str) -> str:
        return f"reconciler.network.{net}"[:63]

    def meta(self, name: str, *, wave: int | None = None, labels: Mapping[str, str] | None = None,
             annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "namespace": self.ns}
        out["labels"] = dict(labels) if labels is not None else {
            "app.kubernetes.io/part-of": self.spec.project,
            "reconciler.project": self.spec.project}
        notes = dict(annotations or {})
        if wave is not None:
            notes[WAVE] = str(wave)
        if notes:
            out["annotations"] = notes
        return out

    # -- the whole export --

    def build(self) -> Export:
        manifests: dict[str, tuple[dict[str, Any], ...]] = {}
        scripts: dict[str, str] = {}
        for name in self.exported:
            if self.names[name] != name:
                self.note(("services", name), f"named {self.names[name]!r} in Kubernetes (a "
                          f"DNS-1123 name): services that reach {name!r} must use that name")
        for name in sorted(set(self.active) - set(self.exported)):
            self._edge_replaced(name)
        for name in sorted(set(self.spec.services) - set(self.active)):
            svc = self.spec.services[name]
            self.note(("services", name, "profiles"),
                      f"profile {', '.join(svc.profiles)} is not enabled: {name} is not "
                      f"exported (pass --profile {svc.profiles[0]})")
        if self.spec.engine is not None:
            self.note(("engine",), f"engine {self.spec.engine}: the host engine `apply` uses; "
                      "the export targets Kubernetes whatever it says")
        for tier in self.spec.tier_parallelism:
            self.unmapped(("tier_parallelism", tier), "tier_parallelism: Argo CD applies a "
                          "wave's objects together (each Deployment rolls on its own)")
        manifests["namespace.yaml"] = (self._namespace(),)
        secret_docs, secret_scripts = self._secrets()
        if secret_docs:
            manifests["secrets.yaml"] = secret_docs
        scripts.update(secret_scripts)
        if self.configs:
            manifests["configs.yaml"] = tuple(self.configs[c] for c in sorted(self.configs))
        shared = self._shared_volumes()
        if shared:
            manifests["volumes.yaml"] = shared
        manifests["network-policies.yaml"] = self._network_policies()
        for tier in self.spec.tiers:
            for name in self.exported:
                if self.active[name].tier == tier:
                    manifests[f"{dns_label(tier)}/{self.names[name]}.yaml"] = self._service(name)
        edge = self._edge()
        if edge:
            manifests["edge.yaml"] = edge
        manifests[KUSTOMIZATION] = (self._kustomization(list(manifests)),)
        if self.options.argocd_app:
            manifests[APPLICATION] = (self._application(),)
        return Export(namespace=self.ns, manifests=manifests, scripts=scripts,
                      findings=tuple(self._all_findings()),
                      waves={n: self.waves[n] for n in self.exported})

    def _namespace(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": self.ns,
            "labels": {"app.kubernetes.io/part-of": self.spec.project,
                       "reconciler.project": self.spec.project,
                       # the host policy's default, as admission: nothing privileged
                       "pod-security.kubernetes.io/enforce": "baseline"},
            "annotations": {WAVE: "-2"}}}

    def _kustomization(self, files: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1",
                               "kind": "Kustomization",
                               "resources": [f for f in files if f != APPLICATION]}
        built = sorted({self.active[n].image.rsplit(":", 1)[0] for n in self.exported
                        if self.active[n].build is not None})
        if built and self.options.registry:
            out["images"] = [{"name": repo, "newName": self._registry_name(repo)}
                             for repo in built]
        return out

    def _application(self) -> dict[str, Any]:
        o = self.options
        return {
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": o.argocd_app, "namespace": "argocd",
                         "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
            "spec": {
                "project": "default",
                "source": {"repoURL": o.repo, "targetRevision": o.revision, "path": o.path},
                "destination": {"server": "https://kubernetes.default.svc",
                                "namespace": self.ns},
                "syncPolicy": {
                    "automated": {"prune": True, "selfHeal": True},
                    "syncOptions": ["CreateNamespace=true", "PruneLast=true"],
                    "retry": {"limit": 5, "backoff": {"duration": "10s", "factor": 2,
                                                      "maxDuration": "5m"}},
                },
            },
        }

    # -- one service --

    def _service(self, name: str) -> tuple[dict[str, Any], ...]:
        svc = self.active[name]
        self._unmapped_keys(name)
        configmaps: list[dict[str, Any]] = []
        volumes, mounts, claims = self._volumes(name, configmaps)
        container = self._container(name, mounts)
        pod: dict[str, Any] = {"containers": [container]}
        if volumes:
            pod["volumes"] = volumes
        pod["terminationGracePeriodSeconds"] = _seconds(svc.stop_grace_period)
        if svc.hostname:
            pod["hostname"] = dns_label(svc.hostname)
        aliases = self._host_aliases(name)
        if aliases:
            pod["hostAliases"] = aliases
        pod.update(self._placement(name))
        dns = self._dns(name)
        if dns:
            pod["dnsConfig"] = dns
        sysctls = self._sysctls(name)
        if sysctls:
            pod["securityContext"] = {"sysctls": sysctls}
        template: dict[str, Any] = {"metadata": {"labels": self.labels(name)}, "spec": pod}
        annotations = {k: v for k, v in sorted(svc.labels.items())}
        used = [self.configs[ref.source] for ref in svc.configs if ref.source in self.configs]
        if configmaps or used:
            h = hashlib.sha256()
            for cm in [*configmaps, *used]:
                for key, text in sorted({**cm.get("data", {}),
                                         **cm.get("binaryData", {})}.items()):
                    h.update(f"{cm['metadata']['name']}/{key}\0{text}\0".encode())
            annotations[CONFIG_HASH] = h.hexdigest()[:16]
        if annotations:
            template["metadata"]["annotations"] = annotations
        wave = self.waves[name]
        k8s = self.names[name]
        meta = self.meta(k8s, wave=wave, labels=self.labels(name))
        glob: KeyPath = ("services", name, "placement", "global")
        if name in self.jobs:
            if self._global(name):
                self.unmapped(glob, "global: a Job runs once, not on every node")
            workload = self._job(name, meta, template)
        elif claims:
            if self._global(name):
                self.unmapped(glob, "global: a DaemonSet has no volumeClaimTemplates: "
                              "exported as a StatefulSet of `replicas` pods")
            workload = self._statefulset(name, meta, template, claims)
        elif self._global(name):
            self.note(glob, "global: a DaemonSet (one pod on every node that matches the "
                      "constraints; `replicas` does not apply)")
            workload = self._daemonset(name, meta, template)
        else:
            workload = self._deployment(name, meta, template)
        docs = [dict(cm, metadata={**cm["metadata"], "annotations": {WAVE: str(wave)}})
                for cm in configmaps]
        docs.append(workload)
        service = self._k8s_service(name)
        if service is not None:
            docs.append(service)
        for alias in self.aliases.get(name, []):
            docs.append(self._alias_service(name, alias))
        return tuple(docs)

    def _alias_service(self, name: str, alias: str) -> dict[str, Any]:
        """A network alias: one more name for the pods (headless, as the service's own)."""
        spec: dict[str, Any] = {"selector": self.selector(name), "clusterIP": "None",
                                "publishNotReadyAddresses": True}
        ports = self._container_ports(name)
        if ports:
            spec["ports"] = [{"name": p["name"], "port": p["port"], "targetPort": p["port"],
                              "protocol": p["protocol"]} for p in ports]
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": self.meta(alias, wave=self.waves[name], labels=self.labels(name)),
                "spec": spec}

    def _placement(self, name: str) -> dict[str, Any]:
        """Swarm placement -> nodeSelector (== on a node label), node affinity (!=, the
        role), pod anti-affinity (one replica per node); the rest is listed."""
        placement = self.active[name].placement
        if placement is None:
            return {}
        base: KeyPath = ("services", name, "placement")
        selector: dict[str, str] = {}
        exprs: list[dict[str, Any]] = []
        for i, constraint in enumerate(placement.constraints):
            match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S+)\s*", constraint)
            assert match is not None  # the spec model checks the grammar
            key, op, value = match.groups()
            if key == "node.role" and value in ("manager", "worker"):
                manager = (value == "manager") == (op == "==")
                exprs.append({"key": _CONTROL_PLANE,
                              "operator": "Exists" if manager else "DoesNotExist"})
                if manager:
                    self.note((*base, "constraints", i), f"{constraint}: control-plane nodes "
                              "(usually tainted: add a toleration for "
                              f"{_CONTROL_PLANE}:NoSchedule)")
                continue
            label = _NODE_LABELS.get(key) or (key.removeprefix("node.labels.")
                                              if key.startswith("node.labels.") else None)
            if label is None or not _LABEL_KEY.fullmatch(label) or not _LABEL_VALUE.fullmatch(
                    value):
                self.unmapped((*base, "constraints", i), f"constraint {constraint!r}: no node "
                              "label to select on (node.id, engine.labels and values that "
                              "are not label values have no equivalent)")
                continue
            if op == "==" and label not in selector:
                selector[label] = value
            else:
                exprs.append({"key": label, "operator": "In" if op == "==" else "NotIn",
                              "values": [value]})
        pod: dict[str, Any] = {}
        if selector:
            pod["nodeSelector"] = selector
        affinity: dict[str, Any] = {}
        if exprs:
            affinity["nodeAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]}}
        most = placement.max_replicas_per_node
        if most is not None and not placement.global_:
            if most == 1:
                affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": self.selector(name)},
                     "topologyKey": "kubernetes.io/hostname"}]}
            else:
                self.unmapped((*base, "max_replicas_per_node"), f"max_replicas_per_node "
                              f"{most}: no exact equivalent (a topologySpreadConstraint on "
                              "kubernetes.io/hostname spreads the pods evenly instead)")
        if affinity:
            pod["affinity"] = affinity
        return pod

    def _dns(self, name: str) -> dict[str, Any]:
        svc = self.active[name]
        base: KeyPath = ("services", name)
        out: dict[str, Any] = {}
        if svc.dns:
            servers = list(svc.dns)
            if len(servers) > _MAX_EXTRA_NAMESERVERS:
                self.unmapped((*base, "dns"), f"nameservers {', '.join(servers[2:])}: the "
                              f"kubelet keeps 3 in all, the cluster DNS first")
            out["nameservers"] = servers[:_MAX_EXTRA_NAMESERVERS]
        if svc.dns_search:
            out["searches"] = list(svc.dns_search)
        if out:
            self.note((*base, "dns" if svc.dns else "dns_search"), "dnsConfig: the cluster "
                      "DNS stays first (dnsPolicy ClusterFirst, so Service names resolve); "
                      "these nameservers and search domains come after it")
        return out

    def _sysctls(self, name: str) -> list[dict[str, str]]:
        svc = self.active[name]
        out = []
        for key, value in sorted(svc.sysctls.items()):
            since = _SAFE_SYSCTLS.get(key)
            if since is not None and _version_at_least(self.options.kubernetes_version,
                                                       *since):
                out.append({"name": key, "value": value})
            else:
                self.unmapped(("services", name, "sysctls", key), f"sysctl {key} is not a "
                              f"safe sysctl in Kubernetes {self.options.kubernetes_version}: "
                              "the namespace's baseline Pod Security Standard refuses it (it "
                              "also needs the kubelet's --allowed-unsafe-sysctls)")
        return out

    def _container(self, name: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
        svc = self.active[name]
        c: dict[str, Any] = {"name": self.names[name], "image": svc.image,
                             "imagePullPolicy": {"missing": "IfNotPresent", "always": "Always",
                                                 "never": "Never"}[svc.pull_policy.value]}
        if svc.entrypoint is not None:
            c["command"] = list(svc.entrypoint)
        if svc.command is not None:
            c["args"] = list(svc.command)
        if svc.working_dir:
            c["workingDir"] = svc.working_dir
        ports = self._container_ports(name)
        if ports:
            c["ports"] = [{"name": p["name"], "containerPort": p["port"], "protocol": p["protocol"]}
                          for p in ports]
        env_from = []
        for env in self.loaded.env_files.get(name, ()):
            env_from.append({"secretRef": {"name": self.secrets[env.path]}})
        if env_from:
            c["envFrom"] = env_from
        if svc.environment:
            c["env"] = [{"name": k, "value": v} for k, v in sorted(svc.environment.items())]
        resources = self._resources(svc)
        if resources:
            c["resources"] = resources
        c.update(self._probes(name, svc.healthcheck))
        if svc.expose is not None and svc.update.drain > 0:
            c["lifecycle"] = {"preStop": self._drain(svc.update.drain)}
        security = self._security(name)
        if security:
            c["securityContext"] = security
        if mounts:
            c["volumeMounts"] = mounts
        return c

    def _drain(self, seconds: float) -> dict[str, Any]:
        """The reconciler takes a replica out of the edge `drain` seconds before stopping it;
        in Kubernetes the endpoint removal races the SIGTERM, so the pod waits that long."""
        if _version_at_least(self.options.kubernetes_version, 1, 30):
            return {"sleep": {"seconds": _seconds(seconds)}}
        return {"exec": {"command": ["sleep", str(_seconds(seconds))]}}

    def _resources(self, svc: Service) -> dict[str, Any]:
        """requests = limits (what the host gives), except `memory_reservation`: the memory
        request (the scheduler reserves it; the limit stays `memory`)."""
        amounts: dict[str, str] = {}
        if svc.resources.memory is not None:
            amounts["memory"] = _memory(svc.resources.memory)
        if svc.resources.cpus is not None:
            amounts["cpu"] = _cpu(svc.resources.cpus)
        requests = dict(amounts)
        if svc.resources.memory_reservation is not None:
            requests["memory"] = _memory(svc.resources.memory_reservation)
        out: dict[str, Any] = {}
        if requests:
            out["requests"] = requests
        if amounts:
            out["limits"] = dict(amounts)
        return out

    def _probes(self, name: str, hc: Healthcheck | None) -> dict[str, Any]:
        if hc is None or not hc.active or hc.test is None:
            return {}
        command = (list(hc.test[1:]) if hc.test[0] == "CMD"
                   else ["/bin/sh", "-c", " ".join(hc.test[1:])])
        for key in ("interval", "timeout", "start_period"):
            value = getattr(hc, key)
            if value != int(value):
                self.note(("services", name, "healthcheck", key),
                          f"{value}s rounded up to whole seconds")
        period, timeout = _seconds(hc.interval), _seconds(hc.timeout)
        probe = {"exec": {"command": command}, "periodSeconds": period,
                 "timeoutSeconds": timeout, "failureThreshold": hc.retries}
        out: dict[str, Any] = {"readinessProbe": dict(probe, successThreshold=1),
                               "livenessProbe": dict(probe)}
        if hc.start_interval is not None and hc.start_period <= 0:
            self.note(("services", name, "healthcheck", "start_interval"), "start_interval "
                      "without start_period has no effect (no startup probe)")
        if hc.start_period > 0:
            # Docker's budget before "unhealthy": start_period, then `retries` failures an
            # interval apart; probed more often (start_interval when given), so a fast start
            # is seen quickly
            startup_period = min(period, _STARTUP_PERIOD_MAX_S)
            if hc.start_interval is not None:
                startup_period = _seconds(hc.start_interval)
                if hc.start_interval != int(hc.start_interval):
                    self.note(("services", name, "healthcheck", "start_interval"),
                              f"{hc.start_interval}s rounded up to whole seconds (the "
                              "startup probe's period)")
            budget = hc.start_period + hc.retries * period
            out["startupProbe"] = dict(probe, periodSeconds=startup_period,
                                       failureThreshold=math.ceil(budget / startup_period))
        return out

    def _security(self, name: str) -> dict[str, Any]:
        svc = self.active[name]
        base: KeyPath = ("services", name)
        out: dict[str, Any] = {}
        for i, opt in enumerate(svc.security_opt):
            key, _, value = opt.replace("=", ":").partition(":")
            if key == "no-new-privileges":
                out["allowPrivilegeEscalation"] = value.lower() not in ("true", "")
            else:
                self.unmapped((*base, "security_opt", i), f"security_opt {opt!r}: set the "
                              "matching securityContext (seccompProfile, appArmorProfile, "
                              "seLinuxOptions) by hand")
        caps: dict[str, list[str]] = {}
        if svc.cap_add:
            caps["add"] = sorted(c.upper().removeprefix("CAP_") for c in svc.cap_add)
        if svc.cap_drop:
            caps["drop"] = sorted(c.upper().removeprefix("CAP_") for c in svc.cap_drop)
        if caps:
            out["capabilities"] = caps
        if svc.read_only:
            out["readOnlyRootFilesystem"] = True
        if svc.user:
            uid, _, gid = svc.user.partition(":")
            if uid.isdigit() and (not gid or gid.isdigit()):
                out["runAsUser"] = int(uid)
                if gid:
                    out["runAsGroup"] = int(gid)
            else:
                self.unmapped((*base, "user"), f"user {svc.user!r}: Kubernetes takes numeric "
                              "ids only (runAsUser/runAsGroup)")
        return out

    def _host_aliases(self, name: str) -> list[dict[str, Any]]:
        svc = self.active[name]
        by_ip: dict[str, list[str]] = {}
        for i, entry in enumerate(svc.extra_hosts):
            host, sep, ip = entry.partition("=") if "=" in entry else entry.partition(":")
            if not sep or ip == "host-gateway" or not ip:
                self.unmapped(("services", name, "extra_hosts", i),
                              f"extra_hosts {entry!r}: no equivalent for the Docker host's "
                              "address")
                continue
            by_ip.setdefault(ip, []).append(host)
        return [{"ip": ip, "hostnames": sorted(hosts)} for ip, hosts in sorted(by_ip.items())]

    def _unmapped_keys(self, name: str) -> None:
        svc = self.active[name]
        base: KeyPath = ("services", name)
        if svc.privileged:
            self.unmapped((*base, "privileged"), "privileged: not exported (the namespace "
                          "enforces the baseline Pod Security Standard)")
        joined = joined_service(svc)
        if joined is not None:
            self.unmapped((*base, "network_mode"), f"network_mode service:{joined}: in "
                          f"Kubernetes that is one more container in {joined}'s pod, which "
                          f"the export does not do: {name} is a pod of its own (it reaches "
                          f"{joined} by its Service name, not localhost; with no network of "
                          "its own the default-deny NetworkPolicy isolates it)")
        elif svc.network_mode:
            self.unmapped((*base, "network_mode"), f"network_mode {svc.network_mode!r}: no "
                          "equivalent (hostNetwork / a shared pod are not exported)")
        if svc.pids_limit is not None:
            self.unmapped((*base, "pids_limit"), f"pids_limit {svc.pids_limit}: no per-pod "
                          "setting (the kubelet's podPidsLimit caps every pod of a node)")
        for net, address in sorted(svc.ipv4_address.items()):
            self.unmapped((*base, "ipv4_address", net), f"fixed address {address} on {net}: "
                          "pods get their addresses from the cluster's network plugin; reach "
                          "it by its Service name")
        if svc.backup is not None:
            self.unmapped((*base, "backup"), "backup: the reconciler's backup before each "
                          "update has no equivalent (use Velero, or a CronJob that runs the "
                          "backup command)")
        for key in _SWARM_UPDATE_KEYS:
            if getattr(svc.update, key) != getattr(Update(), key):
                self.unmapped((*base, "update", key), f"update.{key} (Swarm's update "
                              "config): no Deployment equivalent")
        if svc.build is not None:
            self._built_image(name)
        for key in ("pid", "ipc"):
            if getattr(svc, key):
                self.unmapped((*base, key), f"{key} {getattr(svc, key)!r}: host or shared "
                              "namespaces are not exported")
        if svc.ulimits:
            self.unmapped((*base, "ulimits"), "ulimits: no per-pod equivalent (set them in "
                          "the container runtime of the nodes)")
        if svc.logging is not None:
            self.unmapped((*base, "logging"), f"logging driver {svc.logging.driver!r}: the "
                          "kubelet rotates container logs (containerLogMaxSize); ship them "
                          "with the cluster's log collector")
        if svc.init:
            self.unmapped((*base, "init"), "init: no equivalent (use an image with an init, "
                          "e.g. tini)")
        if svc.stop_signal and svc.stop_signal.upper() not in ("SIGTERM", "TERM", "15"):
            self.unmapped((*base, "stop_signal"), f"stop_signal {svc.stop_signal}: Kubernetes "
                          "sends SIGTERM (use a preStop hook for a graceful stop)")
        if name in self.jobs:
            if name not in self.gating_jobs and not svc.job:
                self.note((*base, "restart"), f"restart {svc.restart.value!r} and no health "
                          "check: exported as a Job (one-shot)")
        elif svc.restart in (Restart.NO, Restart.ON_FAILURE):
            self.unmapped((*base, "restart"), f"restart {svc.restart.value!r}: pods of a "
                          "Deployment/StatefulSet always restart")
        for i, entry in enumerate(svc.ports):
            port = parse_port(entry)
            if (name == self.edge and self.options.edge is EdgeMode.NGINX) or (
                    "-" in port.container_port):  # a range: reported with the ports
                continue
            if port.host_port and port.host_ip in ("127.0.0.1", "::1", "localhost"):
                self.unmapped((*base, "ports", i), f"port {entry!r} is published on the host's "
                              f"loopback only: use `kubectl -n {self.ns} port-forward "
                              f"svc/{self.names[name]} {port.container_port}`")
            elif port.host_port:
                self.unmapped((*base, "ports", i), f"port {entry!r}: a published host port is "
                              "not exported (add a LoadBalancer Service if it must face the "
                              "outside)")
        order = self._order(name)
        if svc.update.parallelism > 1 and self._has_claims(name):
            self.note((*base, "update", "parallelism"), "a StatefulSet updates one pod at a "
                      "time")
        if order is UpdateOrder.STOP_FIRST and self._has_claims(name) and svc.replicas > 1:
            self.note((*base, "replicas"), "each StatefulSet replica gets its own volume "
                      "(Docker shared one named volume)")
        if name not in self.jobs and self._has_claims(name):
            self.note((*base, "update", "deadline"), "a StatefulSet has no "
                      "progressDeadlineSeconds: Argo CD's sync waits until it is healthy")

    def _built_image(self, name: str) -> None:
        svc = self.active[name]
        path: KeyPath = ("services", name, "build")
        repo = svc.image.rsplit(":", 1)[0]
        if self.options.registry:
            self.add(path, f"image {svc.image} is built on the host: push it as "
                     f"{self._registry_name(repo)}:{svc.image.rsplit(':', 1)[-1]} (docker tag, "
                     "docker push); kustomization.yaml `images:` renames it", Kind.WARNING)
        else:
            self.add(path, f"image {svc.image} is built on the host and exists only there: "
                     "push it to a registry the cluster pulls from and export with "
                     f"--registry PREFIX (kustomization.yaml `images:` renames it), or run "
                     f"`kustomize edit set image {repo}=REGISTRY/{repo}`", Kind.WARNING)

    def _registry_name(self, repo: str) -> str:
        return f"{(self.options.registry or '').rstrip('/')}/{repo}"

    def _has_claims(self, name: str) -> bool:
        for entry in self.active[name].volumes:
            mount = parse_mount(entry)
            if (mount.named and mount.source and not self.spec.volume(mount.source).external
                    and len(self.volume_users.get(mount.source, [])) == 1):
                return True
        return False

    # -- volumes --

    def _volumes(self, name: str, configmaps: list[dict[str, Any]]) -> tuple[
            list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        svc = self.active[name]
        base: KeyPath = ("services", name)
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        claims: list[dict[str, Any]] = []
        mounted = {m.host_path for m in self.loaded.mounted.get(name, ())}
        for i, entry in enumerate(svc.volumes):
            mount = parse_mount(entry)
            path = (*base, "volumes", i)
            ro = {"readOnly": True} if mount.read_only else {}
            if not mount.source:
                vol = f"anon-{i}"
                volumes.append({"name": vol, "emptyDir": {}})
                mounts.append({"name": vol, "mountPath": mount.target})
                self.note(path, "anonymous volume: an emptyDir (lost with the pod)")
            elif mount.named:
                vol_name = dns_label(mount.source)
                definition = self.spec.volume(mount.source)
                if definition.external:
                    claim = dns_label(definition.name or mount.source)
                    volumes.append({"name": vol_name,
                                    "persistentVolumeClaim": {"claimName": claim}})
                    self.note(path, f"external volume: mounts the existing claim {claim!r}")
                elif len(self.volume_users.get(mount.source, [])) > 1:
                    volumes.append({"name": vol_name, "persistentVolumeClaim": {
                        "claimName": vol_name}})
                else:
                    claims.append({"metadata": {"name": vol_name}, "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": self.options.storage}}}})
                    if definition.driver != "local":
                        self.unmapped(("volumes", mount.source, "driver"), f"volume driver "
                                      f"{definition.driver!r}: choose a storageClassName")
                mounts.append({"name": vol_name, "mountPath": mount.target, **ro})
            else:
                host = self.loaded.bind_sources.get((name, i), mount.source)
                content = self.contents.get(host)
                if host not in mounted or content is None:
                    self.unmapped(path, f"host bind mount of {host}: no equivalent (use a "
                                  "PersistentVolumeClaim, ConfigMap or Secret)")
                    continue
                if content.problem:
                    self.unmapped(path, f"bind mount of {posixpath.basename(host)}: "
                                  f"{content.problem}")
                    continue
                cm_name = dns_label(f"{self.names[name]}-{posixpath.basename(host)}")
                keys = _unique(sorted(content.files), lambda rel: rel.replace("/", "_"))
                configmaps.append({"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": self.meta(cm_name),
                                   "data": {keys[rel]: content.files[rel] for rel in keys}})
                vol = f"config-{i}"
                source: dict[str, Any] = {"name": cm_name}
                if any(keys[rel] != rel for rel in keys):  # a tree: keys back to paths
                    source["items"] = [{"key": keys[rel], "path": rel} for rel in keys]
                volumes.append({"name": vol, "configMap": source})
                if content.directory:
                    mounts.append({"name": vol, "mountPath": mount.target, "readOnly": True})
                else:
                    key = next(iter(content.files))
                    mounts.append({"name": vol, "mountPath": mount.target, "subPath": key,
                                   "readOnly": True})
                if not mount.read_only:
                    self.note(path, "a ConfigMap mount is read-only")
        for i, entry in enumerate(svc.tmpfs):
            target, _, opts = entry.partition(":")
            vol = f"tmpfs-{i}"
            empty: dict[str, Any] = {"medium": "Memory"}
            for opt in opts.split(","):
                if opt.startswith("size="):
                    empty["sizeLimit"] = _memory(parse_size(opt[5:]))
            volumes.append({"name": vol, "emptyDir": empty})
            mounts.append({"name": vol, "mountPath": target})
        if name == self.edge and self.options.edge is EdgeMode.NGINX and self.spec.edge:
            volumes.append({"name": "upstreams", "configMap": {"name": self._upstreams_name()}})
            mounts.append({"name": "upstreams", "readOnly": True,
                           "mountPath": posixpath.dirname(self.spec.edge.upstreams_file)})
        if svc.shm_size:
            volumes.append({"name": "shm", "emptyDir": {"medium": "Memory",
                                                        "sizeLimit": _memory(svc.shm_size)}})
            mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        for kind in ("secrets", "configs"):
            for i, ref in enumerate(getattr(svc, kind)):
                self._file_ref(name, kind, i, ref, volumes, mounts)
        return volumes, mounts, claims

    def _file_ref(self, name: str, kind: str, i: int, ref: FileRef,
                  volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> None:
        """A top-level secret or config, mounted read-only at the same path with the same
        mode: a one-item Secret/ConfigMap volume, the file bind-mounted by subPath."""
        path: KeyPath = ("services", name, kind, i)
        vol = f"{kind}-{i}"
        item = {"key": ref.source, "path": ref.source}
        if kind == "secrets":
            volumes.append({"name": vol, "secret": {
                "secretName": self.secrets["\0" + ref.source], "items": [item],
                "defaultMode": ref.file_mode}})
        elif ref.source in self.configs:
            volumes.append({"name": vol, "configMap": {
                "name": self.configs[ref.source]["metadata"]["name"], "items": [item],
                "defaultMode": ref.file_mode}})
        else:
            self.unmapped(path, f"config {ref.source} is not mounted: its content was not "
                          "readable at export")
            return
        mounts.append({"name": vol, "mountPath": ref.mount_path(kind), "subPath": ref.source,
                       "readOnly": True})
        for key in ("uid", "gid"):
            if getattr(ref, key) is not None:
                self.unmapped((*path, key), f"{key} {getattr(ref, key)}: the files of a "
                              f"{'Secret' if kind == 'secrets' else 'ConfigMap'} volume are "
                              "owned by root (group: the pod's fsGroup); set "
                              "securityContext.fsGroup, or a mode the container's user can "
                              "read")

    def _shared_volumes(self) -> tuple[dict[str, Any], ...]:
        out = []
        for volume, users in sorted(self.volume_users.items()):
            if len(users) < 2 or self.spec.volume(volume).external:
                continue
            self.note(("volumes", volume), f"shared by {', '.join(users)}: one "
                      "ReadWriteMany claim (needs a storage class that supports it)")
            out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": self.meta(dns_label(volume), wave=-1),
                        "spec": {"accessModes": ["ReadWriteMany"],
                                 "resources": {"requests": {"storage": self.options.storage}}}})
        return tuple(out)

    # -- workloads --

    def _order(self, name: str) -> UpdateOrder:
        """`auto` resolves to stop-first for published host ports or named volumes; host ports
        are not exported, so only a volume keeps a service stop-first here."""
        svc = self.active[name]
        order = resolved_order(self.spec, svc)
        if (svc.update.order is UpdateOrder.AUTO and order is UpdateOrder.STOP_FIRST
                and not any(parse_mount(v).named and parse_mount(v).source
                            for v in svc.volumes)):
            return UpdateOrder.START_FIRST
        return order

    def _deployment(self, name: str, meta: dict[str, Any],
                    template: dict[str, Any]) -> dict[str, Any]:
        svc = self.active[name]
        order = self._order(name)
        if order is not resolved_order(self.spec, svc):
            self.note(("services", name, "update", "order"), "auto: start-first here (the "
                      "host ports or fixed address that make it stop-first on Docker are not "
                      "exported)")
        if order is UpdateOrder.START_FIRST:
            strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": svc.update.parallelism, "maxUnavailable": 0}}
        elif svc.replicas <= 1:
            strategy = {"type": "Recreate"}
        else:
            strategy = {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": 0, "maxUnavailable": svc.update.parallelism}}
        min_ready = _seconds(svc.update.min_ready) if svc.update.min_ready > 0 else 0
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": svc.replicas,
            "selector": {"matchLabels": self.selector(name)},
            "strategy": strategy,
            "minReadySeconds": min_ready,
            "progressDeadlineSeconds": max(_seconds(svc.update.deadline), min_ready + 1),
            "revisionHistoryLimit": 10,
            "template": template}}

    def _daemonset(self, name: str, meta: dict[str, Any],
                   template: dict[str, Any]) -> dict[str, Any]:
        svc = self.active[name]
        if self._order(name) is UpdateOrder.START_FIRST:
            rolling = {"maxSurge": svc.update.parallelism, "maxUnavailable": 0}
        else:
            rolling = {"maxSurge": 0, "maxUnavailable": svc.update.parallelism}
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": {
            "selector": {"matchLabels": self.selector(name)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "minReadySeconds": (_seconds(svc.update.min_ready)
                                if svc.update.min_ready > 0 else 0),
            "revisionHistoryLimit": 10,
            "template": template}}

    def _statefulset(self, name: str, meta: dict[str, Any], template: dict[str, Any],
                     claims: list[dict[str, Any]]) -> dict[str, Any]:
        svc = self.active[name]
        return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": {
            "replicas": svc.replicas,
            "serviceName": self.names[name],
            "selector": {"matchLabels": self.selector(name)},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "minReadySeconds": (_seconds(svc.update.min_ready)
                                if svc.update.min_ready > 0 else 0),
            "template": template,
            "volumeClaimTemplates": claims}}

    def _job(self, name: str, meta: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
        svc = self.active[name]
        on_failure = svc.restart is Restart.ON_FAILURE
        template["spec"]["restartPolicy"] = "OnFailure" if on_failure else "Never"
        notes = dict(meta.get("annotations", {}))
        if name in self.gating_jobs:
            # a Sync hook runs in its wave and the next wave waits for it to succeed
            notes["argocd.argoproj.io/hook"] = "Sync"
            notes["argocd.argoproj.io/hook-delete-policy"] = "BeforeHookCreation"
        else:
            notes["argocd.argoproj.io/sync-options"] = "Replace=true"  # a Job is immutable
        meta = dict(meta, annotations=notes)
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {
            "backoffLimit": 6 if on_failure else 0,
            "activeDeadlineSeconds": _seconds(svc.update.deadline),
            "template": template}}

    # -- Services --

    def _container_ports(self, name: str) -> list[dict[str, Any]]:
        svc = self.active[name]
        seen: dict[tuple[int, str], dict[str, Any]] = {}
        if svc.expose is not None:
            seen[(svc.expose.port, "TCP")] = {"name": "http", "port": svc.expose.port,
                                              "protocol": "TCP", "published": None}
        for i, entry in enumerate(svc.ports):
            port = parse_port(entry)
            if "-" in port.container_port:
                self.unmapped(("services", name, "ports", i), f"port range {entry!r}: list "
                              "the ports one by one")
                continue
            number, proto = int(port.container_port), port.protocol.upper()
            published = int(port.host_port) if port.host_port.isdigit() else None
            if (number, proto) not in seen:
                seen[(number, proto)] = {"name": f"{proto.lower()}-{number}", "port": number,
                                         "protocol": proto, "published": published}
            elif published is not None and seen[(number, proto)]["published"] is None:
                seen[(number, proto)]["published"] = published
        return list(seen.values())

    def _reachable(self, name: str) -> bool:
        """Another exported service shares a network with it (so it resolves its name)."""
        nets = set(self.active[name].networks)
        return any(nets & set(self.active[o].networks) for o in self.exported if o != name)

    def _k8s_service(self, name: str) -> dict[str, Any] | None:
        svc = self.active[name]
        ports = self._container_ports(name)
        spec: dict[str, Any] = {"selector": self.selector(name)}
        if name == self.edge and self.options.edge is EdgeMode.NGINX:
            published = [p for p in ports if p["published"] is not None]
            spec["type"] = "LoadBalancer"
            spec["ports"] = [{"name": p["name"], "port": p["published"],
                              "targetPort": p["port"], "protocol": p["protocol"]}
                             for p in published]
            if not published:
                self.unmapped(("services", name, "ports"), "the edge publishes no port: the "
                              "LoadBalancer Service has none")
                return None
        elif name in self.jobs or not (svc.expose is not None or self._reachable(name)
                                       or self._has_claims(name)):
            return None  # nobody resolves its name (a StatefulSet's governing one is kept)
        elif svc.expose is not None:
            spec["ports"] = [{"name": p["name"], "port": p["port"], "targetPort": p["port"],
                              "protocol": p["protocol"]} for p in ports]
        else:
            # headless: the name resolves to the pods, every port reachable (as Docker's DNS
            # alias), also while starting (a quorum needs its peers' names before it is ready)
            spec["clusterIP"] = "None"
            spec["publishNotReadyAddresses"] = True
            if ports:
                spec["ports"] = [{"name": p["name"], "port": p["port"], "targetPort": p["port"],
                                  "protocol": p["protocol"]} for p in ports]
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": self.meta(self.names[name], wave=self.waves[name],
                                      labels=self.labels(name)),
                "spec": spec}

    # -- the edge --

    def _edge_replaced(self, name: str) -> None:
        svc = self.active[name]
        base: KeyPath = ("services", name)
        self.note(base, f"the edge service {name} is replaced by an Ingress (edge mode "
                  "ingress; `--edge nginx` exports it as a Deployment instead)")
        for i, entry in enumerate(svc.volumes):
            mount = parse_mount(entry)
            what = (f"volume {mount.source} (TLS certificates, config snippets)" if mount.named
                    else f"{posixpath.basename(mount.source)} (routing, error pages, timeouts)")
            self.unmapped((*base, "volumes", i), f"the edge's {what} is not carried into the "
                          "Ingress: configure the ingress controller (and spec.tls)")

    def _upstreams_name(self) -> str:
        return dns_label(f"{self.names[self.edge or '']}-upstreams")

    def _edge(self) -> tuple[dict[str, Any], ...]:
        exposed = [n for n in self.exported if self.active[n].expose is not None]
        if self.edge is None or not exposed:
            return ()
        edge_tier = self.active[self.edge].tier or ""
        wave = 10 * self.tier_index.get(edge_tier, 0)
        if self.options.edge is EdgeMode.INGRESS:
            paths: dict[str, dict[str, Any]] = {}
            for name in exposed:
                expose = self.active[name].expose
                assert expose is not None
                if expose.path in paths:
                    self.unmapped(("services", name, "expose", "path"), f"path "
                                  f"{expose.path!r} is already routed to "
                                  f"{paths[expose.path]['backend']['service']['name']}")
                    continue
                paths[expose.path] = {"path": expose.path, "pathType": "Prefix", "backend": {
                    "service": {"name": self.names[name], "port": {"number": expose.port}}}}
            self.note(("edge",), "the Ingress uses the cluster's default IngressClass and no "
                      "host; Argo CD reports it healthy once the controller gives it an "
                      "address; pods of any namespace may reach the exposed ports (the "
                      "controller's; a controller on the host network needs an ipBlock)")
            ordered = [paths[p] for p in sorted(paths, key=lambda p: (-len(p), p))]
            return ({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": self.meta(dns_label(f"{self.spec.project}-edge"), wave=wave),
                     "spec": {"rules": [{"http": {"paths": ordered}}]}},)
        assert self.spec.edge is not None
        upstreams = ["# Rendered by reconciler export: one upstream per exposed service, "
                     "through its Service.\n"]
        for name in exposed:
            expose = self.active[name].expose
            assert expose is not None
            upstreams.append(f"upstream {name} {{\n    server {self.names[name]}.{self.ns}"
                             f".svc:{expose.port} max_fails=1 fail_timeout=2s;\n"
                             "    keepalive 16;\n}\n")
        return ({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": self.meta(self._upstreams_name(), wave=wave),
                 "data": {posixpath.basename(self.spec.edge.upstreams_file):
                          "\n".join(upstreams)}},)

    # -- secrets --

    def _secret_keys(self) -> dict[str, _SecretSource]:
        """secret name -> where its values come from (keys sorted, None when unreadable)."""
        out: dict[str, _SecretSource] = {}
        for name in self.exported:
            for env in self.loaded.env_files.get(name, ()):
                keys = sorted(env.values) if env.readable else None
                out[self.secrets[env.path]] = _SecretSource(keys, env_file=env.declared)
                if not env.readable:
                    self.note(("services", name, "env_file"), f"{env.declared} is not readable "
                              "here: its keys are not listed")
        for secret in sorted({ref.source for name in self.exported
                              for ref in self.active[name].secrets}):
            source = self.spec.secrets.get(secret)
            if source is None:
                continue  # `validate` refuses an undefined secret
            k8s = self.secrets["\0" + secret]
            if source.environment is not None and not re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_]*", source.environment):
                self.unmapped(("secrets", secret, "environment"), f"{source.environment!r} "
                              f"is not a shell variable name: create the Secret {k8s} (key "
                              f"{secret}) by hand")
                out[k8s] = _SecretSource([secret])
                continue
            out[k8s] = _SecretSource([secret], file=source.file, variable=source.environment)
        return dict(sorted(out.items()))

    def _secrets(self) -> tuple[tuple[dict[str, Any], ...], dict[str, str]]:
        secrets = self._secret_keys()
        if not secrets:
            return (), {}
        mode = self.options.secrets
        if mode is SecretsMode.SCRIPT:
            return (), {"create-secrets.sh": self._script(secrets, seal=False)}
        docs = []
        store = f"{self.spec.project}-secrets"
        for secret, src in secrets.items():
            keys = src.keys
            meta = self.meta(secret, wave=-1)
            if mode is SecretsMode.EXTERNAL_SECRET:
                remote = f"{self.spec.project}/{secret}"
                spec: dict[str, Any] = {
                    "refreshInterval": "1h",
                    "secretStoreRef": {"kind": "ClusterSecretStore", "name": store},
                    "target": {"name": secret, "creationPolicy": "Owner"}}
                if keys is None:
                    spec["dataFrom"] = [{"extract": {"key": remote}}]
                else:
                    spec["data"] = [{"secretKey": k, "remoteRef": {"key": remote, "property": k}}
                                    for k in keys]
                docs.append({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                             "metadata": meta, "spec": spec})
            else:
                docs.append({"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
                             "metadata": meta, "spec": {
                                 "encryptedData": {k: "SEAL-ME" for k in keys or []},
                                 "template": {"metadata": {"name": secret,
                                                           "namespace": self.ns},
                                              "type": "Opaque"}}})
        if mode is SecretsMode.EXTERNAL_SECRET:
            self.note((), f"ExternalSecrets read the ClusterSecretStore {store!r}: "
                      f"create it and store each env file and secret under "
                      f"{self.spec.project}/<secret>")
            return tuple(docs), {}
        self.note((), "SealedSecret stubs: run seal-secrets.sh where the env "
                  "files and secret files are to replace secrets.yaml with the sealed values")
        return tuple(docs), {"seal-secrets.sh": self._script(secrets, seal=True)}

    def _script(self, secrets: Mapping[str, _SecretSource], *, seal: bool) -> str:
        declared = [p for src in secrets.values() for p in (src.env_file, src.file) if p]
        relative = any(not d.startswith("/") for d in declared)
        lines = [
            "#!/bin/sh",
            "# Generated by `reconciler export kubernetes`. Run it on the host that has the env",
            "# files and secret files (and the secrets' variables in its environment): values",
            "# go from there to the cluster and never into git.",
            "# kubectl reads env files literally: quotes around a value stay part of the value,",
            "# `export KEY=...` is not understood.",
            "set -eu",
            f"NAMESPACE=\"${{NAMESPACE:-{self.ns}}}\"",
        ]
        if seal:
            lines.append("OUT=\"${OUT:-$(cd \"$(dirname \"$0\")\" && pwd)/secrets.yaml}\"")
        if relative:
            lines.append("# relative files are relative to the spec directory (as given to "
                         "the export: run from the same directory, or set SPEC_DIR)")
            lines.append(f"cd \"${{SPEC_DIR:-{self.loaded.directory}}}\"")
        if seal:
            lines += [
                ": > \"$OUT.tmp\"",
                "seal() { # name --from-env-file=FILE | --from-file=KEY=FILE",
                "    name=\"$1\"; shift",
                "    kubectl -n \"$NAMESPACE\" create secret generic \"$name\" \"$@\" "
                "--dry-run=client -o yaml \\",
                "        | kubeseal --format yaml >> \"$OUT.tmp\"",
                "    echo --- >> \"$OUT.tmp\"",
                "}",
            ]
        else:
            lines += [
                "kubectl get namespace \"$NAMESPACE\" >/dev/null 2>&1 || "
                "kubectl create namespace \"$NAMESPACE\"",
                "apply() { # name --from-env-file=FILE | --from-file=KEY=FILE",
                "    name=\"$1\"; shift",
                "    kubectl -n \"$NAMESPACE\" create secret generic \"$name\" \"$@\" "
                "--dry-run=client -o yaml | kubectl apply -f -",
                "}",
            ]
        verb = "seal" if seal else "apply"
        for secret, src in secrets.items():
            if src.env_file is not None:
                shown = ", ".join(src.keys) if src.keys is not None else (
                    "(not readable at export)")
                lines.append(f"{verb} {secret} {shlex.quote('--from-env-file=' + src.env_file)}"
                             f"  # keys: {shown}")
            elif src.file is not None:
                key = (src.keys or [""])[0]
                lines.append(f"{verb} {secret} "
                             f"{shlex.quote(f'--from-file={key}={src.file}')}  # key: {key}")
            elif src.variable is not None:
                key = (src.keys or [""])[0]
                lines.append(f": \"${{{src.variable}?is not set (the value of secret {key})}}\"")
                lines.append(f"printf '%s' \"${src.variable}\" | {verb} {secret} "
                             f"{shlex.quote(f'--from-file={key}=/dev/stdin')}  # key: {key}")
            else:
                lines.append(f"# {secret}: create it by hand (key: {', '.join(src.keys or [])})")
        if seal:
            lines.append("mv \"$OUT.tmp\" \"$OUT\"")
        return "\n".join(lines) + "\n"

    # -- NetworkPolicies --

    def _network_policies(self) -> tuple[dict[str, Any], ...]:
        project = {"reconciler.project": self.spec.project}
        docs: list[dict[str, Any]] = [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": self.meta("default-deny", wave=-1),
             "spec": {"podSelector": {"matchLabels": project},
                      "policyTypes": ["Ingress", "Egress"]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": self.meta("allow-dns", wave=-1),
             "spec": {"podSelector": {"matchLabels": project}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                          "ports": [{"protocol": "UDP", "port": 53},
                                    {"protocol": "TCP", "port": 53}]}]}},
        ]
        used = sorted({n for s in self.exported for n in self.active[s].networks})
        for net in used:
            definition = self.spec.network(net)
            members = {"matchLabels": {**project, self.net_label(net): "true"}}
            egress: list[dict[str, Any]] = [{"to": [{"podSelector": members}]}]
            if not definition.internal:
                egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                   "except": list(_PRIVATE_RANGES)}}]})
            docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": self.meta(dns_label(f"network-{net}"), wave=-1),
                         "spec": {"podSelector": members,
                                  "policyTypes": ["Ingress", "Egress"],
                                  "ingress": [{"from": [{"podSelector": members}]}],
                                  "egress": egress}})
            if definition.external:
                self.note(("networks", net), "external network: only its members in this "
                          "namespace are modelled")
            if definition.ipam is not None:
                self.unmapped(("networks", net, "ipam"), "ipam: pod addresses come from the "
                              "cluster's network plugin (no subnets per network)")
            if definition.driver not in ("bridge", "overlay"):
                self.unmapped(("networks", net, "driver"), f"network driver "
                              f"{definition.driver!r}: no equivalent")
        if any(not self.spec.network(n).internal for n in used):
            self.note(("networks",), "non-internal networks may reach the internet (private "
                      "ranges excluded); internal networks reach only their members")
        for name in self.exported:
            svc = self.active[name]
            ports = self._container_ports(name)
            if name == self.edge and self.options.edge is EdgeMode.NGINX:
                published = [p for p in ports if p["published"] is not None]
                peers: list[dict[str, Any]] = []  # from anywhere
            elif svc.expose is not None and self.options.edge is EdgeMode.INGRESS:
                published = [p for p in ports if p["port"] == svc.expose.port]
                peers = [{"namespaceSelector": {}}]  # the ingress controller, any namespace
            else:
                continue
            if not published:
                continue
            rule: dict[str, Any] = {"ports": [{"protocol": p["protocol"], "port": p["port"]}
                                              for p in published]}
            if peers:
                rule = {"from": peers, **rule}
            docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": self.meta(dns_label(f"edge-{self.names[name]}"), wave=-1),
                         "spec": {"podSelector": {"matchLabels": self.selector(name)},
                                  "policyTypes": ["Ingress"], "ingress": [rule]}})
        return tuple(docs)


def export(loaded: LoadedSpec, *, options: Options = Options(),
           locations: Mapping[KeyPath, Location] | None = None,
           contents: Mapping[str, Mounted] | None = None) -> Export:
    """Translate `loaded` (validated, `strict=False` is fine) into manifests.

    `locations`: key path -> file:line of the spec files (the loader's fast path records
    none); `contents`: host path -> the text of each bind-mounted spec file or directory.
    """
    return _Builder(loaded, options, locations or {}, contents or {}).build()
