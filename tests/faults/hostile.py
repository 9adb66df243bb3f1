"""Hostile inputs for the spec loader and the compose importer, and a CLI runner that bounds
them: every case runs `reconciler` in a subprocess with a 1 GiB address-space limit and a
timeout, and reports exit code, output, wall time and peak RSS.

Shared by tests/faults/test_hostile_input.py and the before/after measurement
(`python -m tests.faults.hostile DIR`, which runs every case against the installed package or
the one on PYTHONPATH)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.faults.kit import CANARY

AS_LIMIT = 1 << 30  # 1 GiB address space for the CLI under test
TIMEOUT = 60.0
SECRET = CANARY  # the fault suite checks that it never appears in any recorded output

SERVICE = "project: shop\nservices:\n  web:\n    tier: core\n    image: a:1\n"


@dataclass(frozen=True)
class Run:
    code: int | None  # None: killed by the timeout; negative: killed by a signal
    out: str  # stdout + stderr
    seconds: float
    peak_mb: float

    def summary(self) -> str:
        first = next((line for line in self.out.splitlines() if line.strip()), "")
        return (f"exit {self.code}, {self.seconds:.2f} s, peak {self.peak_mb:.0f} MB: "
                f"{first[:160]}")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_cli(args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = TIMEOUT) -> Run:
    """`reconciler ARGS` in a subprocess under the address-space limit; its peak RSS comes from
    wait4 (the child's own rusage)."""
    with tempfile.TemporaryFile() as output:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", *args], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT, env=dict(env or os.environ),
            preexec_fn=_limit)
        code: int | None = None
        rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        proc.returncode = code if code is not None else -9  # keep Popen from waiting again
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    return Run(code, text, seconds, rusage.ru_maxrss / 1024 if rusage else 0.0)


# --- the cases: each builds its input under `base` and returns the CLI arguments ----------


def spec_dir(base: Path, files: Mapping[str, str | bytes]) -> Path:
    spec = base / "spec"
    spec.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (spec / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return spec


def nested_brackets(base: Path) -> list[str]:
    """100,000 nested `[` (200 KB): segfaulted the C loader."""
    spec = spec_dir(base, {"spec.yaml": "project: shop\nx: " + "[" * 100_000
                           + "]" * 100_000 + "\n"})
    return ["validate", "--spec", str(spec)]


def scalar_alias_bomb(base: Path, *, command: str = "validate") -> list[str]:
    """A 600 KB scalar referenced 1,000 times as label values (600 MB once expanded): a valid
    spec under 1 MB."""
    labels = "".join(f"      l{i}: *s\n" for i in range(1, 1000))
    text = SERVICE + "    labels:\n      l0: &s \"" + "A" * 600_000 + "\"\n" + labels
    spec = spec_dir(base, {"spec.yaml": text})
    return [command, "--spec", str(spec), "--state-dir", str(base / "state")]


def mapping_alias_bomb(base: Path) -> list[str]:
    """Billion laughs (9^9 nodes) with few aliases, under the plain alias-count cap."""
    text = "project: shop\na: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in range(8):
        prev, cur = chr(97 + i), chr(98 + i)
        text += f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    spec = spec_dir(base, {"spec.yaml": text})
    return ["validate", "--spec", str(spec)]


def compose_alias_bomb(base: Path) -> list[str]:
    """A few hundred bytes of compose that expand to 9^9 values: hung import-compose."""
    text = "x-a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in range(8):
        prev, cur = chr(97 + i), chr(98 + i)
        text += f"x-{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    text += "services:\n  web:\n    image: a:1\n    command: *i\n"
    base.mkdir(parents=True, exist_ok=True)
    (base / "compose.yml").write_text(text)
    return ["import-compose", str(base / "compose.yml"), "-o", str(base / "out")]


def huge_file(base: Path) -> list[str]:
    """A 3 GiB (sparse) spec file: was read whole to hash it."""
    spec = spec_dir(base, {"00-project.yaml": SERVICE})
    with open(spec / "zz-huge.yaml", "wb") as handle:
        handle.truncate(3 << 30)
    return ["validate", "--spec", str(spec)]


def symlink_outside(base: Path) -> list[str]:
    """A spec file that is a symlink to a file outside the spec directory."""
    outside = base / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "stolen.yaml").write_text("services:\n  thief:\n    tier: core\n"
                                         "    image: a:1\n")
    spec = spec_dir(base, {"00-project.yaml": SERVICE})
    (spec / "10-link.yaml").symlink_to(outside / "stolen.yaml")
    return ["validate", "--spec", str(spec)]


def fifo_spec(base: Path) -> list[str]:
    """A FIFO named like a spec file."""
    spec = spec_dir(base, {"00-project.yaml": SERVICE})
    os.mkfifo(spec / "10-fifo.yaml")
    return ["validate", "--spec", str(spec)]


def key_collision(base: Path) -> list[str]:
    """`1` and `"1"` are one key after string conversion."""
    spec = spec_dir(base, {"spec.yaml": SERVICE + "    labels:\n      1: a\n      \"1\": b\n"})
    return ["validate", "--spec", str(spec)]


def escape_sequences(base: Path) -> list[str]:
    """Terminal escapes in a tier name and an environment key, shown by `--dry-run`."""
    text = ("project: shop\ntiers: [core, \"ev\\e[2J\\e]0;owned\\ail\"]\nservices:\n"
            "  web:\n    tier: core\n    image: a:1\n"
            "    environment: {\"K\\e[31mEY\": v}\n")
    spec = spec_dir(base, {"spec.yaml": text})
    return ["--dry-run", "--spec", str(spec), "--state-dir", str(base / "state")]


def escape_in_error(base: Path) -> list[str]:
    """Terminal escapes in a key that an error message names (its key path)."""
    text = SERVICE + "    \"im\\e]0;owned\\aage\\e[2J\": x\n"
    spec = spec_dir(base, {"spec.yaml": text})
    return ["validate", "--spec", str(spec)]


def compose_secret_env(base: Path) -> list[str]:
    """A password interpolated from .env and a pass-through `- VAR`. `base` is a git work
    tree: the secrets dir lies in the spec checkout but outside the spec directory."""
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(base)], check=True, capture_output=True)
    (base / ".env").write_text(f"DB_PASSWORD={SECRET}\nAPI_TOKEN={SECRET}-2\n")
    (base / "compose.yml").write_text(
        "services:\n  db:\n    image: postgres:16\n    environment:\n"
        "      POSTGRES_PASSWORD: ${DB_PASSWORD}\n      POSTGRES_DB: shop\n"
        "  api:\n    image: a:1\n    environment:\n      - API_TOKEN\n      - MODE=prod\n")
    return ["import-compose", str(base / "compose.yml"), "-o", str(base / "specs"),
            "--secrets-dir", str(base / "secrets")]


def compose_required_message(base: Path) -> list[str]:
    """`${X:?...}` whose message interpolates a secret."""
    base.mkdir(parents=True, exist_ok=True)
    (base / ".env").write_text(f"DB_PASSWORD={SECRET}\n")
    (base / "compose.yml").write_text(
        "services:\n  db:\n    image: postgres:16\n    environment:\n"
        "      X: ${MISSING:?not set, password is $DB_PASSWORD}\n")
    return ["import-compose", str(base / "compose.yml"), "-o", str(base / "specs")]


def planted_temp_symlink(base: Path) -> list[str]:
    """A symlink planted at the importer's (old, predictable) temp path points at a victim."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "compose.yml").write_text("services:\n  web:\n    image: a:1\n")
    out = base / "specs"
    out.mkdir()
    victim = base / "victim.txt"
    victim.write_text("untouched\n")
    for name in ("00-project.yaml", "20-core.yaml"):
        (out / f".{name}.tmp").symlink_to(victim)
    return ["import-compose", str(base / "compose.yml"), "-o", str(out)]


CASES: dict[str, Callable[[Path], list[str]]] = {
    "nested-brackets-100k": nested_brackets,
    "scalar-alias-bomb-validate": scalar_alias_bomb,
    "scalar-alias-bomb-dry-run": lambda base: scalar_alias_bomb(base, command="--dry-run"),
    "mapping-alias-bomb": mapping_alias_bomb,
    "compose-alias-bomb": compose_alias_bomb,
    "huge-file-3g": huge_file,
    "symlink-outside": symlink_outside,
    "fifo-spec-file": fifo_spec,
    "key-collision": key_collision,
    "escapes-dry-run": escape_sequences,
    "escapes-error": escape_in_error,
    "compose-secret": compose_secret_env,
    "compose-required-message": compose_required_message,
    "planted-temp-symlink": planted_temp_symlink,
}


def main() -> None:  # pragma: no cover - a measuring tool
    base = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    for name in names:
        work = base / name
        args = CASES[name](work)
        result = run_cli(args, cwd=work if work.is_dir() else base)
        if result.code == 2 and "--secrets-dir" in result.out:  # the original CLI
            result = run_cli(args[:-2], cwd=work)
        extra = ""
        if name == "planted-temp-symlink":
            extra = f" | victim: {(work / 'victim.txt').read_text()!r}"
        if name.startswith("compose-"):
            leaked = [str(p) for p in work.rglob("*.yaml") if SECRET in p.read_text()]
            extra = f" | secret in spec files: {leaked} | secret in output: {SECRET in result.out}"
        print(f"{name}: {result.summary()}{extra}", flush=True)
        if os.environ.get("HOSTILE_VERBOSE"):
            print(result.out[-2000:])


if __name__ == "__main__":
    main()
