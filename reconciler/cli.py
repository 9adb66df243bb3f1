"""The composition root: parses the command line, wires the pieces, maps outcomes to exit codes.

It decides nothing about what to change (the planner does) and prints no secret: spec
problems are printed as `file:line: key.path: message`, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import render
from reconciler.desired import Desired, build
from reconciler.loading import LoadedSpec, SpecError, load, load_policy
from reconciler.persistence import State, StateError, default_state_dir
from reconciler.plans import Plan, compute
from reconciler.runtimes import EngineUnavailable, RuntimeError_
from reconciler.snapshots import Snapshot, empty

EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 2
PREVIEW_KEY = b"reconciler-preview-without-host-key"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Converge one Docker host to a declarative spec, tier by tier.",
    )
    _common(parser, suppress=False)
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

    schema = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    _common(schema, suppress=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or ("plan" if args.dry_run else "run")
    try:
        if command == "plan":
            return cmd_plan(args)
        if command == "validate":
            return cmd_validate(args)
        if command == "schema":
            return cmd_schema()
        print(f"reconciler: '{command}' is not available in this build", file=sys.stderr)
        return EXIT_FAILED
    except SpecError as exc:
        print_problems(exc)
        return EXIT_FAILED
    except StateError as exc:
        print(f"reconciler: state: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


# --- helpers ---------------------------------------------------------------------------------


def spec_dir(args: argparse.Namespace) -> Path:
    return Path(args.spec or "specs")


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def print_problems(exc: SpecError, *, stream: object = None) -> None:
    out = stream or sys.stderr
    errors = [p for p in exc.problems if not p.warning]
    for problem in exc.problems:
        print(f"{'warning' if problem.warning else 'error'}: {problem}".replace(
            ": warning: ", ": "), file=out)  # type: ignore[call-overload]
    print(f"{len(errors)} error(s) in the spec; nothing was changed.",
          file=out)  # type: ignore[call-overload]


def load_spec(args: argparse.Namespace, *, strict: bool) -> LoadedSpec:
    return load(spec_dir(args), strict=strict, profiles=args.profile, policy=load_policy())


def print_warnings(loaded: LoadedSpec) -> None:
    for problem in loaded.warnings:
        print(f"warning: {problem}".replace(": warning: ", ": "), file=sys.stderr)


def color_enabled(stream: object) -> bool:
    return (not os.environ.get("NO_COLOR") and hasattr(stream, "isatty")
            and bool(stream.isatty()))


async def observe(project: str, *, timeout_s: float = 5.0) -> Snapshot:
    """One list call per kind, filtered by our project label. Empty when no engine answers."""
    from reconciler.dockerd import DockerRuntime  # imported late: keeps --help and validate fast
    from reconciler.labels import project_selector
    from reconciler.snapshots import parse

    try:
        runtime = await DockerRuntime.connect(timeout_s=timeout_s)
    except EngineUnavailable:
        return empty(project, engine_available=False)
    try:
        selector = project_selector(project)
        containers, networks, volumes = await asyncio.gather(
            runtime.list_containers(label=selector),
            runtime.list_networks(label=selector),
            runtime.list_volumes(label=selector),
        )
        return parse(project, containers, networks, volumes)
    finally:
        await runtime.close()


def preview_key(args: argparse.Namespace) -> bytes:
    """The host key when this host has one; a fixed preview key otherwise (nothing written)."""
    try:
        key = State(state_dir(args)).key(create=False)
    except StateError:
        key = None
    return key or PREVIEW_KEY


def plan_for(desired: Desired) -> Plan:
    try:
        snapshot = asyncio.run(observe(desired.project))
    except RuntimeError_ as exc:
        print(f"reconciler: engine: {exc}; planning against an empty host", file=sys.stderr)
        snapshot = empty(desired.project, engine_available=False)
    if not snapshot.engine_available:
        print("reconciler: no Docker engine reachable: planning against an empty host",
              file=sys.stderr)
    return compute(desired, snapshot)


# --- commands --------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = load_spec(args, strict=False)
    print_warnings(loaded)
    desired = build(loaded, preview_key(args))
    plan = plan_for(desired)
    if args.json:
        sys.stdout.write(render.as_json(plan, revision=loaded.revision))
    else:
        sys.stdout.write(render.text(plan, color=color_enabled(sys.stdout),
                                     revision=loaded.revision))
    return EXIT_OK if plan.empty else EXIT_CHANGES


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_spec(args, strict=not args.no_strict)
    print_warnings(loaded)
    services = len(loaded.spec.services)
    print(f"{spec_dir(args)}: valid ({services} services in {len(loaded.files)} files"
          + (f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "") + ")")
    return EXIT_OK


def cmd_schema() -> int:
    from reconciler.specs import Spec

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reconciler spec file"
    sys.stdout.write(json.dumps(schema, indent=2) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
