"""The commands with `--engine swarm` (or `engine: swarm` in the spec): validate, preview,
apply, status, rollback and run against the Swarm cluster the Docker endpoint manages.

Same exit codes as on one host. It wires the Swarm pieces (`swarmd`, `swarmexec`) into the
one-host reconcile pass and prints; it decides nothing itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from reconciler import cli
from reconciler.core import swarm
from reconciler.core.desired import build
from reconciler.core.model import LoadedSpec, Location, Problem, SpecError, lookup
from reconciler.core.swarm import EndpointMode, SwarmSnapshot
from reconciler.loading import load_policy, spec_locations
from reconciler.persistence import State
from reconciler.runtimes import EngineError
from reconciler.swarmd import SwarmRuntime, ipvs_available


def swarm_problems(loaded: LoadedSpec) -> list[Problem]:
    """The Swarm-only findings of a loaded spec, located as file:line (the files are read
    again with key lines only when there is a finding)."""
    found = swarm.findings(loaded.spec, loaded.profiles)
    if not found:
        return []
    locations = dict(loaded.locations) or spec_locations(loaded, show=os.path.relpath)
    fallback = Location(os.path.relpath(next(iter(sorted(loaded.files)), ".")), None)
    return [Problem(lookup(f.path, locations, fallback), f.path, f.message, warning=f.warning)
            for f in found]


def _load(args: argparse.Namespace, *, strict: bool, key: bytes | None = None) -> LoadedSpec:
    loaded = cli.load_spec(args, strict=strict, key=key)
    problems = swarm_problems(loaded)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise SpecError(problems)
    for p in problems:
        print(str(p), file=sys.stderr)
    return loaded


def endpoint_mode() -> tuple[EndpointMode, str]:
    """The endpoint mode services get here, and why."""
    ipvs, why = ipvs_available()
    return swarm.endpoint_mode_for(ipvs=ipvs), why


async def _connect() -> SwarmRuntime:
    return await SwarmRuntime.connect(timeout_s=cli.engine_timeout())


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args, strict=not args.no_strict)
    cli.print_warnings(loaded)
    print(f"{cli.spec_dir(args)}: valid for Swarm ({len(loaded.spec.services)} services in "
          f"{len(loaded.files)} files)")
    return cli.EXIT_OK


async def _observe_or_empty(project: str) -> SwarmSnapshot:
    from reconciler.swarmexec import observe

    try:
        rt = await _connect()
    except EngineError as exc:
        print(f"reconciler: engine: {exc}; planning against an empty cluster", file=sys.stderr)
        return SwarmSnapshot(project=project, engine_available=False)
    try:
        return await observe(rt, project)
    finally:
        await rt.close()


def cmd_plan(args: argparse.Namespace) -> int:
    key = cli.preview_key(args)
    loaded = _load(args, strict=False, key=key)
    cli.print_warnings(loaded)
    desired = build(loaded, key)
    snapshot = asyncio.run(_observe_or_empty(desired.project))
    mode, _ = endpoint_mode()
    plan = swarm.compute(desired, snapshot, mode=mode)
    return cli.print_plan(args, loaded, plan, where="cluster")


def reconciler_for(args: argparse.Namespace, state: State, rt: SwarmRuntime, *,
                   report: Any = None) -> Any:
    from reconciler.swarmexec import SwarmReconciler

    mode, _ = endpoint_mode()
    return SwarmReconciler(api=rt, runtime=rt.docker, mode=mode, spec_dir=cli.spec_dir(args),
                           state=state, profiles=tuple(args.profile), policy=load_policy(),
                           report=report or cli.progress_printer())


async def cmd_apply(args: argparse.Namespace) -> int:
    state = State(cli.state_dir(args))
    _load(args, strict=True)
    with state.lock():
        rt = await _connect()
        try:
            res = await reconciler_for(args, state, rt).reconcile()
        finally:
            await rt.close()
    return cli.report_pass(res)


async def cmd_rollback(args: argparse.Namespace) -> int:
    state = State(cli.state_dir(args))
    with state.lock():
        goods = state.good_revisions()
        current = state.last_good()
        if args.to:
            matches = [g for g in goods if (g.revision or "").startswith(args.to)
                       or g.fingerprint.startswith(args.to)]
        else:
            matches = [g for g in goods if not current or g.fingerprint != current.fingerprint]
        if not matches:
            print("reconciler: no such good revision to roll back to (see `reconciler "
                  "history`)", file=sys.stderr)
            return cli.EXIT_FAILED
        rt = await _connect()
        try:
            res = await reconciler_for(args, state, rt).converge_to(matches[0])
        finally:
            await rt.close()
    return cli.report_pass(res)


def status_data(desired: Any, snapshot: SwarmSnapshot, *, mode: EndpointMode,
                why: str) -> dict[str, Any]:
    """The cluster as status shows it: per service desired/running, where each task runs,
    and the nodes."""
    services = []
    for tier in desired.tiers:
        for svc in desired.in_tier(tier):
            found = snapshot.service(svc.name)
            fp = swarm.swarm_fingerprint(svc, mode=mode)
            tasks = [t for t in snapshot.tasks_of(svc.name) if t.desired_state == "running"
                     or t.state == "running"]
            running = [t for t in tasks if t.state == "running"]
            p = svc.service.placement
            wanted = len([t for t in tasks if t.desired_state == "running"]) if (
                p is not None and p.global_) else svc.replicas
            match = found is not None and found.fingerprint == fp
            services.append({
                "name": svc.name, "tier": tier, "desired": wanted, "running": len(running),
                "healthy": len(running), "image": svc.service.image,
                "fingerprint_match": match,
                "update_state": found.update_state if found else "",
                "ok": match and len(running) >= wanted and (
                    found is not None and found.update_state in ("", "completed")),
                "tasks": [{"id": t.id[:12], "node": t.node, "state": t.state,
                           "desired_state": t.desired_state, "slot": t.slot,
                           "current": t.fingerprint == fp,
                           "message": t.error or t.message} for t in tasks]})
    nodes = [{"hostname": n.hostname, "role": n.role, "state": n.state,
              "availability": n.availability, "leader": n.leader,
              "tasks": sum(1 for t in snapshot.tasks if t.node_id == n.id
                           and t.state == "running")} for n in snapshot.nodes]
    return {"engine": "swarm", "endpoint_mode": mode.value, "endpoint_mode_reason": why,
            "services": services, "nodes": nodes}


async def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.swarmexec import observe

    state = State(cli.state_dir(args))
    key = cli.preview_key(args)
    loaded = _load(args, strict=False, key=key)
    desired = build(loaded, key)
    try:
        rt = await _connect()
    except EngineError as exc:
        print(f"reconciler: engine: {exc}", file=sys.stderr)
        return cli.EXIT_FAILED
    try:
        snapshot = await observe(rt, desired.project)
    finally:
        await rt.close()
    mode, why = endpoint_mode()
    data = status_data(desired, snapshot, mode=mode, why=why)
    good = state.last_good()
    quarantined = state.quarantined()
    all_ok = all(s["ok"] for s in data["services"])
    data.update({"project": desired.project, "spec": loaded.fingerprint,
                 "revision": loaded.revision, "last_good": good.label if good else None,
                 "candidate_quarantined": loaded.fingerprint in quarantined,
                 "quarantined": sorted(quarantined), "ok": all_ok})
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
        return cli.EXIT_OK if all_ok else cli.EXIT_FAILED
    print(f'project "{desired.project}"  spec {loaded.fingerprint}'
          + (f" (revision {loaded.revision[:12]})" if loaded.revision else ""))
    print(f"engine: swarm  endpoint mode {mode.value} ({why})")
    print(f"last-good: {good.label if good else '(none)'}"
          + ("   candidate QUARANTINED" if loaded.fingerprint in quarantined else ""))
    print("nodes: " + ", ".join(
        f"{n['hostname']} ({n['role']}, {n['state']}, {n['availability']}, "
        f"{n['tasks']} task(s))" for n in data["nodes"]))
    for tier in desired.tiers:
        print(f"\n{tier}")
        for entry in (s for s in data["services"] if s["tier"] == tier):
            update = f"  update {entry['update_state']}" if entry["update_state"] else ""
            print(f"  {'ok ' if entry['ok'] else '!! '}{entry['name']:<24} desired "
                  f"{entry['desired']}  running {entry['running']}  image {entry['image']}  "
                  f"fingerprint match {'yes' if entry['fingerprint_match'] else 'no'}{update}")
            for t in entry["tasks"]:
                print(f"      task {t['id']}  slot {t['slot'] or '-'}  on {t['node']:<16} "
                      f"{t['state']}" + ("" if t["current"] else "  [old generation]")
                      + (f"  ({t['message']})" if t["state"] != "running" and t["message"]
                         else ""))
    return cli.EXIT_OK if all_ok else cli.EXIT_FAILED


def run_command(command: str, args: argparse.Namespace) -> int:
    """Dispatch one command on the Swarm engine."""
    if command == "validate":
        return cmd_validate(args)
    if command == "plan":
        return cmd_plan(args)
    if command == "apply":
        return asyncio.run(cmd_apply(args))
    if command == "status":
        return asyncio.run(cmd_status(args))
    if command == "rollback":
        return asyncio.run(cmd_rollback(args))
    return asyncio.run(cmd_run(args))


async def cmd_run(args: argparse.Namespace) -> int:
    """The controller loop on the cluster (same flags as `run` on one host)."""

    from reconciler import logs
    from reconciler.core.specs import parse_duration
    from reconciler.swarmrun import SwarmController

    logs.configure()
    log = logs.get()
    resync = parse_duration(args.resync or "60s")
    git_pull = parse_duration(args.git_pull) if args.git_pull else None
    state = State(cli.state_dir(args))
    with state.lock():
        rt = await _connect()
        metrics = swarm_metrics = None
        try:
            if args.metrics_addr:
                from prometheus_client import CollectorRegistry

                from reconciler import telemetry

                registry = CollectorRegistry()
                metrics = telemetry.Metrics(registry, version=cli.version())
                swarm_metrics = telemetry.SwarmMetrics(registry)
            rec = reconciler_for(args, state, rt, report=cli.progress_logger(log))
            controller = SwarmController(rec, docker=rt.docker, resync_s=resync,
                                         git_pull_s=git_pull, metrics=metrics, log=log,
                                         swarm_metrics=swarm_metrics)
            mode, why = endpoint_mode()
            await cli.drive(controller, metrics, args.metrics_addr, log, engine="swarm",
                            endpoint_mode=mode.value, endpoint_mode_reason=why,
                            spec=str(cli.spec_dir(args)))
        finally:
            await rt.close()
    return cli.EXIT_OK
