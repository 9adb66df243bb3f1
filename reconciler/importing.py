"""`reconciler import-compose`: the shell around the pure `compose` translation.

Reads the compose files, the `.env` file and the overrides file, writes the spec directory and
validates it with `loading.load(strict=False)`. Never touches Docker; writes only into the
output directory, and nothing at all when the import has errors or unbroken cycles.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.compose import Kind, Remark, Source, import_compose
from reconciler.envfiles import parse_dotenv
from reconciler.loading import SpecError, load
from reconciler.specs import DEFAULT_TIERS

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "import-compose",
        help="translate docker compose files into a spec directory",
        description="Translate docker compose files (merged like `docker compose -f a -f b`) "
                    "into a spec directory, one file per tier. Lists every compose key it "
                    "cannot carry over with file and line.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="compose file(s), in order")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="spec directory to write (default: --spec or ./specs)")
    parser.add_argument("--tiers", metavar="LIST", default=",".join(DEFAULT_TIERS),
                        help="comma-separated tier names, first = infrastructure, last = "
                             "external (default: %(default)s)")
    parser.add_argument("--overrides", metavar="FILE",
                        help="YAML mapping {service: tier} that decides tiers explicitly")
    parser.add_argument("--break-cycles", action="store_true",
                        help="write the spec with the proposed depends_on edges removed")
    parser.add_argument("--env-file", metavar="PATH",
                        help="variables for ${VAR} interpolation (default: .env next to the "
                             "first compose file); the environment wins over it")
    parser.add_argument("--force", action="store_true",
                        help="replace the *.yaml/*.yml files already in the output directory")
    return parser


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _overrides(path: str, err: TextIO) -> dict[str, str] | None:
    yaml = YAML(typ="safe")
    try:
        data = yaml.load(_read(Path(path)))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        print(f"reconciler: --overrides {path}: {exc}", file=err)
        return None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        print(f"reconciler: --overrides {path}: expected a mapping of service: tier",
              file=err)
        return None
    return dict(data)


def cmd_import_compose(args: argparse.Namespace, *, out: TextIO | None = None,
                       err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    files = [Path(f) for f in args.files]
    sources: list[Source] = []
    for path in files:
        try:
            sources.append(Source(os.path.normpath(path), _read(path)))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            print(f"reconciler: {path}: cannot read: {reason}", file=err)
            return EXIT_FAILED
    project_dir = files[0].resolve().parent
    env_path = Path(args.env_file) if args.env_file else project_dir / ".env"
    dotenv: dict[str, str] = {}
    if args.env_file or env_path.is_file():
        try:
            values, _lines, problems = parse_dotenv(_read(env_path))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"reconciler: --env-file {env_path}: cannot read: "
                  f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}", file=err)
            return EXIT_FAILED
        for number, message in problems:
            print(f"warning: {env_path}:{number}: {message}", file=err)
        dotenv = {k: v.value for k, v in values.items()}
    environ = {**dotenv, **os.environ}
    overrides: dict[str, str] = {}
    if args.overrides:
        loaded = _overrides(args.overrides, err)
        if loaded is None:
            return EXIT_FAILED
        overrides = loaded
    output = Path(args.output or getattr(args, "spec", None) or "specs")
    existing = sorted(p for p in output.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) \
        if output.is_dir() else []
    if existing and not args.force:
        print(f"reconciler: {output} already holds {', '.join(p.name for p in existing)}; "
              "choose another -o DIR or pass --force to replace them", file=err)
        return EXIT_FAILED

    result = import_compose(
        sources, environ=environ, project_dir=str(project_dir),
        out_dir=str(output.resolve()), project_fallback=project_dir.name,
        tiers=[t.strip() for t in args.tiers.split(",") if t.strip()],
        overrides=overrides, break_cycles_=args.break_cycles,
    )
    _print_remarks(result.remarks, out, err)
    cycle_lines = result.cycles.lines()
    if cycle_lines:
        stream = out if result.ok else err
        print("", file=stream)
        for text in cycle_lines:
            print(text, file=stream)
        if not result.ok and not args.break_cycles:
            print("Re-run with --break-cycles to write the spec without the proposed edges, "
                  "or fix depends_on in the compose file.", file=stream)
    if not result.ok:
        print(f"import failed: nothing was written to {output}", file=err)
        return EXIT_FAILED

    output.mkdir(parents=True, exist_ok=True)
    for path in existing:
        path.unlink()
    for filename, content in result.files.items():
        target = output / filename
        tmp = target.with_name(f".{filename}.tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(target)

    print(f"\nwrote {len(result.files)} file(s) to {output}: {', '.join(result.files)}",
          file=out)
    for tier in result.tiers:
        names = sorted(n for n, t in result.placement.items() if t == tier)
        if names:
            print(f"  {tier:<16} {len(names):>3}  {', '.join(names)}", file=out)
    counts = {kind: sum(1 for r in result.remarks if r.kind is kind) for kind in Kind}
    print(f"{counts[Kind.UNSUPPORTED]} key(s) not carried over, {counts[Kind.NOTE]} note(s), "
          f"{counts[Kind.WARNING]} warning(s)", file=out)
    try:
        spec = load(output, strict=False)
    except SpecError as exc:
        print(f"\nthe written spec does not validate ({output}):", file=err)
        for problem in exc.problems:
            print(f"  {'warning' if problem.warning else 'error'}: {problem}".replace(
                ": warning: ", ": "), file=err)
        print("fix the compose file (or the written spec) and validate again: "
              f"reconciler validate --no-strict --spec {output}", file=err)
        return EXIT_FAILED
    for problem in spec.warnings:
        print(f"  warning: {problem}".replace(": warning: ", ": "), file=out)
    schema = output.resolve().parent / "reconciler.schema.json"
    if not schema.exists():
        print(f"editor validation: reconciler schema > {schema}", file=out)
    print(f"\nnext: reconciler --dry-run --spec {output}", file=out)
    return EXIT_OK


def _print_remarks(remarks: tuple[Remark, ...], out: TextIO, err: TextIO) -> None:
    titles = {
        Kind.ERROR: "errors",
        Kind.UNSUPPORTED: "not carried over",
        Kind.NOTE: "notes",
        Kind.WARNING: "warnings",
    }
    for kind in Kind:
        mine = [r for r in remarks if r.kind is kind]
        if not mine:
            continue
        stream = err if kind is Kind.ERROR else out
        print(f"{titles[kind]} ({len(mine)}):", file=stream)
        for remark in mine:
            print(f"  {remark}", file=stream)
