"""Shared tools of the fault-injection suite: a tiny stack with a secret canary, CLI runs whose
output is collected (for the canary check), host facts (volume sentinels, state-dir
consistency), a fault-injecting unix-socket proxy in front of dockerd, and a private dockerd
that a test may restart without disturbing anyone else's engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.dockerkit import APP, NGINX, REPO, Host

#: The secret every env file of this suite carries; it must never leave the env file (and
#: the containers' own environment).
CANARY = "canary-7f3b9d1e5a2c4f60b8e1d2c3a4f5e6d7"
ENV_TEXT = f"FAULT_CANARY_SECRET={CANARY}\nFAULT_CANARY_TOKEN={CANARY}-tok\n"

#: Everything the suite saw leave the reconciler (source, text): CLI output, controller log
#: lines, plans, metrics, history, labels. Checked for the canary after every test.
OUTPUTS: list[tuple[str, str]] = []


def record(source: str, text: str) -> str:
    OUTPUTS.append((source, text))
    return text


# A tiny 3-service stack: a stop-first db with a named volume, a start-first exposed app, and
# the nginx edge whose upstreams the reconciler renders. Health checks are fast.
TINY = f"""
project: PROJECT
defaults:
  restart: unless-stopped
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 5s, retries: 3, start_period: 5s}}
  update: {{min_ready: 300ms, deadline: 60s, drain: 0s}}
  stop_grace_period: 1s
networks: {{backend: {{}}}}
volumes: {{data: {{}}}}
edge: {{service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    env_file: [secrets.env]
    environment: {{APP_NAME: db, APP_VERSION: "1"}}
    volumes: ["data:/data"]
    networks: [backend]
  api-gateway:
    tier: business
    image: {APP}:1.0
    env_file: [secrets.env]
    environment: {{APP_NAME: api, APP_VERSION: "1"}}
    networks: [backend]
    expose: {{port: 8080}}
    depends_on: [db]
  nginx:
    tier: external
    image: {NGINX}
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    networks: [backend]
    healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health"]}}
    stop_signal: SIGQUIT
"""

# Two app services, no edge: for engine-level scenarios where nginx adds nothing.
DUO = f"""
project: PROJECT
defaults:
  restart: unless-stopped
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 5s, retries: 3, start_period: 5s}}
  update: {{min_ready: 300ms, deadline: 60s, drain: 0s}}
  stop_grace_period: 1s
networks: {{backend: {{}}}}
volumes: {{data: {{}}}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    env_file: [secrets.env]
    environment: {{APP_NAME: db, APP_VERSION: "1"}}
    volumes: ["data:/data"]
    networks: [backend]
  web:
    tier: business
    image: {APP}:1.0
    env_file: [secrets.env]
    environment: {{APP_NAME: web, APP_VERSION: "1"}}
    networks: [backend]
    depends_on: [db]
"""


def write_stack(h: Host, text: str, *, spec: Path | None = None) -> Path:
    """The spec (PROJECT filled in), its 0600 env file with the canary, and nginx.conf."""
    directory = spec or h.spec
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    env = directory / "secrets.env"
    if not env.exists():
        env.write_text(ENV_TEXT)
        env.chmod(0o600)
    if "nginx.conf" in text and not (directory / "nginx.conf").exists():
        shutil.copy(REPO / "nginx" / "nginx.conf", directory / "nginx.conf")
    (directory / "stack.yaml").write_text(text.replace("PROJECT", h.project))
    return directory


def version(text: str, service: str, value: str, extra: str = "") -> str:
    """Change one service's APP_VERSION (and add env entries in `extra`, e.g. a fault)."""
    name = "api" if service == "api-gateway" else service
    old = f'APP_NAME: {name}, APP_VERSION: "1"}}'
    assert old in text, old
    return text.replace(old, f'APP_NAME: {name}, APP_VERSION: "{value}"{extra}}}')


def cli(h: Host, *args: str, env: dict[str, str] | None = None, spec: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`reconciler <args> --spec --state-dir` as a subprocess; output recorded for the canary."""
    cmd = [sys.executable, "-m", "reconciler.cli", *args, "--spec", str(spec or h.spec),
           "--state-dir", str(h.state)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})
    record(f"cli {' '.join(args)}", proc.stdout + proc.stderr)
    return proc


def docker_at(host_url: str | None, *args: str, timeout: float = 60,
              check: bool = True) -> str:
    env = {**os.environ}
    if host_url:
        env["DOCKER_HOST"] = host_url
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc.stdout


# --- host facts ------------------------------------------------------------------------------


def containers(h: Host, url: str | None = None) -> list[dict[str, Any]]:
    """Our project's containers, inspected (a container removed between the list and the
    inspect, as the reconciler may do at any time, makes it list again)."""
    for attempt in range(10):
        ids = docker_at(url, "ps", "-aq", "--no-trunc", "--filter",
                        f"label=reconciler.project={h.project}").split()
        if not ids:
            return []
        try:
            out = list(json.loads(docker_at(url, "inspect", *ids)))
        except RuntimeError:
            if attempt == 9:
                raise
            time.sleep(0.2)
            continue
        for c in out:
            record(f"labels {c['Name']}", json.dumps(c["Config"]["Labels"]))
        return out
    return []


def all_healthy(cs: list[dict[str, Any]]) -> bool:
    return bool(cs) and all(
        c["State"]["Running"] and not c["State"].get("Paused")
        and c["State"].get("Health", {}).get("Status", "healthy") == "healthy" for c in cs)


def no_duplicate(cs: list[dict[str, Any]]) -> bool:
    """No two containers of one generation (fingerprint) for one replica. (Two generations
    side by side is what an interrupted start-first update leaves; the next pass finishes.)"""
    keys = [(c["Config"]["Labels"]["reconciler.service"],
             c["Config"]["Labels"]["reconciler.replica"],
             c["Config"]["Labels"]["reconciler.fingerprint"]) for c in cs]
    return len(keys) == len(set(keys))


def one_per_replica(cs: list[dict[str, Any]]) -> bool:
    keys = [(c["Config"]["Labels"]["reconciler.service"],
             c["Config"]["Labels"]["reconciler.replica"]) for c in cs]
    return len(keys) == len(set(keys))


def volume_path(h: Host, name: str = "data", url: str | None = None) -> Path:
    info = json.loads(docker_at(url, "volume", "inspect", f"{h.project}_{name}"))[0]
    return Path(info["Mountpoint"])


def plant_sentinel(h: Host, url: str | None = None) -> bytes:
    data = os.urandom(64) + uuid.uuid4().bytes
    (volume_path(h, url=url) / "sentinel").write_bytes(data)
    return data


def sentinel(h: Host, url: str | None = None) -> bytes | None:
    try:
        return (volume_path(h, url=url) / "sentinel").read_bytes()
    except (OSError, RuntimeError):
        return None


def state_consistent(state: Path) -> list[str]:
    """Problems with the state dir: every file parses, nothing torn, no temp leftovers."""
    problems = []
    if not state.exists():
        return problems
    for path in state.rglob("*"):
        rel = path.relative_to(state)
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            problems.append(f"temp file left behind: {rel}")
        if not path.is_file() or (rel.parts[0] == "revisions" and path.name != "good.json"):
            continue
        if rel.parts[0] in ("edge-log", "backups"):
            continue  # written by nginx (JSON lines, possibly mid-line) / backup payloads
        if path.name == "host.key" and len(path.read_bytes()) != 32:
            problems.append("host.key is not 32 bytes")
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError:
                problems.append(f"{rel} does not parse")
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError:
                    problems.append(f"{rel}:{n} does not parse")
    good = state / "last-good.json"
    if good.exists():
        with contextlib.suppress(ValueError):
            if not Path(json.loads(good.read_text())["directory"]).is_dir():
                problems.append("last-good points at a missing spec copy")
    return problems


def history(state: Path) -> list[dict[str, Any]]:
    path = state / "history.jsonl"
    if not path.exists():
        return []
    text = record("history", path.read_text())
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def record_host(h: Host, url: str | None = None) -> None:
    """Labels of our containers and every state file except the spec copies: into OUTPUTS."""
    containers(h, url)
    if h.state.exists():
        for path in h.state.rglob("*"):
            if path.is_file() and "revisions" not in path.relative_to(h.state).parts \
                    and path.name != "host.key":
                record(f"state {path.name}", path.read_text(errors="replace"))


def canary_leaks() -> list[str]:
    return [f"{src}: ...{text[max(0, i - 80):i + 40]!r}..."
            for src, text in OUTPUTS if (i := text.find(CANARY)) >= 0]


@dataclass
class Figures:
    """Per-test figures, printed as one line (pytest -s or the captured output shows them)."""

    name: str
    trials: int = 0
    passed: int = 0
    worst_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def trial(self, ok: bool, seconds: float) -> None:
        self.trials += 1
        self.passed += int(ok)
        self.worst_s = max(self.worst_s, seconds)

    def show(self) -> None:
        print(f"FIGURES {self.name}: trials={self.trials} passed={self.passed} "
              f"worst_converge_s={self.worst_s:.2f}" + "".join(f"; {n}" for n in self.notes))


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


# --- a fault-injecting proxy in front of dockerd ----------------------------------------------


@dataclass
class Rule:
    """Apply `fault` to requests whose "METHOD /path" matches `pattern` (after the API version
    prefix), for the next `times` matches (-1: always)."""

    pattern: str
    fault: str  # "500" | "hang" | "reset" | "slow" | "drop"
    times: int = -1
    delay_s: float = 0.0
    hits: int = 0


class FaultProxy:
    """A unix-socket HTTP/1.1 proxy in front of dockerd. Connections can be cut, new ones
    refused (an engine outage), and requests matched by method+path regex answered with a
    500, hung, reset, or delayed. One request per upstream connection keeps matching exact."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path, self.upstream = path, upstream
        self.url = f"unix://{path}"
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.rules: list[Rule] = []
        self.refusing = False
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    # -- control (thread-safe) --
    def add(self, pattern: str, fault: str, *, times: int = -1, delay_s: float = 0.0) -> Rule:
        rule = Rule(pattern, fault, times, delay_s)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def requests(self, pattern: str) -> list[str]:
        with self.lock:
            return [r for r in self.seen if re.search(pattern, r)]

    def cut(self) -> None:
        def close_all() -> None:
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()
        self.loop.call_soon_threadsafe(close_all)

    def outage(self, on: bool) -> None:
        self.refusing = on
        if on:
            self.cut()

    # -- proxying --
    def _match(self, line: str) -> Rule | None:
        with self.lock:
            self.seen.append(line)
            for rule in self.rules:
                if rule.times != 0 and re.search(rule.pattern, line):
                    rule.hits += 1
                    if rule.times > 0:
                        rule.times -= 1
                    return rule
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                first = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target = [*first.split(" "), "", ""][:2]
                path = re.sub(r"^/v[0-9.]+", "", target)
                line = f"{method} {path}"
                length = 0
                chunked = False
                for h in head.split(b"\r\n")[1:]:
                    k, _, v = h.decode("latin-1").partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip() or 0)
                    if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                        chunked = True
                body = await reader.readexactly(length) if length else b""
                if chunked:
                    body = await self._read_chunked(reader)
                    head = re.sub(rb"(?i)transfer-encoding: *chunked\r\n", b"", head)
                    head = head[:-2] + f"Content-Length: {len(body)}\r\n\r\n".encode()
                rule = self._match(line)
                if rule is not None:
                    if rule.fault == "500":
                        msg = b'{"message":"injected fault"}'
                        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                                     b"application/json\r\nContent-Length: "
                                     + str(len(msg)).encode() + b"\r\n\r\n" + msg)
                        await writer.drain()
                        continue
                    if rule.fault == "hang":
                        await asyncio.sleep(3600)
                    if rule.fault == "reset":
                        writer.transport.abort()
                        return
                    if rule.fault == "slow":
                        await asyncio.sleep(rule.delay_s)
                    if rule.fault == "drop":  # forward, then reset before the answer
                        await self._forward(head, body, None)
                        writer.transport.abort()
                        return
                await self._forward(head, body, writer)
                return  # one request per connection: the client reconnects
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # a cancelled handler (proxy stop) ends quietly
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        out = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return out
            out += await reader.readexactly(size)
            await reader.readexactly(2)

    async def _forward(self, head: bytes, body: bytes,
                       writer: asyncio.StreamWriter | None) -> None:
        # ask for Connection: close so the upstream ends the answer (streams included)
        head = re.sub(rb"(?i)connection: *[^\r]*\r\n", b"", head)
        head = head[:-2] + b"Connection: close\r\n\r\n"
        up_r, up_w = await asyncio.open_unix_connection(self.upstream)
        self.writers.add(up_w)
        try:
            up_w.write(head + body)
            await up_w.drain()
            if writer is None:
                await up_r.read(65536)
                return
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self.writers.discard(up_w)
            with contextlib.suppress(Exception):
                up_w.close()

    def start(self) -> FaultProxy:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._client, path=str(self.path), limit=1 << 20),
            self.loop)
        self.server = fut.result(10)
        return self

    def stop(self) -> None:
        self.cut()

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks(self.loop)
                     if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()
            for _ in range(3):  # closed transports release their sockets on the next turns
                await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()  # an unclosed loop is a ResourceWarning (an error in tests)


# --- a private dockerd ------------------------------------------------------------------------


class PrivateEngine:
    """A second dockerd with its own socket, data and exec roots, running in its OWN network
    namespace, which a test may stop and start. The host's engine is never touched.

    The namespace is not optional: a dockerd in the host namespace started with
    `--bridge none` deletes the host engine's docker0 at startup, and a restarted one with
    its own bridge does so too (both seen here). In a namespace of its own it has its own
    docker0 and routes; its unix socket and volume directories are still plain files."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rcx-engine-", dir="/tmp"))
        self.sock = self.root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "dockerd.log"
        self.netns = f"rcx-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
                       check=True)

    def start(self, timeout: float = 30) -> float:
        t0 = time.monotonic()
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroups
                ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd", "--host", self.url,
                 "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "docker.pid"), "--iptables=false",
                 "--ip-masq=false"],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_for(self.answers, timeout, 0.1) is None:
            raise RuntimeError("private dockerd did not start:\n" + self.log.read_text()[-2000:])
        return time.monotonic() - t0

    def answers(self) -> bool:
        proc = subprocess.run(["docker", "-H", self.url, "version", "--format",
                               "{{.Server.Version}}"], capture_output=True, timeout=10,
                              check=False)
        return proc.returncode == 0

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def load_images(self, *refs: str) -> None:
        with subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE) as save:
            subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout,
                           check=True, capture_output=True, timeout=120)
            save.wait(60)  # leaving the block closes the pipe (an open one is a warning)

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = docker_at(self.url, "ps", "-aq", check=False).split()
                if ids:
                    docker_at(self.url, "rm", "-f", *ids, check=False)
            self.stop()
        # the engine's own mounts (overlay, netns) are gone after a clean stop
        for sub in ("exec", "data"):
            subprocess.run(["umount", "-R", str(self.root / sub)], capture_output=True,
                           check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_engine(*images: str) -> Iterator[PrivateEngine]:
    docker0 = Path("/sys/class/net/docker0").exists()
    engine = PrivateEngine()
    try:
        engine.start()
        assert Path("/sys/class/net/docker0").exists() or not docker0, "docker0 vanished"
        engine.load_images(*(images or (f"{APP}:1.0",)))
        yield engine
    finally:
        engine.destroy()
