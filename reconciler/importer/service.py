"""One compose service to spec data: the explicit table from compose key to handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.importer import building, deploy, files, keys, mounts
from reconciler.importer.draft import Draft
from reconciler.importer.model import Kind, NotText, Y, as_text

SERVICE_ORDER = (
    "tier", "kind", "image", "build", "pull_policy", "replicas", "profiles", "command",
    "entrypoint", "env_file", "environment", "ports", "volumes", "networks", "depends_on",
    "healthcheck", "update", "resources", "restart", "labels", "stop_grace_period", "stop_signal",
    "user", "working_dir", "hostname", "privileged", "network_mode", "pid", "ipc", "cap_add",
    "shm_size", "logging", "ulimits", "init", "read_only", "tmpfs", "security_opt", "cap_drop",
    "extra_hosts", "pids_limit", "dns", "dns_search", "sysctls", "network_aliases",
    "ipv4_address", "secrets", "configs",
)
COPY_STR = ("stop_signal", "user", "working_dir", "hostname", "pid", "ipc")
HINTS = {
    "external_links": "service names resolve over shared networks",
    "platform": "pin an image built for the host's architecture",
    "volumes_from": "mount the same named volume in both services",
    "extends": "merge the base file with an extra -f instead",
}

Handler = Callable[[Draft, Y, Mapping[str, Y]], None]


def _copy(key: str) -> Handler:
    """A key carried over as its text (`user`, `hostname`, ...)."""
    def handler(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
        if y.value is not None:
            svc.data[key] = as_text(y.value)
    return handler


# compose key -> handler; a key not in here is reported as not supported (dropped)
HANDLERS: dict[str, Handler] = {
    "command": keys.command,
    "entrypoint": keys.entrypoint,
    "environment": keys.environment,
    "env_file": keys.env_file,
    "ports": keys.ports,
    "expose": keys.expose,
    "volumes": mounts.volumes,
    "networks": keys.networks,
    "healthcheck": keys.healthcheck,
    "depends_on": keys.depends_on,
    "restart": keys.restart,
    "labels": keys.labels,
    "stop_grace_period": keys.stop_grace_period,
    "profiles": keys.profiles,
    "privileged": keys.privileged,
    "network_mode": keys.network_mode,
    "cap_add": keys.cap_add,
    "logging": keys.logging,
    "ulimits": keys.ulimits,
    "init": keys.init,
    "read_only": keys.read_only,
    "tmpfs": keys.tmpfs,
    "security_opt": keys.security_opt,
    "cap_drop": keys.cap_drop,
    "extra_hosts": keys.extra_hosts,
    "shm_size": keys.shm_size,
    "container_name": keys.container_name,
    "mem_limit": keys.mem_limit,
    "cpus": keys.cpus,
    "scale": keys.scale,
    "pull_policy": keys.pull_policy,
    "deploy": deploy.deploy,
    "pids_limit": keys.pids_limit,
    "dns": keys.dns_list("dns"),
    "dns_search": keys.dns_list("dns_search"),
    "sysctls": keys.sysctls,
    "links": keys.links,
    "build": building.build,
    "secrets": files.service_refs("secrets"),
    "configs": files.service_refs("configs"),
    **{key: _copy(key) for key in COPY_STR},
}


def convert_service(name: str, y: Y, *, project_dir: str = "", out_dir: str = "",
                    environ: Mapping[str, str] | None = None) -> Draft:
    """One compose service -> a `Draft` (spec data + remarks), key by key through HANDLERS."""
    svc = Draft(name, y, project_dir, out_dir, dict(environ or {}))
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, (), "a service must be a mapping")
        return svc
    items: dict[str, Y] = y.value
    image, build = items.get("image"), items.get("build")
    if image is None or not isinstance(image.value, str) or not image.value.strip():
        if build is not None and (image is None or image.value is None):
            pass  # build-only: the reconciler names the built image by its content hash
        elif image is not None and not isinstance(image.value, str | None):
            svc.remark(Kind.ERROR, image, ("image",), "the image must be a string")
        elif image is not None:
            svc.remark(Kind.ERROR, image, ("image",), "the image is empty after "
                       "interpolation: set its variable (environment, .env or --env-file)")
        else:
            svc.remark(Kind.ERROR, y, ("image",), "a service needs an image")
    else:
        svc.data["image"] = image.value.strip()
    for key, value in items.items():
        if key.startswith("x-") or key == "image":
            continue
        handler = HANDLERS.get(key)
        if handler is None:
            svc.unsupported(value, (key,), HINTS.get(key, ""))
        else:
            try:
                handler(svc, value, items)
            except NotText:
                svc.remark(Kind.ERROR, value, (key,), "expected a scalar (or a list of "
                           "scalars), found a nested list or mapping")
    if "restart" not in items and "restart" not in svc.data:
        # compose's default, written out: the spec's own default (unless-stopped) would
        # restart a one-shot setup job forever
        svc.data["restart"] = "no"
        svc.remark(Kind.NOTE, y, ("restart",), 'no `restart:` in compose: written as "no", '
                   "compose's default (the spec's default would be unless-stopped)")
    if "replicas" in svc.data and svc.data["replicas"] == 1:
        del svc.data["replicas"]
    return svc
