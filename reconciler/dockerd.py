"""`DockerRuntime`: the `Runtime` protocol on a real Docker engine, through aiodocker.

This is the ONLY module that imports aiodocker. It translates protocol calls into Docker Engine
API requests (written for API 1.41 / Docker 20.10, negotiated with newer engines), bounds every
call with a timeout, and maps aiodocker/aiohttp failures onto the `runtimes` errors. It must
not decide anything (no retries, no adoption, no deletion of anything it was not told to
delete) and must never put environment values into an error message.

Engine traps handled here (see PITFALLS.md):
- aiodocker has no timeout by default, and its stop/kill/delete/logs/pull/exec requests run
  with an infinite one: every call here is wrapped in `asyncio.timeout`.
- API 1.41 accepts one network at create: `create_container` creates with the first entry of
  `NetworkingConfig.EndpointsConfig` and connects the others (with their aliases) before it
  returns; if a connect fails, the half-built container is removed and the error raised.
- The event stream is a raw streaming `GET /events` per iterator (not aiodocker's shared,
  never-reconnecting `DockerEvents` channel). It is filtered server-side and ENDS when the
  connection drops; the controller reconnects with backoff and resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError, DockerStreamError

from reconciler import registryauth
from reconciler.core.envfiles import redact
from reconciler.runtimes import (
    JSON,
    MAX_LOG_LINE,
    BuildFailed,
    Conflict,
    EngineError,
    EngineEvent,
    EngineFailure,
    EngineUnavailable,
    ExecResult,
    ImageUnavailable,
    NotFound,
)

__all__ = ["DEFAULT_DOCKER_URL", "EVENT_ACTIONS", "DockerRuntime"]

DEFAULT_DOCKER_URL: Final = "unix:///var/run/docker.sock"

#: Container events the controller cares about; filtered by the engine, so healthcheck
#: probes (exec_create/exec_start/exec_die) never reach us. `health_status` matches
#: "health_status: healthy" etc. by prefix on the engine side.
EVENT_ACTIONS: Final = (
    "create", "start", "die", "stop", "kill", "oom", "destroy", "health_status",
)

_T = TypeVar("_T")

# words of a registry's "who are you?" answer, for a hint when no credentials were sent
_AUTH_WORDS: Final = ("unauthorized", "authentication required", "no basic auth",
                      "denied", "credentials")

# aiodocker reports "cannot connect" as a DockerError with this pseudo status.
_STATUS_CANNOT_CONNECT: Final = 900


# --------------------------------------------------------------------------- error mapping


def _env_secrets(config: Mapping[str, Any]) -> list[str]:
    """Every env value (and whole KEY=VALUE entry) of a create body, for redaction."""
    out: list[str] = []
    env = config.get("Env")
    if isinstance(env, list):
        for item in env:
            if isinstance(item, str):
                out.append(item)
                _, sep, value = item.partition("=")
                if sep:
                    out.append(value)
    return out


def _map_error(
    exc: BaseException, what: str, *, secrets: Iterable[str] = (), pull: bool = False,
) -> EngineError:
    """Translate an aiodocker/aiohttp/asyncio failure into a runtime error for `what`."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, TimeoutError):
        return EngineUnavailable(f"{what}: the engine did not answer in time")
    if isinstance(exc, DockerStreamError):
        msg = redact(exc.message, secrets)
        if pull:
            return ImageUnavailable(f"{what}: {msg}")
        return EngineFailure(f"{what}: {msg}")
    if isinstance(exc, DockerError):
        status = exc.status
        msg = redact(str(exc.message).strip(), secrets)
        if status == _STATUS_CANNOT_CONNECT:
            return EngineUnavailable(f"{what}: {msg}")
        if pull:
            # No registry, unknown repository, auth refused (404/500 from images/create):
            # the image is not pullable.
            return ImageUnavailable(f"{what}: [{status}] {msg}")
        if status == 404:
            return NotFound(f"{what}: {msg}")
        if status == 409 or (status == 400 and "already in use" in msg):
            return Conflict(f"{what}: {msg}")
        return EngineFailure(f"{what}: [{status}] {msg}")
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return EngineUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, (aiohttp.ClientError, OSError, ValueError)):
        return EngineFailure(f"{what}: {type(exc).__name__}: {redact(str(exc), secrets)}")
    return EngineFailure(f"{what}: {type(exc).__name__}")


def _as_json(value: object, what: str) -> JSON:
    if not isinstance(value, dict):
        raise EngineFailure(f"{what}: unexpected answer from the engine ({type(value).__name__})")
    return value


def _as_json_list(value: object, what: str) -> list[JSON]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise EngineFailure(f"{what}: unexpected answer from the engine ({type(value).__name__})")
    return list(value)


def _labels_match(existing: object, wanted: Mapping[str, str]) -> bool:
    labels = existing if isinstance(existing, dict) else {}
    return all(labels.get(k) == v for k, v in wanted.items())


_BUILD_TAIL: Final = 20  # lines of build output a failure shows


def _build_item(raw: bytes, tail: deque[str], progress: Callable[[str], None]) -> None:
    """One line of the build's JSON stream: output goes to `progress` and the tail; an
    `error` item raises `BuildFailed`."""
    if not raw.strip():
        return
    try:
        item = json.loads(raw)
    except ValueError:
        return
    if not isinstance(item, dict):
        return
    error = item.get("error") or (item.get("errorDetail") or {}).get("message")
    if error:
        raise BuildFailed(str(error).strip()[:MAX_LOG_LINE], tuple(tail))
    text = item.get("stream")
    if isinstance(text, str):
        for line in text.splitlines():
            if line.strip():
                tail.append(line[:MAX_LOG_LINE])
                progress(line[:MAX_LOG_LINE])


# --------------------------------------------------------------------------- events


def _parse_event(raw: object) -> EngineEvent | None:
    if not isinstance(raw, dict):
        return None
    actor = raw.get("Actor")
    if not isinstance(actor, dict):
        return None
    action, cid = raw.get("Action"), actor.get("ID")
    if not isinstance(action, str) or not isinstance(cid, str):
        return None
    attrs = actor.get("Attributes")
    attributes = (
        {str(k): str(v) for k, v in attrs.items()} if isinstance(attrs, dict) else {}
    )
    time_nano = raw.get("timeNano")
    if not isinstance(time_nano, int):
        t = raw.get("time")
        time_nano = int(t) * 1_000_000_000 if isinstance(t, int) else 0
    return EngineEvent(
        action=action, container_id=cid, attributes=attributes, time_nano=time_nano,
    )


class DockerEventStream:
    """One streaming `GET /events` connection: an async iterator of `EngineEvent`.

    `connect()` (idempotent; implied by the first `__anext__`) returns once the engine has
    accepted the subscription — the engine flushes the response headers only after it has
    registered the listener, so a resync done after `connect()` misses no event. The iterator
    ends (StopAsyncIteration) when the stream drops or after `aclose()`; a failure to connect
    raises `EngineUnavailable`/`EngineFailure`. Cancelling a consumer that awaits `__anext__`
    closes the connection.
    """

    def __init__(self, docker: aiodocker.Docker, *, label: str, connect_timeout_s: float,
                 sock_connect_s: float | None,
                 filters: Mapping[str, list[str]] | None = None) -> None:
        self._docker = docker
        self._label = label
        self._filters = filters
        self._connect_timeout_s = connect_timeout_s
        self._sock_connect_s = sock_connect_s
        self._resp: aiohttp.ClientResponse | None = None
        self._buf = bytearray()
        self._pending: deque[EngineEvent] = deque()
        self._closed = False

    def __aiter__(self) -> DockerEventStream:
        return self

    @property
    def connected(self) -> bool:
        return self._resp is not None and not self._closed

    async def connect(self) -> None:
        if self._resp is not None or self._closed:
            return
        filters = dict(self._filters) if self._filters is not None else {
            "type": ["container"], "label": [self._label], "event": list(EVENT_ACTIONS)}
        # A stream has no total/read timeout; only the connect is bounded.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=None, sock_connect=self._sock_connect_s,
        )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._resp = await self._docker._do_query(
                    "events", "GET", params={"filters": json.dumps(filters)}, timeout=timeout,
                )
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception as exc:
            self._close()
            raise _map_error(exc, "subscribe to events") from None

    async def __anext__(self) -> EngineEvent:
        await self.connect()
        while not self._pending:
            resp = self._resp
            if resp is None or self._closed:
                raise StopAsyncIteration
            try:
                chunk = await resp.content.readany()
            except asyncio.CancelledError:
                self._close()
                raise
            except (aiohttp.ClientError, OSError, TimeoutError):
                chunk = b""
            if not chunk:
                self._close()
                raise StopAsyncIteration
            self._feed(chunk)
        return self._pending.popleft()

    def _feed(self, chunk: bytes) -> None:
        self._buf.extend(chunk)
        while (nl := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:nl]).strip()
            del self._buf[: nl + 1]
            if not line:
                continue
            try:
                event = _parse_event(json.loads(line))
            except ValueError:
                continue
            if event is not None:
                self._pending.append(event)

    def _close(self) -> None:
        self._closed = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    async def aclose(self) -> None:
        self._close()

    async def __aenter__(self) -> DockerEventStream:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def __del__(self) -> None:  # last resort: never leak the socket
        with contextlib.suppress(Exception):
            self._close()


# --------------------------------------------------------------------------- logs

_LOG_READ: Final = 64 * 1024
_FRAME_HEADER: Final = 8


class _LogLines:
    """Turns the bytes of a logs response into lines: demultiplexes the engine's 8-byte
    framed stream (containers without a TTY) and splits lines per stream, each capped at
    `MAX_LOG_LINE` characters."""

    def __init__(self, *, tty: bool) -> None:
        self._tty = tty
        self._raw = bytearray()
        self._partial: dict[int, bytearray] = {}

    def feed(self, chunk: bytes) -> list[str]:
        if self._tty:
            return self._lines(1, chunk)
        self._raw.extend(chunk)
        out: list[str] = []
        while len(self._raw) >= _FRAME_HEADER:
            stream = self._raw[0]
            size = int.from_bytes(self._raw[4:8], "big")
            if len(self._raw) < _FRAME_HEADER + size:
                break
            payload = bytes(self._raw[_FRAME_HEADER:_FRAME_HEADER + size])
            del self._raw[:_FRAME_HEADER + size]
            out.extend(self._lines(stream, payload))
        return out

    def _lines(self, stream: int, data: bytes) -> list[str]:
        buf = self._partial.setdefault(stream, bytearray())
        buf.extend(data)
        out: list[str] = []
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) < MAX_LOG_LINE:
                    break
                nl = MAX_LOG_LINE
                piece, rest = bytes(buf[:nl]), nl
            else:
                piece, rest = bytes(buf[:nl]), nl + 1
            del buf[:rest]
            while len(piece) > MAX_LOG_LINE:
                out.append(piece[:MAX_LOG_LINE].decode("utf-8", "replace"))
                piece = piece[MAX_LOG_LINE:]
            out.append(piece.decode("utf-8", "replace"))
        return out

    def flush(self) -> list[str]:
        out = [bytes(b).decode("utf-8", "replace") for b in self._partial.values() if b]
        self._partial.clear()
        return out


# --------------------------------------------------------------------------- runtime


async def _exit_code(exec_: Any, what: str) -> int:
    """An exec's exit code: the attach stream closes when the process exits and ExitCode
    follows promptly."""
    while True:
        info = _as_json(await exec_.inspect(), what)
        code = info.get("ExitCode")
        if not info.get("Running") and isinstance(code, int):
            return code
        await asyncio.sleep(0.02)


START_INTERVAL_NS = 250_000_000  # health probes during the start period (API >= 1.44)


def _api_at_least(version: str, major: int, minor: int) -> bool:
    """`v1.44` / `1.44` compared with major.minor; unknown ("auto") is False."""
    try:
        a, b = version.lstrip("v").split(".")[:2]
        return (int(a), int(b)) >= (major, minor)
    except ValueError:
        return False


class DockerRuntime:
    """The `Runtime` protocol on a Docker engine. Build it inside a running event loop;
    prefer `await DockerRuntime.connect()`, which also checks that the engine answers."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout_s: float = 30.0,
        sock_connect_s: float = 5.0,
        pull_timeout_s: float = 600.0,
        build_timeout_s: float = 1800.0,
        exec_timeout_s: float = 60.0,
        stream_timeout_s: float = 3600.0,
    ) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self._timeout_s = timeout_s
        self._sock_connect_s = sock_connect_s
        self._pull_timeout_s = pull_timeout_s
        self._build_timeout_s = build_timeout_s
        self._exec_timeout_s = exec_timeout_s
        self._stream_timeout_s = stream_timeout_s
        # A fresh connection per call on a local socket (microseconds): a daemon that shuts
        # down closes its listener first and only then stops the containers, but keeps
        # serving kept-alive connections meanwhile, so with keep-alive a health gate would
        # see every container "exit" during an engine restart instead of an engine outage.
        self._connector: aiohttp.BaseConnector | None = None
        if self.url.startswith("unix://"):
            self._connector = aiohttp.UnixConnector(self.url[len("unix://"):],
                                                    force_close=True)
        self._docker = aiodocker.Docker(
            url=self.url, connector=self._connector,
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=sock_connect_s),
        )
        if self._connector is not None:
            self._docker.docker_host = "unix://localhost"  # as aiodocker does for its own
        self._streams: weakref.WeakSet[DockerEventStream] = weakref.WeakSet()

    @classmethod
    async def connect(cls, url: str | None = None, *, timeout_s: float = 30.0) -> DockerRuntime:
        """Build a runtime and ping the engine; `EngineUnavailable` if it does not answer."""
        try:
            runtime = cls(url, timeout_s=timeout_s)
        except (ValueError, OSError) as exc:
            raise EngineUnavailable(f"docker endpoint: {exc}") from None
        try:
            await runtime.ping()
        except BaseException:
            await runtime.close()
            raise
        return runtime

    async def _call(
        self,
        what: str,
        fn: Callable[[], Awaitable[_T]],
        *,
        timeout_s: float | None = None,
        secrets: Iterable[str] = (),
        pull: bool = False,
    ) -> _T:
        try:
            async with asyncio.timeout(timeout_s if timeout_s is not None else self._timeout_s):
                return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _map_error(exc, what, secrets=secrets, pull=pull) from None

    async def _json(
        self, what: str, path: str, *, method: str = "GET",
        params: Mapping[str, Any] | None = None, body: Mapping[str, Any] | None = None,
        secrets: Iterable[str] = (),
    ) -> object:
        data = json.dumps(body) if body is not None else None

        async def go() -> object:
            result: object = await self._docker._query_json(
                path, method, params=dict(params) if params else None, data=data,
            )
            return result

        return await self._call(what, go, secrets=secrets)

    async def request(
        self, what: str, path: str, *, method: str = "GET",
        params: Mapping[str, Any] | None = None, body: Mapping[str, Any] | None = None,
    ) -> object:
        """Any Engine API call answering JSON (the Swarm endpoints of `swarmd`), with this
        runtime's timeout and error mapping."""
        return await self._json(what, path, method=method, params=params, body=body)

    # ------------------------------------------------------------------ observation

    @property
    def start_interval(self) -> bool:
        """True when the engine honours `Healthcheck.StartInterval` (API >= 1.44, known
        after the first call): then the engine probes quickly at start by itself."""
        return _api_at_least(str(self._docker.api_version), 1, 44)

    async def ping(self) -> None:
        async def go() -> None:
            await self._docker.version()
            await self._docker._check_version()

        await self._call("ping", go)

    async def list_containers(self, *, label: str) -> list[JSON]:
        params = {"all": "1", "filters": json.dumps({"label": [label]})}
        raw = await self._json("list containers", "containers/json", params=params)
        return _as_json_list(raw, "list containers")

    async def list_networks(self, *, label: str) -> list[JSON]:
        params = {"filters": json.dumps({"label": [label]})}
        raw = await self._json("list networks", "networks", params=params)
        return _as_json_list(raw, "list networks")

    async def list_volumes(self, *, label: str) -> list[JSON]:
        params = {"filters": json.dumps({"label": [label]})}
        raw = _as_json(await self._json("list volumes", "volumes", params=params),
                       "list volumes")
        return _as_json_list(raw.get("Volumes"), "list volumes")

    async def inspect_container(self, container_id: str) -> JSON:
        what = f"inspect container {container_id}"
        return _as_json(await self._json(what, f"containers/{container_id}/json"), what)

    # ------------------------------------------------------------------ images

    async def image_present(self, ref: str) -> bool:
        try:
            await self._json(f"inspect image {ref}", f"images/{ref}/json")
        except NotFound:
            return False
        return True

    async def pull_image(self, ref: str) -> None:
        """Pull with the host's registry credentials for the image's registry (docker's
        config.json and credential helpers, see `registryauth`); anonymously without."""
        try:
            creds = await asyncio.to_thread(registryauth.credentials_for, ref)
        except registryauth.CredentialError as exc:
            raise ImageUnavailable(f"pull {ref}: registry credentials: {exc}") from None
        secrets = [v for k, v in (creds or {}).items() if k != "serveraddress"]

        async def go() -> None:
            if creds is None:
                await self._docker.images.pull(ref)
            else:
                await self._docker.images.pull(registryauth.qualified(ref), auth=dict(creds))

        try:
            await self._call(f"pull {ref}", go, timeout_s=self._pull_timeout_s, pull=True,
                             secrets=secrets)
        except ImageUnavailable as exc:
            if creds is None and any(word in str(exc).lower() for word in _AUTH_WORDS):
                registry = registryauth.registry_of(ref)
                raise ImageUnavailable(
                    f"{exc} (no credentials for {registry} in "
                    f"{registryauth.config_file()}: run `docker login {registry}` as the "
                    "user the reconciler runs as, or set DOCKER_CONFIG)") from None
            raise

    async def build_image(self, archive: IO[bytes], *, ref: str, dockerfile: str,
                          args: Mapping[str, str], target: str | None,
                          labels: Mapping[str, str],
                          progress: Callable[[str], None]) -> None:
        """`POST /build` with the context as a tar archive (aiodocker's `images.build` has
        no `target`), reading the JSON progress stream to its end: an `error` item is a
        failed build (`BuildFailed` with the output's last lines)."""
        what = f"build {ref}"
        params = {"t": ref, "dockerfile": dockerfile, "rm": "1", "forcerm": "1",
                  "buildargs": json.dumps(dict(args)), "labels": json.dumps(dict(labels))}
        if target:
            params["target"] = target
        tail: deque[str] = deque(maxlen=_BUILD_TAIL)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None,
                                        sock_connect=self._sock_connect_s)

        async def go() -> None:
            resp = await self._docker._do_query(
                "build", "POST", params=params, data=archive, timeout=timeout,
                headers={"Content-Type": "application/x-tar"})
            try:
                buf = b""
                while chunk := await resp.content.read(_LOG_READ):
                    *lines, buf = (buf + chunk).split(b"\n")
                    for raw in lines:
                        _build_item(raw, tail, progress)
                _build_item(buf, tail, progress)
            finally:
                resp.close()

        await self._call(what, go, timeout_s=self._build_timeout_s)

    async def tag_image(self, ref: str, name: str) -> None:
        repo, tag = name, "latest"
        if ":" in name.rsplit("/", 1)[-1]:  # a registry's port is not a tag
            repo, _, tag = name.rpartition(":")

        async def go() -> None:
            await self._docker.images.tag(ref, repo, tag=tag)

        await self._call(f"tag {ref} as {name}", go)

    # ------------------------------------------------------------------ networks, volumes

    async def create_network(self, name: str, *, labels: Mapping[str, str],
                             internal: bool = False,
                             ipam: Mapping[str, Any] | None = None) -> None:
        what = f"create network {name}"
        body = {"Name": name, "CheckDuplicate": True, "Driver": "bridge",
                "Internal": internal, "Labels": dict(labels)}
        if ipam:
            body["IPAM"] = dict(ipam)
        try:
            await self._json(what, "networks/create", method="POST", body=body)
            return
        except Conflict:
            pass
        existing = _as_json(await self._json(what, f"networks/{name}"), what)
        if existing.get("Name") != name or not _labels_match(existing.get("Labels"), labels):
            raise Conflict(f"{what}: a network with this name exists without our labels")

    async def create_volume(self, name: str, *, labels: Mapping[str, str]) -> None:
        what = f"create volume {name}"
        # The engine answers 201 with the existing volume when the name is taken.
        body = {"Name": name, "Labels": dict(labels)}
        got = _as_json(await self._json(what, "volumes/create", method="POST", body=body), what)
        if not _labels_match(got.get("Labels"), labels):
            raise Conflict(f"{what}: a volume with this name exists without our labels")

    # ------------------------------------------------------------------ containers

    async def create_container(self, name: str, config: JSON) -> str:
        """Create `name` from a ContainerCreate body; returns the id.

        Every network of `NetworkingConfig.EndpointsConfig` is attached, with its aliases,
        before this returns: the first at create, the others by connect (API 1.41 takes one
        at create). `HostConfig.NetworkMode` defaults to that first network. Raises Conflict
        when the name is taken; on a failed connect the new container is removed again.
        """
        what = f"create container {name}"
        secrets = _env_secrets(config)
        body = dict(config)
        health = body.get("Healthcheck")
        if (isinstance(health, dict) and "StartInterval" not in health
                and (health.get("Test") or ["NONE"])[0] != "NONE" and self.start_interval):
            # API >= 1.44: Docker itself probes at a short cadence during the start period
            body["Healthcheck"] = {**health, "StartInterval": START_INTERVAL_NS}
        elif isinstance(health, dict) and "StartInterval" in health and not self.start_interval:
            # the spec's start_interval: an older engine has no such field (the executor's
            # exec probes do the fast start instead)
            body["Healthcheck"] = {k: v for k, v in health.items() if k != "StartInterval"}
        networking = body.get("NetworkingConfig")
        endpoints: dict[str, Any] = {}
        if isinstance(networking, dict) and isinstance(networking.get("EndpointsConfig"), dict):
            endpoints = dict(networking["EndpointsConfig"])
        later: list[tuple[str, JSON]] = []
        if endpoints:
            first, *rest = endpoints
            body["NetworkingConfig"] = {"EndpointsConfig": {first: endpoints[first] or {}}}
            host_config = dict(body.get("HostConfig") or {})
            if host_config.get("NetworkMode") in (None, "", "default"):
                host_config["NetworkMode"] = first
            body["HostConfig"] = host_config
            later = [(net, dict(endpoints[net] or {})) for net in rest]
        raw = _as_json(
            await self._json(what, "containers/create", method="POST",
                             params={"name": name}, body=body, secrets=secrets),
            what,
        )
        container_id = raw.get("Id")
        if not isinstance(container_id, str):
            raise EngineFailure(f"{what}: the engine returned no id")
        try:
            for net, endpoint in later:
                await self._connect(container_id, net, endpoint)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.remove_container(container_id))
            raise
        return container_id

    async def _connect(self, container_id: str, network: str, endpoint: JSON) -> None:
        await self._json(
            f"connect {container_id} to network {network}", f"networks/{network}/connect",
            method="POST", body={"Container": container_id, "EndpointConfig": endpoint},
        )

    async def connect_network(self, container_id: str, network: str, *,
                              aliases: Sequence[str]) -> None:
        await self._connect(container_id, network, {"Aliases": list(aliases)})

    async def disconnect_network(self, container_id: str, network: str) -> None:
        """Detach a container from a network (`reconciler migrate` starts the edge's holder
        with no network, so its published ports are bound only when it is connected)."""
        await self._json(
            f"disconnect {container_id} from network {network}", f"networks/{network}/disconnect",
            method="POST", body={"Container": container_id, "Force": False})

    async def start_container(self, container_id: str) -> None:
        # 304 (already running) is success.
        await self._json(f"start container {container_id}",
                         f"containers/{container_id}/start", method="POST")

    async def stop_container(self, container_id: str, *, timeout_s: float) -> None:
        t = max(0, math.ceil(timeout_s))

        async def go() -> None:
            async with self._docker._query(
                f"containers/{container_id}/stop", "POST", params={"t": t},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._sock_connect_s),
            ):
                pass

        await self._call(f"stop container {container_id}", go,
                         timeout_s=t + self._timeout_s)

    async def remove_container(self, container_id: str) -> None:
        """Force-remove; anonymous and named volumes are always kept (v=false)."""
        await self._json(f"remove container {container_id}", f"containers/{container_id}",
                         method="DELETE", params={"force": "1", "v": "0"})

    async def kill_container(self, container_id: str, *, signal: str) -> None:
        """Send `signal`; Conflict when the container is not running."""
        await self._json(f"kill container {container_id}", f"containers/{container_id}/kill",
                         method="POST", params={"signal": signal})

    async def exec_in_container(self, container_id: str, cmd: Sequence[str]) -> ExecResult:
        what = f"exec in container {container_id}"

        async def go() -> ExecResult:
            created = _as_json(await self._docker._query_json(
                f"containers/{container_id}/exec", "POST",
                data=json.dumps({"AttachStdout": True, "AttachStderr": True, "Tty": False,
                                 "Cmd": list(cmd)}),
            ), what)
            exec_ = self._docker.containers.exec(str(created["Id"]))
            chunks: list[bytes] = []
            async with exec_.start(detach=False) as stream:
                while (msg := await stream.read_out()) is not None:
                    chunks.append(msg.data)
            return ExecResult(exit_code=await _exit_code(exec_, what),
                              output=b"".join(chunks).decode("utf-8", errors="replace"))

        return await self._call(what, go, timeout_s=self._exec_timeout_s)

    async def exec_stream(self, container_id: str, cmd: Sequence[str], *,
                          sink: Callable[[bytes], None] | None = None,
                          stdin: Iterable[bytes] | None = None) -> ExecResult:
        what = f"exec in container {container_id}"

        async def go() -> ExecResult:
            created = _as_json(await self._docker._query_json(
                f"containers/{container_id}/exec", "POST",
                data=json.dumps({"AttachStdout": True, "AttachStderr": True, "Tty": False,
                                 "AttachStdin": stdin is not None, "Cmd": list(cmd)}),
            ), what)
            exec_ = self._docker.containers.exec(str(created["Id"]))
            errors: list[bytes] = []
            async with exec_.start(detach=False) as stream:

                async def feed() -> None:
                    if stdin is None:
                        return
                    for chunk in stdin:
                        await stream.write_in(chunk)
                    # half-close: the process sees EOF on stdin, its output still flows
                    resp = stream._resp
                    transport = resp.connection.transport if resp and resp.connection else None
                    if transport is not None and transport.can_write_eof():
                        transport.write_eof()

                async def drain() -> None:
                    while (msg := await stream.read_out()) is not None:
                        if msg.stream == 1:
                            if sink is not None:
                                sink(msg.data)
                        elif sum(map(len, errors)) < 65536:
                            errors.append(msg.data)

                await asyncio.gather(feed(), drain())
            return ExecResult(exit_code=await _exit_code(exec_, what),
                              output=b"".join(errors).decode("utf-8", errors="replace"))

        return await self._call(what, go, timeout_s=self._stream_timeout_s)

    async def get_archive(self, container_id: str, path: str, *,
                          sink: Callable[[bytes], None]) -> None:
        async def go() -> None:
            async with self._docker._query(
                f"containers/{container_id}/archive", "GET", params={"path": path},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._sock_connect_s),
            ) as response:
                async for chunk in response.content.iter_chunked(1 << 16):
                    sink(chunk)

        await self._call(f"copy {path} from container {container_id}", go,
                         timeout_s=self._stream_timeout_s)

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        async def go() -> None:
            async with self._docker._query(
                f"containers/{container_id}/archive", "PUT", params={"path": path},
                data=data, headers={"content-type": "application/x-tar"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._sock_connect_s),
            ):
                pass

        await self._call(f"copy into {path} of container {container_id}", go,
                         timeout_s=self._stream_timeout_s)

    async def container_logs(self, container_id: str, *, tail: int) -> str:
        """The last `tail` lines of stdout and stderr, interleaved as written."""
        async def go() -> str:
            lines = await self._docker.containers.container(container_id).log(
                stdout=True, stderr=True, tail=max(0, tail),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s,
                                              sock_connect=self._sock_connect_s),
            )
            return "".join(str(x) for x in lines)

        return await self._call(f"logs of container {container_id}", go)

    async def stream_logs(self, container_id: str, *, tail: int | None = None,
                          since: float | None = None, follow: bool = False,
                          ) -> AsyncIterator[str]:
        """Lines of stdout and stderr; see `Runtime.stream_logs`. Only the connect is bounded
        by the call timeout when following; without `follow` the whole read is."""
        what = f"logs of container {container_id}"
        info = await self.inspect_container(container_id)
        tty = bool((info.get("Config") or {}).get("Tty"))
        params: dict[str, str] = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0",
                                  "tail": "all" if tail is None else str(max(0, tail))}
        if since is not None:
            params["since"] = f"{since:.9f}"
        timeout = aiohttp.ClientTimeout(total=None if follow else self._timeout_s,
                                        sock_read=None, sock_connect=self._sock_connect_s)

        async def connect() -> aiohttp.ClientResponse:
            resp: aiohttp.ClientResponse = await self._docker._do_query(
                f"containers/{container_id}/logs", "GET", params=params, timeout=timeout)
            return resp

        resp = await self._call(what, connect)
        lines = _LogLines(tty=tty)
        try:
            while True:
                try:
                    async with asyncio.timeout(None if follow else self._timeout_s):
                        chunk = await resp.content.read(_LOG_READ)
                except (aiohttp.ClientError, OSError) as exc:
                    raise _map_error(exc, what) from None
                except TimeoutError:
                    raise EngineUnavailable(f"{what}: the engine did not answer in time") from None
                if not chunk:
                    break
                for line in lines.feed(chunk):
                    yield line
            for line in lines.flush():
                yield line
        finally:
            resp.close()

    # ------------------------------------------------------------------ events, close

    def events(self, *, label: str) -> DockerEventStream:
        stream = DockerEventStream(self._docker, label=label, connect_timeout_s=self._timeout_s,
                                   sock_connect_s=self._sock_connect_s)
        self._streams.add(stream)
        return stream

    def cluster_events(self) -> DockerEventStream:
        """Swarm's service and node events (create, update, remove) of the whole cluster
        (a manager reports them; they carry no labels of ours)."""
        stream = DockerEventStream(self._docker, label="", connect_timeout_s=self._timeout_s,
                                   sock_connect_s=self._sock_connect_s,
                                   filters={"type": ["service", "node"]})
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        with contextlib.suppress(Exception):
            await self._docker.close()
        if self._connector is not None:  # ours, not aiodocker's: closed here
            with contextlib.suppress(Exception):
                await self._connector.close()


def _check_protocol() -> None:  # pragma: no cover - static check only
    from reconciler.runtimes import Runtime

    def _accepts(_: Runtime) -> None: ...

    _accepts(DockerRuntime())

