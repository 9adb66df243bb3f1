"""The `build` key of a compose service: its string and mapping forms to the spec's `build`
(context rebased into the spec dir; literal args only: nothing from `.env` or the shell's
environment reaches a build)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler.importer.draft import Draft
from reconciler.importer.interpolate import references
from reconciler.importer.model import Kind, NotText, Y, as_text

_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@|github\.com/)", re.IGNORECASE)
HINTS = {
    "dockerfile_inline": "write it to a Dockerfile in the context",
    "secrets": "build secrets are not passed: the image is built from the spec checkout only",
    "ssh": "no SSH agent is forwarded to a build",
    "cache_from": "the engine's local cache is used",
    "cache_to": "the engine's local cache is used",
    "tags": "the built image is named by its content hash (plus `image:` when given)",
    "platforms": "built for the host's architecture",
    "additional_contexts": "one context per build",
}


def build(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if isinstance(y.value, str):
        context = _context(svc, y, ("build",))
        if context is not None:
            svc.data["build"] = {"context": context}
        return
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("build",), "expected a context path or a mapping")
        return
    d: dict[str, Y] = y.value
    out: dict[str, object] = {}
    for key, value in d.items():
        path: tuple[str | int, ...] = ("build", key)
        try:
            if key == "context":
                context = _context(svc, value, path)
                if context is None:
                    return
                out["context"] = context
            elif key in ("dockerfile", "target"):
                out[key] = as_text(value.value)
            elif key == "args":
                args = _args(svc, value)
                if args:
                    out["args"] = args
            elif key in ("labels", "network", "shm_size", "extra_hosts", "pull", "no_cache",
                         "isolation", "privileged", "ulimits"):
                svc.remark(Kind.NOTE, value, path, "dropped: the reconciler builds with the "
                           "engine's defaults")
            else:
                svc.unsupported(value, path, HINTS.get(key, ""))
        except NotText:
            svc.remark(Kind.ERROR, value, path, "expected a scalar")
    out.setdefault("context", _context(svc, y, ("build",), ".") or ".")
    svc.data["build"] = out


def _context(svc: Draft, y: Y, path: tuple[str | int, ...], text: str | None = None) -> str | None:
    value = text if text is not None else as_text(y.value)
    if _REMOTE.match(value):
        svc.remark(Kind.ERROR, y, path, f"remote build context {value!r}: the reconciler "
                   "builds from the spec checkout only; check the sources out next to the spec")
        return None
    return svc.rebase(value if value.startswith((".", "/", "~")) else "./" + value)


def _args(svc: Draft, y: Y) -> dict[str, str]:
    """Literal args only: an arg whose value comes from the environment or `.env` (`- VAR`,
    `VAR:` with no value, or `${VAR}` set there) is refused, never written."""
    items: list[tuple[str, Y | None, Y]] = []
    if isinstance(y.value, dict):
        items = [(k, v, v) for k, v in y.value.items()]
    elif isinstance(y.value, list):
        for item in y.value:
            key, sep, _ = as_text(item.value).partition("=")
            items.append((key, item if sep else None, item))
    else:
        svc.remark(Kind.ERROR, y, ("build", "args"), "expected a mapping or a list")
        return {}
    out: dict[str, str] = {}
    for key, value, where in items:
        path: tuple[str | int, ...] = ("build", "args", key)
        if value is None or value.value is None:
            svc.remark(Kind.NOTE, where, path, "dropped: it takes its value from the "
                       "environment at build time; build args are literal spec values "
                       "(the Dockerfile's ARG default applies)")
            continue
        text = as_text(value.value)
        if isinstance(y.value, list):
            text = text.partition("=")[2]
        from_env = [n for n in references(value.source or "") if n in svc.environ]
        if from_env:
            svc.remark(Kind.ERROR, where, path, "takes "
                       + ", ".join(f"${n}" for n in dict.fromkeys(from_env))
                       + " from the environment or .env: build args are literal spec values "
                       "(nothing from an env file reaches a build); write the value into the "
                       "compose file, or drop the arg")
            continue
        out[key] = text
    return out
