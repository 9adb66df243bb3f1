"""The scenarios B1-B7: reconciler and docker-compose 1.29 on the same engine, alternating.

Every project is `bench-<hex>-r` (reconciler) or `bench-<hex>-c` (compose) and is registered
with `Bench` before anything is created, so `Bench.cleanup()` (run on exit, error and Ctrl-C)
removes exactly what the benchmark made: containers, networks and volumes by label, and
`docker-compose down -v` for compose projects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import engine
from tests.bench import generate as gen
from tests.bench.report import Row, median

REC, CMP = "reconciler", "compose"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reconciler_cmd() -> list[str]:
    script = Path(sys.executable).parent / "reconciler"
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler.cli"]


def order(run: int) -> tuple[str, str]:
    """A/B alternation: even runs reconciler first, odd runs compose first."""
    return (REC, CMP) if run % 2 == 0 else (CMP, REC)


@dataclass
class Config:
    quick: bool = False
    runs: int = 3
    b2_sizes: tuple[int, ...] = (12, 50, 200)
    b7_sizes: tuple[int, ...] = (100, 1000, 5000)
    idle_s: float = 60.0
    resync_s: float = 60.0
    b4_seconds: float = 20.0
    b4_max_requests: int = 4000

    @classmethod
    def make(cls, *, quick: bool, runs: int | None) -> Config:
        if quick:
            return cls(quick=True, runs=runs or 1, b2_sizes=(12, 50), b7_sizes=(100, 1000),
                       idle_s=15.0, b4_seconds=8.0, b4_max_requests=1500)
        return cls(runs=runs or 3)


def interval_for(n: int) -> float:
    """Health interval of the services nobody waits on in a scale stack: every probe is an
    exec (runc) that costs the 2-core host CPU, so bigger stacks probe less often."""
    return 2.0 if n <= 12 else 4.0 if n <= 50 else 20.0


@dataclass
class Deployed:
    tool: str
    project: str
    stack: gen.Stack
    spec: Path          # reconciler: spec dir; compose: docker-compose.yml
    state: Path | None  # reconciler only

    @property
    def label(self) -> str:
        key = engine.RECONCILER_LABEL if self.tool == REC else engine.COMPOSE_LABEL
        return f"{key}={self.project}"

    @property
    def service_label(self) -> str:
        return "reconciler.service" if self.tool == REC else "com.docker.compose.service"


@dataclass
class Bench:
    root: Path
    cfg: Config
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    _rec_projects: set[str] = field(default_factory=set)
    _compose: dict[str, Path] = field(default_factory=dict)
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    # --- bookkeeping ---------------------------------------------------------------------

    def new(self, tool: str, stack_fn: Callable[[str], gen.Stack]) -> Deployed:
        base = f"bench-{uuid.uuid4().hex[:8]}"
        project = f"{base}-{'r' if tool == REC else 'c'}"
        stack = stack_fn(project)
        where = self.root / project
        if tool == REC:
            self._rec_projects.add(project)
            spec = gen.write_reconciler(stack, where / "spec")
            return Deployed(tool, project, stack, spec, where / "state")
        compose = gen.write_compose(stack, where)
        self._compose[project] = compose
        return Deployed(tool, project, stack, compose, None)

    def rewrite(self, d: Deployed, stack: gen.Stack) -> Deployed:
        if d.tool == REC:
            gen.write_reconciler(stack, d.spec)
        else:
            gen.write_compose(stack, d.spec.parent)
        return Deployed(d.tool, d.project, stack, d.spec, d.state)

    def down(self, d: Deployed) -> None:
        if d.tool == REC:
            engine.remove_by_label(d.label)
            self._rec_projects.discard(d.project)
        else:
            engine.compose_down(d.project, d.spec)
            self._compose.pop(d.project, None)

    def cleanup(self) -> None:
        for pid, proc in list(self._procs.items()):
            stop_process(proc)
            self._procs.pop(pid, None)
        for project in sorted(self._rec_projects):
            with contextlib.suppress(Exception):
                engine.remove_by_label(f"{engine.RECONCILER_LABEL}={project}")
        for project, compose in sorted(self._compose.items()):
            with contextlib.suppress(Exception):
                engine.compose_down(project, compose)
        self._rec_projects.clear()
        self._compose.clear()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    # --- the two tools ---------------------------------------------------------------------

    def up(self, d: Deployed, *, timeout_s: float = 900.0) -> tuple[float, str]:
        """`reconciler apply` / `docker-compose up -d`: wall seconds of the CLI and its output."""
        if d.tool == REC:
            assert d.state is not None
            cmd = [*reconciler_cmd(), "apply", "--spec", str(d.spec), "--state-dir",
                   str(d.state)]
        else:
            cmd = ["docker-compose", "-p", d.project, "-f", str(d.spec), "up", "-d",
                   "--no-color"]
        env = {**os.environ, "NO_COLOR": "1", "COMPOSE_PARALLEL_LIMIT": "256"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                              check=False, cwd=self.root)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{d.tool} up failed ({proc.returncode}): "
                               f"{(proc.stdout + proc.stderr)[-1500:]}")
        return seconds, proc.stdout + proc.stderr

    def up_healthy(self, d: Deployed, *, timeout_s: float = 900.0,
                   extra: Callable[[list[dict[str, Any]]], bool] | None = None) -> float:
        """Seconds from the CLI's start to every container of the project running and
        healthy (compose's `up -d` returns before the last tier is healthy)."""
        t0 = time.perf_counter()
        self.up(d, timeout_s=timeout_s)
        return engine.wait_all_healthy(d.label, d.stack.replicas_total(), timeout_s=timeout_s,
                                       started=t0, extra=extra)

    def spawn(self, cmd: Sequence[str], *, env: dict[str, str], logfile: Path) -> int:
        out = logfile.open("wb")
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=self.root)
        out.close()
        self._procs[proc.pid] = proc
        return proc.pid

    def stop(self, pid: int) -> None:
        proc = self._procs.pop(pid, None)
        if proc is not None:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the one process we started (by pid), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def deployed(bench: Bench, d: Deployed) -> Iterator[Deployed]:
    try:
        yield d
    finally:
        bench.down(d)


# --- B1 cold start -------------------------------------------------------------------------------


def single_start(samples: int = 3) -> list[float]:
    """create + start of one demo-app container through the Engine API (this machine's cost
    of one container start)."""
    project = f"bench-{uuid.uuid4().hex[:8]}-s"
    label = f"{engine.RECONCILER_LABEL}={project}"
    out = []
    try:
        # a user network, as in the stacks (this engine may run without a default bridge)
        engine.api("POST", "/networks/create", {"Name": f"{project}_net", "CheckDuplicate": True,
                                                "Labels": {engine.RECONCILER_LABEL: project}})
        for i in range(samples):
            body = {"Image": gen.APP_IMAGE, "Env": ["APP_NAME=start"],
                    "Labels": {engine.RECONCILER_LABEL: project},
                    "HostConfig": {"NetworkMode": f"{project}_net"}}
            t0 = time.perf_counter()
            created = engine.api("POST", f"/containers/create?name={project}-{i}", body)
            engine.api("POST", f"/containers/{created['Id']}/start")
            out.append(time.perf_counter() - t0)
    finally:
        engine.remove_by_label(label)
    return out


def lower_bounds(stack: gen.Stack, start_s: float) -> tuple[float, float]:
    """(issue's bound, probe-aware bound). The issue: sum over tiers of the slowest HEALTH_DELAY
    plus one container start per tier. Probe-aware: Docker runs the first probe one `interval`
    after start and then every interval, so a tier cannot be seen healthy before
    max(interval, ceil(delay / interval) * interval)."""
    issue = probe = 0.0
    for tier in gen.TIERS:
        svcs = [s for s in stack.services if s.tier == tier]
        if not svcs:
            continue
        delay = max(s.health_delay for s in svcs)
        issue += delay + start_s
        probe += start_s + max(max(s.interval_s, math.ceil(s.health_delay / s.interval_s)
                                   * s.interval_s) for s in svcs)
    return issue, probe


def b1(bench: Bench) -> None:
    log("B1: one container start on this machine")
    starts = single_start()
    start_s = statistics.median(starts)
    samples: dict[str, list[float]] = {REC: [], CMP: []}
    for run in range(bench.cfg.runs):
        for tool in order(run):
            d = bench.new(tool, gen.demo_stack)
            with deployed(bench, d):
                seconds = bench.up_healthy(d, timeout_s=300)
            samples[tool].append(seconds)
            log(f"B1 run {run + 1} {tool}: {seconds:.2f}s to all healthy")
    stack = gen.demo_stack("bench-lb")
    issue_lb, probe_lb = lower_bounds(stack, start_s)
    n = stack.replicas_total()
    bench.add(Row("B1", "one container start (create+start, API)", "s", rec=starts))
    bench.add(Row("B1", f"lower bound: Σ tiers (slowest HEALTH_DELAY + 1 start), {n} containers",
                  "s", rec=[issue_lb],
                  extra={"probe_aware_lower_bound_s": probe_lb, "start_s": start_s}))
    bench.add(Row("B1", "probe-aware lower bound (first probe after one 0.5 s interval)", "s",
                  rec=[probe_lb]))
    tiered, graph = gen.chain_delays(stack)
    per_tier, graph_levels = gen.chain_levels(stack)
    bench.add(Row("B1", f"critical path, Σ HEALTH_DELAY (reconciler: tiers, "
                        f"{sum(per_tier.values())} levels; compose: graph, {graph_levels})", "s",
                  rec=[tiered], cmp=[graph]))
    cold = bench.add(Row("B1", f"cold start to all healthy ({n} containers)", "s",
                         rec=samples[REC], cmp=samples[CMP], target="<= compose"))
    cold.met = cold.ratio is not None and cold.ratio <= 1.0
    vs_lb = bench.add(Row("B1", "reconciler / lower bound", "x",
                          rec=[s / issue_lb for s in samples[REC]],
                          target="<= 1.10"))
    vs_lb.met = (vs_lb.rec_median or math.inf) <= 1.10
    bench.raw["B1"] = {"starts_s": starts, "lower_bound_s": issue_lb,
                       "probe_aware_lower_bound_s": probe_lb, **samples}


# --- B8 production health cadence ---------------------------------------------------------------

B8_INTERVAL_S = 45.0  # the production cadence of the issue (timeout 15s, retries 5, start 90s)
B8_QUICK_INTERVAL_S = 3.0  # --quick (CI): a reduced interval, so compose's cost stays small
B8_READY_S = 2  # every app answers its health check 2 s after start
B8_SERVICE = "order-service"  # the one-service update (business tier)


def b8(bench: Bench) -> None:
    """The B1 stack with the production probe settings and apps ready after 2 s: cold start
    and a one-service update, against the true-readiness bound (Σ tiers of the slowest app
    readiness + one start; the update: one readiness + one start). Docker probes first one
    `interval` after start, so whatever waits for Docker's health status needs at least one
    interval per tier.

    "Ready" is the same test for both tools: every container runs and either Docker says
    healthy or the container's own health check, run by exec, exits 0 (`wait_all_ready`).
    Waiting for Docker's `(healthy)` alone would charge the reconciler one Docker interval
    for its last tier, which nothing waits on.

    The stack has health-gated `depends_on` chains inside tiers (core: auth-service ->
    user-service; business: catalog -> order -> payment -> api-gateway), which both tools
    honour, so the deepest chain is reported too: Σ tiers of (longest same-tier chain) x
    (readiness + one start) for tier-by-tier, and the longest chain over the whole graph."""
    interval = B8_QUICK_INTERVAL_S if bench.cfg.quick else B8_INTERVAL_S
    log(f"B8: production health cadence, interval {interval:g}s, apps ready after "
        f"{B8_READY_S}s")
    def stack_fn(project: str) -> gen.Stack:
        return gen.demo_stack(project, interval_s=interval, ready_s=B8_READY_S, prod_health=True)

    def ready(d: Deployed, *, limit: float,
              extra: Callable[[list[dict[str, Any]], set[str]], bool] | None = None) -> float:
        t0 = time.perf_counter()
        bench.up(d, timeout_s=limit)
        return engine.wait_all_ready(d.label, d.stack.replicas_total(), timeout_s=limit,
                                     started=t0, extra=extra)

    cold: dict[str, list[float]] = {REC: [], CMP: []}
    update: dict[str, list[float]] = {REC: [], CMP: []}
    # one container start costs what the host's load makes it: measured next to every
    # reconciler run, so each run is held against the bound of its own moment
    run_starts: list[float] = []
    starts: list[float] = []
    limit = 120 + 8 * interval
    for run in range(bench.cfg.runs):
        for tool in order(run):
            if tool == REC:
                sample = single_start()
                starts.extend(sample)
                run_starts.append(statistics.median(sample))
            d = bench.new(tool, stack_fn)
            with deployed(bench, d):
                cold[tool].append(ready(d, limit=limit))
                old = {c["Id"] for c in engine.containers(d.label)
                       if (c.get("Labels") or {}).get(d.service_label) == B8_SERVICE}
                d = bench.rewrite(d, d.stack.with_version(B8_SERVICE, "1.1"))
                update[tool].append(ready(d, limit=limit,
                                          extra=_new_ready(d, B8_SERVICE, old)))
            log(f"B8 run {run + 1} {tool}: cold {cold[tool][-1]:.2f}s, one-service update "
                f"{update[tool][-1]:.2f}s")
    stack = stack_fn("bench-lb")
    per_tier, graph_levels = gen.chain_levels(stack)
    start_s = statistics.median(starts)
    level = B8_READY_S + start_s
    tiers = len(per_tier)
    bound = tiers * level
    chain_bound = sum(per_tier.values()) * level
    one = level
    levels = [B8_READY_S + x for x in run_starts]  # per reconciler run
    label = f"interval {interval:g}s{' (quick: reduced from 45s)' if bench.cfg.quick else ''}"
    bench.add(Row("B8", "one container start (create+start, API), next to each reconciler run",
                  "s", rec=starts))
    bench.add(Row("B8", f"true-readiness bound, cold ({tiers} tiers x ({B8_READY_S}s + 1 start))",
                  "s", rec=[tiers * x for x in levels], extra={"start_s": start_s}))
    bench.add(Row("B8", f"dependency-chain bound, cold ({sum(per_tier.values())} chained "
                        f"levels x ({B8_READY_S}s + 1 start); the graph without tiers: "
                        f"{graph_levels})", "s", rec=[sum(per_tier.values()) * x for x in levels],
                  extra={"levels_per_tier": per_tier, "graph_levels": graph_levels}))
    row = bench.add(Row("B8", f"cold start to all ready, {label}", "s", rec=cold[REC],
                        cmp=cold[CMP]))
    vs = bench.add(Row("B8", "cold start: reconciler / true-readiness bound", "x",
                       rec=[x / (tiers * lv) for x, lv in zip(cold[REC], levels, strict=True)],
                       target="<= 1.3"))
    vs.met = (vs.rec_median or math.inf) <= 1.3
    bench.add(Row("B8", "cold start: reconciler / dependency-chain bound", "x",
                  rec=[x / (sum(per_tier.values()) * lv)
                       for x, lv in zip(cold[REC], levels, strict=True)]))
    bench.add(Row("B8", "cold start: compose / true-readiness bound", "x",
                  rec=[x / bound for x in cold[CMP]]))
    urow = bench.add(Row("B8", f"one-service update to new container ready, {label}", "s",
                         rec=update[REC], cmp=update[CMP]))
    uvs = bench.add(Row("B8", f"update: reconciler / bound ({B8_READY_S}s + 1 start)", "x",
                        rec=[x / lv for x, lv in zip(update[REC], levels, strict=True)],
                        target="<= 1.3"))
    uvs.met = (uvs.rec_median or math.inf) <= 1.3
    bench.raw["B8"] = {"interval_s": interval, "bound_s": bound, "chain_bound_s": chain_bound,
                       "update_bound_s": one, "start_s": starts, "run_start_s": run_starts,
                       "cold": cold,
                       "update": update, "rows": [row.metric, urow.metric]}


def _new_ready(d: Deployed, service: str, old_ids: set[str]
               ) -> Callable[[list[dict[str, Any]], set[str]], bool]:
    """`wait_all_ready`'s extra: a new container of `service` (not one of `old_ids`) is ready."""
    def check(cs: list[dict[str, Any]], ready_ids: set[str]) -> bool:
        return any((c.get("Labels") or {}).get(d.service_label) == service
                   and c["Id"] not in old_ids and c["Id"] in ready_ids for c in cs)
    return check


# --- B2 no-op, B3 one change, B5 drift, B6 idle ---------------------------------------------------


def cli_start(bench: Bench) -> None:
    """Start-up cost of each CLI (`--help`): Python imports are most of a no-op's time."""
    samples: dict[str, list[float]] = {REC: [], CMP: []}
    cmds = {REC: [*reconciler_cmd(), "--help"], CMP: ["docker-compose", "--help"]}
    for run in range(max(bench.cfg.runs, 3)):
        for tool in order(run):
            t0 = time.perf_counter()
            subprocess.run(cmds[tool], capture_output=True, timeout=60, check=False)
            samples[tool].append(time.perf_counter() - t0)
    bench.add(Row("B2", "CLI start-up (`--help`)", "s", rec=samples[REC], cmp=samples[CMP]))
    bench.raw["cli_start"] = samples


async def _inprocess_noop(d: Deployed, passes: int) -> dict[str, list[float]]:
    from reconciler.dockerd import DockerRuntime
    from reconciler.loading import load_policy
    from reconciler.persistence import State
    from reconciler.reconcile import PassStatus, Reconciler, observe

    assert d.state is not None
    runtime = await DockerRuntime.connect()
    counting = engine.CountingRuntime(runtime)
    try:
        rec = Reconciler(spec_dir=d.spec, state=State(d.state), runtime=counting,
                         policy=load_policy())
        first = await rec.reconcile()  # warm: connection pool, lazy imports
        if first.result is not PassStatus.NOOP:
            raise RuntimeError(f"in-process pass is not a no-op: {first.result} {first.message}")
        out: dict[str, list[float]] = {"pass_s": [], "calls": [], "load_s": [], "observe_s": []}
        for _ in range(passes):
            counting.reset()
            t0 = time.perf_counter()
            res = await rec.reconcile()
            out["pass_s"].append(time.perf_counter() - t0)
            out["calls"].append(float(counting.total))
            if res.result is not PassStatus.NOOP:
                raise RuntimeError(f"in-process pass is not a no-op: {res.result}")
            t0 = time.perf_counter()
            rec.load_candidate()
            out["load_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await observe(runtime, d.project)
            out["observe_s"].append(time.perf_counter() - t0)
        out["calls_by_method"] = [dict(counting.calls)]  # type: ignore[list-item]
        return out
    finally:
        await runtime.close()


def scale_setup(bench: Bench, n: int, tools: Sequence[str]) -> dict[str, Deployed]:
    fast_b3 = f"ext-{gen.tier_sizes(n)[3]:0{len(str(gen.tier_sizes(n)[3]))}d}"
    fast_b5 = f"ext-{1:0{len(str(gen.tier_sizes(n)[3]))}d}"

    def stack_fn(project: str) -> gen.Stack:
        return gen.scale_stack(project, n, interval_s=interval_for(n), fast=[fast_b3, fast_b5])

    out: dict[str, Deployed] = {}
    cold: dict[str, list[float]] = {REC: [], CMP: []}
    for tool in tools:
        d = bench.new(tool, stack_fn)
        out[tool] = d
        seconds = bench.up_healthy(d, timeout_s=1200)
        cold[tool].append(seconds)
        log(f"setup {n} services {tool}: {seconds:.1f}s to all healthy")
    bench.add(Row("B2", f"(setup) cold start of {n} services, health interval "
                        f"{interval_for(n):g}s", "s", rec=cold[REC] or None,
                  cmp=cold[CMP] or None))
    return out


def dry_run(d: Deployed) -> float:
    """Wall seconds of `reconciler --dry-run` on a deployed spec (must be in sync: exit 0)."""
    assert d.state is not None
    cmd = [*reconciler_cmd(), "--dry-run", "--spec", str(d.spec), "--state-dir", str(d.state)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dry-run was not in sync ({proc.returncode}): {proc.stdout[-800:]}")
    return seconds


def b2_noop(bench: Bench, n: int, stacks: dict[str, Deployed]) -> None:
    samples: dict[str, list[float]] = {REC: [], CMP: []}
    previews: list[float] = []
    # an installed package has its bytecode (compose's does); this environment may run with
    # PYTHONDONTWRITEBYTECODE, which would make every reconciler run compile its modules
    import reconciler

    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    str(Path(reconciler.__file__).parent)], capture_output=True, timeout=120,
                   check=False, env={k: v for k, v in os.environ.items()
                                     if k != "PYTHONDONTWRITEBYTECODE"})
    # the first run pays cold caches (bytecode, page cache) for both tools: not counted
    bench.up(stacks[REC], timeout_s=600)
    bench.up(stacks[CMP], timeout_s=600)
    for run in range(max(bench.cfg.runs, 5) if n <= 12 else bench.cfg.runs):
        for tool in order(run):
            seconds, output = bench.up(stacks[tool], timeout_s=600)
            if tool == REC and "No changes" not in output:
                raise RuntimeError(f"reconciler apply was not a no-op: {output[-800:]}")
            samples[tool].append(seconds)
            log(f"B2 {n} run {run + 1} {tool}: no-op CLI {seconds:.2f}s")
            if tool == REC:
                previews.append(dry_run(stacks[REC]))
                log(f"B2 {n} run {run + 1} {tool}: --dry-run {previews[-1]:.2f}s")
    preview = bench.add(Row("B2", f"`--dry-run` (in sync) vs compose no-op `up -d` at {n} "
                                  "services", "s", rec=previews, cmp=samples[CMP]))
    if n <= 12:
        preview.target = "<= 0.8 x compose"
        preview.met = preview.ratio is not None and preview.ratio <= 0.8
    row = bench.add(Row("B2", f"no-op CLI at {n} services", "s", rec=samples[REC],
                        cmp=samples[CMP]))
    if n <= 12:
        row.target = "<= 0.8 x compose"
        row.met = row.ratio is not None and row.ratio <= 0.8
    if n == 200:
        row.target = "<= 0.5 x compose"
        row.met = row.ratio is not None and row.ratio <= 0.5
    inproc = asyncio.run(_inprocess_noop(stacks[REC], max(bench.cfg.runs, 5)))
    pass_row = bench.add(Row("B2", f"in-process no-op pass at {n} services", "s",
                             rec=inproc["pass_s"]))
    if n == 200:
        pass_row.target = "< 50 ms"
        pass_row.met = (pass_row.rec_median or math.inf) < 0.05
    bench.add(Row("B2", f"  of which: load + validate the spec ({n})", "s",
                  rec=inproc["load_s"]))
    bench.add(Row("B2", f"  of which: observe (3 list calls) ({n})", "s",
                  rec=inproc["observe_s"]))
    bench.add(Row("B2", f"engine API calls per no-op pass ({n})", "calls", rec=inproc["calls"],
                  extra={"by_method": inproc["calls_by_method"][0]}))
    bench.raw[f"B2_{n}"] = {"cli": samples, "inprocess": inproc}


def _new_container(d: Deployed, service: str, old_ids: set[str]
                   ) -> Callable[[list[dict[str, Any]]], bool]:
    def check(cs: list[dict[str, Any]]) -> bool:
        return any((c.get("Labels") or {}).get(d.service_label) == service
                   and c["Id"] not in old_ids and "(healthy)" in (c.get("Status") or "")
                   for c in cs)
    return check


def b3_change(bench: Bench, n: int, stacks: dict[str, Deployed]) -> None:
    size = gen.tier_sizes(n)[3]
    service = f"ext-{size:0{len(str(size))}d}"
    samples: dict[str, list[float]] = {REC: [], CMP: []}
    for run in range(bench.cfg.runs):
        for tool in order(run):
            d = stacks[tool]
            old = {c["Id"] for c in engine.containers(d.label)
                   if (c.get("Labels") or {}).get(d.service_label) == service}
            d = stacks[tool] = bench.rewrite(d, d.stack.with_version(service, f"1.{run + 1}"))
            seconds = bench.up_healthy(d, timeout_s=300, extra=_new_container(d, service, old))
            samples[tool].append(seconds)
            log(f"B3 run {run + 1} {tool}: {seconds:.2f}s to converged")
    bench.add(Row("B3", f"one changed service among {n}: to converged (new container "
                        "healthy)", "s", rec=samples[REC], cmp=samples[CMP]))
    bench.raw["B3"] = samples


def b6_idle_then_b5(bench: Bench, d: Deployed, *, do_b6: bool, do_b5: bool,
                    noop_calls: float | None) -> None:
    """Start `reconciler run` behind a counting socket proxy; measure it idle (B6), then remove
    a managed container by hand and time the healthy replacement (B5)."""
    assert d.state is not None
    sock = bench.root / f"proxy-{uuid.uuid4().hex[:6]}.sock"
    proxy = engine.CountingSocketProxy(sock).start()
    pid = None
    try:
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "NO_COLOR": "1"}
        cmd = [*reconciler_cmd(), "run", "--spec", str(d.spec), "--state-dir", str(d.state),
               "--resync", f"{bench.cfg.resync_s:g}s"]
        pid = bench.spawn(cmd, env=env, logfile=bench.root / f"{d.project}-run.log")
        log(f"controller started (pid {pid}); waiting for it to settle")
        settle_deadline = time.perf_counter() + 45
        last_total, quiet_since = -1, time.perf_counter()
        while time.perf_counter() < settle_deadline:
            total = sum(proxy.counts().values())
            if total != last_total:
                last_total, quiet_since = total, time.perf_counter()
            elif total > 0 and time.perf_counter() - quiet_since > 3:
                break
            time.sleep(0.2)
        if do_b6:
            _b6(bench, pid, proxy, noop_calls)
        if do_b5:
            _b5(bench, d)
    finally:
        if pid is not None:
            bench.stop(pid)
        proxy.stop()


def _b6(bench: Bench, pid: int, proxy: engine.CountingSocketProxy,
        noop_calls: float | None) -> None:
    window = bench.cfg.idle_s
    log(f"B6: measuring the idle controller for {window:g}s")
    before, ticks0 = proxy.counts(), engine.proc_cpu_ticks(pid)
    t0 = time.perf_counter()
    rss: list[int] = []
    while time.perf_counter() - t0 < window:
        rss.append(engine.proc_rss_kib(pid))
        time.sleep(1.0)
    elapsed = time.perf_counter() - t0
    ticks1, after = engine.proc_cpu_ticks(pid), proxy.counts()
    rss.append(engine.proc_rss_kib(pid))
    calls = after - before
    total = sum(calls.values())
    cpu = (ticks1 - ticks0) / engine.CLK_TCK / elapsed * 100
    per_min = total * 60 / elapsed
    passes = calls.get("GET /containers/json", 0)  # one list call per pass
    per_pass = noop_calls if noop_calls is not None else 3.0
    allowed = math.ceil(elapsed / bench.cfg.resync_s)  # resync passes the window may hold
    beyond = max(0.0, total - allowed * per_pass) * 60 / elapsed
    r = bench.add(Row("B6", f"idle CPU over {window:g}s (50 services)", "%", rec=[cpu],
                      target="< 1 %"))
    r.met = cpu < 1.0
    r = bench.add(Row("B6", "idle RSS (max of 1 s samples)", "MB", rec=[max(rss) / 1024],
                      target="< 80 MB"))
    r.met = max(rss) / 1024 < 80
    bench.add(Row("B6", f"engine API calls per idle minute (resync {bench.cfg.resync_s:g}s)",
                  "calls/min", rec=[per_min], extra={"by_path": dict(calls)}))
    bench.add(Row("B6", "  reconcile passes per idle minute", "count",
                  rec=[passes * 60 / elapsed]))
    r = bench.add(Row("B6", f"  beyond {allowed} resync pass(es) of {per_pass:g} calls",
                      "calls/min", rec=[beyond], target="0"))
    r.met = beyond == 0
    bench.raw["B6"] = {"cpu_pct": cpu, "rss_kib": rss, "calls": dict(calls),
                       "window_s": elapsed, "passes": passes, "resync_passes_allowed": allowed,
                       "calls_per_pass": per_pass}


def _b5(bench: Bench, d: Deployed) -> None:
    size = gen.tier_sizes(len(d.stack.services))[3]
    service = f"ext-{1:0{len(str(size))}d}"
    samples: list[float] = []
    for run in range(bench.cfg.runs):
        engine.wait_all_healthy(d.label, d.stack.replicas_total(), timeout_s=120)
        mine = [c for c in engine.containers(d.label)
                if (c.get("Labels") or {}).get("reconciler.service") == service]
        old = {c["Id"] for c in mine}
        t0 = time.perf_counter()
        for c in mine:
            engine.api("DELETE", f"/containers/{c['Id']}?force=1", ok=(204, 404))
        seconds = engine.wait_all_healthy(d.label, d.stack.replicas_total(), timeout_s=120,
                                          started=t0, poll_s=0.02,
                                          extra=_new_container(d, service, old))
        samples.append(seconds)
        log(f"B5 run {run + 1}: healthy replacement after {seconds:.2f}s")
        time.sleep(2)
    r = bench.add(Row("B5", "container removed by hand -> healthy replacement (`run`)", "s",
                      rec=samples, target="< 2 s",
                      note="compose: n/a (no controller: nothing repairs drift)"))
    r.met = (r.rec_median or math.inf) < 2.0
    bench.raw["B5"] = samples


def scale_phases(bench: Bench, only: set[str]) -> None:
    b2 = "B2" in only
    if b2:
        cli_start(bench)
    for n in bench.cfg.b2_sizes:
        if n == 50:
            continue
        if b2:
            stacks = scale_setup(bench, n, (REC, CMP))
            try:
                b2_noop(bench, n, stacks)
            finally:
                for d in stacks.values():
                    bench.down(d)
    if not only & {"B2", "B3", "B5", "B6"}:
        return
    n = 50
    tools = (REC, CMP) if only & {"B2", "B3"} else (REC,)
    stacks = scale_setup(bench, n, tools)
    try:
        noop_calls = None
        if b2:
            b2_noop(bench, n, stacks)
            noop_calls = median(bench.raw[f"B2_{n}"]["inprocess"]["calls"])
        if "B3" in only:
            b3_change(bench, n, stacks)
        if CMP in stacks:  # compose leaves: B5/B6 measure the controller alone
            bench.down(stacks.pop(CMP))
        if only & {"B5", "B6"}:
            b6_idle_then_b5(bench, stacks[REC], do_b6="B6" in only, do_b5="B5" in only,
                            noop_calls=noop_calls)
    finally:
        for d in stacks.values():
            bench.down(d)


# --- B4 rolling update under load ---------------------------------------------------------------


def b4(bench: Bench) -> None:
    try:
        from tests.bench import edge_compare  # type: ignore[attr-defined]
    except ImportError as exc:
        bench.add(Row("B4", "rolling update under load: failed requests", "count",
                      target="0 failed (reconciler)",
                      note=f"not run: tests/bench/edge_compare.py is not there yet ({exc})"))
        return
    results: list[dict[str, Any]] = []
    for run in range(bench.cfg.runs):
        log(f"B4 run {run + 1}: edge_compare.compare()")
        results.append(edge_compare.compare(seconds=bench.cfg.b4_seconds,
                                            max_requests=bench.cfg.b4_max_requests))
    bench.raw["B4"] = results
    add_b4_rows(bench.rows, results)


def _side(result: dict[str, Any], tool: str) -> dict[str, Any] | None:
    for key in (tool, "rec" if tool == REC else "docker-compose"):
        value = result.get(key)
        if isinstance(value, dict):
            return value
    return None


def _get(side: dict[str, Any] | None, *keys: str) -> float | None:
    if not side:
        return None
    for key in keys:
        value = side.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def add_b4_rows(rows: list[Row], results: Sequence[dict[str, Any]]) -> None:
    """edge_compare.compare() -> rows; tolerant of its exact shape (`reconciler`/`compose`
    sides with `failed`, `longest_gap_s`, `total`)."""
    metrics = (("failed requests", "count", ("failed",)),
               ("longest gap between successes", "s", ("longest_gap_s", "longest_gap")),
               ("requests sent", "count", ("total", "requests")),
               ("deploy (CLI) time", "s", ("deploy_s",)))
    for name, unit, keys in metrics:
        rec = [v for r in results if (v := _get(_side(r, REC), *keys)) is not None]
        cmp = [v for r in results if (v := _get(_side(r, CMP), *keys)) is not None]
        if not rec and not cmp:
            continue
        row = Row("B4", f"rolling update under load: {name}", unit, rec=rec or None,
                  cmp=cmp or None)
        if keys[0] == "failed":
            row.target = "0 failed (reconciler)"
            row.met = bool(rec) and max(rec) == 0
        rows.append(row)
    if not any(r.scenario == "B4" for r in rows):
        rows.append(Row("B4", "rolling update under load", "count", target="0 failed",
                        note="edge_compare returned an unknown shape: see --json raw.B4"))


# --- B9 one change in `defaults` under load ------------------------------------------------------


def b9(bench: Bench) -> None:
    from tests.bench import defaults_change

    results: list[dict[str, Any]] = []
    for run in range(bench.cfg.runs):
        log(f"B9 run {run + 1}: defaults_change.compare()")
        results.append(defaults_change.compare(seconds=bench.cfg.b4_seconds))
    bench.raw["B9"] = results
    for name, unit, key in (("failed requests", "count", "failed"),
                            ("longest gap between successes", "s", "longest_gap_s"),
                            ("stateful services down at once (max, engine events)", "count",
                             "max_stateful_down_together"),
                            ("deploy (CLI) time", "s", "deploy_s")):
        rec = [v for r in results if (v := _get(_side(r, REC), key)) is not None]
        cmp = [v for r in results if (v := _get(_side(r, CMP), key)) is not None]
        row = bench.add(Row("B9", f"one `defaults` change under load: {name}", unit,
                            rec=rec or None, cmp=cmp or None))
        if key == "failed":
            row.target = "0 failed"
            row.met = bool(rec) and max(rec) == 0
        elif key == "max_stateful_down_together":
            row.target = "<= 1"
            row.met = bool(rec) and max(rec) <= 1


# --- B7 planning at scale without an engine ------------------------------------------------------


def run_measured(cmd: Sequence[str], *, env: dict[str, str], timeout_s: float = 600
                 ) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB of this child (wait4), exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def inprocess_plan(spec: Path) -> float:
    from reconciler.core.desired import build
    from reconciler.core.plans import compute
    from reconciler.core.snapshots import empty
    from reconciler.loading import load

    t0 = time.perf_counter()
    loaded = load(spec, strict=False)
    desired = build(loaded, b"k" * 32)
    compute(desired, empty(desired.project, engine_available=False))
    return time.perf_counter() - t0


def b7(bench: Bench) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{bench.root}/no-engine/docker.sock",
           "NO_COLOR": "1"}
    per_service: dict[int, float] = {}
    for n in bench.cfg.b7_sizes:
        d = bench.root / f"b7-{n}"
        gen.write_reconciler(gen.scale_stack(f"bench-b7-{n}", n), d / "spec")
        figures: dict[str, list[float]] = {"validate_s": [], "validate_mib": [],
                                           "plan_s": [], "plan_mib": [], "inproc_s": []}
        runs = bench.cfg.runs if n <= 1000 else 1  # 5,000: ~1 min per command
        for _ in range(runs):
            s, mib, rc = run_measured([*reconciler_cmd(), "validate", "--spec", str(d / "spec")],
                                      env=env)
            if rc != 0:
                raise RuntimeError(f"validate of {n} generated services failed ({rc})")
            figures["validate_s"].append(s)
            figures["validate_mib"].append(mib)
            s, mib, rc = run_measured([*reconciler_cmd(), "--dry-run", "--spec", str(d / "spec"),
                                       "--state-dir", str(d / "state")], env=env)
            if rc != 2:
                raise RuntimeError(f"dry-run of {n} generated services: exit {rc}, expected 2")
            figures["plan_s"].append(s)
            figures["plan_mib"].append(mib)
            figures["inproc_s"].append(inprocess_plan(d / "spec"))
        log(f"B7 {n}: validate {median(figures['validate_s']):.2f}s, dry-run "
            f"{median(figures['plan_s']):.2f}s, in-process {median(figures['inproc_s']):.2f}s")
        bench.add(Row("B7", f"validate, {n} services", "s", rec=figures["validate_s"]))
        r = bench.add(Row("B7", f"--dry-run (no engine), {n} services", "s",
                          rec=figures["plan_s"]))
        if n == 1000:
            r.target, r.met = "< 0.5 s", (r.rec_median or math.inf) < 0.5
        bench.add(Row("B7", f"  in-process load+plan, {n} services", "s",
                      rec=figures["inproc_s"]))
        bench.add(Row("B7", f"--dry-run peak RSS, {n} services", "MB", rec=figures["plan_mib"]))
        per_service[n] = (median(figures["plan_s"]) or 0) / n * 1000
        bench.raw[f"B7_{n}"] = figures
        shutil.rmtree(d, ignore_errors=True)
    for n, v in per_service.items():  # flat from size to size = linear growth
        bench.add(Row("B7", f"--dry-run time per service, {n} services", "ms", rec=[v]))
