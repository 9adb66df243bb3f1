"""The container-visible fields of a service, in one table. Pure.

Each row names a key of the public config (the fingerprint's input and the plan's field
diffs) and says how the field lands in the Docker ContainerCreate body. `desired` builds the
fingerprint from `public_config` and `blueprint` builds the body from `apply_all`, so a field
cannot reach the container without changing the fingerprint (tests/unit/test_fields.py
checks every `Service` field). Fields resolved against the host (env values and env-file
digests, bind sources and mounted-file digests, network names, labels) are built in
`desired`/`blueprint` themselves, from the same resolved values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.core.specs import Service, parse_port

NANO = 1_000_000_000
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ContainerField:
    """One row: the public-config key, its value for a service (None, empty or False: not
    in the public config), and how it is written into the create body and its HostConfig."""

    key: str
    public: Callable[[Service], Any]
    apply: Callable[[Service, JSON, JSON], None]


def _set(where: str, name: str, value: Callable[[Service], Any], *,
         keep_empty: bool = False) -> Callable[[Service, JSON, JSON], None]:
    """Write `value(s)` to body[name] (where="body") or HostConfig[name] when it is set
    (`keep_empty`: an empty list is set too, as `command: []` means "no arguments")."""

    def apply(s: Service, body: JSON, host: JSON) -> None:
        v = value(s)
        if v is not None and (keep_empty or v not in ([], {}, False, "")):
            (body if where == "body" else host)[name] = v

    return apply


def _nothing(_s: Service, _body: JSON, _host: JSON) -> None:
    """Fields that shape the rollout, not the container body (still container identity)."""


def _healthcheck(s: Service, body: JSON, _host: JSON) -> None:
    hc = s.healthcheck
    if hc is not None and hc.active and hc.test is not None:
        body["Healthcheck"] = {
            "Test": list(hc.test),
            "Interval": int(hc.interval * NANO),
            "Timeout": int(hc.timeout * NANO),
            "Retries": hc.retries,
            "StartPeriod": int(hc.start_period * NANO),
        }
        if hc.start_interval is not None:  # honoured by API >= 1.44 (the runtime drops it
            body["Healthcheck"]["StartInterval"] = int(hc.start_interval * NANO)  # below)
    elif hc is not None and hc.disable:
        body["Healthcheck"] = {"Test": ["NONE"]}


def _ports(s: Service, body: JSON, host: JSON) -> None:
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for entry in s.ports:
        port = parse_port(entry)
        key = f"{port.container_port}/{port.protocol}"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": port.host_ip, "HostPort": port.host_port})
    if s.expose is not None:
        exposed.setdefault(f"{s.expose.port}/tcp", {})
    if exposed:
        body["ExposedPorts"] = exposed
    if bindings:
        host["PortBindings"] = bindings


def _resources(s: Service, _body: JSON, host: JSON) -> None:
    if s.resources.memory:
        host["Memory"] = s.resources.memory
    if s.resources.memory_reservation:
        host["MemoryReservation"] = s.resources.memory_reservation
    if s.resources.cpus:
        host["NanoCpus"] = int(s.resources.cpus * NANO)


def _tmpfs(s: Service) -> dict[str, str]:
    return {t.split(":", 1)[0]: (t.split(":", 1)[1] if ":" in t else "") for t in s.tmpfs}


def _list(value: Any) -> list[Any] | None:
    return list(value) if value is not None else None


FIELDS: tuple[ContainerField, ...] = (
    ContainerField("image", lambda s: s.image, _set("body", "Image", lambda s: s.image)),
    # how the image is built (its content digest is already in the image's name)
    ContainerField("build", lambda s: s.build.model_dump(mode="json", exclude_none=True)
                   if s.build is not None else None, _nothing),
    ContainerField("command", lambda s: _list(s.command),
                   _set("body", "Cmd", lambda s: _list(s.command), keep_empty=True)),
    ContainerField("entrypoint", lambda s: _list(s.entrypoint),
                   _set("body", "Entrypoint", lambda s: _list(s.entrypoint),
                        keep_empty=True)),
    # ports and expose both write ExposedPorts; `ports` also writes PortBindings
    ContainerField("ports", lambda s: list(s.ports), _ports),
    ContainerField("expose", lambda s: s.expose.port if s.expose is not None else None,
                   _nothing),
    ContainerField("healthcheck", lambda s: s.healthcheck.model_dump(mode="json",
                                                                     exclude_none=True)
                   if s.healthcheck is not None and s.healthcheck.active else None,
                   _healthcheck),
    ContainerField("resources", lambda s: s.resources.model_dump(mode="json",
                                                                 exclude_none=True),
                   _resources),
    ContainerField("restart", lambda s: s.restart.value, lambda s, _b, host: host.__setitem__(
        "RestartPolicy", {"Name": "" if s.restart.value == "no" else s.restart.value})),
    ContainerField("stop_grace_period", lambda s: s.stop_grace_period,
                   lambda s, body, _h: body.__setitem__(
                       "StopTimeout", max(1, round(s.stop_grace_period)))),
    ContainerField("stop_signal", lambda s: s.stop_signal,
                   _set("body", "StopSignal", lambda s: s.stop_signal)),
    ContainerField("user", lambda s: s.user, _set("body", "User", lambda s: s.user)),
    ContainerField("working_dir", lambda s: s.working_dir,
                   _set("body", "WorkingDir", lambda s: s.working_dir)),
    ContainerField("hostname", lambda s: s.hostname,
                   _set("body", "Hostname", lambda s: s.hostname)),
    ContainerField("privileged", lambda s: s.privileged,
                   _set("host", "Privileged", lambda s: s.privileged)),
    ContainerField("network_mode", lambda s: s.network_mode, _nothing),  # see blueprint
    ContainerField("pid", lambda s: s.pid, _set("host", "PidMode", lambda s: s.pid)),
    ContainerField("ipc", lambda s: s.ipc, _set("host", "IpcMode", lambda s: s.ipc)),
    ContainerField("cap_add", lambda s: sorted(s.cap_add),
                   _set("host", "CapAdd", lambda s: list(s.cap_add))),
    ContainerField("shm_size", lambda s: s.shm_size,
                   _set("host", "ShmSize", lambda s: s.shm_size)),
    ContainerField("logging", lambda s: s.logging.model_dump(mode="json") if s.logging
                   else None, _set("host", "LogConfig", lambda s: {
                       "Type": s.logging.driver, "Config": dict(s.logging.options)}
                       if s.logging is not None else None)),
    ContainerField("ulimits", lambda s: {k: [v.soft, v.hard]
                                         for k, v in sorted(s.ulimits.items())},
                   _set("host", "Ulimits", lambda s: [
                       {"Name": k, "Soft": v.soft, "Hard": v.hard}
                       for k, v in sorted(s.ulimits.items())])),
    ContainerField("init", lambda s: s.init, _set("host", "Init", lambda s: s.init)),
    ContainerField("read_only", lambda s: s.read_only,
                   _set("host", "ReadonlyRootfs", lambda s: s.read_only)),
    ContainerField("tmpfs", lambda s: list(s.tmpfs), _set("host", "Tmpfs", _tmpfs)),
    ContainerField("security_opt", lambda s: list(s.security_opt),
                   _set("host", "SecurityOpt", lambda s: list(s.security_opt))),
    ContainerField("cap_drop", lambda s: sorted(s.cap_drop),
                   _set("host", "CapDrop", lambda s: list(s.cap_drop))),
    ContainerField("extra_hosts", lambda s: list(s.extra_hosts),
                   _set("host", "ExtraHosts", lambda s: list(s.extra_hosts))),
    ContainerField("pids_limit", lambda s: s.pids_limit,
                   _set("host", "PidsLimit", lambda s: s.pids_limit)),
    ContainerField("dns", lambda s: list(s.dns), _set("host", "Dns", lambda s: list(s.dns))),
    ContainerField("dns_search", lambda s: list(s.dns_search),
                   _set("host", "DnsSearch", lambda s: list(s.dns_search))),
    ContainerField("sysctls", lambda s: dict(sorted(s.sysctls.items())),
                   _set("host", "Sysctls", lambda s: dict(s.sysctls))),
    ContainerField("network_aliases", lambda s: {k: list(v) for k, v in
                                                 sorted(s.network_aliases.items())},
                   _nothing),  # see blueprint: the endpoints' Aliases
    ContainerField("ipv4_address", lambda s: dict(sorted(s.ipv4_address.items())),
                   _nothing),  # see blueprint: the endpoints' IPAMConfig
    # secrets and configs: their public form (keyed digests of the content) and their
    # read-only binds are resolved in `desired`
    ContainerField("secrets", lambda s: None, _nothing),
    ContainerField("configs", lambda s: None, _nothing),
    # a job runs to completion instead of serving (absent for services: no fingerprint change)
    ContainerField("kind", lambda s: s.kind.value if s.job else None, _nothing),
    # decides what runs (the image behind a tag), so a change is a new generation
    ContainerField("pull_policy", lambda s: s.pull_policy.value, _nothing),
)


def public_fields(s: Service) -> dict[str, Any]:
    """The table's part of the public config of a service (unset values included)."""
    return {f.key: f.public(s) for f in FIELDS}


def apply_all(s: Service, body: JSON, host: JSON) -> None:
    """Write every table field of `s` into a create body and its HostConfig."""
    for f in FIELDS:
        f.apply(s, body, host)
