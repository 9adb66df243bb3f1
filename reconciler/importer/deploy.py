"""The `deploy` key of a compose service (replicas, limits, update and restart policy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.specs import parse_duration
from reconciler.importer.draft import Draft
from reconciler.importer.model import Kind, Y, as_text


def deploy(svc: Draft, y: Y, items: Mapping[str, Y]) -> None:
    if not isinstance(y.value, dict):
        if y.value is not None:
            svc.remark(Kind.ERROR, y, ("deploy",), "expected a mapping")
        return
    for key, value in y.value.items():
        path: tuple[str | int, ...] = ("deploy", key)
        if key == "replicas":
            replicas = svc.number(value, path, integer=True)
            if replicas is not None:
                svc.data["replicas"] = replicas
        elif key == "resources" and isinstance(value.value, dict):
            for sub, subval in value.value.items():
                if sub == "limits" and isinstance(subval.value, dict):
                    res = svc.data.setdefault("resources", {})
                    for lim, limval in subval.value.items():
                        if lim == "memory":
                            res["memory"] = as_text(limval.value)
                        elif lim == "cpus":
                            cpus = svc.number(limval, (*path, sub, lim), integer=False)
                            if cpus is not None:
                                res["cpus"] = cpus
                        else:
                            svc.unsupported(limval, (*path, sub, lim))
                else:
                    svc.unsupported(subval, (*path, sub),
                                    "only limits are enforced" if sub == "reservations"
                                    else "")
        elif key == "update_config" and isinstance(value.value, dict):
            _update_config(svc, value, path)
        elif key == "restart_policy" and isinstance(value.value, dict):
            _restart_policy(svc, value, path, "restart" in items)
        elif key == "mode" and value.value == "replicated":
            continue
        else:
            svc.unsupported(value, path, "swarm only" if key in (
                "placement", "endpoint_mode", "mode") else (
                "the reconciler reverts to the last good spec by itself"
                if key == "rollback_config" else ""))



def _update_config(svc: Draft, y: Y, path: tuple[str | int, ...]) -> None:
    update: dict[str, Any] = {}
    waits: list[tuple[float, str]] = []
    for key, value in y.value.items():
        if key == "order":
            update["order"] = as_text(value.value)
        elif key == "parallelism":
            count = svc.number(value, (*path, key), integer=True)
            if count == 0:
                svc.remark(Kind.NOTE, value, (*path, key), "0 (all at once) -> 1")
                update["parallelism"] = 1
            elif count is not None:
                update["parallelism"] = count
        elif key in ("delay", "monitor"):
            try:
                waits.append((parse_duration(value.value), as_text(value.value)))
            except ValueError:
                svc.remark(Kind.ERROR, value, (*path, key), "invalid duration")
        elif key == "failure_action":
            svc.remark(Kind.NOTE, value, (*path, key), "dropped: on failure the "
                       "reconciler always reverts to the last good spec")
        else:
            svc.unsupported(value, (*path, key))
    if waits:
        update["min_ready"] = max(waits)[1]
    if update:
        svc.data["update"] = update



def _restart_policy(svc: Draft, y: Y, path: tuple[str | int, ...],
                    has_restart: bool) -> None:
    for key, value in y.value.items():
        if key == "condition" and not has_restart:
            mapped = {"none": "no", "on-failure": "on-failure",
                      "any": "always"}.get(as_text(value.value))
            if mapped is None:
                svc.unsupported(value, (*path, key))
            else:
                svc.data["restart"] = mapped
        elif key == "condition":
            svc.remark(Kind.NOTE, value, (*path, key), "dropped: `restart` is set")
        else:
            svc.unsupported(value, (*path, key))
