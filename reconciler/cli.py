"""The composition root: parses the command line, wires the pieces, maps outcomes to exit codes.

It decides nothing about what to change (the planner does) and prints no secret: spec
problems are printed as `file:line: key.path: message`, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from reconciler.core import render
from reconciler.core.desired import Desired, build
from reconciler.core.model import LoadedSpec, SpecError
from reconciler.core.plans import Plan, compute
from reconciler.core.printable import clean_keep_colors
from reconciler.core.snapshots import Snapshot, empty
from reconciler.loading import load, load_policy
from reconciler.operate import OperateError
from reconciler.persistence import State, StateError, default_state_dir
from reconciler.runtimes import EngineError, EngineUnavailable, Runtime

if TYPE_CHECKING:
    from reconciler.execute import Progress
    from reconciler.reconcile import PassResult, Reconciler

EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 2
_T = TypeVar("_T")
# a host without a key previews with a key of this process: a fixed, public key would make
# the fingerprints shown (over env-file contents) as good as unkeyed
PREVIEW_KEY = secrets.token_bytes(32)


class SafeStream:
    """A text stream whose writes are cleaned (`clean_keep_colors`); everything else is the
    wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(clean_keep_colors(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--spec", metavar="DIR", default=default,
                        help="spec directory (default: ./specs)")
    parser.add_argument("--state-dir", metavar="DIR", default=default,
                        help="state directory (default: /var/lib/reconciler as root, else "
                             "$XDG_STATE_HOME/reconciler)")
    parser.add_argument("--profile", metavar="NAME", action="append",
                        default=argparse.SUPPRESS if suppress else [],
                        help="enable services of a compose-style profile (repeatable)")
    parser.add_argument("--engine", choices=("docker", "swarm"), default=default,
                        help="docker (one host, the default) or swarm (the cluster the Docker "
                             "endpoint manages); default: the spec's `engine` key")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser. With `argv`, the import-compose and export subcommands (heavy modules)
    get their full parsers only when `argv` names them: a preview does not import them."""
    wanted = None if argv is None else set(argv)
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Converge one Docker host to a declarative spec, tier by tier.",
    )
    _common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"reconciler {version()}")
    parser.add_argument("--dry-run", action="store_true",
                        help="preview the plan: exit 0 in sync, 2 changes, 1 error")
    parser.add_argument("--json", action="store_true", default=False,
                        help="with --dry-run/plan: print the plan as JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    plan = sub.add_parser("plan", help="same as --dry-run")
    _common(plan, suppress=True)
    plan.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    validate = sub.add_parser("validate", help="check the spec and the env files")
    _common(validate, suppress=True)
    validate.add_argument("--no-strict", action="store_true",
                          help="missing env files and env hygiene are warnings")
    validate.add_argument("--host-memory", metavar="SIZE", default=None,
                          help="check the memory sizing against SIZE (e.g. 8g) instead of "
                               "this host's MemTotal")

    schema = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    _common(schema, suppress=True)

    run = sub.add_parser("run", help="run the controller (the default command)")
    _common(run, suppress=True)
    for target in (parser, run):
        sup = argparse.SUPPRESS if target is run else None
        target.add_argument("--git-pull", metavar="INTERVAL", default=sup,
                            help="git pull --ff-only the spec checkout every INTERVAL (e.g. 30s)")
        target.add_argument("--metrics-addr", metavar="HOST:PORT", default=sup,
                            help="serve /metrics, /healthz and /readyz (e.g. 127.0.0.1:9321)")
        target.add_argument("--resync", metavar="INTERVAL", default=sup,
                            help="full resync period (default 60s)")

    apply = sub.add_parser("apply", help="converge once: exit 0 converged, 1 failed/reverted")
    _common(apply, suppress=True)

    status = sub.add_parser("status", help="desired vs running vs healthy, per tier and service")
    _common(status, suppress=True)
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the status as JSON (for scripts)")

    history = sub.add_parser("history", help="every apply, revert and rollback")
    _common(history, suppress=True)
    history.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print the history as JSON (for scripts)")

    logs = sub.add_parser("logs", help="the logs of every replica of a service, prefixed")
    _common(logs, suppress=True)
    logs.add_argument("service", metavar="SERVICE")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until Ctrl-C")
    logs.add_argument("--tail", metavar="N", type=int, default=None,
                      help="lines per container (default: all with -f, else the last "
                           "500)")
    logs.add_argument("--since", metavar="WHEN",
                      help="only lines since a duration ago (10m) or a time (RFC 3339)")

    restart = sub.add_parser("restart", help="rolling, health-gated restart of a service")
    _common(restart, suppress=True)
    restart.add_argument("service", metavar="SERVICE")

    exec_ = sub.add_parser("exec", help="run a command in a replica: exec SERVICE -- CMD")
    _common(exec_, suppress=True)
    exec_.add_argument("--replica", metavar="N", type=int, default=None,
                       help="the replica (default: the first running one)")
    exec_.add_argument("service", metavar="SERVICE")
    exec_.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER)

    if wanted is None or "import-compose" in wanted:
        from reconciler.importer.cli import add_parser as add_import_parser

        _common(add_import_parser(sub), suppress=True)
    else:
        sub.add_parser("import-compose",
                       help="translate docker compose files into a spec directory")
    if wanted is None or "export" in wanted:
        from reconciler.exporting import add_parser as add_export_parser

        _common(add_export_parser(sub), suppress=True)
    else:
        sub.add_parser("export",
                       help="write Kubernetes manifests (+ an Argo CD Application) for the spec")

    rollback = sub.add_parser("rollback", help="converge to a recorded good revision")
    _common(rollback, suppress=True)
    rollback.add_argument("--to", metavar="REV",
                          help="revision (git commit or fingerprint prefix); default: the good "
                               "revision before last-good")
    from reconciler.datacli import add_parsers as add_data_parsers

    add_data_parsers(sub, _common)
    from reconciler.migrate import add_parser as add_migrate_parser

    add_migrate_parser(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Everything it prints goes through `printable.SafeStream`: names and messages
    from a spec or a compose file cannot send terminal escape sequences."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    command = args.command or ("plan" if args.dry_run else "run")
    for name in ("git_pull", "metrics_addr", "resync"):
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        if command in SWARM_COMMANDS and engine_of(args) == "swarm":
            from reconciler.swarmcli import run_command

            return run_command(command, args)
        if command == "plan":
            return cmd_plan(args)
        if command == "validate":
            return cmd_validate(args)
        if command == "schema":
            return cmd_schema()
        if command == "apply":
            return _run(cmd_apply(args))
        if command == "status":
            return _run(cmd_status(args))
        if command == "history":
            return cmd_history(args)
        if command in ("logs", "exec", "restart"):
            return _run(OPERATE[command](args))
        if command == "rollback":
            return _run(cmd_rollback(args))
        if command == "import-compose":
            from reconciler.importer.cli import cmd_import_compose

            return cmd_import_compose(args)
        if command == "export":
            from reconciler.exporting import cmd_export

            return cmd_export(args)
        if command == "migrate":
            return _run(cmd_migrate(args))
        if command in ("backups", "restore"):
            return _run(cmd_data(args, command))
        return _run(cmd_run(args))
    except SpecError as exc:
        print_problems(exc)
        return EXIT_FAILED
    except StateError as exc:
        print(f"reconciler: state: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EngineError as exc:
        print(f"reconciler: engine: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OperateError as exc:
        print(f"reconciler: {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the user gets one line, never a traceback
        if os.environ.get("RECONCILER_DEBUG"):
            raise
        print(f"reconciler: internal error: {type(exc).__name__}: {exc} "
              "(set RECONCILER_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILED


# --- helpers ---------------------------------------------------------------------------------

SWARM_COMMANDS = ("plan", "validate", "apply", "status", "rollback", "run")


def engine_of(args: argparse.Namespace) -> str:
    """`--engine`, else the spec's top-level `engine:` key (read without a full load; an
    invalid value is reported by the load itself), else docker."""
    import re

    from reconciler import hostfiles, yamlread

    if getattr(args, "engine", None):
        return str(args.engine)
    try:
        paths = sorted(spec_dir(args).glob("*.y*ml"))
    except OSError:
        return "docker"
    for path in paths:
        try:  # a regular file only, bounded: a FIFO, device or symlink is the load's to refuse
            text = hostfiles.read_regular_file(path, yamlread.MAX_FILE_BYTES)
        except OSError:
            continue
        match = re.search(rb"^engine:\s*['\"]?(swarm|docker)\b", text, re.MULTILINE)
        if match:
            return match.group(1).decode()
    return "docker"


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run`, imported on first use: a preview never needs an event loop."""
    import asyncio

    return asyncio.run(coro)


def spec_dir(args: argparse.Namespace) -> Path:
    return Path(args.spec or "specs")


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def print_problems(exc: SpecError, *, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    errors = [p for p in exc.problems if not p.warning]
    for problem in exc.problems:
        print(f"{'warning' if problem.warning else 'error'}: {problem}".replace(
            ": warning: ", ": "), file=out)
    print(f"{len(errors)} error(s) in the spec; nothing was changed.",
          file=out)


def load_spec(args: argparse.Namespace, *, strict: bool, key: bytes | None = None) -> LoadedSpec:
    return load(spec_dir(args), strict=strict, profiles=args.profile, policy=load_policy(),
                key=key)


def print_warnings(loaded: LoadedSpec) -> None:
    for problem in loaded.warnings:
        print(f"warning: {problem}".replace(": warning: ", ": "), file=sys.stderr)


def color_enabled(stream: object) -> bool:
    return (not os.environ.get("NO_COLOR") and hasattr(stream, "isatty")
            and bool(stream.isatty()))


def peek_or_empty(project: str, *, timeout_s: float = 5.0) -> Snapshot | None:
    """The host as the engine lists it, through the light read-only `peek` client (no
    aiohttp, no event loop); an empty host when no engine answers; None when the endpoint
    is not a local socket (then `observe_or_empty` does it)."""
    from reconciler.core.labels import compose_selector, project_selector
    from reconciler.core.snapshots import parse
    from reconciler.peek import Peek, socket_path

    path = socket_path()
    if path is None:
        return None
    peek, selector = Peek(path, timeout_s=timeout_s), project_selector(project)
    compose = compose_selector(project)  # the same lists as `reconcile.observe`
    try:
        return parse(project, peek.list_containers(label=selector),
                     peek.list_networks(label=selector) + peek.list_networks(label=compose),
                     peek.list_volumes(label=selector) + peek.list_volumes(label=compose))
    except EngineUnavailable:
        return empty(project, engine_available=False)


async def observe_or_empty(project: str, *, timeout_s: float = 5.0) -> Snapshot:
    """The host as the engine lists it; an empty host when no engine answers."""
    from reconciler.dockerd import DockerRuntime  # imported late: keeps --help and validate fast
    from reconciler.reconcile import observe

    try:
        runtime = await DockerRuntime.connect(timeout_s=timeout_s)
    except EngineUnavailable:
        return empty(project, engine_available=False)
    try:
        return await observe(runtime, project)
    finally:
        await runtime.close()


def preview_key(args: argparse.Namespace) -> bytes:
    """The host key when this host has one; a fixed preview key otherwise (nothing written)."""
    try:
        key = State(state_dir(args)).key(create=False)
    except StateError:
        key = None
    return key or PREVIEW_KEY


def plan_for(desired: Desired, *, retry: tuple[str, ...] = (),
             applied: dict[str, str] | None = None) -> Plan:
    """`applied`: the edge config digests reloads applied (container id -> digest)."""
    from reconciler.core.snapshots import with_applied

    try:
        snapshot = peek_or_empty(desired.project)
        if snapshot is None:
            snapshot = _run(observe_or_empty(desired.project))
    except EngineError as exc:
        print(f"reconciler: engine: {exc}; planning against an empty host", file=sys.stderr)
        snapshot = empty(desired.project, engine_available=False)
    if not snapshot.engine_available:
        print("reconciler: no Docker engine reachable: planning against an empty host",
              file=sys.stderr)
    return compute(desired, with_applied(snapshot, applied or {}), retry=retry)


# --- commands --------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    key = preview_key(args)
    loaded = load_spec(args, strict=False, key=key)
    print_warnings(loaded)
    desired = build(loaded, key, edge_holder=True)
    try:
        degraded = State(state_dir(args)).degraded()
    except StateError:
        degraded = None
    from reconciler.edgeconf import conf_dir, read_applied

    plan = plan_for(desired, retry=tuple(degraded["failed"]) if degraded else (),
                    applied=read_applied(conf_dir(state_dir(args), desired.project)))
    if degraded:
        from reconciler.core.plans import degraded_line

        plan = dataclasses.replace(plan, notes=(*plan.notes, (
            degraded_line(degraded["failed"], degraded.get("waiting") or {})
            + " (first deploy: the failed services are retried)")))
    return print_plan(args, loaded, plan, where="host")


def print_plan(args: argparse.Namespace, loaded: LoadedSpec, plan: Plan, *, where: str) -> int:
    """Print a preview (text or `--json`), noting a quarantined spec; the preview's exit
    code. `where`: what apply keeps on last-good ("host", "cluster")."""
    try:
        held = State(state_dir(args)).quarantined().get(loaded.fingerprint)
    except StateError:
        held = None
    if held:
        plan = dataclasses.replace(plan, notes=(*plan.notes, (
            f"this spec ({loaded.fingerprint}) is quarantined ({held.get('reason', '')}); "
            f"apply and run keep the {where} on last-good until the spec changes")))
    if args.json:
        sys.stdout.write(render.as_json(plan, revision=loaded.revision))
    else:
        sys.stdout.write(render.text(plan, color=color_enabled(sys.stdout),
                                     revision=loaded.revision))
    return EXIT_OK if plan.empty else EXIT_CHANGES


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_spec(args, strict=not args.no_strict)
    print_warnings(loaded)
    sizing_warnings(loaded, args.host_memory)
    services = len(loaded.spec.services)
    print(f"{spec_dir(args)}: valid ({services} services in {len(loaded.files)} files"
          + (f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "") + ")")
    return EXIT_OK


def host_memory() -> int | None:
    """MemTotal of /proc/meminfo in bytes; None when it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def sizing_warnings(loaded: LoadedSpec, given: str | None) -> None:
    """`validate`: warn when memory limits plus the start-first surge exceed the host's."""
    from reconciler.core import sizing
    from reconciler.core.specs import parse_size

    if given is not None:
        try:
            memory: int | None = parse_size(given)
        except ValueError as exc:
            raise SystemExit(f"error: --host-memory: {exc}") from None
    else:
        memory = host_memory()
    if memory is None:
        print("note: sizing not checked (/proc/meminfo unreadable; use --host-memory SIZE)",
              file=sys.stderr)
        return
    fit = sizing.memory_fit(loaded.spec, host_memory=memory, profiles=loaded.profiles)
    for finding in sizing.memory_findings(fit):
        print(f"warning: {loaded.directory}: {finding.message}", file=sys.stderr)
    print(f"sizing: memory limits {sizing.gib(fit.limits)} + start-first surge "
          f"{sizing.gib(fit.surge)} = {sizing.gib(fit.peak)} (host: {sizing.gib(memory)})")


def cmd_schema() -> int:
    from reconciler.schemadoc import document  # every top-level key optional: one file

    sys.stdout.write(json.dumps(document(), indent=2) + "\n")
    return EXIT_OK



# --- acting commands -------------------------------------------------------------------------


def progress_printer(stream: TextIO | None = None) -> Callable[[Progress], None]:
    """Plain progress lines (one per tier/step event); colour only on a TTY without NO_COLOR."""
    out = stream or sys.stdout
    color = color_enabled(out)

    def show(p: Progress) -> None:
        if p.kind == "tier-start":
            line = f"==> tier {p.tier}: {p.message}"
        elif p.kind == "tier-done":
            line = f"==> tier {p.tier}: healthy after {p.seconds:.1f}s"
        elif p.kind == "step-done":
            line = f"    ok   {p.step} ({p.seconds:.1f}s)"
        elif p.kind == "step-failed":
            line = f"    FAIL {p.step}: {p.message}"
            if color:
                line = f"\x1b[31m{line}\x1b[0m"
        elif p.kind in ("images", "note"):
            line = f"--> {p.message}"
        elif p.kind == "build":
            line = f"    | {p.message}"
        else:
            return
        print(line, file=out, flush=True)

    return show


def engine_timeout() -> float:
    """The bound of every engine call in seconds: `RECONCILER_ENGINE_TIMEOUT`, default 30."""
    try:
        value = float(os.environ.get("RECONCILER_ENGINE_TIMEOUT") or 30.0)
    except ValueError:
        return 30.0
    return value if value > 0 else 30.0


async def _runtime() -> Runtime:
    from reconciler.dockerd import DockerRuntime

    return await DockerRuntime.connect(timeout_s=engine_timeout())


def _lazy_runtime() -> Runtime | None:
    """For one pass on a local socket: lists without aiohttp, connects `dockerd` on the
    first call that needs it (None: not a local socket, use `_runtime`)."""
    from typing import cast

    from reconciler.peek import LazyRuntime, Peek, socket_path

    path = socket_path()
    if path is None:
        return None
    return cast(Runtime, LazyRuntime(Peek(path, timeout_s=engine_timeout()), _runtime))


def reconciler_for(args: argparse.Namespace, state: State, runtime: Runtime) -> Reconciler:
    """The reconciler of an acting command (progress printed)."""
    from reconciler.reconcile import Reconciler

    return Reconciler(spec_dir=spec_dir(args), state=state, runtime=runtime,
                      profiles=tuple(args.profile), policy=load_policy(),
                      report=progress_printer())


async def cmd_apply(args: argparse.Namespace) -> int:
    state = State(state_dir(args))
    load_spec(args, strict=True)  # a bad spec is reported as file:line, engine or not
    with state.lock():
        runtime = _lazy_runtime() or await _runtime()
        try:
            rec = reconciler_for(args, state, runtime)
            res = await rec.reconcile()
        finally:
            await runtime.close()
    return report_pass(res)


def report_pass(res: PassResult) -> int:
    from reconciler.reconcile import PassStatus

    for problem in res.problems:
        print(f"error: {problem}", file=sys.stderr)
    head = {
        PassStatus.NOOP: "No changes: the host matches the spec.",
        PassStatus.CONVERGED: "Converged.",
        PassStatus.ROLLED_BACK: "Rollout FAILED and was reverted to last-good.",
        PassStatus.FAILED: "FAILED.",
        PassStatus.INVALID_SPEC: "Invalid spec: nothing was changed.",
    }[res.result]
    if res.held_last_good:
        head = "Spec is quarantined: not applied."
    if res.degraded:
        head = "DEGRADED: did not converge (first deploy: the rest is up)."
    stream = sys.stdout if res.ok else sys.stderr
    print(head, file=stream)
    if res.message and res.result is not PassStatus.INVALID_SPEC:
        print(res.message, file=stream)
    print(f"revision {(res.revision or res.fingerprint or '-')[:12]}, "
          f"{res.seconds:.1f}s", file=stream)
    return EXIT_OK if res.ok else EXIT_FAILED


async def cmd_status(args: argparse.Namespace) -> int:
    from reconciler import operate
    from reconciler.reconcile import observe

    state = State(state_dir(args))
    key = preview_key(args)
    loaded = load_spec(args, strict=False, key=key)
    desired = build(loaded, key, edge_holder=True)
    try:
        runtime = await _runtime()
    except EngineUnavailable:
        print("reconciler: no Docker engine reachable", file=sys.stderr)
        return EXIT_FAILED
    try:
        snapshot = await observe(runtime, desired.project)
        started = await operate.started_times(runtime, snapshot.containers)
    finally:
        await runtime.close()
    now = operate.now()
    good = state.last_good()
    quarantined = state.quarantined()
    services: list[dict[str, Any]] = []
    for tier in desired.tiers:
        for svc in desired.in_tier(tier):
            mine = sorted(snapshot.of_service(svc.name), key=lambda c: (c.replica or 0, c.name))
            running = [c for c in mine if c.state.value == "running"]
            healthy = [c for c in running if c.health.value in ("healthy", "none")]
            current = [c for c in mine if c.fingerprint == svc.fingerprint]
            match = len(current) == svc.replicas == len(mine)
            rows = [dict(operate.container_row(c, started.get(c.id), now=now),
                         current=c.fingerprint == svc.fingerprint) for c in mine]
            ok = len(healthy) >= svc.replicas and match
            exited = [c.exit_code for c in current if c.state.value == "exited"]
            if svc.service.job:  # a job is fine once it exited 0
                ok = match and len(exited) == len(current) and all(c == 0 for c in exited)
            services.append({
                "name": svc.name, "tier": tier, "desired": svc.replicas, "job": svc.service.job,
                "running": len(running), "healthy": len(healthy), "image": svc.service.image,
                "fingerprint_match": match, "ok": ok, "exited": exited, "containers": rows})
    all_ok = all(s["ok"] for s in services)
    if getattr(args, "json", False):
        data = {"project": desired.project, "spec": loaded.fingerprint,
                "revision": loaded.revision, "last_good": good.label if good else None,
                "candidate_quarantined": loaded.fingerprint in quarantined,
                "quarantined": sorted(quarantined), "ok": all_ok, "services": services}
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK if all_ok else EXIT_FAILED
    print(f'project "{desired.project}"  spec {loaded.fingerprint}'
          + (f" (revision {loaded.revision[:12]})" if loaded.revision else ""))
    print(f"last-good: {good.label if good else '(none)'}"
          + ("   candidate QUARANTINED" if loaded.fingerprint in quarantined else ""))
    degraded = state.degraded()
    if degraded:
        from reconciler.core.plans import degraded_line

        print(degraded_line(degraded["failed"], degraded.get("waiting") or {})
              + " (retried with backoff)")
    if quarantined:
        print("quarantined: " + ", ".join(
            f"{fp} ({(q.get('revision') or '')[:12]})" for fp, q in sorted(quarantined.items())))
    for tier in desired.tiers:
        print(f"\n{tier}")
        for entry in (s for s in services if s["tier"] == tier):
            if entry["job"]:
                print(f"  {'ok ' if entry['ok'] else '!! '}{entry['name']:<24} job  "
                      + (", ".join(f"exited {c}" for c in entry["exited"]) or "not finished")
                      + f"  image {entry['image']}  fingerprint match "
                      f"{'yes' if entry['fingerprint_match'] else 'no'}")
                continue
        for entry in (s for s in services if s["tier"] == tier):
            print(f"  {'ok ' if entry['ok'] else '!! '}{entry['name']:<24} desired "
                  f"{entry['desired']}  running {entry['running']}  healthy {entry['healthy']}  "
                  f"image {entry['image']}  fingerprint match "
                  f"{'yes' if entry['fingerprint_match'] else 'no'}")
            for row in entry["containers"]:
                up = (f"up {operate.human_uptime(row['uptime_s'])}" if row["uptime_s"] is not None
                      else row["state"])
                health = "" if row["health"] == "none" else f" ({row['health']})"
                print(f"      {row['name']:<40} {up}{health}"
                      + ("" if row["current"] else "  [old generation]"))
    return EXIT_OK if all_ok else EXIT_FAILED


def cmd_history(args: argparse.Namespace) -> int:
    import datetime as dt

    entries = State(state_dir(args)).history()
    if getattr(args, "json", False):
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2, sort_keys=True))
        return EXIT_OK
    if not entries:
        print("no history yet")
    for e in entries:
        when = dt.datetime.fromtimestamp(e.at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        jobs = "".join(f"  job {k} exited {v}" for k, v in sorted(e.jobs.items()))
        print(f"{when}  {e.kind:<8} {e.result:<12} {(e.revision or e.fingerprint)[:12]:<12} "
              f"{e.duration_s:>7.1f}s  {e.steps:>3} steps  {e.message}{jobs}")
    return EXIT_OK


async def cmd_rollback(args: argparse.Namespace) -> int:
    state = State(state_dir(args))
    with state.lock():
        goods = state.good_revisions()
        current = state.last_good()
        if args.to:
            matches = [g for g in goods if (g.revision or "").startswith(args.to)
                       or g.fingerprint.startswith(args.to)]
            if not matches:
                print(f"reconciler: {args.to} is not a recorded good revision "
                      "(see `reconciler history`)", file=sys.stderr)
                return EXIT_FAILED
            target = matches[0]
        else:
            older = [g for g in goods if not current or g.fingerprint != current.fingerprint]
            if not older:
                print("reconciler: no earlier good revision to roll back to", file=sys.stderr)
                return EXIT_FAILED
            target = older[0]
        runtime = await _runtime()
        try:
            rec = reconciler_for(args, state, runtime)
            res = await rec.converge_to(target)
        finally:
            await runtime.close()
    return report_pass(res)



async def cmd_logs(args: argparse.Namespace) -> int:
    from reconciler import operate

    loaded = load_spec(args, strict=False, key=preview_key(args))
    since = operate.parse_since(args.since, now=operate.now()) if args.since else None
    tail = args.tail if args.tail is not None or args.follow or since else operate.DEFAULT_TAIL
    runtime = await _runtime()
    try:
        containers = await operate.service_containers(runtime, loaded.spec.project,
                                                      args.service)
        await operate.print_logs(runtime, containers, out=sys.stdout, tail=tail, since=since,
                                 follow=args.follow)
    finally:
        await runtime.close()
    return EXIT_OK


async def cmd_exec(args: argparse.Namespace) -> int:
    from reconciler import operate

    rest = list(args.cmd)
    opts, cmd = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (
        [], rest)
    if opts:  # `exec SERVICE --replica N -- CMD`: options between SERVICE and `--`
        late = argparse.ArgumentParser(prog="reconciler exec SERVICE", add_help=False)
        _common(late, suppress=True)
        late.add_argument("--replica", metavar="N", type=int, default=argparse.SUPPRESS)
        late.parse_args(opts, namespace=args)
    if not cmd:
        print("reconciler: exec needs a command: reconciler exec SERVICE -- CMD...",
              file=sys.stderr)
        return EXIT_FAILED
    loaded = load_spec(args, strict=False, key=preview_key(args))
    runtime = await _runtime()
    try:
        containers = await operate.service_containers(runtime, loaded.spec.project,
                                                      args.service)
        target = operate.pick_replica(containers, args.replica)
        return await operate.run_exec(runtime, target, cmd, out=sys.stdout,
                                      isatty=operate.is_tty)
    finally:
        await runtime.close()


async def cmd_restart(args: argparse.Namespace) -> int:
    """A rolling, health-gated restart: the planner's replace steps for the service's
    containers, same generation, carried out by the executor like an update."""
    from reconciler.core.restarts import RestartRefused, restart_plan

    state = State(state_dir(args))
    load_spec(args, strict=True)
    with state.lock():
        runtime = await _runtime()
        try:
            rec = reconciler_for(args, state, runtime)
            try:
                _, plan, outcome = await rec.converge(
                    rec.load_candidate(),
                    planner=lambda d, s: restart_plan(d, s, args.service))
            except RestartRefused as exc:
                print(f"reconciler: restart: {exc}", file=sys.stderr)
                return EXIT_FAILED
        finally:
            await runtime.close()
    if outcome is None or not outcome.ok:
        failure = outcome.failure if outcome is not None else None
        print(f"Restart of {args.service} FAILED" + (f": {failure}" if failure else "."),
              file=sys.stderr)
        return EXIT_FAILED
    print(f"Restarted {args.service}: {len(plan.steps)} replica(s), one generation, "
          "health-gated.")
    return EXIT_OK


OPERATE: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "logs": cmd_logs, "exec": cmd_exec, "restart": cmd_restart}


async def cmd_data(args: argparse.Namespace, command: str) -> int:
    from reconciler import datacli

    state = State(state_dir(args))
    if command == "backups":
        loaded = load_spec(args, strict=False, key=preview_key(args))
        return datacli.cmd_backups(args, state_root=state.root, project=loaded.spec.project)
    loaded = load_spec(args, strict=True, key=state.key(create=True))
    with state.lock():
        runtime = await _runtime()
        try:
            return await datacli.cmd_restore(args, state=state, loaded=loaded, runtime=runtime)
        finally:
            await runtime.close()


async def cmd_migrate(args: argparse.Namespace) -> int:
    from reconciler import migrate

    state = State(state_dir(args))
    if args.rollback:
        return migrate.rollback(state.root, args.compose_project)
    load_spec(args, strict=not args.dry_run, key=preview_key(args))  # file:line errors
    with state.lock():
        runtime = await _runtime()
        try:
            return await migrate.cmd_migrate(args, state=state, runtime=runtime,
                                             spec_dir=spec_dir(args), report=progress_printer(),
                                             policy=load_policy())
        finally:
            await runtime.close()


async def _connect_with_retry(log: Any) -> Runtime:
    """The engine may still be starting (or restarting): retry with backoff, forever."""
    import asyncio

    from reconciler.dockerd import DockerRuntime

    delay = 0.5
    while True:
        try:
            return await DockerRuntime.connect(timeout_s=engine_timeout())
        except EngineUnavailable as exc:
            log.warning("engine unavailable; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def cmd_run(args: argparse.Namespace) -> int:
    from reconciler import logs
    from reconciler.controller import Controller
    from reconciler.core.specs import parse_duration
    from reconciler.reconcile import Reconciler

    logs.configure()
    log = logs.get()
    resync = parse_duration(args.resync or "60s")
    git_pull = parse_duration(args.git_pull) if args.git_pull else None
    state = State(state_dir(args))
    with state.lock():
        runtime = await _connect_with_retry(log)
        metrics = None
        try:
            if args.metrics_addr:
                from prometheus_client import CollectorRegistry

                from reconciler import telemetry

                metrics = telemetry.Metrics(CollectorRegistry(), version=version())
            rec = Reconciler(spec_dir=spec_dir(args), state=state, runtime=runtime,
                             profiles=tuple(args.profile), policy=load_policy(),
                             report=progress_logger(log))
            controller = Controller(rec, resync_s=resync, git_pull_s=git_pull,
                                    metrics=metrics, log=log)
            await drive(controller, metrics, args.metrics_addr, log, spec=str(spec_dir(args)),
                        resync_s=resync, git_pull_s=git_pull, metrics=args.metrics_addr)
        finally:
            await runtime.close()
    return EXIT_OK


async def drive(controller: Any, metrics: Any, metrics_addr: str | None, log: Any, /,
                **started: Any) -> None:
    """Run a controller (either engine's) until SIGTERM/SIGINT: its metrics, /healthz and
    /readyz served on `metrics_addr` when it has metrics, SIGHUP triggering a pass."""
    import asyncio
    import signal

    runner = None
    try:
        if metrics is not None and metrics_addr:
            from reconciler import telemetry

            host, _, port = metrics_addr.rpartition(":")
            runner = await telemetry.serve(metrics, host or "127.0.0.1", int(port),
                                           healthy=controller.healthy, ready=controller.ready)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, controller.stop.set)
        loop.add_signal_handler(signal.SIGINT, controller.stop.set)
        loop.add_signal_handler(signal.SIGHUP, controller.trigger, "signal")
        log.info("controller started", **started)
        await controller.run()
        log.info("controller stopped")
    finally:
        if runner is not None:
            await runner.cleanup()


def progress_logger(log: Any) -> Callable[[Progress], None]:
    def show(p: Progress) -> None:
        if p.kind in ("step-done", "step-failed", "tier-done", "tier-start", "note", "images"):
            fields: dict[str, object] = {k: v for k, v in (("tier", p.tier), ("step", p.step),
                                        ("message", p.message)) if v}
            if p.seconds:
                fields["seconds"] = round(p.seconds, 3)
            (log.error if p.kind == "step-failed" else log.info)(p.kind, **fields)

    return show


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("reconciler")
    except PackageNotFoundError:
        return "0+unknown"


if __name__ == "__main__":
    sys.exit(main())
