"""The light read-only engine client of previews (`peek`): answers, errors, and the lazy
runtime that connects the real one only when a pass needs more than the list calls."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.peek import LazyRuntime, Peek, socket_path
from reconciler.runtimes import EngineFailure, EngineUnavailable


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, bytes]]]:
    """A unix socket answering one canned HTTP/1.0 response per path prefix."""
    path = str(tmp_path / "docker.sock")
    seen: list[str] = []
    answers: dict[str, bytes] = {}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(5)

    def serve() -> None:
        for _ in range(8):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                line = conn.recv(65536).split(b"\r\n", 1)[0].decode()
                seen.append(line)
                target = line.split()[1]
                body = next((v for k, v in answers.items() if target.startswith(k)), None)
                if body is None:
                    conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\n\r\noops")
                else:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
                                 + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen, answers
    server.close()
    thread.join(timeout=5)


def test_lists_filtered_by_label(engine: tuple[str, list[str], dict[str, bytes]]) -> None:
    path, seen, answers = engine
    answers["/containers/json"] = json.dumps([{"Id": "a"}]).encode()
    answers["/volumes"] = json.dumps({"Volumes": None}).encode()
    peek = Peek(path)
    assert peek.list_containers(label="reconciler.project=shop") == [{"Id": "a"}]
    assert peek.list_volumes(label="reconciler.project=shop") == []
    assert "reconciler.project%3Dshop" in seen[0] and seen[0].endswith("HTTP/1.0")
    with pytest.raises(EngineFailure, match="500"):
        peek.list_networks(label="reconciler.project=shop")


def test_no_engine_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable):
        Peek(str(tmp_path / "absent.sock"), timeout_s=1).list_containers(label="x=y")


def test_socket_path_only_for_unix_endpoints() -> None:
    assert socket_path("unix:///run/docker.sock") == "/run/docker.sock"
    assert socket_path("tcp://127.0.0.1:2375") is None


class Real:
    closed = False
    start_interval = True  # an engine with API >= 1.44

    async def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"Id": cid}

    async def close(self) -> None:
        self.closed = True


def test_lazy_runtime_connects_only_when_needed(
        engine: tuple[str, list[str], dict[str, bytes]]) -> None:
    path, _, answers = engine
    answers["/networks"] = b"[]"
    connects: list[Real] = []

    async def connect() -> Real:
        connects.append(Real())
        return connects[-1]

    async def go() -> None:
        rt = LazyRuntime(Peek(path), connect)
        assert await rt.list_networks(label="x=y") == []
        assert connects == []  # listing never connects the real runtime
        # a property, not a forwarded coroutine (one would read as True and turn off the
        # executor's own readiness probes): False until connected, then the engine's answer
        assert rt.start_interval is False
        assert await rt.inspect_container("c1") == {"Id": "c1"}
        assert rt.start_interval is True
        assert await rt.inspect_container("c2") == {"Id": "c2"}
        assert len(connects) == 1
        await rt.close()
        assert connects[0].closed

    asyncio.run(go())


class RealStream:
    def __init__(self, label: str) -> None:
        self.label, self.connected, self.closed = label, False, False
        self.items = ["ev1"]

    async def connect(self) -> None:
        self.connected = True

    async def __anext__(self) -> str:
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    async def aclose(self) -> None:
        self.closed = True


class RealWithEvents(Real):
    def events(self, *, label: str) -> RealStream:
        self.stream = RealStream(label)
        return self.stream


def test_lazy_runtime_events_is_a_stream_that_connects_on_use(
        engine: tuple[str, list[str], dict[str, bytes]]) -> None:
    path, _, _ = engine
    connects: list[RealWithEvents] = []

    async def connect() -> RealWithEvents:
        connects.append(RealWithEvents())
        return connects[-1]

    async def go() -> None:
        rt = LazyRuntime(Peek(path), connect)
        stream = rt.events(label="reconciler.project=shop")  # not a coroutine
        assert connects == []
        await stream.connect()
        assert len(connects) == 1 and connects[0].stream.connected
        assert connects[0].stream.label == "reconciler.project=shop"
        assert [ev async for ev in stream] == ["ev1"]
        await stream.aclose()
        assert connects[0].stream.closed

    asyncio.run(go())
