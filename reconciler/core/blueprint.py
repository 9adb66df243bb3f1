"""A desired service replica -> the Docker Engine API ContainerCreate body. Pure.

The service's own fields come from the one field table in `fields` (the fingerprint is
built from the same table). Every network is listed in `NetworkingConfig` with the service
name as alias; the runtime connects all but the first after create (API 1.41 takes one
network at create).
"""

from __future__ import annotations

from typing import Any

from reconciler.core import labels
from reconciler.core.desired import DesiredService
from reconciler.core.envfiles import Secret
from reconciler.core.fields import apply_all


def _env_line(key: str, value: str | Secret) -> str:
    plain = value.value if isinstance(value, Secret) else value
    return f"{key}={plain}"


def container_config(svc: DesiredService, replica: int) -> dict[str, Any]:
    """The create body of one replica: the `fields` table's fields plus what `desired`
    resolved (env, labels, binds, networks)."""
    s = svc.service
    body: dict[str, Any] = {
        "Env": [_env_line(k, v) for k, v in svc.env],
        "Labels": labels.container_labels(
            project=svc.project, service=svc.name, tier=svc.tier, replica=replica,
            fp=svc.fingerprint, public_config=svc.public_config, user_labels=s.labels,
            edge=svc.edge, config_digest=svc.config_digest if svc.staged else "",
        ),
    }
    host: dict[str, Any] = {"Binds": list(svc.binds)}
    apply_all(s, body, host)
    if s.network_mode:
        # `service:X` is resolved by the executor to `container:<X's container id>`
        host["NetworkMode"] = s.network_mode
    elif svc.networks:
        host["NetworkMode"] = svc.networks[0]
        extra = {svc.networks[i]: s.network_aliases.get(short, ())
                 for i, short in enumerate(s.networks) if i < len(svc.networks)}
        fixed = {svc.networks[i]: s.ipv4_address[short]
                 for i, short in enumerate(s.networks)
                 if i < len(svc.networks) and short in s.ipv4_address}
        body["NetworkingConfig"] = {"EndpointsConfig": {
            net: {"Aliases": [svc.name, *extra.get(net, ())],
                  **({"IPAMConfig": {"IPv4Address": fixed[net]}} if net in fixed else {})}
            for net in svc.networks
        }}
    body["HostConfig"] = host
    return body
