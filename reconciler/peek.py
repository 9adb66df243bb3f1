"""A read-only look at the engine for previews: the three list calls over the local socket.

`reconciler --dry-run` (and `status`) need nothing from the engine but the list calls
filtered by our project label. aiodocker pulls in aiohttp and asyncio's SSL stack (about
half a second of imports on a small host), even `http.client` costs a tenth of that; this
module sends the three HTTP/1.0 GET requests on a plain unix socket (HTTP/1.0: the engine
answers without chunking and closes). It reads only; it must never change anything on the
engine (everything that acts goes through `dockerd`). Endpoints other than `unix://` are
not handled here (callers fall back to `dockerd`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from reconciler.runtimes import JSON, EngineFailure, EngineUnavailable

DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def socket_path(url: str | None = None) -> str | None:
    """The engine's unix socket path, or None when the endpoint is not a unix socket."""
    url = url or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if not url.startswith("unix://"):
        return None
    return url[len("unix://"):]


class Peek:
    """The list calls of `Runtime`, synchronously, over one unix socket."""

    def __init__(self, path: str, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _get(self, what: str, endpoint: str, label: str) -> Any:
        filters = quote(json.dumps({"label": [label]}))
        request = f"GET /{endpoint}?all=1&filters={filters} HTTP/1.0\r\nHost: docker\r\n\r\n"
        chunks: list[bytes] = []
        size = 0
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(self.path)
                sock.sendall(request.encode())
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise EngineFailure(f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes")
        except OSError as exc:
            raise EngineUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise EngineFailure(f"{what}: {b' '.join(status[1:]).decode(errors='replace')}: "
                                f"{body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError:
            raise EngineFailure(f"{what}: the engine answered something that is not JSON") from None

    def list_containers(self, *, label: str) -> list[JSON]:
        return _list(self._get("list containers", "containers/json", label), "list containers")

    def list_networks(self, *, label: str) -> list[JSON]:
        return _list(self._get("list networks", "networks", label), "list networks")

    def list_volumes(self, *, label: str) -> list[JSON]:
        raw = self._get("list volumes", "volumes", label)
        return _list(raw.get("Volumes") if isinstance(raw, dict) else None, "list volumes")


def _list(raw: Any, what: str) -> list[JSON]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise EngineFailure(f"{what}: unexpected answer from the engine")
    return raw


class LazyRuntime:
    """A `Runtime` for one CLI pass that lists through `Peek` and connects the real
    runtime (`dockerd`, aiohttp) only when the pass needs more than the list calls: a no-op
    `apply` never pays for it."""

    def __init__(self, peek: Peek, connect: Callable[[], Awaitable[Any]]) -> None:
        self._peek = peek
        self._connect = connect
        self._real: Any = None

    async def list_containers(self, *, label: str) -> list[JSON]:
        return self._peek.list_containers(label=label)

    async def list_networks(self, *, label: str) -> list[JSON]:
        return self._peek.list_networks(label=label)

    async def list_volumes(self, *, label: str) -> list[JSON]:
        return self._peek.list_volumes(label=label)

    @property
    def start_interval(self) -> bool:
        """The connected engine's answer; before it is connected, False (the executor then
        probes readiness itself, which is right on every engine). A plain attribute, not a
        forwarded coroutine: a coroutine function would read as True."""
        return bool(self._real.start_interval) if self._real is not None else False

    async def close(self) -> None:
        if self._real is not None:
            await self._real.close()

    async def real(self) -> Any:
        """The connected runtime (connected now when it was not yet)."""
        if self._real is None:
            self._real = await self._connect()
        return self._real

    def events(self, *, label: str) -> LazyEvents:
        """A plain method (an event stream is not a coroutine): the stream connects the real
        runtime when it connects."""
        return LazyEvents(self, label)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self.real(), name)(*args, **kwargs)

        return call


class LazyEvents:
    """`LazyRuntime.events`: an `EventStream` of the real runtime, made on first use."""

    def __init__(self, lazy: LazyRuntime, label: str) -> None:
        self._lazy = lazy
        self._label = label
        self._stream: Any = None

    async def _real(self) -> Any:
        if self._stream is None:
            self._stream = (await self._lazy.real()).events(label=self._label)
        return self._stream

    def __aiter__(self) -> LazyEvents:
        return self

    async def __anext__(self) -> Any:
        return await (await self._real()).__anext__()

    async def connect(self) -> None:
        await (await self._real()).connect()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
