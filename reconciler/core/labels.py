"""Label keys (a public interface: operators filter on them) and the keyed fingerprint.

Pure. The fingerprint is an HMAC with the per-host key over the normalised public config of
a service, which itself carries keyed digests of its env files and bind-mounted spec files,
so a changed secret or nginx.conf is a changed service while no secret is recoverable from
a label.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

PREFIX = "reconciler."
PROJECT = "reconciler.project"
SERVICE = "reconciler.service"
TIER = "reconciler.tier"
REPLICA = "reconciler.replica"
FINGERPRINT = "reconciler.fingerprint"
CONFIG = "reconciler.config"  # compact JSON of the public config, for field-level plan diffs
EDGE = "reconciler.edge"  # "true" on the edge service's containers
# the edge's mounted-config digest at create time (a graceful reload applies a new one; the
# digest applied since is recorded in the state dir, labels cannot change)
CONFIG_DIGEST = "reconciler.config-digest"

FINGERPRINT_LENGTH = 16
NAME_FINGERPRINT_LENGTH = 8
UNKNOWN = "unknown"
# docker compose's project label: networks and volumes carrying it with our project's name are
# the same `<project>_<name>` objects an imported spec declares (used, never removed)
COMPOSE_PROJECT = "com.docker.compose.project"


def canonical(data: Any) -> str:
    """Compact, key-sorted JSON: the byte form a fingerprint is computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def keyed_digest(key: bytes, data: str | bytes, *, length: int = 12) -> str:
    """HMAC-SHA256 of `data` with the host key, hex, cut to `length`."""
    raw = data.encode() if isinstance(data, str) else data
    return hmac.new(key, raw, hashlib.sha256).hexdigest()[:length]


def fingerprint(key: bytes, public_config: Mapping[str, Any]) -> str:
    """The keyed fingerprint of a service's public config."""
    return keyed_digest(key, canonical(public_config), length=FINGERPRINT_LENGTH)


def container_name(project: str, service: str, replica: int, fp: str) -> str:
    """`<project>-<service>-<replica>-<fingerprint prefix>`."""
    return f"{project}-{service}-{replica}-{fp[:NAME_FINGERPRINT_LENGTH]}"


def project_selector(project: str) -> str:
    """The label filter that selects everything of one project."""
    return f"{PROJECT}={project}"


def compose_selector(project: str) -> str:
    """The label filter for the networks and volumes a compose project of the same name
    created: used (never removed) by an imported or migrated spec, so its data is kept."""
    return f"{COMPOSE_PROJECT}={project}"


def container_labels(
    *, project: str, service: str, tier: str, replica: int, fp: str,
    public_config: Mapping[str, Any], user_labels: Mapping[str, str], edge: bool = False,
    config_digest: str = "",
) -> dict[str, str]:
    """Every label of one container: the user's plus ours (ours win)."""
    labels = dict(user_labels)
    labels.update({
        PROJECT: project, SERVICE: service, TIER: tier, REPLICA: str(replica),
        FINGERPRINT: fp, CONFIG: canonical(public_config),
    })
    if edge:
        labels[EDGE] = "true"
    if config_digest:
        labels[CONFIG_DIGEST] = config_digest
    return labels


def object_labels(project: str) -> dict[str, str]:
    """Labels of networks and volumes we create."""
    return {PROJECT: project}
