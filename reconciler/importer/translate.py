"""`import_compose`: compose files in, spec files, remarks and the secrets taken out of the
spec back. Pure: it reads no file (the CLI passes the compose texts, the environment, the
`.env` values and the overrides), writes no file, never touches Docker and never reads the
clock. Every compose key it cannot carry over is a remark with file, line and key path;
nothing is dropped silently (except `x-` extension keys, which compose itself ignores)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler import yamlread
from reconciler.core.model import format_path
from reconciler.core.specs import DEFAULT_TIERS, parse_duration
from reconciler.importer import files
from reconciler.importer.draft import Draft
from reconciler.importer.graph import Hub, break_cycles, find_hub, place
from reconciler.importer.interpolate import Interpolator, references, secret_value
from reconciler.importer.merge import merge_files, normalise_service, resolve_extends
from reconciler.importer.model import (
    ComposeError,
    CycleReport,
    ImportResult,
    Kind,
    NotText,
    Remark,
    Source,
    Y,
    as_text,
    err,
    parse,
)
from reconciler.importer.naming import (
    compose_project_name,
    image_role,
    reference,
    sanitise_project,
)
from reconciler.importer.render import render_files
from reconciler.importer.service import HINTS, SERVICE_ORDER, convert_service

_HEALTH_FRIENDLY = {"timeout": 15.0, "retries": 5, "start_period": 90.0}


def import_compose(
    sources: Sequence[Source],
    *,
    environ: Mapping[str, str],
    project_dir: str = "",
    out_dir: str = "",
    project_fallback: str = "app",
    tiers: Sequence[str] = DEFAULT_TIERS,
    overrides: Mapping[str, str] | None = None,
    break_cycles_: bool = False,
    secrets_dir: str = "",
    profiles: Sequence[str] = (),
) -> ImportResult:
    """Compose files (merged in order, like `docker compose -f a -f b`) -> spec files.

    `environ`: variables for interpolation (the shell's environment over the `.env` file);
    `project_dir`/`out_dir`: absolute directories that relative paths are rebased between;
    `secrets_dir`: absolute directory (`{project}` is replaced) of the env files that take the
    secrets out of the spec: `<secrets_dir>/<service>.env`, referenced by `env_file`;
    `profiles`: when given, only the services compose would start with them (no `profiles:`,
    or one of these) are written, like `docker compose --profile ...`.
    """
    remarks: list[Remark] = []
    overrides = dict(overrides or {})
    tiers = tuple(tiers)

    def failed(cycles: CycleReport | None = None, project: str = "") -> ImportResult:
        return ImportResult(project, tiers, {}, {}, {}, tuple(_sorted(remarks)),
                            cycles or CycleReport())

    if not tiers or len(set(tiers)) != len(tiers) or not all(
            re.fullmatch(r"[a-z0-9][a-z0-9-]*", t) for t in tiers):
        remarks.append(err("--tiers", None, (), "tiers must be unique names of [a-z0-9-]"))
        return failed()
    roots: list[Y] = []
    interp = Interpolator(environ)
    budget = yamlread.Budget()  # the reader's caps hold for all files together
    for source in sources:
        try:
            root = parse(source, budget)
        except ComposeError as exc:
            remarks.append(exc.remark)
            continue
        root.value = {k: v for k, v in root.value.items() if not k.startswith("x-")}
        interp.walk(root, ())
        in_file = root.value.get("services")
        if in_file is not None and isinstance(in_file.value, dict):
            for svc_y in in_file.value.values():
                normalise_service(svc_y)
        roots.append(root)
    remarks.extend(interp.errors)
    for name, (file, line, path) in sorted(interp.unset.items()):
        remarks.append(Remark(Kind.WARNING, file, line, path,
                              f"variable {name} is not set: an empty string was used"))
    if len(roots) != len(sources) or interp.errors:
        return failed()
    merged = merge_files(roots)
    top: dict[str, Y] = merged.value

    compose_project = compose_project_name(
        _scalar(top["name"], ("name",), remarks) if "name" in top and top["name"].value
        else environ.get("COMPOSE_PROJECT_NAME") or project_fallback)
    project = sanitise_project(compose_project)
    for key, value in top.items():
        if key == "version":
            remarks.append(Remark(Kind.NOTE, value.file, value.line, (key,),
                                  "ignored (obsolete in compose too)"))
        elif key not in ("name", "services", "networks", "volumes", "secrets", "configs"):
            remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, (key,),
                                  "not supported (dropped)" + (
                                      f": {HINTS[key]}" if HINTS.get(key) else "")))
    networks = _top_networks(top["networks"], remarks) if "networks" in top else {}
    blobs: dict[str, str] = {}  # generated secret/config files: path -> value (0600)
    top_files: dict[str, dict[str, dict[str, str]]] = {
        kind: files.top_level(kind, top[kind], environ=environ, project_dir=project_dir,
                              out_dir=out_dir, remarks=remarks, blobs=blobs,
                              secret_dir=secrets_dir.replace("{project}", project))
        for kind in ("secrets", "configs") if kind in top}
    volumes = _top_volumes(top["volumes"], remarks) if "volumes" in top else {}
    adopted = []
    for name, vol in volumes.items():
        if not vol.get("external"):  # compose created it: keep using it, by compose's name
            vol["external"] = True
            vol.setdefault("name", f"{compose_project}_{name}")
            adopted.append(vol["name"])
    if adopted:
        vloc = top["volumes"]
        remarks.append(Remark(
            Kind.NOTE, vloc.file, vloc.line, ("volumes",),
            "written as `external: true` with the names compose gave them ("
            + ", ".join(adopted) + "): the reconciler uses the data compose stored and "
            "never adopts or removes these volumes (Docker creates them on a fresh host); "
            "remove `external`/`name` to let the reconciler create and label new ones"))

    # services, with same-file `extends: {service: ...}` resolved
    svc_root = top.get("services")
    raw: dict[str, Y] = dict(svc_root.value) if svc_root and isinstance(svc_root.value,
                                                                         dict) else {}
    raw = resolve_extends(raw, remarks)
    converted = {name: convert_service(name, y, project_dir=project_dir, out_dir=out_dir,
                                       environ=environ)
                 for name, y in sorted(raw.items())}
    if profiles:
        for name, svc in list(converted.items()):
            theirs = svc.data.get("profiles") or []
            if theirs and not set(theirs) & set(profiles):
                del converted[name]
                remarks.append(Remark(Kind.NOTE, svc.y.file, svc.y.line, ("services", name),
                                      f"not written: its profiles ({', '.join(theirs)}) are "
                                      f"not among --profile {', '.join(profiles)}"))
    for svc in converted.values():
        remarks.extend(svc.remarks)
    remarks.extend(_secrets_outside_environment(top, environ))
    secret_dir = secrets_dir.replace("{project}", project)
    secret_files = {name: os.path.join(secret_dir, f"{name}.env")
                    for name, svc in converted.items() if svc.secrets}
    if secret_files and not os.path.isabs(secret_dir):
        remarks.append(err("--secrets-dir", None, (), "secret values must go to an env file: "
                           "give an absolute directory for them"))
    if any(r.kind is Kind.ERROR for r in remarks):
        return failed(project=project)
    if not converted:
        remarks.append(err(sources[0].name if sources else "-", None, ("services",),
                            "no services"))
        return failed(project=project)

    # depends_on graph
    graph: dict[str, list[str]] = {}
    for name, svc in converted.items():
        deps = []
        for dep in svc.depends:
            if dep not in converted:
                where = svc.y.value.get("depends_on")
                remarks.append(Remark(Kind.ERROR, where.file if where else svc.y.file,
                                      where.line if where else svc.y.line,
                                      ("services", name, "depends_on", dep),
                                      f"depends on undefined service {dep!r}"))
            else:
                deps.append(dep)
        graph[name] = deps
    _jobs(converted)
    roles = {n: r for n, s in converted.items() if (r := image_role(s.data.get("image", "")))}
    for name, tier in sorted(overrides.items()):
        if name not in converted:
            remarks.append(Remark(Kind.WARNING, "--overrides", None, (name,),
                                  "no such service (ignored)"))
        elif tier not in tiers:
            remarks.append(err("--overrides", None, (name,),
                                f"unknown tier {tier!r} (tiers: {', '.join(tiers)})"))
    if any(r.kind is Kind.ERROR for r in remarks):
        return failed(project=project)
    fixed = {n: t for n, t in overrides.items() if n in converted}

    hub = find_hub(graph, roles)
    hub_drops = [(a, hub.name) for a in hub.dependents] if hub and break_cycles_ else []
    cycles, drops, reasons = break_cycles(
        {n: [d for d in deps if (n, d) not in hub_drops] for n, deps in graph.items()}, roles)
    final_graph = {n: [d for d in deps if (n, d) not in drops and (n, d) not in hub_drops]
                   for n, deps in graph.items()}
    placement = place(final_graph, tiers=tiers, roles=roles, fixed=fixed)
    if hub is not None and hub_drops:
        remarks.extend(_hub_remarks(hub, converted, placement.tiers[hub.name]))
        # the services that waited on the gateway run alongside it (unless the gateway calls
        # them: those stay earlier)
        calls = _reachable(final_graph, hub.name)
        alongside = {a: placement.tiers[hub.name] for a in hub.dependents
                     if a not in calls and a not in fixed}
        placement = place(final_graph, tiers=tiers, roles=roles, fixed={**alongside, **fixed})
    elif hub is not None:
        y = converted[hub.name].y
        remarks.append(Remark(Kind.WARNING, y.file, y.line, ("services", hub.name),
                              f"{hub.name} looks like the gateway hub ({hub.why}) and "
                              f"{', '.join(hub.dependents)} depend on it: if any of its "
                              "dependencies fails, the entire system fails; --break-cycles "
                              "drops the edges into it"))
    upward = tuple(
        (a, placement.tiers[a], b, placement.tiers[b])
        for a, b in sorted({(c[i], c[i + 1]) for c in cycles for i in range(len(c) - 1)})
        if tiers.index(placement.tiers[b]) > tiers.index(placement.tiers[a]))
    report = CycleReport(tuple(tuple(c) for c in cycles), upward, tuple(drops), reasons)
    if cycles and not break_cycles_:
        for cycle in cycles:
            first = converted[cycle[0]].y.value.get("depends_on")
            remarks.append(Remark(Kind.ERROR, first.file if first else "-",
                                  first.line if first else None,
                                  ("services", cycle[0], "depends_on"),
                                  "dependency cycle: " + " -> ".join(cycle)))
        return failed(report, project)
    for a, b in drops:
        where = converted[a].y.value.get("depends_on")
        remarks.append(Remark(Kind.NOTE, where.file if where else "-",
                              where.line if where else None, ("services", a, "depends_on", b),
                              f"dropped to break a cycle ({reasons[(a, b)]})"))
    for name, (before, after, dep) in sorted(placement.moved.items()):
        y = converted[name].y
        remarks.append(Remark(Kind.NOTE, y.file, y.line, ("services", name),
                              f"tier {after} instead of {before}: it depends on {dep} "
                              f"({after})"))
    for name, tier in sorted(fixed.items()):
        for dep in final_graph[name]:
            if tiers.index(placement.tiers[dep]) > tiers.index(tier):
                remarks.append(Remark(Kind.WARNING, "--overrides", None, (name,),
                                      f"{name} ({tier}) depends on {dep} "
                                      f"({placement.tiers[dep]}): the spec will not validate"))

    # default network: compose attaches services without networks to `<project>_default`
    needs_default = [n for n, s in converted.items()
                     if "networks" not in s.data and "network_mode" not in s.data]
    if needs_default or any("default" in s.data.get("networks", ()) for s in converted.values()):
        networks.setdefault("default", {})
    for name in needs_default:
        converted[name].data["networks"] = ["default"]
    _link_aliases(converted, remarks)
    for svc in converted.values():
        for anon in svc.anon_volumes:
            volumes.setdefault(anon, {})

    services: dict[str, dict[str, Any]] = {}
    for name, svc in converted.items():
        data = dict(svc.data)
        data["tier"] = placement.tiers[name]
        if name in secret_files:
            data["env_file"] = [*data.get("env_file", ()),
                                reference(secret_files[name], out_dir)]
        deps = [d for d in svc.depends if d in final_graph[name]]
        if deps:
            if svc.depends_short or all(svc.depends[d] == "service_healthy" for d in deps):
                data["depends_on"] = deps
            else:
                data["depends_on"] = {d: {"condition": svc.depends[d]} for d in deps}
        services[name] = {k: data[k] for k in SERVICE_ORDER if k in data}
        remarks.extend(_health_warnings(svc, data))
    remarks.extend(_edge_notes(converted, services))

    written = render_files(project=project, tiers=tiers, networks=networks, volumes=volumes,
                           services=services, extra=top_files)
    return ImportResult(project, tiers, services, dict(placement.tiers), written,
                        tuple(_sorted(remarks)), report,
                        {n: dict(converted[n].secrets) for n in secret_files}, secret_files,
                        blobs)


def _secrets_outside_environment(top: Mapping[str, Y],
                                 environ: Mapping[str, str]) -> list[Remark]:
    """An interpolated secret anywhere but a service's `environment` would be written into
    the spec in clear: an error that names the variables, never the value."""
    out: list[Remark] = []
    stack: list[tuple[Y, tuple[str | int, ...]]] = [
        (y, (key,)) for key, y in top.items() if not key.startswith("x-")]
    while stack:
        y, path = stack.pop()
        if path[:1] == ("services",) and len(path) >= 3 and path[2] == "environment":
            continue
        if isinstance(y.value, dict):
            stack.extend((v, (*path, k)) for k, v in y.value.items())
        elif isinstance(y.value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(y.value))
        elif secret_value(y, environ):
            names = ", ".join(f"${n}" for n in dict.fromkeys(references(y.source or ""))
                              if n in environ)
            what = names or "a password in a URL"
            out.append(err(y.file, y.line, path, f"holds a secret ({what}) that would be "
                           "written into the spec in clear: pass it to the container through "
                           "`environment:` (the import moves it to an env file) and read it "
                           "from there"))
    return out


def _scalar(y: Y, path: tuple[str | int, ...], remarks: list[Remark]) -> str:
    try:
        return as_text(y.value)
    except NotText:
        remarks.append(err(y.file, y.line, path, "expected a string, found a list or a mapping"))
        return ""


def _top_networks(y: Y, remarks: list[Remark]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(y.value, dict):
        return out
    for name, conf in y.value.items():
        entry: dict[str, Any] = {}
        for key, value in (conf.value.items() if isinstance(conf.value, dict) else ()):
            path = ("networks", name, key)
            if key in ("internal", "external"):
                if isinstance(value.value, dict):  # legacy `external: {name: x}`
                    entry["external"] = True
                    if "name" in value.value:
                        entry["name"] = _scalar(value.value["name"], (*path, "name"), remarks)
                elif value.value is True:
                    entry[key] = True
            elif key in ("driver", "name"):
                entry[key] = _scalar(value, path, remarks)
            elif key == "ipam" and isinstance(value.value, dict):
                entry["ipam"] = _ipam(value, path, remarks)
            elif key == "attachable":
                remarks.append(Remark(Kind.NOTE, value.file, value.line, path, "dropped "
                                      "(swarm only)"))
            else:
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, path,
                                      "not supported (dropped)"))
        out[name] = entry
    return out


_POOL_KEYS = ("subnet", "gateway", "ip_range")


def _ipam(y: Y, path: tuple[str | int, ...], remarks: list[Remark]) -> dict[str, Any]:
    """compose `ipam`: the driver and the pools (subnet, gateway, ip_range) carry over."""
    out: dict[str, Any] = {}
    for key, value in y.value.items():
        here = (*path, key)
        if key == "driver":
            out["driver"] = _scalar(value, here, remarks)
        elif key == "config" and isinstance(value.value, list):
            pools = []
            for i, pool in enumerate(value.value):
                if not isinstance(pool.value, dict):
                    remarks.append(err(pool.file, pool.line, (*here, i), "expected a mapping"))
                    continue
                entry = {}
                for pkey, pval in pool.value.items():
                    if pkey in _POOL_KEYS:
                        entry[pkey] = _scalar(pval, (*here, i, pkey), remarks)
                    else:
                        remarks.append(Remark(Kind.UNSUPPORTED, pval.file, pval.line,
                                              (*here, i, pkey), "not supported (dropped)"))
                if "subnet" in entry:
                    pools.append(entry)
                else:
                    remarks.append(Remark(Kind.UNSUPPORTED, pool.file, pool.line, (*here, i),
                                          "a pool without a subnet is dropped"))
            out["config"] = pools
        else:
            remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, here,
                                  "not supported (dropped)"))
    return out


def _top_volumes(y: Y, remarks: list[Remark]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(y.value, dict):
        return out
    for name, conf in y.value.items():
        entry: dict[str, Any] = {}
        for key, value in (conf.value.items() if isinstance(conf.value, dict) else ()):
            path = ("volumes", name, key)
            if key == "external":
                if isinstance(value.value, dict):
                    entry["external"] = True
                    if "name" in value.value:
                        entry["name"] = _scalar(value.value["name"], (*path, "name"), remarks)
                elif value.value is True:
                    entry["external"] = True
            elif key in ("driver", "name"):
                entry[key] = _scalar(value, path, remarks)
            else:
                hint = ("create the volume yourself (docker volume create ... with these "
                        "options) and mark it `external: true`") if key == "driver_opts" else ""
                remarks.append(Remark(Kind.UNSUPPORTED, value.file, value.line, path,
                                      "not supported (dropped)" + (f": {hint}" if hint else "")))
        out[name] = entry
    return out


def _health_warnings(svc: Draft, data: Mapping[str, Any]) -> list[Remark]:
    hc = data.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable") or not hc.get("test") \
            or hc["test"][0] == "NONE":
        return []
    try:
        values = {
            "timeout": parse_duration(hc.get("timeout", 30)),
            "retries": float(hc.get("retries", 3)),
            "start_period": parse_duration(hc.get("start_period", 0)),
        }
    except (ValueError, TypeError):
        return []
    tight = []
    for key, friendly in _HEALTH_FRIENDLY.items():
        if key == "start_period" and not data.get("depends_on"):
            continue
        if values[key] < friendly:
            unit = "" if key == "retries" else "s"
            tight.append(f"{key} {values[key]:g}{unit} (production: {friendly:g}{unit})")
    if not tight:
        return []
    y = svc.y.value.get("healthcheck")
    return [Remark(Kind.WARNING, y.file if y else svc.y.file, y.line if y else svc.y.line,
                   ("services", svc.name, "healthcheck"),
                   "too tight for production: " + ", ".join(tight)
                   + "; the import keeps the compose values")]


def _edge_notes(converted: Mapping[str, Draft],
                services: Mapping[str, Mapping[str, Any]]) -> list[Remark]:
    out = []
    for name, svc in converted.items():
        if image_role(svc.data.get("image", "")) != "external":
            continue
        nets = set(services[name].get("networks", ()))
        candidates = sorted(
            f"{other}:{port}" for other, o in converted.items() if other != name
            and nets.intersection(services[other].get("networks", ()))
            for port in dict.fromkeys(o.exposed) if port.isdigit())
        if not candidates:
            continue
        out.append(Remark(
            Kind.NOTE, svc.y.file, svc.y.line, ("services", name),
            "looks like the edge proxy; no `edge:` was written. To let the reconciler manage "
            f"its upstreams, add `edge: {{service: {name}}}` to 00-project.yaml and "
            "`expose: {port: N}` to the services it routes to (candidates: "
            + ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "") + ")"))
    return out


def _link_aliases(converted: Mapping[str, Draft], remarks: list[Remark]) -> None:
    """compose `links` as network aliases of the linked service on the networks it shares
    with the linking one (the alias resolves there, as the link did)."""
    for name, svc in sorted(converted.items()):
        for alias, (target, where) in sorted(svc.links.items()):
            linked = converted.get(target)
            if linked is None or alias == target:
                continue  # an undefined target is reported with depends_on
            shared = [n for n in svc.data.get("networks", ())
                      if n in linked.data.get("networks", ())]
            if not shared:
                remarks.append(Remark(Kind.WARNING, where.file, where.line,
                                      ("services", name, "links"),
                                      f"{target} shares no network with {name}: the alias "
                                      f"{alias!r} does not resolve (dropped)"))
                continue
            table = linked.data.setdefault("network_aliases", {})
            for net in shared:
                if alias not in table.setdefault(net, []):
                    table[net].append(alias)
            remarks.append(Remark(Kind.NOTE, where.file, where.line,
                                  ("services", name, "links"),
                                  f"{target} is also reachable as {alias!r} (a network alias "
                                  f"on {', '.join(shared)}), and {name} starts after it"))


def _reachable(graph: Mapping[str, Sequence[str]], start: str) -> set[str]:
    """Every service `start` depends on, directly or not."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def _hub_remarks(hub: Hub, converted: Mapping[str, Any], tier: str) -> list[Remark]:
    """The notes that explain the gateway-hub fix, with the seed's reasoning."""
    out = []
    y = converted[hub.name].y
    out.append(Remark(
        Kind.NOTE, y.file, y.line, ("services", hub.name),
        f"{hub.name} is the gateway hub ({hub.why}; {len(hub.dependents)} application "
        f"services depend on it): all services depending on the gateway make it a bottleneck "
        "- if any of its dependencies fails, the entire system fails. Fixed as the seed fixes "
        "it: the gateway is an entry point that depends on infrastructure (and the services "
        f"it calls) only, and nothing but the edge depends on it; it goes in tier {tier}, "
        "the services it calls earlier, the others alongside it, the edge last"))
    for a in hub.dependents:
        where = converted[a].y.value.get("depends_on")
        out.append(Remark(Kind.NOTE, where.file if where else "-",
                          where.line if where else None, ("services", a, "depends_on", hub.name),
                          f"dropped: nothing but the edge depends on the gateway hub "
                          f"{hub.name}"))
    return out


def _sorted(remarks: Iterable[Remark]) -> list[Remark]:
    order = {Kind.ERROR: 0, Kind.UNSUPPORTED: 1, Kind.NOTE: 2, Kind.WARNING: 3}
    return sorted(remarks, key=lambda r: (order[r.kind], r.file, r.line or 0,
                                          format_path(r.path)))


def _jobs(converted: Mapping[str, Draft]) -> None:
    """compose's one-shot services (`restart: "no"` that others wait on with
    `service_completed_successfully`) become `kind: job`."""
    waited = {dep for svc in converted.values() for dep, cond in svc.depends.items()
              if cond == "service_completed_successfully"}
    for name in sorted(waited & set(converted)):
        data = converted[name].data
        if data.get("restart") == "no":
            data.pop("restart")
            data["kind"] = "job"
