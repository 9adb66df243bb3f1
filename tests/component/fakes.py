"""`FakeRuntime`: an in-memory Docker engine implementing `reconciler.runtimes.Runtime`.

It answers with the same JSON shapes as Docker 20.10 (API 1.41) for every field the reconciler
reads, raises the same error types as `DockerRuntime`, and is checked against the real engine
by the contract suite (`tests/contract_cases.py`), so it cannot drift silently.

No real sleeps and no wall clock: time is `fake.now` (seconds, advanced by `fake.advance()`),
and every state change happens synchronously inside the call (or the test's scripting call)
that causes it. Scripting:

- `images` (present refs) and `pullable` (refs `pull_image` can fetch); `behaviours[ref]`
  an `ImageBehaviour` (health on start, exit on start, exit code on stop).
- `set_health(cid, status)`, `crash(cid, exit_code)`, `oom(cid)`, `advance(seconds)`.
- `fail_next(method, exc, times=1)` raises `exc` at the next call(s) of `method`.
- `calls` (a Counter per protocol method) and `write_calls` (engine-mutating calls).
- `seed_container(...)` puts a container on the "host" without counting as a call (state the
  test starts from, e.g. a foreign container or a leftover of a crashed run).
- `exec_results[(cmd...)]` / `exec_handler` script `exec_in_container`; otherwise a tiny
  shell understands `echo`, `exit N`, `true`, `false`, `sleep` (no-op) in `sh -c` scripts;
  any other command succeeds with no output. The same interpreter runs a container's
  `sh -c` Cmd on start: its echoes go to the logs, and a script that ends makes the
  container exit (with `exit N`'s code), while one that reaches an unknown statement
  (`trap`, `while`...) keeps running.
- `exec_stream`: `stream_handler(container, cmd, stdin)` -> (exit code, stdout bytes, stderr)
  scripts it; otherwise `cat` echoes stdin and the tiny shell's echoes are stdout.
  `get_archive`/`put_archive` keep files per container in `FakeContainer.files`.
- `drop_event_streams()` ends every open event stream, as a dropped connection would.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import hashlib
import io
import itertools
import tarfile
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from reconciler.runtimes import (
    JSON,
    MAX_LOG_LINE,
    BuildFailed,
    Conflict,
    EngineEvent,
    ExecResult,
    ImageUnavailable,
    NotFound,
)

__all__ = ["WRITE_METHODS", "FakeContainer", "FakeEventStream", "FakeRuntime", "ImageBehaviour"]

Health = Literal["healthy", "unhealthy", "starting"]

WRITE_METHODS = frozenset({
    "create_container", "start_container", "stop_container", "remove_container",
    "kill_container", "connect_network", "pull_image", "create_network", "create_volume",
    "build_image", "tag_image",
})

_ZERO_TIME = "0001-01-01T00:00:00Z"
_SIGNALS = {"KILL": 9, "TERM": 15, "INT": 2, "HUP": 1, "QUIT": 3, "USR1": 10, "USR2": 12}
_NON_FATAL_SIGNALS = {"HUP", "USR1", "USR2", "WINCH"}


@dataclass(frozen=True, slots=True)
class ImageBehaviour:
    """How containers of one image behave in the fake.

    health: the health status a container WITH a Healthcheck reaches on start.
    exit_on_start: when set, the container exits with this code right after starting.
    stop_exit_code: the exit code after `stop_container` (a clean TERM handler: 0).
    oom_on_start: the container is killed by the kernel right after starting (a memory hog).
    ready_after: with a Healthcheck, the app answers its health command only this many
        seconds after start: an exec of the health command fails before, succeeds after,
        and Docker's own status turns healthy at its first probe (every `Interval`) after.
    """

    health: Health = "healthy"
    exit_on_start: int | None = None
    stop_exit_code: int = 0
    oom_on_start: bool = False
    ready_after: float | None = None


def normalise_ref(ref: str) -> str:
    """`busybox` -> `busybox:latest`, as the engine resolves it."""
    if "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def human_duration(seconds: float) -> str:
    """Docker's `units.HumanDuration`, used in the list's Status column."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _rfc3339(t: float) -> str:
    whole = int(t)
    nanos = min(round((t - whole) * 1e9), 999_999_999)
    base = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=whole)
    return base.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _mini_shell(script: str) -> tuple[list[str], int | None, bool]:
    """Run a tiny subset of sh: returns (output lines, exit code, finished).

    `finished` is False when an unknown statement was reached (a real shell would keep
    going: a loop, a trap, a server); the exit code is then the status so far.
    """
    out: list[str] = []
    status = 0
    for raw in script.split(";"):
        stmt = raw.strip()
        if not stmt:
            continue
        words = stmt.split()
        cmd = words[0]
        if cmd == "echo":
            text = stmt[len("echo"):].strip()
            for redirect in (">&2", "1>&2"):
                if text.endswith(redirect):
                    text = text[: -len(redirect)].strip()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
            out.append(text)
            status = 0
        elif cmd == "exit":
            code = int(words[1]) if len(words) > 1 else status
            return out, code, True
        elif cmd == "true":
            status = 0
        elif cmd == "false":
            status = 1
        elif cmd == "sleep":
            status = 0
        else:
            return out, status, False
    return out, status, True


@dataclass(slots=True)
class FakeContainer:
    id: str
    name: str
    config: JSON
    host_config: JSON
    created: float
    image_id: str
    state: str = "created"  # created | running | exited | paused | restarting | dead
    exit_code: int = 0
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    health: Health | None = None
    failing_streak: int = 0
    health_log: list[JSON] = field(default_factory=list)
    networks: dict[str, JSON] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # absolute path -> content (archives)
    log_times: list[float] = field(default_factory=list)  # when each line of `logs` was written
    restart_at: float | None = None  # a pending restart-policy restart (fake clock)

    @property
    def labels(self) -> dict[str, str]:
        labels = self.config.get("Labels") or {}
        return dict(labels)

    @property
    def has_healthcheck(self) -> bool:
        hc = self.config.get("Healthcheck")
        if not isinstance(hc, dict):
            return False
        test = hc.get("Test") or []
        return bool(test) and test[0] != "NONE"


class FakeEventStream:
    """A subscription to the fake's events; same contract as `runtimes.EventStream`."""

    def __init__(self, runtime: FakeRuntime, label: str) -> None:
        self._runtime = runtime
        self.label = label
        self._queue: deque[EngineEvent | None] = deque()
        self._wakeup: asyncio.Event | None = None
        self._connected = False
        self._closed = False

    def __aiter__(self) -> FakeEventStream:
        return self

    async def connect(self) -> None:
        if self._connected or self._closed:
            return
        self._runtime._enter("events.connect")
        self._connected = True
        self._wakeup = asyncio.Event()
        self._runtime._streams.append(self)

    async def __anext__(self) -> EngineEvent:
        await self.connect()
        while True:
            if self._closed and not self._queue:
                raise StopAsyncIteration
            if self._queue:
                item = self._queue.popleft()
                if item is None:
                    self._close()
                    raise StopAsyncIteration
                return item
            assert self._wakeup is not None
            self._wakeup.clear()
            try:
                await self._wakeup.wait()
            except asyncio.CancelledError:
                self._close()
                raise

    def _push(self, item: EngineEvent | None) -> None:
        if self._closed:
            return
        self._queue.append(item)
        if self._wakeup is not None:
            self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        self._queue.clear()
        if self in self._runtime._streams:
            self._runtime._streams.remove(self)
        if self._wakeup is not None:
            self._wakeup.set()

    async def aclose(self) -> None:
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed


def _label_matches(labels: Mapping[str, str], selector: str) -> bool:
    key, sep, value = selector.partition("=")
    if key not in labels:
        return False
    return not sep or labels[key] == value


class FakeRuntime:
    """An in-memory engine; see the module docstring for how to script it."""

    def __init__(self, *, images: set[str] | None = None, pullable: set[str] | None = None,
                 now: float = 1_700_000_000.0) -> None:
        self.images: set[str] = {normalise_ref(r) for r in images or ()}
        self.pullable: set[str] = {normalise_ref(r) for r in pullable or ()}
        self.behaviours: dict[str, ImageBehaviour] = {}
        self.now = now
        self.calls: Counter[str] = Counter()
        self.exec_results: dict[tuple[str, ...], ExecResult] = {}
        self.exec_handler: Callable[[FakeContainer, Sequence[str]], ExecResult | None] | None = (
            None
        )
        self.exec_log: list[tuple[str, tuple[str, ...]]] = []
        # image builds: refs built (in order), and refs whose build fails
        self.built: list[str] = []
        self.failing_builds: set[str] = set()
        self.stream_handler: Callable[[FakeContainer, tuple[str, ...], bytes | None],
                                      tuple[int, bytes, str]] | None = None
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, JSON] = {}
        self.volumes: dict[str, JSON] = {}
        self.closed = False
        self._failures: dict[str, deque[BaseException]] = {}
        self._streams: list[FakeEventStream] = []
        self._ids = itertools.count(1)
        self._event_seq = itertools.count()
        self._log_waiters: list[asyncio.Event] = []

    # ------------------------------------------------------------------ scripting

    def advance(self, seconds: float) -> None:
        """Move the fake clock; restart-policy restarts that fall due happen now."""
        self.now += seconds
        for c in list(self.containers.values()):
            due = self._docker_healthy_at(c)
            if due is not None and due <= self.now:
                self._set_health(c, "healthy")
            if c.state == "restarting" and c.restart_at is not None and c.restart_at <= self.now:
                c.restart_at = None
                c.state = "exited"
                self._start(c)

    def _app_ready(self, c: FakeContainer) -> bool | None:
        """Whether a `ready_after` app answers its health command now (None: not modelled)."""
        ready_after = self.behaviour(str(c.config.get("Image", ""))).ready_after
        if ready_after is None or c.state != "running" or c.started_at is None:
            return None
        return self.now - c.started_at >= ready_after

    def _docker_healthy_at(self, c: FakeContainer) -> float | None:
        """When Docker's own probe (every `Interval`) first sees a `ready_after` app ready."""
        ready_after = self.behaviour(str(c.config.get("Image", ""))).ready_after
        if (ready_after is None or c.state != "running" or c.health != "starting"
                or c.started_at is None):
            return None
        interval = int((c.config.get("Healthcheck") or {}).get("Interval") or 30e9) / 1e9
        ticks = max(1, -(-ready_after // interval))
        return c.started_at + ticks * interval

    def _is_health_command(self, c: FakeContainer, cmd: Sequence[str]) -> bool:
        test = list((c.config.get("Healthcheck") or {}).get("Test") or [])
        if test[:1] == ["CMD"]:
            return list(cmd) == test[1:]
        return test[:1] == ["CMD-SHELL"] and list(cmd) == ["/bin/sh", "-c", *test[1:]]

    @property
    def start_interval(self) -> bool:
        """Like the engine here (API 1.41): no `StartInterval`."""
        return False

    def behaviour(self, ref: str) -> ImageBehaviour:
        return self.behaviours.get(normalise_ref(ref), ImageBehaviour())

    def set_behaviour(self, ref: str, behaviour: ImageBehaviour) -> None:
        self.behaviours[normalise_ref(ref)] = behaviour

    def fail_next(self, method: str, exc: BaseException, *, times: int = 1) -> None:
        self._failures.setdefault(method, deque()).extend([exc] * times)

    @property
    def write_calls(self) -> int:
        return sum(n for m, n in self.calls.items() if m in WRITE_METHODS)

    def container(self, ref: str) -> FakeContainer:
        """A container by id, unique id prefix or name (as the engine resolves it)."""
        if ref in self.containers:
            return self.containers[ref]
        name = ref.lstrip("/")
        for c in self.containers.values():
            if c.name == name:
                return c
        matches = [c for cid, c in self.containers.items() if ref and cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"No such container: {ref}")

    def set_health(self, container_id: str, status: Health) -> None:
        c = self.container(container_id)
        if c.state != "running" or not c.has_healthcheck:
            raise ValueError(f"{c.name}: health needs a running container with a Healthcheck")
        self._set_health(c, status)

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        """The main process exits by itself; the restart policy applies."""
        c = self.container(container_id)
        if c.state != "running":
            raise ValueError(f"{c.name} is not running")
        self._exit(c, exit_code)
        self._maybe_restart(c)

    def oom(self, container_id: str) -> None:
        c = self.container(container_id)
        if c.state != "running":
            raise ValueError(f"{c.name} is not running")
        c.oom_killed = True
        self._emit(c, "oom")
        self._exit(c, 137)
        self._maybe_restart(c)

    def append_log(self, container_id: str, *lines: str) -> None:
        self._log(self.container(container_id), lines)

    def _log(self, c: FakeContainer, lines: Sequence[str]) -> None:
        c.logs.extend(lines)
        c.log_times.extend(self.now for _ in lines)
        self._wake_logs()

    def _wake_logs(self) -> None:
        for waiter in self._log_waiters:
            waiter.set()

    def drop_event_streams(self) -> None:
        for stream in list(self._streams):
            stream._push(None)

    def seed_container(self, name: str, config: JSON, *, running: bool = True) -> str:
        """Put a container on the host without counting calls (initial state of a test)."""
        ref = normalise_ref(str(config.get("Image", "")))
        self.images.add(ref)
        c = self._create(name, config)
        if running:
            self._start(c)
        return c.id

    # ------------------------------------------------------------------ internals

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        queue = self._failures.get(method)
        if queue:
            raise queue.popleft()

    def _new_id(self) -> str:
        n = next(self._ids)
        return hashlib.sha256(f"fake-{n}".encode()).hexdigest()

    def _emit(self, c: FakeContainer, action: str, **extra: str) -> None:
        attributes = {**c.labels, "image": str(c.config.get("Image", "")), "name": c.name,
                      **extra}
        event = EngineEvent(action=action, container_id=c.id, attributes=attributes,
                            time_nano=int(self.now * 1e9) + next(self._event_seq))
        for stream in list(self._streams):
            if _label_matches(c.labels, stream.label):
                stream._push(event)

    def _create(self, name: str, config: JSON) -> FakeContainer:
        if any(c.name == name for c in self.containers.values()):
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container'
            )
        ref = str(config.get("Image", ""))
        if normalise_ref(ref) not in self.images:
            raise NotFound(f"No such image: {ref}")
        # Like the engine, create does not check networks; start does.
        endpoints = dict((config.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        body = copy.deepcopy(config)
        host_config = dict(body.pop("HostConfig", None) or {})
        body.pop("NetworkingConfig", None)
        if endpoints and host_config.get("NetworkMode") in (None, "", "default"):
            host_config["NetworkMode"] = next(iter(endpoints))
        host_config.setdefault("NetworkMode", "default")
        body.setdefault("Labels", {})
        body.setdefault("Env", [])
        c = FakeContainer(
            id=self._new_id(), name=name, config=body, host_config=host_config,
            created=self.now, image_id="sha256:" + hashlib.sha256(
                normalise_ref(ref).encode()).hexdigest(),
        )
        self.containers[c.id] = c
        for i, (net, endpoint) in enumerate(endpoints.items()):
            aliases = list((endpoint or {}).get("Aliases") or [])
            if i > 0:  # connected after create: the engine adds the short id
                aliases.append(c.id[:12])
            c.networks[net] = self._endpoint(net, aliases)
        self._emit(c, "create")
        return c

    def _endpoint(self, net: str, aliases: list[str]) -> JSON:
        return {"IPAMConfig": None, "Links": None, "Aliases": aliases,
                "NetworkID": "", "EndpointID": "", "Gateway": "",
                "IPAddress": "", "IPPrefixLen": 0, "MacAddress": ""}

    def _start(self, c: FakeContainer) -> None:
        if c.state == "running":
            return
        for net in c.networks:
            if net not in self.networks:
                raise NotFound(f"network {net} not found")
        c.state = "running"
        c.started_at = self.now
        c.exit_code = 0
        c.oom_killed = False
        for endpoint in c.networks.values():
            if c.id[:12] not in endpoint["Aliases"]:
                endpoint["Aliases"].append(c.id[:12])
        self._emit(c, "start")
        behaviour = self.behaviour(str(c.config.get("Image", "")))
        cmd = c.config.get("Cmd") or []
        if behaviour.exit_on_start is not None:
            self._exit(c, behaviour.exit_on_start)
            self._maybe_restart(c)
            return
        if behaviour.oom_on_start:
            c.oom_killed = True
            self._emit(c, "oom")
            self._exit(c, 137)
            self._maybe_restart(c)
            return
        if len(cmd) >= 3 and cmd[0] in ("sh", "/bin/sh") and cmd[1] == "-c":
            lines, code, finished = _mini_shell(str(cmd[2]))
            self._log(c, lines)
            if finished:
                self._exit(c, code or 0)
                self._maybe_restart(c)
                return
        if c.has_healthcheck:
            c.health = "starting"
            c.failing_streak = 0
            c.health_log = []
            if behaviour.health != "starting" and behaviour.ready_after is None:
                self._set_health(c, behaviour.health)
        else:
            c.health = None

    def _set_health(self, c: FakeContainer, status: Health) -> None:
        previous = c.health
        c.health = status
        if status == "healthy":
            c.failing_streak = 0
            c.health_log.append(self._probe(0))
        elif status == "unhealthy":
            retries = int((c.config.get("Healthcheck") or {}).get("Retries") or 3)
            c.failing_streak = max(c.failing_streak + 1, retries)
            c.health_log.append(self._probe(1))
        c.health_log = c.health_log[-5:]
        if status != previous and status != "starting":
            self._emit(c, f"health_status: {status}")

    def _probe(self, code: int) -> JSON:
        return {"Start": _rfc3339(self.now), "End": _rfc3339(self.now), "ExitCode": code,
                "Output": ""}

    def _exit(self, c: FakeContainer, code: int) -> None:
        c.state = "exited"
        c.exit_code = code
        c.finished_at = self.now
        if c.health is not None:
            c.health = "unhealthy" if c.health == "unhealthy" else c.health
        self._emit(c, "die", exitCode=str(code))
        self._wake_logs()

    def _maybe_restart(self, c: FakeContainer) -> None:
        policy = c.host_config.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        maximum = int(policy.get("MaximumRetryCount") or 0)
        again = name in ("always", "unless-stopped") or (
            name == "on-failure" and c.exit_code != 0
            and (maximum == 0 or c.restart_count < maximum)
        )
        if again:
            # like the engine: a doubling delay (0.3 s ... 3.4 s), never a tight loop
            c.restart_count += 1
            c.state = "restarting"
            c.restart_at = self.now + min(0.3 * 2 ** (c.restart_count - 1), 3.4)

    def _health_suffix(self, c: FakeContainer) -> str:
        if c.state != "running" or c.health is None:
            return ""
        if c.health == "starting":
            return " (health: starting)"
        return f" ({c.health})"

    def _status(self, c: FakeContainer) -> str:
        if c.state == "running":
            up = human_duration(self.now - (c.started_at or self.now))
            return f"Up {up}{self._health_suffix(c)}"
        if c.state == "exited":
            ago = human_duration(self.now - (c.finished_at or self.now))
            return f"Exited ({c.exit_code}) {ago} ago"
        if c.state == "created":
            return "Created"
        if c.state == "restarting":
            ago = human_duration(self.now - (c.finished_at or self.now))
            return f"Restarting ({c.exit_code}) {ago} ago"
        return c.state.capitalize()

    def _list_item(self, c: FakeContainer) -> JSON:
        return {
            "Id": c.id,
            "Names": [f"/{c.name}"],
            "Image": c.config.get("Image", ""),
            "ImageID": c.image_id,
            "Command": " ".join(str(x) for x in c.config.get("Cmd") or []),
            "Created": int(c.created),
            "Ports": [],
            "Labels": dict(c.labels),
            "State": c.state,
            "Status": self._status(c),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "default")},
            "NetworkSettings": {"Networks": copy.deepcopy(c.networks)},
            "Mounts": [],
        }

    def _inspect(self, c: FakeContainer) -> JSON:
        state: JSON = {
            "Status": c.state,
            "Running": c.state in ("running", "restarting"),  # as Docker reports it
            "Paused": c.state == "paused",
            "Restarting": c.state == "restarting",
            "OOMKilled": c.oom_killed,
            "Dead": c.state == "dead",
            "Pid": 4242 if c.state == "running" else 0,
            "ExitCode": c.exit_code,
            "Error": "",
            "StartedAt": _rfc3339(c.started_at) if c.started_at is not None else _ZERO_TIME,
            "FinishedAt": _rfc3339(c.finished_at) if c.finished_at is not None else _ZERO_TIME,
        }
        if c.has_healthcheck:
            state["Health"] = {
                "Status": c.health or "starting",
                "FailingStreak": c.failing_streak,
                "Log": copy.deepcopy(c.health_log),
            }
        config = copy.deepcopy(c.config)
        config.setdefault("Cmd", None)
        return {
            "Id": c.id,
            "Created": _rfc3339(c.created),
            "Name": f"/{c.name}",
            "Image": c.image_id,
            "RestartCount": c.restart_count,
            "State": state,
            "Config": config,
            "HostConfig": copy.deepcopy(c.host_config),
            "NetworkSettings": {"Networks": copy.deepcopy(c.networks)},
            "Mounts": [],
        }

    # ------------------------------------------------------------------ the protocol

    async def ping(self) -> None:
        self._enter("ping")

    async def list_containers(self, *, label: str) -> list[JSON]:
        self._enter("list_containers")
        return [self._list_item(c) for c in self.containers.values()
                if _label_matches(c.labels, label)]

    async def list_networks(self, *, label: str) -> list[JSON]:
        self._enter("list_networks")
        return [copy.deepcopy(n) for n in self.networks.values()
                if _label_matches(n["Labels"], label)]

    async def list_volumes(self, *, label: str) -> list[JSON]:
        self._enter("list_volumes")
        return [copy.deepcopy(v) for v in self.volumes.values()
                if _label_matches(v["Labels"], label)]

    async def inspect_container(self, container_id: str) -> JSON:
        self._enter("inspect_container")
        return self._inspect(self.container(container_id))

    async def image_present(self, ref: str) -> bool:
        self._enter("image_present")
        return normalise_ref(ref) in self.images

    async def pull_image(self, ref: str) -> None:
        self._enter("pull_image")
        norm = normalise_ref(ref)
        if norm in self.pullable:
            self.images.add(norm)
            return
        raise ImageUnavailable(f"pull {ref}: pull access denied or repository does not exist")

    async def build_image(self, archive: IO[bytes], *, ref: str, dockerfile: str,
                          args: Mapping[str, str], target: str | None,
                          labels: Mapping[str, str],
                          progress: Callable[[str], None]) -> None:
        self._enter("build_image")
        with tarfile.open(fileobj=archive) as tar:  # the engine's classic builder, in short:
            member = tar.extractfile(dockerfile)  # every RUN step succeeds but `RUN false`
            steps = [ln.strip() for ln in (member.read().decode() if member else "").splitlines()
                     if ln.strip() and not ln.startswith("#")]
        if not steps:
            raise BuildFailed(f"Cannot locate specified Dockerfile: {dockerfile}")
        tail: list[str] = []
        for i, step in enumerate(steps, start=1):
            tail.append(f"Step {i}/{len(steps)} : {step}")
            progress(tail[-1])
            if step == "RUN false" or (i == 1 and normalise_ref(ref) in self.failing_builds):
                raise BuildFailed("The command '/bin/sh -c false' returned a non-zero code: 1",
                                  tuple(tail))
        self.built.append(normalise_ref(ref))
        self.images.add(normalise_ref(ref))

    async def tag_image(self, ref: str, name: str) -> None:
        self._enter("tag_image")
        if normalise_ref(ref) not in self.images:
            raise NotFound(f"tag {ref}: no such image")
        self.images.add(normalise_ref(name))

    async def create_network(self, name: str, *, labels: Mapping[str, str],
                             internal: bool = False,
                             ipam: Mapping[str, Any] | None = None) -> None:
        self._enter("create_network")
        existing = self.networks.get(name)
        if existing is not None:
            if all(existing["Labels"].get(k) == v for k, v in labels.items()):
                return
            raise Conflict(f"create network {name}: a network with this name exists "
                           "without our labels")
        self.networks[name] = {
            "Name": name, "Id": self._new_id(), "Created": _rfc3339(self.now),
            "Scope": "local", "Driver": "bridge", "Internal": internal,
            "Labels": dict(labels), "Options": {}, "Containers": {},
        }

    async def create_volume(self, name: str, *, labels: Mapping[str, str]) -> None:
        self._enter("create_volume")
        existing = self.volumes.get(name)
        if existing is not None:
            if all(existing["Labels"].get(k) == v for k, v in labels.items()):
                return
            raise Conflict(f"create volume {name}: a volume with this name exists "
                           "without our labels")
        self.volumes[name] = {
            "Name": name, "Driver": "local", "Labels": dict(labels), "Scope": "local",
            "Mountpoint": f"/var/lib/docker/volumes/{name}/_data",
            "CreatedAt": _rfc3339(self.now), "Options": {},
        }

    async def create_container(self, name: str, config: JSON) -> str:
        self._enter("create_container")
        return self._create(name, config).id

    async def connect_network(self, container_id: str, network: str, *,
                              aliases: Sequence[str]) -> None:
        self._enter("connect_network")
        c = self.container(container_id)
        if network not in self.networks and c.state == "running":
            raise NotFound(f"network {network} not found")
        # A created container is connected blindly; its start fails on a missing network.
        c.networks[network] = self._endpoint(network, [*aliases, c.id[:12]])

    async def start_container(self, container_id: str) -> None:
        self._enter("start_container")
        self._start(self.container(container_id))

    async def stop_container(self, container_id: str, *, timeout_s: float) -> None:
        self._enter("stop_container")
        c = self.container(container_id)
        if c.state == "restarting":  # a stop cancels the pending restart
            c.restart_at = None
            c.state = "exited"
            self._emit(c, "stop")
            return
        if c.state != "running":
            return  # the engine answers 304, no events
        self._emit(c, "kill", signal="15")
        self._exit(c, self.behaviour(str(c.config.get("Image", ""))).stop_exit_code)
        self._emit(c, "stop")

    async def remove_container(self, container_id: str) -> None:
        """Force-remove; volumes are never removed (the fake has no v=1)."""
        self._enter("remove_container")
        c = self.container(container_id)
        if c.state == "running":
            self._emit(c, "kill", signal="9")
            self._exit(c, 137)
        del self.containers[c.id]
        self._emit(c, "destroy")

    async def kill_container(self, container_id: str, *, signal: str) -> None:
        self._enter("kill_container")
        c = self.container(container_id)
        if c.state != "running":
            raise Conflict(f"Container {c.id} is not running")
        sig = signal.upper().removeprefix("SIG")
        number = int(sig) if sig.isdigit() else _SIGNALS.get(sig, 15)
        self._emit(c, "kill", signal=str(number))
        if sig in _NON_FATAL_SIGNALS or number in (1, 10, 12, 28):
            return
        self._exit(c, 128 + number)  # a manual kill: no restart

    async def exec_in_container(self, container_id: str, cmd: Sequence[str]) -> ExecResult:
        self._enter("exec_in_container")
        c = self.container(container_id)
        if c.state != "running":
            raise Conflict(f"Container {c.id} is not running")
        key = tuple(cmd)
        self.exec_log.append((c.id, key))
        if key in self.exec_results:
            return self.exec_results[key]
        if self.exec_handler is not None:
            result = self.exec_handler(c, cmd)
            if result is not None:
                return result
        ready = self._app_ready(c)
        if ready is not None and self._is_health_command(c, cmd):
            return ExecResult(exit_code=0 if ready else 1, output="ok\n" if ready else "")
        if len(key) >= 3 and key[0] in ("sh", "/bin/sh") and key[1] == "-c":
            lines, code, _ = _mini_shell(key[2])
        else:
            lines, code, _ = _mini_shell(" ".join(key))
        output = "".join(f"{line}\n" for line in lines)
        return ExecResult(exit_code=code or 0, output=output)

    async def exec_stream(self, container_id: str, cmd: Sequence[str], *,
                          sink: Callable[[bytes], None] | None = None,
                          stdin: Iterable[bytes] | None = None) -> ExecResult:
        self._enter("exec_stream")
        c = self.container(container_id)
        if c.state != "running":
            raise Conflict(f"Container {c.id} is not running")
        key = tuple(cmd)
        self.exec_log.append((c.id, key))
        data = b"".join(stdin) if stdin is not None else None
        if self.stream_handler is not None:
            code, out, err = self.stream_handler(c, key, data)
        elif key == ("cat",):
            code, out, err = 0, data or b"", ""
        else:
            script = key[2] if len(key) >= 3 and key[1] == "-c" else " ".join(key)
            lines, maybe, _ = _mini_shell(script)
            code, out, err = maybe or 0, "".join(f"{x}\n" for x in lines).encode(), ""
        if sink is not None and out:
            sink(out)
        return ExecResult(exit_code=code, output=err)

    async def get_archive(self, container_id: str, path: str, *,
                          sink: Callable[[bytes], None]) -> None:
        self._enter("get_archive")
        c = self.container(container_id)
        path = path.rstrip("/") or "/"
        base = path.rsplit("/", 1)[-1]
        found = {p: b for p, b in c.files.items() if p == path or p.startswith(path + "/")}
        if not found:
            raise NotFound(f"Could not find the file {path} in container {c.id}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p, content in sorted(found.items()):
                info = tarfile.TarInfo(base + p[len(path):])
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        sink(buf.getvalue())

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        self._enter("put_archive")
        c = self.container(container_id)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for member in tar.getmembers():
                got = tar.extractfile(member) if member.isfile() else None
                if got is not None:
                    c.files[path.rstrip("/") + "/" + member.name.lstrip("./")] = got.read()

    async def container_logs(self, container_id: str, *, tail: int) -> str:
        self._enter("container_logs")
        c = self.container(container_id)
        lines = c.logs[-tail:] if tail > 0 else []
        return "".join(f"{line}\n" for line in lines)

    async def stream_logs(self, container_id: str, *, tail: int | None = None,
                          since: float | None = None, follow: bool = False,
                          ) -> AsyncIterator[str]:
        self._enter("stream_logs")
        c = self.container(container_id)
        picked = [i for i, t in enumerate(c.log_times) if since is None or t >= since]
        if tail is not None:
            picked = picked[len(picked) - tail:] if tail > 0 else []
        for i in picked:
            for piece in _capped(c.logs[i]):
                yield piece
        sent = len(c.logs)
        waiter = asyncio.Event()
        self._log_waiters.append(waiter)
        try:
            while follow and c.state in ("running", "restarting") and not self.closed:
                await waiter.wait()
                waiter.clear()
                for line in c.logs[sent:]:
                    for piece in _capped(line):
                        yield piece
                sent = len(c.logs)
        finally:
            self._log_waiters.remove(waiter)

    def events(self, *, label: str) -> FakeEventStream:
        self.calls["events"] += 1
        return FakeEventStream(self, label)

    async def close(self) -> None:
        self.calls["close"] += 1
        self.closed = True
        for stream in list(self._streams):
            stream._close()
        self._wake_logs()


def _capped(line: str) -> list[str]:
    return [line[i:i + MAX_LOG_LINE] for i in range(0, len(line), MAX_LOG_LINE)] or [""]


def _check_protocol() -> None:  # static check only: FakeRuntime satisfies Runtime
    from reconciler.runtimes import Runtime

    def _accepts(_: Runtime) -> None: ...

    _accepts(FakeRuntime())

