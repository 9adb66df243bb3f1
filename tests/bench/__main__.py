"""`python -m tests.bench [--quick] [--json FILE] [--runs N] [--only B1,B2,...]`

Runs the benchmark scenarios (see tests/bench/PERFORMANCE.md) against the local dockerd,
reconciler and docker-compose 1.29 alternating, and prints a table of medians (min-max),
ratios reconciler/compose and the issue's targets. Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import report, scenarios
from tests.bench.scenarios import Bench, Config, log

ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9")


def machine() -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "cpu": cpu,
            "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(),
            "docker": out("docker", "version", "--format",
                          "{{.Server.Version}} (API {{.Server.APIVersion}})"),
            "compose": out("docker-compose", "version", "--short")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[2])
    p.add_argument("--quick", action="store_true", help="CI size: 1 run, smaller stacks")
    p.add_argument("--json", metavar="FILE", help="write the raw figures as JSON")
    p.add_argument("--runs", type=int, help="runs per tool and scenario (default 3; quick 1)")
    p.add_argument("--only", metavar="B1,B2,...", help="run only these scenarios")
    p.add_argument("--keep-tmp", action="store_true", help="keep the generated files")
    args = p.parse_args(argv)
    if args.only:
        args.only = {s.strip().upper() for s in args.only.split(",") if s.strip()}
        unknown = args.only - set(ALL)
        if unknown:
            p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    else:
        # B9 (a whole-stack rollout under load, both tools: about two minutes) is not part
        # of the CI-sized run; `--quick --only B9` runs it
        args.only = set(ALL) - ({"B9"} if args.quick else set())
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("docker-compose") is None:
        log("docker-compose is not installed: compose columns will fail (apt-get install "
            "docker-compose)")
    cfg = Config.make(quick=args.quick, runs=args.runs)
    root = Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    bench = Bench(root=root, cfg=cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    info = machine()
    started = time.perf_counter()
    failures: dict[str, str] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("B7", lambda: scenarios.b7(bench)), ("B1", lambda: scenarios.b1(bench)),
        ("B8", lambda: scenarios.b8(bench)),
        ("B2/B3/B5/B6", lambda: scenarios.scale_phases(bench, args.only)),
        ("B4", lambda: scenarios.b4(bench)), ("B9", lambda: scenarios.b9(bench))]
    interrupted = False
    try:
        for name, step in steps:
            if not set(name.split("/")) & args.only:
                continue
            t0 = time.perf_counter()
            try:
                step()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken scenario must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} FAILED: {failures[name][:2000]}")
                bench.rows.append(report.Row(name, "scenario failed", "", note=str(exc)[:200]))
            log(f"{name} took {time.perf_counter() - t0:.0f}s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        bench.cleanup()
        if not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - started
    info["loadavg_at_end"] = os.getloadavg()
    print()
    print(f"reconciler vs docker-compose {info['compose']} on {info['nproc']} CPUs, "
          f"{info['memory']}, docker {info['docker']}; "
          f"{'quick' if cfg.quick else 'full'} run, {cfg.runs} run(s) per tool, {total:.0f}s; "
          f"load average {info['loadavg_at_start'][0]:.1f} at start, "
          f"{info['loadavg_at_end'][0]:.1f} at end")
    print(report.plain(bench.rows))
    print(report.summary(bench.rows))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "quick": cfg.quick, "runs": cfg.runs, "seconds": total,
            "scenarios": sorted(args.only), "failures": failures, "interrupted": interrupted,
            "rows": [r.as_json() for r in bench.rows], "raw": bench.raw,
            "markdown": report.markdown(bench.rows)}, indent=2, default=str))
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
