"""A desired service replica -> the Docker Engine API ContainerCreate body. Pure.

Every network is listed in `NetworkingConfig` with the service name as alias; the runtime
connects all but the first after create (API 1.41 takes one network at create).
"""

from __future__ import annotations

from typing import Any

from reconciler import labels
from reconciler.desired import DesiredService
from reconciler.envfiles import Secret
from reconciler.specs import parse_port

NANO = 1_000_000_000


def _env_line(key: str, value: str) -> str:
    plain = value.value if isinstance(value, Secret) else value
    return f"{key}={plain}"


def container_config(svc: DesiredService, replica: int) -> dict[str, Any]:
    s = svc.service
    body: dict[str, Any] = {
        "Image": s.image,
        "Env": [_env_line(k, v) for k, v in svc.env],
        "Labels": labels.container_labels(
            project=svc.project, service=svc.name, tier=svc.tier, replica=replica,
            fp=svc.fingerprint, public_config=svc.public_config, user_labels=s.labels,
            edge=svc.edge,
        ),
        "StopTimeout": max(1, round(s.stop_grace_period)),
    }
    if s.command is not None:
        body["Cmd"] = list(s.command)
    if s.entrypoint is not None:
        body["Entrypoint"] = list(s.entrypoint)
    if s.user:
        body["User"] = s.user
    if s.working_dir:
        body["WorkingDir"] = s.working_dir
    if s.hostname:
        body["Hostname"] = s.hostname
    if s.stop_signal:
        body["StopSignal"] = s.stop_signal
    hc = s.healthcheck
    if hc is not None and hc.active and hc.test is not None:
        body["Healthcheck"] = {
            "Test": list(hc.test),
            "Interval": int(hc.interval * NANO),
            "Timeout": int(hc.timeout * NANO),
            "Retries": hc.retries,
            "StartPeriod": int(hc.start_period * NANO),
        }
    elif hc is not None and hc.disable:
        body["Healthcheck"] = {"Test": ["NONE"]}
    host: dict[str, Any] = {
        "RestartPolicy": {"Name": "" if s.restart.value == "no" else s.restart.value},
        "Binds": list(svc.binds),
    }
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
    if s.resources.memory:
        host["Memory"] = s.resources.memory
    if s.resources.memory_reservation:
        host["MemoryReservation"] = s.resources.memory_reservation
    if s.resources.cpus:
        host["NanoCpus"] = int(s.resources.cpus * NANO)
    if s.privileged:
        host["Privileged"] = True
    if s.cap_add:
        host["CapAdd"] = list(s.cap_add)
    if s.shm_size:
        host["ShmSize"] = s.shm_size
    if s.logging is not None:
        host["LogConfig"] = {"Type": s.logging.driver, "Config": dict(s.logging.options)}
    if s.ulimits:
        host["Ulimits"] = [{"Name": k, "Soft": v.soft, "Hard": v.hard}
                           for k, v in sorted(s.ulimits.items())]
    if s.init:
        host["Init"] = True
    if s.read_only:
        host["ReadonlyRootfs"] = True
    if s.tmpfs:
        host["Tmpfs"] = {t.split(":", 1)[0]: (t.split(":", 1)[1] if ":" in t else "")
                         for t in s.tmpfs}
    if s.security_opt:
        host["SecurityOpt"] = list(s.security_opt)
    if s.cap_drop:
        host["CapDrop"] = list(s.cap_drop)
    if s.extra_hosts:
        host["ExtraHosts"] = list(s.extra_hosts)
    if s.pid:
        host["PidMode"] = s.pid
    if s.ipc:
        host["IpcMode"] = s.ipc
    if s.network_mode:
        host["NetworkMode"] = s.network_mode
    elif svc.networks:
        host["NetworkMode"] = svc.networks[0]
        body["NetworkingConfig"] = {"EndpointsConfig": {
            net: {"Aliases": [svc.name]} for net in svc.networks
        }}
    body["HostConfig"] = host
    return body
