"""`docker compose -f a -f b` merging, list forms normalised to mappings, and same-file
`extends` (compose's own rules; the lines of every value kept)."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.importer.model import Kind, Remark, Y, as_text, err, plain

_LIST_TO_MAP = ("environment", "labels", "depends_on", "networks", "extra_hosts")
_REPLACED = ("command", "entrypoint")
_APPEND_UNIQUE = ("ports", "expose", "env_file", "cap_add", "cap_drop", "dns", "dns_search",
                  "profiles", "devices", "security_opt", "links", "external_links", "tmpfs")


def _split_entry(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    return key.strip(), (value if sep else None)


def normalise_service(svc: Y) -> Y:
    """List forms that compose merges as mappings become mappings (their lines kept)."""
    if not isinstance(svc.value, dict):
        return svc
    for key in _LIST_TO_MAP:
        y = svc.value.get(key)
        if y is None or not isinstance(y.value, list):
            continue
        mapping: dict[str, Y] = {}
        for item in y.value:
            if key in ("environment", "labels", "extra_hosts") and isinstance(item.value, str):
                name, value = _split_entry(item.value)
                if key == "extra_hosts" and value is None:
                    name, _, value = item.value.partition(":")
                mapping[name] = Y(value, item.file, item.line, item.source)
            elif isinstance(item.value, str | int | float):
                mapping[str(item.value)] = Y(None, item.file, item.line)
        if key == "depends_on":  # the short form: remembered, written back as a list
            for item in mapping.values():
                item.value = {"__short__": Y(True, item.file, item.line)}
        svc.value[key] = Y(mapping, y.file, y.line)
    for key in ("env_file", "volumes", "ports", "expose", "profiles", "cap_add", "tmpfs",
                "dns"):
        y = svc.value.get(key)
        if y is not None and not isinstance(y.value, list | dict) and y.value is not None:
            svc.value[key] = Y([Y(y.value, y.file, y.line)], y.file, y.line)
    return svc


def _volume_target(item: Y) -> str | None:
    if isinstance(item.value, dict):
        target = item.value.get("target")
        return str(target.value) if target is not None else None
    if isinstance(item.value, str):
        parts = item.value.split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    return None


def _merge(base: Y, over: Y, key: str | None = None) -> Y:
    """Compose's merge rules for one value: mappings merged, later scalars win."""
    if key in _REPLACED:
        return over
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        out = dict(base.value)
        for k, v in over.value.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        return Y(out, over.file, over.line)
    if isinstance(base.value, list) and isinstance(over.value, list):
        if key == "volumes":
            targets = {_volume_target(i) for i in over.value}
            kept = [i for i in base.value if _volume_target(i) not in targets]
            return Y(kept + list(over.value), over.file, over.line)
        if key in _APPEND_UNIQUE:
            seen = {repr(plain(i)) for i in base.value}
            extra = [i for i in over.value if repr(plain(i)) not in seen]
            return Y(list(base.value) + extra, over.file, over.line)
        return over
    return over


def merge_files(roots: Sequence[Y]) -> Y:
    merged = roots[0]
    for root in roots[1:]:
        merged = _merge_root(merged, root)
    return merged


def _merge_root(base: Y, over: Y) -> Y:
    out = dict(base.value)
    for key, value in over.value.items():
        if key == "services" and key in out and isinstance(value.value, dict) \
                and isinstance(out[key].value, dict):
            services = dict(out[key].value)
            for name, svc in value.value.items():
                services[name] = (merge_service(services[name], svc) if name in services
                                  else svc)
            out[key] = Y(services, value.file, value.line)
        elif key in out:
            out[key] = _merge(out[key], value, key)
        else:
            out[key] = value
    return Y(out, over.file, over.line)


def merge_service(base: Y, over: Y) -> Y:
    if not (isinstance(base.value, dict) and isinstance(over.value, dict)):
        return over
    out = dict(base.value)
    for key, value in over.value.items():
        out[key] = _merge(out[key], value, key) if key in out else value
    return Y(out, over.file, over.line)


def resolve_extends(raw: dict[str, Y], remarks: list[Remark]) -> dict[str, Y]:
    out: dict[str, Y] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> Y:
        if name in out:
            return out[name]
        y = raw[name]
        ext = y.value.get("extends") if isinstance(y.value, dict) else None
        if ext is None:
            out[name] = y
            return y
        rest = Y({k: v for k, v in y.value.items() if k != "extends"}, y.file, y.line)
        base_name = as_text(ext.value) if isinstance(ext.value, str) else (
            as_text(ext.value["service"].value) if isinstance(ext.value, dict)
            and "service" in ext.value and not isinstance(ext.value["service"].value,
                                                          dict | list) else "")
        if isinstance(ext.value, dict) and "file" in ext.value:
            remarks.append(Remark(Kind.UNSUPPORTED, ext.file, ext.line,
                                  ("services", name, "extends"),
                                  "not supported (dropped): extends from another file; merge "
                                  "it with an extra -f instead"))
            out[name] = rest
            return rest
        if base_name not in raw or base_name in stack:
            remarks.append(err(ext.file, ext.line, ("services", name, "extends"),
                                f"cannot extend {base_name!r}"))
            out[name] = rest
            return rest
        merged = merge_service(resolve(base_name, (*stack, name)), rest)
        out[name] = merged
        return merged

    for name in raw:
        resolve(name, ())
    return out
