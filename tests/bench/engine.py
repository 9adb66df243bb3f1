"""The benchmark's own view of the engine: a tiny Engine API client on the unix socket, a
counting unix-socket proxy in front of dockerd (engine calls of a child process), a counting
proxy around a `Runtime` (engine calls of an in-process pass), and cleanup by label.

Traffic goes only to the local dockerd socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DOCKER_SOCK = "/var/run/docker.sock"
COMPOSE_LABEL = "com.docker.compose.project"
RECONCILER_LABEL = "reconciler.project"


def socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else DOCKER_SOCK


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api(method: str, path: str, body: Any = None, *, timeout: float = 60.0,
        ok: Iterable[int] = (200, 201, 204, 304)) -> Any:
    conn = _UnixHTTP(socket_path(), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:200]!r}")
        return json.loads(raw) if raw.strip() else None
    finally:
        conn.close()


def _filters(label: str) -> str:
    return urllib.parse.quote(json.dumps({"label": [label]}))


def containers(label: str) -> list[dict[str, Any]]:
    return list(api("GET", f"/containers/json?all=1&filters={_filters(label)}"))


def healthy_count(label: str) -> tuple[int, int]:
    """(containers, running-and-healthy containers) carrying `label`, in one list call.
    The 20.10 list has no structured health, but its Status text ends in `(healthy)`."""
    cs = containers(label)
    good = sum(1 for c in cs if c.get("State") == "running"
               and "(healthy)" in (c.get("Status") or ""))
    return len(cs), good


def wait_all_healthy(label: str, expected: int, *, timeout_s: float, poll_s: float = 0.05,
                     started: float | None = None,
                     extra: Callable[[list[dict[str, Any]]], bool] | None = None) -> float:
    """Poll until exactly `expected` containers with `label` are running and healthy (and
    `extra(containers)` holds); returns the seconds since `started`. Bounded by `timeout_s`."""
    t0 = started if started is not None else time.perf_counter()
    deadline = time.perf_counter() + timeout_s
    while True:
        cs = containers(label)
        good = [c for c in cs if c.get("State") == "running"
                and "(healthy)" in (c.get("Status") or "")]
        if len(cs) == expected == len(good) and (extra is None or extra(cs)):
            return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{label}: {len(good)}/{expected} healthy after {timeout_s}s")
        time.sleep(poll_s)


def health_test(cid: str) -> list[str] | None:
    """The container's own health check as an exec command (None: it has none)."""
    test = ((api("GET", f"/containers/{cid}/json").get("Config") or {}).get("Healthcheck")
            or {}).get("Test") or []
    if test and test[0] == "CMD":
        return list(test[1:])
    if test and test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return None


def exec_ok(cid: str, cmd: list[str], *, timeout: float = 15.0) -> bool:
    """Run `cmd` in the container (exec, attached so the call returns when it exits): exit 0."""
    try:
        created = api("POST", f"/containers/{cid}/exec",
                      {"Cmd": cmd, "AttachStdout": True, "AttachStderr": True})
        conn = _UnixHTTP(socket_path(), timeout)
        try:
            conn.request("POST", f"/exec/{created['Id']}/start",
                         body=json.dumps({"Detach": False, "Tty": False}),
                         headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        finally:
            conn.close()
        return bool(api("GET", f"/exec/{created['Id']}/json").get("ExitCode") == 0)
    except (RuntimeError, OSError):
        return False


def wait_all_ready(label: str, expected: int, *, timeout_s: float, poll_s: float = 0.1,
                   started: float | None = None,
                   extra: Callable[[list[dict[str, Any]], set[str]], bool] | None = None
                   ) -> float:
    """Like `wait_all_healthy`, but a running container also counts as ready once its own
    health check command, run by exec, exits 0 (the app is ready; Docker's first probe comes
    only one `interval` after start). The same test for every tool. Each round execs the
    not-yet-ready containers in parallel and a success counts at the round's start, so the
    probes' own cost is not charged to the tool. Returns the seconds since `started`."""
    t0 = started if started is not None else time.perf_counter()
    deadline = time.perf_counter() + timeout_s
    passed: set[str] = set()
    tests: dict[str, list[str] | None] = {}
    while True:
        round_at = time.perf_counter()
        cs = containers(label)
        running = [c for c in cs if c.get("State") == "running"]
        todo = [c["Id"] for c in running if "(healthy)" not in (c.get("Status") or "")
                and c["Id"] not in passed]
        for cid in todo:
            if cid not in tests:
                tests[cid] = health_test(cid)
        probes = [(cid, tests[cid]) for cid in todo if tests[cid]]
        if probes:
            with ThreadPoolExecutor(max_workers=len(probes)) as pool:
                results = list(pool.map(lambda p: exec_ok(p[0], p[1]), probes))
            passed.update(cid for (cid, _), ok in zip(probes, results, strict=True) if ok)
        ready = {c["Id"] for c in running
                 if "(healthy)" in (c.get("Status") or "") or c["Id"] in passed}
        if len(cs) == expected == len(ready) and (extra is None or extra(cs, ready)):
            return round_at - t0
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{label}: {len(ready)}/{expected} ready after {timeout_s}s")
        time.sleep(poll_s)


def remove_by_label(label: str) -> int:
    """Force-remove every container, network and volume carrying `label`."""
    removed = 0
    for c in containers(label):
        with contextlib.suppress(RuntimeError, OSError):
            api("DELETE", f"/containers/{c['Id']}?force=1&v=0", ok=(204, 404))
            removed += 1
    for n in api("GET", f"/networks?filters={_filters(label)}") or []:
        with contextlib.suppress(RuntimeError, OSError):
            api("DELETE", f"/networks/{n['Id']}", ok=(204, 404))
    vols = (api("GET", f"/volumes?filters={_filters(label)}") or {}).get("Volumes") or []
    for v in vols:
        with contextlib.suppress(RuntimeError, OSError):
            api("DELETE", f"/volumes/{urllib.parse.quote(v['Name'])}?force=1", ok=(204, 404))
    return removed


def compose_down(project: str, compose_file: Path | None) -> None:
    """Force-remove the project's containers (a graceful `down` of 200 containers takes minutes
    on a busy 2-core host), then `docker-compose down -v` for its networks and volumes (bench
    volumes are throwaway), then anything left by label."""
    for c in containers(f"{COMPOSE_LABEL}={project}"):
        with contextlib.suppress(RuntimeError, OSError):
            api("DELETE", f"/containers/{c['Id']}?force=1", ok=(204, 404))
    if compose_file is not None and compose_file.exists():
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(["docker-compose", "-p", project, "-f", str(compose_file), "down",
                            "-v", "--remove-orphans", "-t", "1"],
                           capture_output=True, timeout=300, check=False,
                           env={**os.environ, "COMPOSE_PARALLEL_LIMIT": "256"})
    remove_by_label(f"{COMPOSE_LABEL}={project}")


# --- engine calls of an in-process pass ------------------------------------------------------


class CountingRuntime:
    """Wraps a `Runtime`; counts every call by method name. Duck-typed like the runtime."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.calls.clear()

    @property
    def total(self) -> int:
        return sum(v for k, v in self.calls.items() if k != "close")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        calls = self.calls
        if asyncio.iscoroutinefunction(attr):
            async def counted(*a: Any, **kw: Any) -> Any:
                calls[name] += 1
                return await attr(*a, **kw)
            return counted

        def counted_sync(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            return attr(*a, **kw)
        return counted_sync


# --- engine calls of a child process: a counting unix-socket proxy ----------------------------

_REQUEST = re.compile(rb"^(GET|POST|PUT|DELETE|HEAD) (/\S*) HTTP/1\.[01]$")
_ID = re.compile(r"/(containers|networks|volumes|exec|images)/(?!(?:json|create|prune)\b)[^/?]+")


def normalise(path: str) -> str:
    path = path.split("?", 1)[0]
    path = re.sub(r"^/v\d+\.\d+", "", path)
    return _ID.sub(lambda m: f"/{m.group(1)}/{{id}}", path)


class CountingSocketProxy:
    """A unix socket that forwards byte-for-byte to dockerd and counts HTTP requests by
    method and normalised path. Runs its own event loop in a thread. `DOCKER_HOST=unix://<path>`
    points a child at it."""

    def __init__(self, path: Path, upstream: str | None = None) -> None:
        self.path = path
        self.upstream = upstream or socket_path()
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._log: list[tuple[float, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()

    def counts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._counts)

    def log_since(self, t: float) -> list[tuple[float, str]]:
        with self._lock:
            return [e for e in self._log if e[0] >= t]

    def _record(self, method: bytes, path: bytes) -> None:
        key = f"{method.decode()} {normalise(path.decode(errors='replace'))}"
        with self._lock:
            self._counts[key] += 1
            if len(self._log) < 100_000:
                self._log.append((time.perf_counter(), key))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    scan: bool) -> None:
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if scan:
                    buf += chunk
                    *lines, buf = buf.split(b"\r\n")
                    for line in lines:
                        m = _REQUEST.match(line)
                        if m:
                            self._record(m.group(1), m.group(2))
                    if len(buf) > 65536:
                        buf = b""
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_w, scan=True),
                             self._pump(up_r, writer, scan=False))

    def start(self) -> CountingSocketProxy:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_unix_server(self._handle, path=str(self.path)))
            self._ready.set()
            loop.run_forever()
            self._server.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="bench-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("socket proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# --- a child process's cost --------------------------------------------------------------------


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def max_down_together(evts: list[dict[str, Any]], services: Iterable[str],
                      service_label: str) -> int:
    """The largest number of `services` without a running container at one moment, from
    `die`/`start` events (a service is down from a die that leaves none of its containers
    running until the next start)."""
    wanted = set(services)
    running: dict[str, set[str]] = {s: set() for s in wanted}
    seen_start: set[str] = set()
    worst = 0
    for e in evts:
        attrs = (e.get("Actor") or {}).get("Attributes") or {}
        svc = attrs.get(service_label)
        if svc not in wanted:
            continue
        cid = (e.get("Actor") or {}).get("ID", "")
        if e.get("Action") == "start":
            running[svc].add(cid)
            seen_start.add(svc)
        elif e.get("Action") == "die":
            running[svc].discard(cid)
            if not running[svc]:
                seen_start.add(svc)  # it was running before the window: count it down
        down = sum(1 for s in wanted if s in seen_start and not running[s])
        worst = max(worst, down)
    return worst
