"""The JSON Schema of one spec FILE, for editors (`reconciler schema`).

Pure: derived from the pydantic models, then adjusted to what a spec file may contain, because
the models validate the merged directory after the loader's conversions:
- every top-level key is optional (`project` appears in one file of the directory only);
- durations and sizes may be written as strings (`45s`, `512m`), string lists as one string,
  `environment`/`labels`/`depends_on` in compose's list forms, ports as numbers;
- `defaults` holds service keys (all optional).
"""

from __future__ import annotations

import copy
from typing import Any

from reconciler.core.specs import Spec

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"

_DURATION = {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|us|h|m|s))+\s*$"}
_SIZE = {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[bBkKmMgGtT]?[bB]?\s*$"}
_SCALAR = [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
_DURATIONS = {
    "Healthcheck": ("interval", "timeout", "start_period"),
    "Update": ("min_ready", "deadline", "drain"),
    "Service": ("stop_grace_period",),
}
_SIZES = {"Resources": ("memory", "memory_reservation"), "Service": ("shm_size",)}
_STR_LISTS = {"Healthcheck": ("test",), "Service": ("command", "entrypoint", "env_file")}


def _widen(prop: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    """`prop` or one of `extra` (keeps default/title on the outside)."""
    outer: dict[str, Any] = {k: prop.pop(k) for k in ("default", "title", "description")
                             if k in prop}
    options = prop.pop("anyOf", None) or [prop]
    return {**outer, "anyOf": [*options, *extra]}


def document() -> dict[str, Any]:
    schema: dict[str, Any] = Spec.model_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    for model, names in _DURATIONS.items():
        props = defs[model]["properties"]
        for name in names:
            props[name] = _widen(props[name], [copy.deepcopy(_DURATION)])
    for model, names in _SIZES.items():
        props = defs[model]["properties"]
        for name in names:
            props[name] = _widen(props[name], [copy.deepcopy(_SIZE)])
    for model, names in _STR_LISTS.items():
        props = defs[model]["properties"]
        for name in names:
            props[name] = _widen(props[name], [{"type": "string"}])
    service = defs["Service"]["properties"]
    env_list = {"type": "array", "items": {"type": "string"}}
    scalar_map = {"type": "object", "additionalProperties": {"anyOf": [*_SCALAR,
                                                                        {"type": "null"}]}}
    service["environment"] = {"title": "Environment", "anyOf": [scalar_map, env_list]}
    service["labels"] = {"title": "Labels", "anyOf": [
        {"type": "object", "additionalProperties": {"anyOf": _SCALAR}}, env_list]}
    service["depends_on"] = _widen(service["depends_on"],
                                   [{"type": "array", "items": {"type": "string"}}])
    service["ports"]["items"] = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    service["user"] = _widen(service["user"], [{"type": "integer"}])
    service["restart"] = _widen(service["restart"], [])
    service["build"] = _widen(service["build"], [{"type": "string"}])  # `build: ./dir`
    defs["Build"]["properties"]["args"] = {"title": "Args", "anyOf": [scalar_map, env_list]}
    # `defaults`: any service key, none required
    service_defaults = copy.deepcopy(defs["Service"])
    service_defaults.pop("required", None)
    service_defaults["title"] = "ServiceDefaults"
    defs["ServiceDefaults"] = service_defaults
    schema["properties"]["defaults"] = {"$ref": "#/$defs/ServiceDefaults",
                                        "title": "Defaults"}
    schema.pop("required", None)  # a spec file is one part of a spec
    schema["additionalProperties"] = False
    return {"$schema": SCHEMA_URL, "title": "reconciler spec file",
            **{k: v for k, v in schema.items() if k != "title"}}
