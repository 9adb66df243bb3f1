"""The `volumes` key of a compose service: short and long syntax to spec mount strings."""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler.importer.draft import Draft
from reconciler.importer.model import Kind, Y, as_text


def volumes(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    out: list[str] = []
    if not isinstance(y.value, list):
        svc.remark(Kind.ERROR, y, ("volumes",), "expected a list")
        return
    for i, item in enumerate(y.value):
        path: tuple[str | int, ...] = ("volumes", i)
        if isinstance(item.value, dict):
            entry = _long_volume(svc, item, path)
        elif isinstance(item.value, str):
            entry = _short_volume(svc, item, path)
        else:
            svc.remark(Kind.ERROR, item, path, "expected a string or a mapping")
            entry = None
        if entry is not None:
            out.append(entry)
    if out:
        svc.data["volumes"] = out



def _short_volume(svc: Draft, item: Y, path: tuple[str | int, ...]) -> str | None:
    parts = str(item.value).split(":")
    if len(parts) == 1:
        return _anonymous(svc, item, path, parts[0], read_only=False)
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) > 2 else []
    kept: list[str] = []
    for mode in modes:
        if mode in ("z", "Z"):
            svc.remark(Kind.NOTE, item, path, f"SELinux relabel suffix :{mode} dropped "
                       "(relabel the host path once with chcon if SELinux enforces)")
        elif mode == "ro":
            kept.append(mode)
        elif mode and mode != "rw":
            svc.remark(Kind.NOTE, item, path, f"mount option {mode!r} dropped")
    if source.startswith(".") or (not source.startswith(("/", "~")) and "/" in source):
        source = svc.rebase(source)
    return f"{source}:{target}" + (":ro" if "ro" in kept else "")



def _anonymous(svc: Draft, item: Y, path: tuple[str | int, ...], target: str, *,
               read_only: bool) -> str:
    """An anonymous volume becomes a named one the reconciler creates and labels, so its data
    is kept across updates as compose keeps an anonymous volume across `up` (a named volume
    also makes `update.order: auto` stop-first: never two writers on it)."""
    slug = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-") or "root"
    name = f"{svc.name}-anon-{slug}"
    svc.anon_volumes.append(name)
    svc.remark(Kind.NOTE, item, path, f"anonymous volume at {target}: written as the named "
               f"volume {name!r} (created and labelled by the reconciler, kept across updates "
               "and never removed; the data of compose's anonymous volume is not moved)")
    return f"{name}:{target}" + (":ro" if read_only else "")


def _long_volume(svc: Draft, item: Y, path: tuple[str | int, ...]) -> str | None:
    d: dict[str, Y] = item.value
    kind = as_text(d["type"].value) if "type" in d else "volume"
    source = as_text(d["source"].value) if "source" in d and d["source"].value else ""
    target = as_text(d["target"].value) if "target" in d else ""
    if kind not in ("volume", "bind"):
        svc.remark(Kind.UNSUPPORTED, item, path, f"not supported (dropped): {kind} mount")
        return None
    if not target:
        svc.remark(Kind.ERROR, item, path, "mount without target")
        return None
    read_only = "read_only" in d and d["read_only"].value is True
    for key, value in d.items():
        if key in ("type", "source", "target", "read_only"):
            continue
        if key == "bind" and isinstance(value.value, dict):
            for sub, subval in value.value.items():
                if sub == "selinux":
                    svc.remark(Kind.NOTE, subval, (*path, "bind", sub),
                               "SELinux relabel dropped")
                elif sub == "create_host_path":
                    svc.remark(Kind.NOTE, subval, (*path, "bind", sub), "dropped: the "
                               "bind source must exist")
                else:
                    svc.unsupported(subval, (*path, "bind", sub))
        elif key == "consistency":
            svc.remark(Kind.NOTE, value, (*path, key), "dropped (no effect on Linux)")
        else:
            svc.unsupported(value, (*path, key))
    if not source:
        return _anonymous(svc, item, path, target, read_only=read_only)
    if kind == "bind" and not source.startswith(("/", "~")):
        source = svc.rebase(source if source.startswith(".") else "./" + source)
    return f"{source}:{target}" + (":ro" if read_only else "")
