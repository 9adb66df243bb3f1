"""`reconciler import-compose`: the shell around the pure translation (`translate`).

Reads the compose files, the `.env` file and the overrides file (regular files, size-capped,
YAML through the shared capped reader), writes the spec directory and the secrets env files
and validates the spec with `loading.load(strict=False)`. Never touches Docker; writes only
into the output directory and the secrets directory (each file through a fresh temp file
opened with O_EXCL|O_NOFOLLOW, then renamed), and nothing at all when the import has errors
or unbroken cycles. Secret values are written only to the 0600 env files, never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from reconciler import yamlread
from reconciler.core.envfiles import parse_dotenv
from reconciler.core.model import SpecError
from reconciler.core.specs import DEFAULT_TIERS
from reconciler.hostfiles import Refused, read_regular_file
from reconciler.importer.model import ImportResult, Kind, Remark, Source
from reconciler.importer.translate import import_compose
from reconciler.loading import MAX_ENV_FILE_BYTES, load, load_policy

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
                        help="replace the *.yaml/*.yml files already in the output directory "
                             "and existing secrets env files")
    parser.add_argument("--secrets-dir", metavar="DIR", default=DEFAULT_SECRETS_DIR,
                        help="where the values that must not be in the spec go (interpolated "
                             "secrets, pass-through variables): DIR/<service>.env, mode 0600, "
                             "referenced by env_file; keep it out of git (default: "
                             "%(default)s; {project} is replaced)")
    return parser


DEFAULT_SECRETS_DIR = "/opt/env/{project}"


def _read(path: Path, limit: int = yamlread.MAX_FILE_BYTES) -> str:
    """A regular file named on the command line (links followed; FIFOs, devices and files
    over `limit` refused) as UTF-8 text; errors are `Refused`."""
    data = read_regular_file(path, limit, follow=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("not UTF-8 text") from None


def _overrides(path: str, err: TextIO) -> dict[str, str] | None:
    try:
        root = yamlread.parse(_read(Path(path)), path)
    except Refused as exc:
        print(f"reconciler: --overrides {path}: {exc.reason}", file=err)
        return None
    except yamlread.YamlRefused as exc:
        where = f"{exc.file}:{exc.line}" if exc.line else exc.file
        print(f"reconciler: --overrides {where}: {exc.message}", file=err)
        return None
    data = yamlread.to_plain(root)
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
        except Refused as exc:
            print(f"reconciler: {path}: {exc.reason}", file=err)
            return EXIT_FAILED
    project_dir = files[0].resolve().parent
    env_path = Path(args.env_file) if args.env_file else project_dir / ".env"
    dotenv: dict[str, str] = {}
    if args.env_file or env_path.is_file():
        try:
            values, _lines, problems = parse_dotenv(_read(env_path, MAX_ENV_FILE_BYTES))
        except Refused as exc:
            print(f"reconciler: --env-file {env_path}: {exc.reason}", file=err)
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
        secrets_dir=_absolute(args.secrets_dir), profiles=tuple(_profiles(args)),
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

    try:
        _write_secrets(result, force=args.force)
    except (OSError, FileExistsError) as exc:
        print(f"reconciler: {exc}", file=err)
        print(f"import failed: nothing was written to {output}", file=err)
        return EXIT_FAILED
    try:
        output.mkdir(parents=True, exist_ok=True)
        for path in existing:
            path.unlink()
        for filename, content in result.files.items():
            write_new(output / filename, content, mode=0o644)
    except OSError as exc:
        print(f"reconciler: cannot write {output}: {exc.strerror or exc}", file=err)
        return EXIT_FAILED

    print(f"\nwrote {len(result.files)} file(s) to {output}: {', '.join(result.files)}",
          file=out)
    for tier in result.tiers:
        names = sorted(n for n, t in result.placement.items() if t == tier)
        if names:
            print(f"  {tier:<16} {len(names):>3}  {', '.join(names)}", file=out)
    counts = {kind: sum(1 for r in result.remarks if r.kind is kind) for kind in Kind}
    print(f"{counts[Kind.UNSUPPORTED]} key(s) not carried over, {counts[Kind.NOTE]} note(s), "
          f"{counts[Kind.WARNING]} warning(s)", file=out)
    if result.secret_files:
        count = sum(len(v) for v in result.secrets.values())
        print(f"secrets: {count} value(s) written to {len(result.secret_files)} env file(s) "
              "(mode 0600), referenced by env_file and never written into the spec; keep "
              "them out of git and copy them to the host: "
              + ", ".join(sorted(result.secret_files.values())), file=out)
    try:  # exactly as `validate --no-strict` checks it: same profiles, same host policy
        spec = load(output, strict=False, profiles=_profiles(args), policy=load_policy())
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


def _profiles(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "profile", None) or [])


def _absolute(path: str) -> str:
    """The secrets dir as an absolute path (its `{project}` placeholder kept)."""
    return path if os.path.isabs(path) else os.path.abspath(path)


def _write_secrets(result: ImportResult, *, force: bool) -> None:
    """The secrets env files (0600, directories 0700): all or nothing is checked first."""
    files: Mapping[str, str] = result.secret_files
    if not force:
        taken = sorted(p for p in files.values() if os.path.lexists(p))
        if taken:
            raise FileExistsError(f"secrets env file(s) already exist: {', '.join(taken)}; "
                                  "pass --force to replace them or choose another "
                                  "--secrets-dir")
    blobs: Mapping[str, str] = result.secret_blobs
    if not force:
        taken = sorted(p for p in blobs if os.path.lexists(p))
        if taken:
            raise FileExistsError(f"secret file(s) already exist: {', '.join(taken)}; pass "
                                  "--force to replace them or choose another --secrets-dir")
    for path, value in sorted(blobs.items()):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_new(Path(path), value, mode=0o600)
    for service, path in sorted(files.items()):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        lines = [f"{key}={_dotenv_value(key, value)}" for key, value in
                 sorted(result.secrets[service].items())]
        write_new(Path(path), "# written by reconciler import-compose: secrets, keep out of "
                              "git\n" + "\n".join(lines) + "\n", mode=0o600)


def _dotenv_value(key: str, value: str) -> str:
    """A value as `envfiles.parse_dotenv` reads it back (quoted when it has to be)."""
    if "\n" in value or "\r" in value:
        raise OSError(f"the value of {key} spans several lines: an env file cannot hold it")
    quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"
    if value == value.strip() and " #" not in value and not quoted:
        return value
    for quote in ("'", '"'):
        if quote not in value:
            return quote + value + quote
    raise OSError(f"the value of {key} holds both kinds of quotes: an env file cannot hold it")


def write_new(target: Path, content: str, *, mode: int) -> None:
    """Write `target` through a fresh temp file beside it (random name, O_CREAT|O_EXCL|
    O_NOFOLLOW: a planted file or symlink is never followed or reused), then rename it over
    the target (a symlink at the target is replaced, not followed)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
