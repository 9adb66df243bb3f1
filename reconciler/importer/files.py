"""compose `secrets:` and `configs:`: the top-level definitions (file, environment and, for
configs, content sources) and each service's use of them (short and long syntax).

A `file` source is rebased to the spec directory. An `environment` source whose variable is
set here (the shell or `.env`) is taken out of the spec: its value goes to a generated file
in the secrets directory (0600, written by the CLI, never printed) and the spec names that
file; an unset one stays `environment:` (the reconciler then reads it from its own
environment). `external`, `name` and the swarm drivers have no meaning on one host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reconciler.importer.draft import Draft
from reconciler.importer.model import Kind, Remark, Y, as_text
from reconciler.importer.naming import rebase, reference

_SWARM = ("driver", "driver_opts", "template_driver", "labels")


def top_level(kind: str, y: Y, *, environ: Mapping[str, str], project_dir: str,
              out_dir: str, secret_dir: str, remarks: list[Remark],
              blobs: dict[str, str]) -> dict[str, dict[str, str]]:
    """Top-level `secrets`/`configs` -> spec definitions; values of environment sources go
    to `blobs` (path -> value) for the CLI to write."""
    out: dict[str, dict[str, str]] = {}
    if not isinstance(y.value, dict):
        remarks.append(Remark(Kind.ERROR, y.file, y.line, (kind,), "expected a mapping"))
        return out
    what = kind[:-1]
    for name, conf in y.value.items():
        path: tuple[str | int, ...] = (kind, name)
        if not isinstance(conf.value, dict):
            remarks.append(Remark(Kind.ERROR, conf.file, conf.line, path, "expected a mapping"))
            continue
        entry: dict[str, str] = {}
        for key, value in conf.value.items():
            here = (*path, key)
            if key == "file":
                entry["file"] = rebase(as_text(value.value), project_dir=project_dir,
                                       out_dir=out_dir)
            elif key == "content" and kind == "configs":
                entry["content"] = as_text(value.value)
            elif key == "environment":
                var = as_text(value.value)
                if var in environ and secret_dir and os.path.isabs(secret_dir):
                    target = os.path.join(secret_dir, f"{kind}-{name}")
                    blobs[target] = environ[var]
                    entry["file"] = reference(target, out_dir)
                    remarks.append(Remark(Kind.NOTE, value.file, value.line, here,
                                          f"the value of {var} is written to {target} (0600), "
                                          "not into the spec; copy it to the host"))
                elif var in environ:
                    remarks.append(Remark(Kind.ERROR, value.file, value.line, here,
                                          "the value must go to a file: give an absolute "
                                          "--secrets-dir"))
                else:
                    entry["environment"] = var
                    remarks.append(Remark(Kind.WARNING, value.file, value.line, here,
                                          f"{var} is not set here: the reconciler reads it "
                                          "from its own environment when it applies"))
            elif key == "external" and value.value not in (False, None):
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, here,
                                      f"not supported (dropped): an external {what} lives in "
                                      "a swarm; put its value in a file on the host and use "
                                      "`file:`"))
            elif key == "name":
                remarks.append(Remark(Kind.NOTE, value.file, value.line, here,
                                      "dropped (the name of a swarm object)"))
            elif key in _SWARM:
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, here,
                                      "not supported (dropped): swarm only"))
            elif key != "external":
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, here,
                                      "not supported (dropped)"))
        if len([k for k in ("file", "environment", "content") if k in entry]) == 1:
            out[name] = entry
        elif not any(r.kind in (Kind.UNSUPPORTED, Kind.ERROR) and r.path[:2] == path
                     for r in remarks):
            remarks.append(Remark(Kind.ERROR, conf.file, conf.line, path,
                                  f"a {what} needs exactly one of file, environment"
                                  + (" or content" if kind == "configs" else "")))
    return out


def _mode(svc: Draft, y: Y, path: tuple[str | int, ...]) -> str | None:
    """compose reads `mode: 0440` as octal (YAML 1.1); our reader sees the number 440."""
    value = y.value
    if isinstance(value, str) and value.strip().lstrip("0o").isdigit():
        digits = value.strip().removeprefix("0o")
        if all(c in "01234567" for c in digits) and int(digits, 8) <= 0o777:
            return digits.rjust(4, "0")
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        if type(value).__name__ != "OctalInt" and all(c in "01234567" for c in text) \
                and int(text, 8) <= 0o777:
            return text.rjust(4, "0")  # written 0440: octal, as compose reads it
        if 0 <= value <= 0o777:
            return f"{value:04o}"
    svc.remark(Kind.ERROR, y, path, "mode must be an octal permission such as 0440")
    return None


def service_refs(kind: str) -> Any:
    """The handler of a service's `secrets`/`configs` (short or long syntax)."""

    def handle(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
        if not isinstance(y.value, list):
            svc.remark(Kind.ERROR, y, (kind,), "expected a list")
            return
        out: list[Any] = []
        for i, item in enumerate(y.value):
            if not isinstance(item.value, dict):
                out.append(as_text(item.value))
                continue
            ref: dict[str, str] = {}
            for key, value in item.value.items():
                if key in ("source", "target", "uid", "gid"):
                    ref[key] = as_text(value.value)
                elif key == "mode":
                    mode = _mode(svc, value, (kind, i, key))
                    if mode is not None:
                        ref["mode"] = mode
                else:
                    svc.unsupported(value, (kind, i, key))
            if "source" not in ref:
                svc.remark(Kind.ERROR, item, (kind, i), "needs a source")
                continue
            out.append(ref["source"] if list(ref) == ["source"] else ref)
        if out:
            svc.data[kind] = out

    return handle
