"""The `Runtime` protocol: everything the shell asks of a container engine, and its errors.

Implemented by `dockerd.DockerRuntime` (the real engine, through aiodocker) and by
`tests/component/fakes.FakeRuntime`; a contract suite runs against both so the fake cannot
drift. Payloads are the Docker Engine API's own JSON (API 1.41), so the pure
`snapshots` parser reads the output of either. This module must not import aiodocker and
must not decide anything: it only names the operations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

JSON = dict[str, Any]

#: The longest log line `Runtime.stream_logs` yields in one piece (bounded reads).
MAX_LOG_LINE = 16 * 1024


class EngineError(Exception):
    """Base of every engine error the shell handles. Messages never contain secrets."""


class EngineUnavailable(EngineError):
    """The engine does not answer (socket missing, connection refused, timeout)."""


class NotFound(EngineError):
    """The object (container, image, network, volume) does not exist."""


class Conflict(EngineError):
    """The name is taken (HTTP 409, or 400 "already in use" on some engine versions)."""


class ImageUnavailable(EngineError):
    """An image is neither present nor pullable."""


class BuildFailed(EngineError):
    """An image build failed (a step exited non-zero, a bad Dockerfile): the message names
    the error, `tail` holds the last lines of the build's output."""

    def __init__(self, message: str, tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tail = tail


class EngineFailure(EngineError):
    """Any other engine failure (HTTP 5xx, unexpected answer)."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output: str


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One container event, already reduced to what the controller needs."""

    action: str  # "start", "die", "destroy", "stop", "kill", "oom", "health_status: healthy"...
    container_id: str
    attributes: Mapping[str, str]
    time_nano: int


class EventStream(Protocol):
    """An async iterator of `EngineEvent` from one engine connection.

    `async for ev in runtime.events(label=...)` just works (the first `__anext__` connects).
    To resync without a gap, `await stream.connect()` first (returns once the engine has
    registered the subscription; raises `EngineUnavailable`/`EngineFailure` if it cannot),
    then list, then iterate. The iterator ends when the connection drops or after
    `aclose()`; it never reconnects by itself. Cancelling the consumer closes it.
    """

    def __aiter__(self) -> EventStream: ...
    async def __anext__(self) -> EngineEvent: ...
    async def connect(self) -> None: ...
    async def aclose(self) -> None: ...


class Runtime(Protocol):
    """What the reconciler needs from a container engine. Every call has a timeout."""

    async def ping(self) -> None: ...

    # True when the engine probes health checks at a short `StartInterval` by itself
    # (API >= 1.44); otherwise the executor probes with exec until the first success
    @property
    def start_interval(self) -> bool: ...

    # observation: one list call each, filtered by label (key or key=value)
    async def list_containers(self, *, label: str) -> list[JSON]: ...
    async def list_networks(self, *, label: str) -> list[JSON]: ...
    async def list_volumes(self, *, label: str) -> list[JSON]: ...
    async def inspect_container(self, container_id: str) -> JSON: ...

    # images
    async def image_present(self, ref: str) -> bool: ...
    async def pull_image(self, ref: str) -> None: ...
    # build `ref` from a tar archive of its context (classic builder); `progress` gets each
    # line of output; a failed build raises `BuildFailed` with the output's tail
    async def build_image(self, archive: IO[bytes], *, ref: str, dockerfile: str,
                          args: Mapping[str, str], target: str | None,
                          labels: Mapping[str, str],
                          progress: Callable[[str], None]) -> None: ...
    async def tag_image(self, ref: str, name: str) -> None: ...  # `name` = repo[:tag]

    # networks and volumes (create is idempotent for an existing name with our labels)
    async def create_network(self, name: str, *, labels: Mapping[str, str],
                             internal: bool = False,
                             ipam: Mapping[str, Any] | None = None) -> None: ...
    async def create_volume(self, name: str, *, labels: Mapping[str, str]) -> None: ...

    # containers
    async def create_container(self, name: str, config: JSON) -> str: ...
    async def connect_network(self, container_id: str, network: str, *,
                              aliases: Sequence[str]) -> None: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, *, timeout_s: float) -> None: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def kill_container(self, container_id: str, *, signal: str) -> None: ...
    async def exec_in_container(self, container_id: str, cmd: Sequence[str]) -> ExecResult: ...
    async def container_logs(self, container_id: str, *, tail: int) -> str: ...
    # stdout and stderr lines (without the newline) as the engine has them: the last `tail`
    # (None: all), written at or after `since` (Unix seconds); with `follow`, new lines as they
    # come until the container stops or the consumer closes the iterator. Every line is
    # capped at `MAX_LOG_LINE` characters (a longer one arrives in pieces).
    def stream_logs(self, container_id: str, *, tail: int | None = None,
                    since: float | None = None, follow: bool = False) -> AsyncIterator[str]: ...

    # streamed data (backups and restores): bytes never pass through a str
    async def exec_stream(self, container_id: str, cmd: Sequence[str], *,
                          sink: Callable[[bytes], None] | None = None,
                          stdin: Iterable[bytes] | None = None) -> ExecResult:
        """Run `cmd` in a running container: its stdout goes to `sink` chunk by chunk
        (never into the result), `stdin` (when given) is fed and then closed; the result's
        `output` is stderr only. Conflict when the container is not running."""
        ...

    async def get_archive(self, container_id: str, path: str, *,
                          sink: Callable[[bytes], None]) -> None:
        """A tar of `path` in the container (any state, volumes mounted) to `sink`."""
        ...

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        """Extract the tar `data` into the existing directory `path` of the container."""
        ...

    # events for containers carrying `label` (create, start, die, stop, kill, oom, destroy,
    # "health_status: ..."); the stream ends when the connection drops (see EventStream)
    def events(self, *, label: str) -> EventStream: ...

    async def close(self) -> None: ...
