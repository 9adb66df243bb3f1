"""Handlers of the compose service keys (one function per key; `service.HANDLERS` maps each
compose key to its handler). Each reads the compose value `y` and writes spec data and
remarks into the service `Draft`."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.importer.draft import Draft
from reconciler.importer.interpolate import secret_value
from reconciler.importer.model import Kind, Y, as_text, plain


def _strlist(svc: Draft, y: Y, key: str) -> list[str] | None:
    if y.value is None:
        return None
    if isinstance(y.value, list):
        return [as_text(i.value) for i in y.value]
    if isinstance(y.value, str):
        try:
            return shlex.split(y.value)
        except ValueError:
            svc.remark(Kind.ERROR, y, (key,), "cannot split the command into arguments "
                       "(unbalanced quotes)")
            return None
    return [as_text(y.value)]



def command(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = _strlist(svc, y, "command")
    if value is not None:
        svc.data["command"] = value



def entrypoint(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = _strlist(svc, y, "entrypoint")
    if value is not None:
        svc.data["entrypoint"] = value



def environment(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    """Plain values stay; interpolated values that look like secrets and every pass-through
    `- VAR` go to the service's secrets env file (never into the spec, never printed)."""
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("environment",), "expected a mapping or a list")
        return
    env: dict[str, str] = {}
    for key, item in y.value.items():
        if item.value is None:
            if key in svc.environ:
                svc.secrets[key] = svc.environ[key]
                svc.remark(Kind.NOTE, item, ("environment", key), "passed through from the "
                           "environment or .env: its value is written to the service's "
                           "secrets env file (0600), not into the spec")
            else:
                svc.remark(Kind.NOTE, item, ("environment", key), "has no value (compose "
                           "passes it from the shell) and is not set here: dropped; put it "
                           "into an env_file")
            continue
        if secret_value(item, svc.environ, key):
            svc.secrets[key] = as_text(item.value)
            svc.remark(Kind.NOTE, item, ("environment", key), "looks like a secret "
                       "interpolated from the environment or .env: its value is written to "
                       "the service's secrets env file (0600), not into the spec")
            continue
        env[key] = as_text(item.value)
    if env:
        svc.data["environment"] = env



def env_file(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    items = y.value if isinstance(y.value, list) else [y]
    out: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item.value, dict):
            path = item.value.get("path")
            if path is None:
                svc.remark(Kind.ERROR, item, ("env_file", i), "env_file entry without path")
                continue
            required = item.value.get("required")
            if required is not None and required.value is False:
                svc.remark(Kind.NOTE, required, ("env_file", i, "required"),
                           "required: false is not supported: the file must exist on the "
                           "host (a preview only warns)")
            for extra in item.value:
                if extra not in ("path", "required"):
                    svc.unsupported(item.value[extra], ("env_file", i, extra))
            out.append(svc.rebase(as_text(path.value)))
        elif item.value is not None:
            out.append(svc.rebase(as_text(item.value)))
    if out:
        svc.data["env_file"] = out



def ports(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    out: list[str] = []
    if not isinstance(y.value, list):
        svc.remark(Kind.ERROR, y, ("ports",), "expected a list")
        return
    for i, item in enumerate(y.value if isinstance(y.value, list) else []):
        if isinstance(item.value, dict):
            d = {k: plain(v) for k, v in item.value.items()}
            target = d.get("target")
            if target is None:
                svc.remark(Kind.ERROR, item, ("ports", i), "long-form port without target")
                continue
            for extra in d:
                if extra in ("mode", "name", "app_protocol"):
                    svc.remark(Kind.NOTE, item.value[extra], ("ports", i, extra),
                               "ignored (not needed on one host)")
                elif extra not in ("target", "published", "host_ip", "protocol"):
                    svc.unsupported(item.value[extra], ("ports", i, extra))
            text = str(target)
            if d.get("published") not in (None, ""):
                text = f"{d['published']}:{text}"
                if d.get("host_ip"):
                    text = f"{d['host_ip']}:{text}"
            if d.get("protocol") and d["protocol"] != "tcp":
                text += f"/{d['protocol']}"
            out.append(text)
            svc.exposed.append(str(target))
        elif item.value is not None:
            text = as_text(item.value)
            out.append(text)
            svc.exposed.append(text.split("/")[0].rsplit(":", 1)[-1])
    if out:
        svc.data["ports"] = out



def expose(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    ports = [as_text(i.value) for i in (y.value if isinstance(y.value, list) else [])]
    svc.exposed.extend(p.split("/")[0] for p in ports)
    svc.remark(Kind.NOTE, y, ("expose",),
               "dropped: containers on a shared network reach every port without it (to "
               "route the edge to it, give it `expose: {port: N}` and set a top-level "
               "`edge:`)")



def networks(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("networks",), "expected a list or a mapping")
        return
    names: list[str] = []
    for net, conf in y.value.items():
        names.append(net)
        if isinstance(conf.value, dict):
            for key, value in conf.value.items():
                if key == "aliases" and isinstance(value.value, list):
                    svc.data.setdefault("network_aliases", {})[net] = [
                        as_text(a.value) for a in value.value]
                elif key == "ipv4_address" and value.value is not None:
                    svc.data.setdefault("ipv4_address", {})[net] = as_text(value.value)
                else:
                    svc.unsupported(value, ("networks", net, key))
    svc.data["networks"] = names



def healthcheck(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("healthcheck",), "expected a mapping")
        return
    out: dict[str, Any] = {}
    for key, value in y.value.items():
        if key == "test":
            if isinstance(value.value, str):
                out["test"] = ["CMD-SHELL", value.value]
            elif isinstance(value.value, list):
                out["test"] = [as_text(i.value) for i in value.value]
            else:
                svc.remark(Kind.ERROR, value, ("healthcheck", key),
                           "expected a string or a list")
        elif key in ("interval", "timeout", "start_period", "start_interval"):
            out[key] = as_text(value.value)
        elif key == "retries":
            retries = svc.number(value, ("healthcheck", key), integer=True)
            if retries is not None:
                out[key] = retries
        elif key == "disable":
            if value.value is True:
                out["disable"] = True
        else:
            svc.unsupported(value, ("healthcheck", key))
    if out:
        svc.data["healthcheck"] = out



def depends_on(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("depends_on",), "expected a list or a mapping")
        return
    for dep, conf in y.value.items():
        condition = "service_healthy"
        if isinstance(conf.value, dict):
            if "__short__" not in conf.value:
                svc.depends_short = False
            for key, value in conf.value.items():
                if key == "condition":
                    condition = as_text(value.value)
                elif key == "required" and value.value is False:
                    svc.remark(Kind.NOTE, value, ("depends_on", dep, key),
                               "required: false dropped (the dependency must exist)")
                elif key == "restart":
                    svc.remark(Kind.NOTE, value, ("depends_on", dep, key), "dropped: the "
                               "reconciler restarts dependents only when their config "
                               "changes")
                elif key not in ("__short__", "required"):
                    svc.unsupported(value, ("depends_on", dep, key))
        svc.depends[dep] = condition



def restart(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = "no" if y.value is False else as_text(y.value)
    if value.startswith("on-failure:"):
        svc.remark(Kind.NOTE, y, ("restart",), "the retry count is dropped "
                   "(on-failure retries without limit)")
        value = "on-failure"
    if value not in ("no", "always", "on-failure", "unless-stopped"):
        svc.remark(Kind.ERROR, y, ("restart",), f"unknown restart policy {value!r}")
        return
    svc.data["restart"] = value



def labels(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if not isinstance(y.value, dict):
        svc.remark(Kind.ERROR, y, ("labels",), "expected a mapping or a list")
        return
    out: dict[str, str] = {}
    for key, value in y.value.items():
        if key.startswith("reconciler."):
            svc.remark(Kind.NOTE, value, ("labels", key), "dropped: the reconciler. prefix "
                       "is reserved")
        else:
            out[key] = "" if value.value is None else as_text(value.value)
    if out:
        svc.data["labels"] = out



def stop_grace_period(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data["stop_grace_period"] = as_text(y.value)



def profiles(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if isinstance(y.value, list) and y.value:
        svc.data["profiles"] = [as_text(i.value) for i in y.value]



def privileged(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if y.value is True:
        svc.data["privileged"] = True



def network_mode(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = as_text(y.value)
    if value.startswith("container:"):
        svc.unsupported(y, ("network_mode",), "join a shared network, or use service:NAME "
                        "for a service of this project")
        return
    svc.data["network_mode"] = value
    mode, _sep, target = value.partition(":")
    if mode == "service" and target:
        # compose starts X first; the spec implies the same (X in the same or an earlier tier)
        svc.depends.setdefault(target, "service_started")



def cap_add(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if isinstance(y.value, list) and y.value:
        svc.data["cap_add"] = [as_text(i.value) for i in y.value]



def logging(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    data = plain(y) or {}
    svc.data["logging"] = {k: v for k, v in data.items() if k in ("driver", "options")}
    for key, value in (y.value.items() if isinstance(y.value, dict) else ()):
        if key not in ("driver", "options"):
            svc.unsupported(value, ("logging", key))



def ulimits(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data["ulimits"] = plain(y)



def init(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if y.value is True:
        svc.data["init"] = True



def read_only(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if y.value is True:
        svc.data["read_only"] = True



def tmpfs(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = plain(y)
    svc.data["tmpfs"] = [value] if isinstance(value, str) else list(value or [])



def security_opt(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data["security_opt"] = [as_text(v) for v in plain(y) or []]



def cap_drop(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data["cap_drop"] = [as_text(v) for v in plain(y) or []]



def extra_hosts(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = plain(y)
    if isinstance(value, dict):
        value = [f"{k}:{v}" for k, v in value.items()]
    svc.data["extra_hosts"] = [as_text(v) for v in value or []]



def shm_size(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data["shm_size"] = as_text(y.value) if not isinstance(y.value, int) else y.value



def container_name(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.remark(Kind.NOTE, y, ("container_name",), "dropped: the reconciler names "
               f"containers (<project>-{svc.name}-<replica>-<fingerprint>); other "
               f"containers reach it as {svc.name!r}")



def mem_limit(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    svc.data.setdefault("resources", {}).setdefault("memory", as_text(y.value))



def cpus(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = svc.number(y, ("cpus",), integer=False)
    if value is not None:
        svc.data.setdefault("resources", {}).setdefault("cpus", value)



def scale(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    value = svc.number(y, ("scale",), integer=True)
    if value is not None:
        svc.data.setdefault("replicas", value)



def pull_policy(svc: Draft, y: Y, items: Mapping[str, Y]) -> None:
    value = as_text(y.value)
    mapped = {"always": "always", "never": "never", "missing": "missing",
              "if_not_present": "missing"}.get(value)
    if (mapped is None and value in ("daily", "weekly")) or value.startswith("every_"):
        mapped = "always"
        svc.remark(Kind.NOTE, y, ("pull_policy",), f"{value} -> always")
    if value == "build" and "build" in items:
        svc.remark(Kind.NOTE, y, ("pull_policy",), "build: dropped, a `build:` image is built "
                   "whenever its context changed (it is named by the content's hash)")
    elif mapped is None:
        svc.unsupported(y, ("pull_policy",))
    elif mapped != "missing":
        svc.data["pull_policy"] = mapped


def pids_limit(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    if isinstance(y.value, int) and not isinstance(y.value, bool):
        svc.data["pids_limit"] = y.value
    else:
        svc.remark(Kind.ERROR, y, ("pids_limit",), "expected an integer")


def dns_list(key: str) -> Callable[[Draft, Y, Mapping[str, Y]], None]:
    """`dns` / `dns_search`: one string or a list, written as a list."""

    def handle(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
        value = plain(y)
        items = value if isinstance(value, list) else [value]
        svc.data[key] = [as_text(v) for v in items if v is not None]

    return handle


def sysctls(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    """A mapping or a list of `name=value`; the host policy must allow each (allow_sysctls)."""
    value = plain(y)
    if isinstance(value, list):
        value = dict(as_text(v).partition("=")[::2] for v in value)
    if not isinstance(value, dict):
        svc.remark(Kind.ERROR, y, ("sysctls",), "expected a mapping or a list of name=value")
        return
    svc.data["sysctls"] = {str(k): as_text(v) for k, v in value.items()}


def links(svc: Draft, y: Y, _: Mapping[str, Y]) -> None:
    """`links: [db, "db:database"]`: the alias becomes a network alias of the linked service
    (resolved by the translation, which sees every service); a link also orders the start,
    as compose does (`depends_on` with service_started)."""
    if not isinstance(y.value, list):
        svc.remark(Kind.ERROR, y, ("links",), "expected a list of SERVICE[:ALIAS]")
        return
    for item in y.value:
        target, _sep, alias = as_text(item.value).partition(":")
        svc.depends.setdefault(target, "service_started")
        svc.links[alias or target] = (target, item)
