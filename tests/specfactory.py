"""Build specs, desired states and engine list JSON for tests, with readable defaults."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from reconciler.core import labels
from reconciler.core.desired import Desired, build
from reconciler.core.model import LoadedSpec
from reconciler.loading import load

KEY = b"k" * 32


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(text))
    return directory


def load_text(tmp: Path, text: str, *, strict: bool = False, **kw: Any) -> LoadedSpec:
    return load(write_spec(tmp, text), strict=strict, **kw)


def desired_from(tmp: Path, text: str, **kw: Any) -> Desired:
    return build(load_text(tmp, text, **kw), KEY)


def container_json(
    desired: Desired, service: str, replica: int, *, state: str = "running",
    status: str = "Up 1 minute (healthy)", fingerprint: str | None = None,
    cid: str | None = None, config: dict[str, Any] | None = None, created: int = 1,
    config_digest: str | None = None, joined: str | None = None,
) -> dict[str, Any]:
    """The engine's list JSON for one of our containers, as `GET /containers/json` gives it.
    An edge's `reconciler.config-digest` label is its desired one (a staged edge created
    from `desired`) unless `config_digest` says otherwise ("" : an edge without the label)."""
    svc = desired.services.get(service)
    fp = fingerprint if fingerprint is not None else (svc.fingerprint if svc else "0" * 16)
    public = config if config is not None else (dict(svc.public_config) if svc else {})
    tier = svc.tier if svc else "core"
    digest = config_digest if config_digest is not None else (svc.config_digest if svc else "")
    lbl = labels.container_labels(project=desired.project, service=service, tier=tier,
                                  replica=replica, fp=fp, public_config=public, user_labels={},
                                  config_digest=digest)
    name = labels.container_name(desired.project, service, replica, fp)
    out = {"Id": cid or f"id-{name}", "Names": [f"/{name}"], "Image": "img",
           "Labels": lbl, "State": state, "Status": status, "Created": created}
    if joined is not None:  # `network_mode: service:X`: the container it joined
        out["HostConfig"] = {"NetworkMode": f"container:{joined}"}
    return out


def foreign_json(name: str = "someone-elses") -> dict[str, Any]:
    return {"Id": f"id-{name}", "Names": [f"/{name}"], "Image": "nginx", "Labels": {},
            "State": "running", "Status": "Up 2 hours", "Created": 1}
