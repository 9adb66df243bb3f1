"""Prometheus metrics of the controller, and its small HTTP endpoint.

`Metrics` owns every collector, registered on a registry the caller passes in (one per test,
one per process); the names are the contract of DESIGN.md §7 that the alert rules in
deploy/prometheus and the dashboard in deploy/grafana query. Known label values are
pre-created at 0, so a rate over a counter that never moved is 0 rather than "no data".
`serve` exposes `/metrics`, `/healthz` (the controller's loop heartbeat) and `/readyz` (after
the first pass) with aiohttp on the caller's loop.

`EdgeLog` reads the edge's JSON access log (nginx writes it into a directory of the state dir)
incrementally, bounded per read and robust to rotation and truncation; `Metrics.edge_records`
turns its lines into the `reconciler_edge_*` counters.

This module decides nothing about reconciling and performs no I/O besides serving HTTP and
reading that log. It never labels a series with a container id or anything derived from a
secret: services, tiers, actions, reasons, upstreams and revisions only, and hex ids longer
than a short commit are cut to 12.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as _pc_metrics

DEFAULT_TIERS: tuple[str, ...] = ("infrastructure", "core", "business", "external")
RESULTS: tuple[str, ...] = ("noop", "converged", "rolled_back", "failed", "invalid_spec")
ACTIONS: tuple[str, ...] = (
    "create", "replace", "recreate", "start", "remove", "create-network", "create-volume",
    "backup", "reload",
    "scale",  # Swarm only: a service's replica count changed
)
OUTCOMES: tuple[str, ...] = ("ok", "failed")
ROLLBACK_REASONS: tuple[str, ...] = (
    "health_gate", "pull_error", "edge_reload", "deadline", "crash_loop", "engine_error", "other",
)
DRIFT_KINDS: tuple[str, ...] = ("removed", "stopped", "dead", "oom", "unhealthy", "config")
GIT_RESULTS: tuple[str, ...] = ("ok", "unchanged", "failed", "non_fast_forward")
REPLICA_STATES: tuple[str, ...] = ("desired", "running", "healthy")
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
GATEWAY_CODES: tuple[str, ...] = ("502", "503", "504")
EDGE_LOCAL = "edge"  # requests the edge answered itself (static, health, 404, preflight)
MAX_UPSTREAMS = 32  # distinct upstream label values; more are counted as "other"

# Seconds-long steps up to the longest rollout a deadline allows (default deadline 300 s).
PASS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
WAIT_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 90, 120, 180, 300, 600)

_LONG_HEX = re.compile(r"[0-9a-fA-F]{20,}")
_MAX_LABEL = 64

def label_value(value: str) -> str:
    """A label value safe to export: long hex ids (container ids, full hashes) cut to 12
    characters, length capped, empty replaced by "none"."""
    value = _LONG_HEX.sub(lambda m: m.group(0)[:12], value.strip())
    return value[:_MAX_LABEL] or "none"


class Metrics:
    """Every metric of the controller, on an injected registry. Not thread-safe by design:
    it is updated and scraped from one asyncio loop."""

    def __init__(self, registry: CollectorRegistry, *, version: str,
                 tiers: Sequence[str] = DEFAULT_TIERS) -> None:
        # `x_created` series double the series count and carry nothing the dashboard uses.
        # (A process-wide switch in prometheus_client, read at scrape time.)
        _pc_metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = registry
        self._reconcile = Counter("reconciler_reconcile", "Reconcile passes by result.",
                                  ["result"], registry=r)
        self._duration = Histogram("reconciler_reconcile_duration_seconds",
                                   "Wall time of one reconcile pass (including any revert), "
                                   "by result.", ["result"],
                                   buckets=PASS_BUCKETS, registry=r)
        self._converged = Gauge("reconciler_converged",
                                "1 when the last pass left the host on the desired spec.",
                                registry=r)
        self._steps = Counter("reconciler_steps", "Executed plan steps by action and outcome.",
                              ["action", "outcome"], registry=r)
        self._tier = Histogram("reconciler_tier_duration_seconds",
                               "Time to converge one tier, health gates included.", ["tier"],
                               buckets=PASS_BUCKETS, registry=r)
        self._health_wait = Histogram("reconciler_health_wait_seconds",
                                      "Time a new replica took to pass its health gate.",
                                      ["service"], buckets=WAIT_BUCKETS, registry=r)
        self._rollbacks = Counter("reconciler_rollbacks",
                                  "Failed rollouts reverted to the last-good spec, by cause.",
                                  ["reason"], registry=r)
        self._drift = Counter("reconciler_drift", "Drift repaired, by kind.", ["kind"],
                              registry=r)
        self._replicas = Gauge("reconciler_service_replicas",
                               "Replicas per service: desired, running and healthy.",
                               ["service", "tier", "state"], registry=r)
        self._spec_info = Gauge("reconciler_spec_info",
                                "The candidate spec: git revision and fingerprint (value 1).",
                                ["revision", "fingerprint"], registry=r)
        self._last_good_info = Gauge("reconciler_last_good_info",
                                     "The last spec that converged (value 1).", ["revision"],
                                     registry=r)
        self._quarantined = Gauge("reconciler_quarantined_revisions",
                                  "Spec fingerprints quarantined after a failed rollout.",
                                  registry=r)
        self._last_success = Gauge("reconciler_last_success_timestamp_seconds",
                                   "Unix time of the last pass that ended converged or in sync.",
                                   registry=r)
        self._reconnects = Counter("reconciler_docker_events_reconnects",
                                   "Reconnects of the Docker event stream (each forces a "
                                   "full resync).", registry=r)
        self._git = Counter("reconciler_git_pull", "git pull attempts by result.", ["result"],
                            registry=r)
        self._build = Gauge("reconciler_build_info", "Version of the running reconciler.",
                            ["version"], registry=r)
        self._heartbeat = Gauge("reconciler_loop_heartbeat_timestamp_seconds",
                                "Unix time the controller loop last proved it is alive.",
                                registry=r)
        self._engine_calls = Counter("reconciler_engine_api_calls",
                                     "Docker Engine API calls by method and outcome.",
                                     ["method", "outcome"], registry=r)
        self._health_failures = Counter(
            "reconciler_health_check_failures",
            "Containers Docker marked unhealthy (a health probe failed `retries` times in a "
            "row), by service.", ["service"], registry=r)
        self._edge_requests = Counter(
            "reconciler_edge_requests",
            "Requests the nginx edge answered, by upstream and status class (its access log).",
            ["upstream", "status_class"], registry=r)
        self._edge_gateway_errors = Counter(
            "reconciler_edge_gateway_errors",
            "Edge requests that hit a 502, 503 or 504 (the edge's own, e.g. no healthy or "
            "unreachable upstream, or the upstream's), by upstream and code.",
            ["upstream", "code"], registry=r)
        self._edge_log_lines = Counter(
            "reconciler_edge_log_lines",
            "Lines read from the edge's access log: ok, or invalid (not the JSON format).",
            ["result"], registry=r)

        self._degraded = Gauge("reconciler_degraded_services",
                               "First deploy running degraded: services that failed to start "
                               "(state=failed) and services held back waiting on them "
                               "(state=waiting).", ["state"], registry=r)
        for state in ("failed", "waiting"):
            self._degraded.labels(state).set(0)
        for result in RESULTS:
            self._reconcile.labels(result)
            self._duration.labels(result)
        for line_result in ("ok", "invalid"):
            self._edge_log_lines.labels(line_result)
        self._upstreams: set[str] = set()
        self.edge_upstreams([EDGE_LOCAL])
        for action in ACTIONS:
            for outcome in OUTCOMES:
                self._steps.labels(action, outcome)
        for tier in tiers:
            self._tier.labels(label_value(tier))
        for reason in ROLLBACK_REASONS:
            self._rollbacks.labels(reason)
        for kind in DRIFT_KINDS:
            self._drift.labels(kind)
        for git_result in GIT_RESULTS:
            self._git.labels(git_result)
        self._build.labels(label_value(version)).set(1)
        self._rows: set[tuple[str, str]] = set()

    # --- one pass ------------------------------------------------------------------------

    def pass_done(self, result: str, seconds: float) -> None:
        result = _known(result, RESULTS, "result")
        self._reconcile.labels(result).inc()
        self._duration.labels(result).observe(max(seconds, 0.0))

    def step(self, action: str, outcome: str) -> None:
        self._steps.labels(_known(action, ACTIONS, "action"),
                           _known(outcome, OUTCOMES, "outcome")).inc()

    def tier(self, tier: str, seconds: float) -> None:
        self._tier.labels(label_value(tier)).observe(max(seconds, 0.0))

    def health_wait(self, service: str, seconds: float) -> None:
        self._health_wait.labels(label_value(service)).observe(max(seconds, 0.0))

    def rollback(self, reason: str) -> None:
        self._rollbacks.labels(reason if reason in ROLLBACK_REASONS else "other").inc()

    def drift(self, kind: str) -> None:
        self._drift.labels(_known(kind, DRIFT_KINDS, "kind")).inc()

    # --- state of the host ---------------------------------------------------------------

    def replicas(self, rows: Iterable[tuple[str, str, int, int, int]]) -> None:
        """(service, tier, desired, running, healthy) for every service of the spec; the
        series of services absent from `rows` are removed."""
        seen: set[tuple[str, str]] = set()
        for service, tier, desired, running, healthy in rows:
            key = (label_value(service), label_value(tier))
            seen.add(key)
            for state, value in zip(REPLICA_STATES, (desired, running, healthy), strict=True):
                self._replicas.labels(*key, state).set(value)
            self._health_wait.labels(key[0])  # the service's panel row exists from the start
            self._health_failures.labels(key[0])
        for service, tier in self._rows - seen:
            for state in REPLICA_STATES:
                self._replicas.remove(service, tier, state)
        self._rows = seen

    def degraded(self, *, failed: int, waiting: int) -> None:
        self._degraded.labels("failed").set(failed)
        self._degraded.labels("waiting").set(waiting)

    def spec(self, revision: str, fingerprint: str) -> None:
        self._spec_info.clear()
        self._spec_info.labels(label_value(revision), label_value(fingerprint)).set(1)

    def last_good(self, revision: str) -> None:
        self._last_good_info.clear()
        self._last_good_info.labels(label_value(revision)).set(1)

    def quarantined(self, count: int) -> None:
        self._quarantined.set(count)

    def converged(self, ok: bool) -> None:
        self._converged.set(1 if ok else 0)

    def last_success(self, unix_seconds: float) -> None:
        self._last_success.set(unix_seconds)

    # --- the controller itself -----------------------------------------------------------

    def heartbeat(self, unix_seconds: float) -> None:
        self._heartbeat.set(unix_seconds)

    def events_reconnect(self) -> None:
        self._reconnects.inc()

    def git_pull(self, result: str) -> None:
        self._git.labels(_known(result, GIT_RESULTS, "result")).inc()

    def engine_call(self, method: str, *, ok: bool = True) -> None:
        """One Docker Engine API call (`method` like "containers.list", never an id)."""
        self._engine_calls.labels(label_value(method), "ok" if ok else "failed").inc()

    def health_check_failed(self, service: str) -> None:
        """A container of `service` turned unhealthy (Docker's `health_status: unhealthy`)."""
        self._health_failures.labels(label_value(service)).inc()

    # --- the edge ------------------------------------------------------------------------

    def edge_upstreams(self, names: Iterable[str]) -> None:
        """Upstream label values to pre-create at 0 (the services the spec exposes)."""
        for name in names:
            name = label_value(name)
            if name in self._upstreams or len(self._upstreams) >= MAX_UPSTREAMS:
                continue
            self._upstreams.add(name)
            for cls in STATUS_CLASSES:
                self._edge_requests.labels(name, cls)
            for code in GATEWAY_CODES:
                self._edge_gateway_errors.labels(name, code)

    def edge_records(self, lines: Iterable[bytes]) -> None:
        """Count access-log lines (see `edge_record`). An upstream label value not seen
        before is added while fewer than MAX_UPSTREAMS exist, else counted as "other"."""
        for line in lines:
            record = edge_record(line)
            if record is None:
                self._edge_log_lines.labels("invalid").inc()
                continue
            self._edge_log_lines.labels("ok").inc()
            upstream, status_class, gateway_code = record
            if upstream not in self._upstreams:
                self.edge_upstreams([upstream])
                if upstream not in self._upstreams:
                    upstream = "other"
            self._edge_requests.labels(upstream, status_class).inc()
            if gateway_code:
                self._edge_gateway_errors.labels(upstream, gateway_code).inc()


_UPSTREAM = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def edge_record(line: bytes) -> tuple[str, str, str | None] | None:
    """(upstream, status class, gateway code or None) of one JSON access-log line of
    nginx/nginx.conf, or None when the line is not that format. Pure.

    The gateway code is what went wrong between the edge and the upstream, even when the
    client got the friendly 503 instead: the last of `upstream_status` when it is 502/503/504
    (nginx records 502 for a refused connection, 504 for a timeout), else the response
    status when that is 502/503/504 (e.g. no healthy upstream at all)."""
    try:
        doc = json.loads(line)
        status = int(doc["status"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(doc, dict) or not 100 <= status <= 599:
        return None
    upstream = str(doc.get("upstream") or "") or EDGE_LOCAL
    if not _UPSTREAM.match(upstream):
        upstream = "other"
    tried = [part.strip() for part in str(doc.get("upstream_status") or "").replace(
        ":", ",").split(",") if part.strip()]
    code: str | None = None
    if tried and tried[-1] in GATEWAY_CODES:
        code = tried[-1]
    elif str(status) in GATEWAY_CODES:
        code = str(status)
    return upstream, f"{status // 100}xx", code


class EdgeLog:
    """Reads new lines of the edge's access log, file position kept between reads.

    Starts at the end of an existing file (counters are per process: lines from before the
    start are not counted twice after a restart). A rotation (the path names a new file)
    finishes the old file first; a truncation (the file shrank) starts over at 0. At most
    `max_bytes` per read; the rest is read next time. A line longer than `max_line` is
    dropped. When a read reached the end of a file larger than `truncate_at`, the file is
    truncated to 0 (nginx appends with O_APPEND, so it goes on writing at the new end): the
    log stays bounded without signals to nginx, at the cost of the lines written in the
    moment between that read and the truncation."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 4 << 20,
                 max_line: int = 16 << 10, truncate_at: int = 64 << 20) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.truncate_at = truncate_at
        self._file: Any = None
        self._ino: int | None = None
        self._partial = b""
        self._started = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._ino, self._partial = None, None, b""

    def _open(self, *, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open between reads
        except OSError:
            return False
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(st.st_size)
        self._file, self._ino, self._partial = f, st.st_ino, b""
        return True

    def read(self) -> list[bytes]:
        """Complete new lines (without the newline), at most about `max_bytes` of them."""
        if self._file is None:
            if not self._open(at_end=not self._started):
                self._started = True  # a file that appears later is read from its start
                return []
            self._started = True
        lines: list[bytes] = []
        budget = self.max_bytes
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        f = self._file
        if st is not None and st.st_ino == self._ino and st.st_size < f.tell():
            f.seek(0)  # truncated (copytruncate or ours): start over
            self._partial = b""
        budget -= self._drain(f, lines, budget)
        rotated = st is not None and st.st_ino != self._ino
        if rotated and budget > 0 and f.tell() >= os.fstat(f.fileno()).st_size:
            self.close()  # the old file is finished: go on with the new one from its start
            if self._open(at_end=False):
                budget -= self._drain(self._file, lines, budget)
        f = self._file
        if (f is not None and not rotated and budget > 0 and st is not None
                and f.tell() >= st.st_size > self.truncate_at and not self._partial):
            try:
                os.truncate(self.path, 0)
                f.seek(0)
            except OSError:
                pass
        return lines

    def _drain(self, f: Any, lines: list[bytes], budget: int) -> int:
        data = f.read(max(budget, 0))
        if not data:
            return 0
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        if len(self._partial) > self.max_line:
            self._partial = b""  # an over-long line: dropped (its rest is dropped below)
        for chunk in chunks:
            if chunk and len(chunk) <= self.max_line:
                lines.append(chunk)
        return len(data)


def _known(value: str, allowed: Sequence[str], what: str) -> str:
    value = str(value)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


# --- HTTP ----------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _metrics_handler(registry: CollectorRegistry) -> Handler:
    try:
        from prometheus_client.aiohttp import make_aiohttp_handler
    except ImportError:  # prometheus-client < 0.22
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        return handler
    return make_aiohttp_handler(registry)


def _probe(check: Callable[[], bool], what: str) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        try:
            ok = bool(check())
        except Exception as exc:  # a broken check is a failing check, not a 500 trace
            return web.Response(status=503, text=f"{what}: check failed: {type(exc).__name__}\n")
        return web.Response(status=200 if ok else 503, text=f"{what}: {'ok' if ok else 'no'}\n")

    return handler


async def serve(metrics: Metrics, host: str, port: int, *, healthy: Callable[[], bool],
                ready: Callable[[], bool]) -> web.AppRunner:
    """Serve /metrics (from the registry `metrics` was created on), /healthz and /readyz on
    host:port (port 0 picks a free one: read it from `runner.addresses`). The caller stops
    it with `await runner.cleanup()`."""
    reg = metrics.registry
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler(reg))
    app.router.add_get("/healthz", _probe(healthy, "healthz"))
    app.router.add_get("/readyz", _probe(ready, "readyz"))
    app.router.add_get("/", _index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _index(_: web.Request) -> web.Response:
    return web.Response(text="reconciler: /metrics /healthz /readyz\n")


SWARM_TASK_STATES: tuple[str, ...] = ("running", "starting", "failed", "lost")


class SwarmMetrics:
    """The Swarm engine's own series, next to `Metrics` on the same registry:
    `reconciler_engine_info{engine}`, `reconciler_swarm_tasks{service,node,state}` (tasks
    Swarm wants running, by where they run and how far they are: running, starting — any
    state before running —, failed, lost: on a node that is down) and
    `reconciler_swarm_nodes{node,role,state,availability}` (1 per node)."""

    def __init__(self, registry: CollectorRegistry, *, engine: str = "swarm") -> None:
        self._engine = Gauge("reconciler_engine_info", "The engine the reconciler drives.",
                             ["engine"], registry=registry)
        self._engine.labels(label_value(engine)).set(1)
        self._tasks = Gauge("reconciler_swarm_tasks",
                            "Swarm tasks of the spec's services, by node and state.",
                            ["service", "node", "state"], registry=registry)
        self._nodes = Gauge("reconciler_swarm_nodes", "Swarm nodes (1 each) by role, state "
                            "(ready, down, ...) and availability (active, pause, drain).",
                            ["node", "role", "state", "availability"], registry=registry)
        self._task_keys: set[tuple[str, str, str]] = set()
        self._node_keys: set[tuple[str, str, str, str]] = set()

    def tasks(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """(service, node, state) -> tasks; series absent from `counts` are removed."""
        keys = {(label_value(s), label_value(n), _known(st, SWARM_TASK_STATES, "task state")):
                v for (s, n, st), v in counts.items()}
        for key, value in keys.items():
            self._tasks.labels(*key).set(value)
        for key in self._task_keys - set(keys):
            self._tasks.remove(*key)
        self._task_keys = set(keys)

    def nodes(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """(hostname, role, state, availability) for every node of the cluster."""
        keys = {tuple(label_value(v) for v in row) for row in rows}
        for key in keys:
            self._nodes.labels(*key).set(1)
        for key in self._node_keys - keys:
            self._nodes.remove(*key)
        self._node_keys = keys  # type: ignore[assignment]
