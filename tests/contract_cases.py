"""The `Runtime` contract: one set of test bodies run against the fake and the real engine.

`tests/component/test_runtime_contract.py` runs every case on `FakeRuntime`;
`tests/integration/test_runtime_contract_docker.py` runs the same cases on `DockerRuntime`
against a real dockerd. A case gets a `Harness` that hides the only differences: how a
foreign container is made, which image is unhealthy, and how long "eventually" may take (the
fake answers at once and is checked without any sleep; the real engine is polled with a
deadline).
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.core.health import Probe, health_command
from reconciler.core.snapshots import ContainerState, parse_container
from reconciler.runtimes import (
    JSON,
    BuildFailed,
    Conflict,
    EngineEvent,
    EventStream,
    ImageUnavailable,
    NotFound,
    Runtime,
)

LABEL_PROJECT = "reconciler.project"
LABEL_SERVICE = "reconciler.service"
LABEL_TIER = "reconciler.tier"
LABEL_REPLICA = "reconciler.replica"
LABEL_FINGERPRINT = "reconciler.fingerprint"

#: A main process that exits 0 at once on SIGTERM (so stop is fast) and runs forever otherwise.
KEEPALIVE = "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"
SECOND_NS = 1_000_000_000


@dataclass
class Harness:
    runtime: Runtime
    kind: str  # "fake" | "docker"
    project: str
    image: str  # present; its containers become healthy when their check passes
    unhealthy_image: str  # present; a failing healthcheck ("exit 1") turns them unhealthy
    missing_image: str  # neither present nor pullable
    oom_image: str  # present; runs `Cmd` (a memory hog gets killed over its memory limit)
    create_foreign: Callable[[str], Awaitable[str]]  # a running container WITHOUT our labels
    timeout_s: float = 15.0  # bound of every "eventually" on the real engine
    poll_s: float = 0.1  # 0: the fake, check once and never sleep
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def selector(self) -> str:
        return f"{LABEL_PROJECT}={self.project}"

    def name(self, suffix: str) -> str:
        return f"{self.project}-{suffix}"

    def labels(self, service: str, replica: int = 1) -> dict[str, str]:
        return {
            LABEL_PROJECT: self.project, LABEL_SERVICE: service, LABEL_TIER: "core",
            LABEL_REPLICA: str(replica), LABEL_FINGERPRINT: "3f9c2a1b",
        }

    def config(
        self, service: str, *, image: str | None = None, cmd: Sequence[str] | None = None,
        networks: Sequence[str] = (), healthcheck: JSON | None = None,
        host_config: JSON | None = None,
    ) -> JSON:
        body: JSON = {
            "Image": image or self.image,
            "Env": ["PLAIN=1", "SECRET_TOKEN=do-not-print-me"],
            "Cmd": list(cmd) if cmd is not None else ["sh", "-c", KEEPALIVE],
            "Labels": self.labels(service),
            "HostConfig": {"RestartPolicy": {"Name": "no"}, **(host_config or {})},
        }
        if networks:
            body["NetworkingConfig"] = {
                "EndpointsConfig": {net: {"Aliases": [service]} for net in networks},
            }
        if healthcheck is not None:
            body["Healthcheck"] = healthcheck
        return body

    async def eventually(self, check: Callable[[], Awaitable[bool]], *, what: str,
                         timeout_s: float | None = None) -> float:
        """Wait until `check()` holds; returns the seconds it took (0 on the fake)."""
        start = time.monotonic()
        deadline = start + (timeout_s or self.timeout_s)
        while True:
            if await check():
                return time.monotonic() - start
            if self.poll_s <= 0 or time.monotonic() >= deadline:
                pytest.fail(f"{what}: not reached within {timeout_s or self.timeout_s}s")
            await asyncio.sleep(self.poll_s)

    async def next_event(self, stream: EventStream, *, timeout_s: float | None = None
                         ) -> EngineEvent:
        async with asyncio.timeout(timeout_s or self.timeout_s):
            return await anext(stream)

    async def state(self, cid: str) -> JSON:
        info = await self.runtime.inspect_container(cid)
        state: JSON = info["State"]
        return state

    async def listed(self) -> dict[str, JSON]:
        return {c["Id"]: c for c in await self.runtime.list_containers(label=self.selector)}


Case = Callable[[Harness], Awaitable[None]]


# ----------------------------------------------------------------------------- cases


async def case_create_with_two_networks_is_listed_by_label(h: Harness) -> None:
    rt = h.runtime
    net_a, net_b = h.name("backend"), h.name("edge")
    for net in (net_a, net_b):
        await rt.create_network(net, labels={LABEL_PROJECT: h.project})
    name = h.name("api-1")
    cid = await rt.create_container(name, h.config("api", networks=[net_a, net_b]))

    listed = await h.listed()
    assert list(listed) == [cid]
    item = listed[cid]
    assert item["Names"] == [f"/{name}"]
    assert item["Labels"] == h.labels("api")
    assert item["State"] == "created"
    assert item["Status"] == "Created"
    assert item["Image"] == h.image
    assert str(item["ImageID"]).startswith("sha256:")
    assert isinstance(item["Created"], int)

    info = await rt.inspect_container(cid)
    assert info["Id"] == cid
    assert info["Name"] == f"/{name}"
    assert info["Config"]["Labels"] == h.labels("api")
    assert "PLAIN=1" in info["Config"]["Env"]
    assert info["Config"]["Image"] == h.image
    assert info["HostConfig"]["NetworkMode"] == net_a
    networks = info["NetworkSettings"]["Networks"]
    assert set(networks) == {net_a, net_b}
    for net in (net_a, net_b):
        assert "api" in networks[net]["Aliases"]
    assert info["State"]["Status"] == "created"
    assert info["State"]["Running"] is False
    assert "Health" not in info["State"]
    assert info["RestartCount"] == 0

    nets = {n["Name"]: n for n in await rt.list_networks(label=h.selector)}
    assert set(nets) == {net_a, net_b}
    assert nets[net_a]["Labels"] == {LABEL_PROJECT: h.project}

    await rt.start_container(cid)
    networks = (await rt.inspect_container(cid))["NetworkSettings"]["Networks"]
    for net in (net_a, net_b):
        assert "api" in networks[net]["Aliases"]


async def case_list_by_label_ignores_foreign_container(h: Harness) -> None:
    foreign = await h.create_foreign(h.name("foreign"))
    ours = await h.runtime.create_container(h.name("web-1"), h.config("web"))
    assert set(await h.listed()) == {ours}
    by_key = {c["Id"] for c in await h.runtime.list_containers(label=LABEL_PROJECT)}
    assert ours in by_key
    assert foreign not in by_key
    other = {c["Id"] for c in await h.runtime.list_containers(
        label=f"{LABEL_PROJECT}={h.project}-other")}
    assert ours not in other


async def case_duplicate_name_is_conflict(h: Harness) -> None:
    name = h.name("db-1")
    first = await h.runtime.create_container(name, h.config("db"))
    with pytest.raises(Conflict) as err:
        await h.runtime.create_container(name, h.config("db"))
    assert "do-not-print-me" not in str(err.value)
    assert list(await h.listed()) == [first]


async def case_create_with_missing_image_is_not_found(h: Harness) -> None:
    with pytest.raises(NotFound):
        await h.runtime.create_container(h.name("ghost-1"), h.config("ghost",
                                                                     image=h.missing_image))
    assert await h.listed() == {}


async def case_start_stop_remove(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
    await rt.start_container(cid)
    await rt.start_container(cid)  # already running: no error
    state = await h.state(cid)
    assert state["Status"] == "running"
    assert state["Running"] is True
    item = (await h.listed())[cid]
    assert item["State"] == "running"
    assert str(item["Status"]).startswith("Up ")

    await rt.stop_container(cid, timeout_s=10)
    state = await h.state(cid)
    assert state["Status"] == "exited"
    # 0: the image's TERM trap; 137: the engine's SIGKILL after the grace period, which a
    # heavily loaded 2-core host can reach before busybox sh runs the trap
    assert state["ExitCode"] in (0, 137)
    assert state["OOMKilled"] is False
    item = (await h.listed())[cid]
    assert item["State"] == "exited"
    assert str(item["Status"]).startswith("Exited (0) ")
    await rt.stop_container(cid, timeout_s=5)  # already stopped: no error

    await rt.remove_container(cid)
    assert await h.listed() == {}
    with pytest.raises(NotFound):
        await rt.inspect_container(cid)
    with pytest.raises(NotFound):
        await rt.remove_container(cid)
    with pytest.raises(NotFound):
        await rt.start_container(cid)
    with pytest.raises(NotFound):
        await rt.stop_container(cid, timeout_s=1)


async def case_remove_running_container_forces(h: Harness) -> None:
    cid = await h.runtime.create_container(h.name("svc-1"), h.config("svc"))
    await h.runtime.start_container(cid)
    await h.runtime.remove_container(cid)
    assert await h.listed() == {}


async def case_remove_never_removes_named_volume(h: Harness) -> None:
    rt = h.runtime
    volume = h.name("pg-data")
    labels = {LABEL_PROJECT: h.project}
    await rt.create_volume(volume, labels=labels)
    await rt.create_volume(volume, labels=labels)  # idempotent
    cid = await rt.create_container(
        h.name("pg-1"), h.config("pg", host_config={"Binds": [f"{volume}:/data"]}))
    await rt.start_container(cid)
    await rt.remove_container(cid)
    volumes = {v["Name"]: v for v in await rt.list_volumes(label=h.selector)}
    assert set(volumes) == {volume}
    assert volumes[volume]["Labels"] == labels


async def case_network_and_volume_create_are_idempotent(h: Harness) -> None:
    rt = h.runtime
    labels = {LABEL_PROJECT: h.project}
    net, vol = h.name("net"), h.name("vol")
    await rt.create_network(net, labels=labels, internal=True)
    await rt.create_network(net, labels=labels, internal=True)
    await rt.create_volume(vol, labels=labels)
    await rt.create_volume(vol, labels=labels)
    assert [n["Name"] for n in await rt.list_networks(label=h.selector)] == [net]
    assert [v["Name"] for v in await rt.list_volumes(label=h.selector)] == [vol]
    with pytest.raises(Conflict):  # exists, but not with these labels: never adopt it
        await rt.create_network(net, labels={LABEL_PROJECT: f"{h.project}-other"})
    with pytest.raises(Conflict):
        await rt.create_volume(vol, labels={LABEL_PROJECT: f"{h.project}-other"})


async def case_connect_network_later(h: Harness) -> None:
    rt = h.runtime
    net = h.name("late")
    await rt.create_network(net, labels={LABEL_PROJECT: h.project})
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
    await rt.connect_network(cid, net, aliases=["svc", "svc-alt"])
    networks = (await rt.inspect_container(cid))["NetworkSettings"]["Networks"]
    assert {"svc", "svc-alt"} <= set(networks[net]["Aliases"])
    await rt.start_container(cid)
    # A running container cannot join a missing network.
    with pytest.raises(NotFound):
        await rt.connect_network(cid, h.name("no-such-net"), aliases=[])


async def case_missing_network_fails_at_start_not_at_create(h: Harness) -> None:
    """Engine trap: create (and connect of a created container) accept an unknown network;
    only start fails, with NotFound. Create networks before containers."""
    rt = h.runtime
    ghost = h.name("no-such-net")
    cid = await rt.create_container(h.name("svc-1"), h.config("svc", networks=[ghost]))
    with pytest.raises(NotFound):
        await rt.start_container(cid)
    assert (await h.state(cid))["Status"] == "created"
    other = await rt.create_container(h.name("svc-2"), h.config("svc"))
    await rt.connect_network(other, ghost, aliases=["svc"])
    with pytest.raises(NotFound):
        await rt.start_container(other)


async def case_image_present(h: Harness) -> None:
    assert await h.runtime.image_present(h.image) is True
    assert await h.runtime.image_present(h.missing_image) is False


async def case_pull_unknown_image_is_image_unavailable(h: Harness) -> None:
    start = time.monotonic()
    with pytest.raises(ImageUnavailable):
        async with asyncio.timeout(30):
            await h.runtime.pull_image(h.missing_image)
    h.timings["pull_failure_s"] = time.monotonic() - start
    assert await h.runtime.image_present(h.missing_image) is False


def _context(dockerfile: str, files: dict[str, str]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, text in {"Dockerfile": dockerfile, **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    out.seek(0)
    return out


async def case_build_tag_and_failed_build(h: Harness) -> None:
    rt, ref = h.runtime, f"{h.project}-built:contract"
    lines: list[str] = []
    start = time.monotonic()
    await rt.build_image(_context(f"FROM {h.image}\nARG A\nCOPY msg /msg\n", {"msg": "hi\n"}),
                         ref=ref, dockerfile="Dockerfile", args={"A": "1"}, target=None,
                         labels={LABEL_PROJECT: h.project}, progress=lines.append)
    h.timings["build_s"] = time.monotonic() - start
    assert await rt.image_present(ref) and any(line.startswith("Step 1/") for line in lines)
    await rt.tag_image(ref, f"{h.project}-named/built:dev")
    assert await rt.image_present(f"{h.project}-named/built:dev")
    broken = f"{h.project}-broken:contract"
    with pytest.raises(BuildFailed) as info:
        await rt.build_image(_context(f"FROM {h.image}\nRUN false\n", {}), ref=broken,
                             dockerfile="Dockerfile", args={}, target=None,
                             labels={LABEL_PROJECT: h.project}, progress=lambda _: None)
    assert "returned a non-zero code: 1" in str(info.value)
    assert any("RUN false" in line for line in info.value.tail)
    assert await rt.image_present(broken) is False
    with pytest.raises(NotFound):
        await rt.tag_image(h.missing_image, f"{h.project}-named/missing:dev")


async def case_exec_returns_exit_code_and_output(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
    await rt.start_container(cid)
    result = await rt.exec_in_container(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result.exit_code == 3
    assert "out\n" in result.output
    assert "err\n" in result.output
    ok = await rt.exec_in_container(cid, ["true"])
    assert ok.exit_code == 0
    assert (await rt.exec_in_container(cid, ["false"])).exit_code == 1
    await rt.stop_container(cid, timeout_s=5)
    with pytest.raises(Conflict):  # not running
        await rt.exec_in_container(cid, ["true"])


async def case_exec_stream_pipes_bytes_both_ways(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
    await rt.start_container(cid)
    got: list[bytes] = []
    payload = bytes(range(256)) * 300  # binary, more than one chunk
    result = await rt.exec_stream(cid, ["cat"], sink=got.append, stdin=[payload[:5000],
                                                                        payload[5000:]])
    assert result.exit_code == 0
    assert b"".join(got) == payload
    failed = await rt.exec_stream(cid, ["sh", "-c", "exit 3"], sink=got.append)
    assert failed.exit_code == 3
    await rt.stop_container(cid, timeout_s=5)
    with pytest.raises(Conflict):  # not running
        await rt.exec_stream(cid, ["true"])


async def case_archive_round_trip_in_a_created_container(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))  # never started
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    await rt.put_archive(cid, "/", buf.getvalue())
    out: list[bytes] = []
    await rt.get_archive(cid, "/hello.txt", sink=out.append)
    with tarfile.open(fileobj=io.BytesIO(b"".join(out)), mode="r") as tar:
        member = tar.getmember("hello.txt")
        f = tar.extractfile(member)
        assert f is not None and f.read() == b"hello"
    with pytest.raises(NotFound):
        await rt.get_archive(cid, "/absent", sink=out.append)


async def case_exec_runs_the_containers_own_health_check(h: Harness) -> None:
    """What the executor does before Docker's first probe: exec the container's own health
    check (as read back from inspect) and take its exit code."""
    rt = h.runtime
    codes = {}
    for suffix, test in (("ok", ["CMD-SHELL", "exit 0"]), ("bad", ["CMD", "false"])):
        hc = {"Test": test, "Interval": 60 * SECOND_NS, "Timeout": 5 * SECOND_NS,
              "Retries": 1, "StartPeriod": 0}
        cid = await rt.create_container(h.name(f"probe-{suffix}"),
                                        h.config(f"probe-{suffix}", healthcheck=hc))
        await rt.start_container(cid)
        info = await rt.inspect_container(cid)
        command = health_command(info)
        assert command is not None and command[1] == 5.0
        codes[suffix] = (await rt.exec_in_container(cid, command[0])).exit_code
        await rt.stop_container(cid, timeout_s=5)
    assert codes == {"ok": 0, "bad": 1}
    assert isinstance(rt.start_interval, bool)


async def case_logs_tail(h: Harness) -> None:
    rt = h.runtime
    # stdout and stderr are separate pipes: the engine orders lines across them only by
    # arrival, so the stderr line is written well before the others.
    cmd = ["sh", "-c", f"echo err >&2; sleep 1; echo one; echo two; echo three; {KEEPALIVE}"]
    cid = await rt.create_container(h.name("svc-1"), h.config("svc", cmd=cmd))
    await rt.start_container(cid)

    async def logged() -> bool:
        return await rt.container_logs(cid, tail=10) == "err\none\ntwo\nthree\n"

    await h.eventually(logged, what="four log lines")
    assert await rt.container_logs(cid, tail=2) == "two\nthree\n"


async def _collect(it: Any, *, limit: int = 100, timeout_s: float = 15.0) -> list[str]:
    out: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for line in it:
            out.append(line)
            if len(out) >= limit:
                break
    return out


async def case_stream_logs_tail_since_follow(h: Harness) -> None:
    rt = h.runtime
    cmd = ["sh", "-c", f"echo err >&2; sleep 1; echo one; echo two; echo three; {KEEPALIVE}"]
    cid = await rt.create_container(h.name("svc-1"), h.config("svc", cmd=cmd))
    await rt.start_container(cid)

    async def logged() -> bool:
        return await _collect(rt.stream_logs(cid)) == ["err", "one", "two", "three"]

    await h.eventually(logged, what="four log lines")
    assert await _collect(rt.stream_logs(cid, tail=2)) == ["two", "three"]
    assert await _collect(rt.stream_logs(cid, tail=0)) == []
    assert await _collect(rt.stream_logs(cid, since=4_000_000_000.0)) == []  # the future
    # follow: what is there, then new lines until the container stops
    seen: list[str] = []
    got_one = asyncio.Event()

    async def follow() -> None:
        async for line in rt.stream_logs(cid, tail=1, follow=True):
            seen.append(line)
            got_one.set()

    task = asyncio.create_task(follow())
    async with asyncio.timeout(h.timeout_s):
        await got_one.wait()
    assert seen == ["three"]
    await rt.stop_container(cid, timeout_s=5)
    async with asyncio.timeout(h.timeout_s):
        await task  # a stopped container ends the stream
    assert seen == ["three"]


async def case_process_exit_code(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("job-1"), h.config("job", cmd=["sh", "-c", "exit 3"]))
    await rt.start_container(cid)

    async def exited() -> bool:
        return bool((await h.state(cid))["Status"] == "exited")

    await h.eventually(exited, what="container exit")
    state = await h.state(cid)
    assert state["ExitCode"] == 3
    assert state["Running"] is False
    assert str((await h.listed())[cid]["Status"]).startswith("Exited (3) ")


async def case_kill(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
    await rt.start_container(cid)
    await rt.kill_container(cid, signal="KILL")

    async def exited() -> bool:
        return bool((await h.state(cid))["Status"] == "exited")

    await h.eventually(exited, what="exit after SIGKILL")
    assert (await h.state(cid))["ExitCode"] == 137
    with pytest.raises(Conflict):
        await rt.kill_container(cid, signal="KILL")


async def case_events_for_our_containers_only(h: Harness) -> None:
    rt = h.runtime
    stream = rt.events(label=h.selector)
    try:
        await stream.connect()
        foreign = await h.create_foreign(h.name("foreign"))
        cid = await rt.create_container(h.name("svc-1"), h.config("svc"))
        await rt.start_container(cid)
        await rt.stop_container(cid, timeout_s=5)
        await rt.remove_container(cid)

        seen: list[EngineEvent] = []
        while not any(e.action == "destroy" and e.container_id == cid for e in seen):
            seen.append(await h.next_event(stream))
        assert all(e.container_id != foreign for e in seen)
        actions = [e.action for e in seen if e.container_id == cid]
        expected = ["create", "start", "kill", "die", "stop", "destroy"]
        assert [a for a in actions if a in expected] == expected, actions
        for e in seen:
            assert e.attributes[LABEL_PROJECT] == h.project
            assert e.attributes["name"] == h.name("svc-1")
            assert e.time_nano > 0
        die = next(e for e in seen if e.action == "die")
        # 0: the app exits on SIGTERM; 137: a loaded host ran out the stop timeout (SIGKILL)
        assert die.attributes["exitCode"] in ("0", "137"), die.attributes
    finally:
        await stream.aclose()
    with pytest.raises(StopAsyncIteration):  # closed streams end
        await anext(stream)


async def case_events_consumer_cancel_cleans_up(h: Harness) -> None:
    stream = h.runtime.events(label=h.selector)
    await stream.connect()
    task = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def _healthcheck(test: str) -> JSON:
    return {"Test": ["CMD-SHELL", test], "Interval": SECOND_NS, "Timeout": SECOND_NS,
            "Retries": 1, "StartPeriod": 0}


async def case_healthcheck_healthy(h: Harness) -> None:
    rt = h.runtime
    stream = rt.events(label=h.selector)
    try:
        await stream.connect()
        cid = await rt.create_container(
            h.name("svc-1"), h.config("svc", healthcheck=_healthcheck("exit 0")))
        await rt.start_container(cid)

        async def healthy() -> bool:
            return bool((await h.state(cid))["Health"]["Status"] == "healthy")

        h.timings["healthy_s"] = await h.eventually(healthy, what="health healthy",
                                                    timeout_s=10)
        health = (await h.state(cid))["Health"]
        assert health["FailingStreak"] == 0
        assert health["Log"]
        assert health["Log"][-1]["ExitCode"] == 0
        assert str((await h.listed())[cid]["Status"]).endswith("(healthy)")
        seen: list[str] = []
        while not seen or not seen[-1].startswith("health_status"):
            event = await h.next_event(stream, timeout_s=10)
            assert event.container_id == cid
            seen.append(event.action)
        assert seen == ["create", "start", "health_status: healthy"]  # no exec_* probes
    finally:
        await stream.aclose()


async def case_healthcheck_unhealthy(h: Harness) -> None:
    rt = h.runtime
    cid = await rt.create_container(
        h.name("svc-1"),
        h.config("svc", image=h.unhealthy_image, healthcheck=_healthcheck("exit 1")))
    await rt.start_container(cid)

    async def unhealthy() -> bool:
        return bool((await h.state(cid))["Health"]["Status"] == "unhealthy")

    h.timings["unhealthy_s"] = await h.eventually(unhealthy, what="health unhealthy",
                                                  timeout_s=10)
    state = await h.state(cid)
    assert state["Running"] is True  # Docker never restarts an unhealthy container
    assert state["Health"]["FailingStreak"] >= 1
    assert str((await h.listed())[cid]["Status"]).endswith("(unhealthy)")


async def case_no_healthcheck_has_no_health(h: Harness) -> None:
    cid = await h.runtime.create_container(h.name("svc-1"), h.config("svc"))
    await h.runtime.start_container(cid)
    state = await h.state(cid)
    assert "Health" not in state or state["Health"] is None
    assert "(" not in str((await h.listed())[cid]["Status"])


async def case_crash_loop_is_restarting_with_a_restart_count(h: Harness) -> None:
    """A process that keeps exiting under a restart policy: `restarting` (which Docker
    reports as Running too), a restart count, the last exit code; what the health gate and
    the planner read of it."""
    rt = h.runtime
    cid = await rt.create_container(h.name("crashy-1"), h.config(
        "crashy", cmd=["sh", "-c", "exit 1"],
        host_config={"RestartPolicy": {"Name": "on-failure"}}))
    await rt.start_container(cid)
    seen: dict[str, Any] = {}

    async def restarting() -> bool:
        info = await rt.inspect_container(cid)
        item = (await h.listed()).get(cid, {})
        seen.update(info=info, item=item)
        return bool(info["State"]["Status"] == "restarting" and item.get("State") == "restarting"
                    and info["RestartCount"] >= 1)

    await h.eventually(restarting, what="restarting after a crash")
    state = seen["info"]["State"]
    assert (state["Restarting"], state["Running"], state["ExitCode"]) == (True, True, 1)
    assert str(seen["item"]["Status"]).startswith("Restarting (1) ")
    probe = Probe.from_inspect(seen["info"])
    assert (probe.status, probe.exit_code) == ("restarting", 1) and probe.restart_count >= 1
    observed = parse_container(seen["item"])
    assert observed is not None and observed.state is ContainerState.RESTARTING
    await rt.stop_container(cid, timeout_s=1)  # a stop ends the loop

    async def stopped() -> bool:
        return bool((await h.state(cid))["Status"] == "exited")

    await h.eventually(stopped, what="stopped")


#: grows a shell string to 64 MiB unless the memory limit kills it first (bounded either way)
MEMORY_HOG = 'i=0; x=a; while [ $i -lt 26 ]; do x="$x$x"; i=$((i+1)); done; echo survived'


async def case_oom_kill_is_reported(h: Harness) -> None:
    """A container over its memory limit is killed by the kernel: exited, 137, OOMKilled."""
    rt = h.runtime
    limit = 16 * 1024 * 1024
    cid = await rt.create_container(h.name("hog-1"), h.config(
        "hog", image=h.oom_image, cmd=["sh", "-c", MEMORY_HOG],
        host_config={"Memory": limit, "MemorySwap": limit}))
    await rt.start_container(cid)

    async def exited() -> bool:
        return bool((await h.state(cid))["Status"] == "exited")

    await h.eventually(exited, what="killed for memory", timeout_s=60)
    info = await rt.inspect_container(cid)
    assert (info["State"]["OOMKilled"], info["State"]["ExitCode"]) == (True, 137)
    assert str((await h.listed())[cid]["Status"]).startswith("Exited (137) ")
    assert Probe.from_inspect(info).oom_killed


CASES: list[Case] = [
    case_create_with_two_networks_is_listed_by_label,
    case_list_by_label_ignores_foreign_container,
    case_duplicate_name_is_conflict,
    case_create_with_missing_image_is_not_found,
    case_start_stop_remove,
    case_remove_running_container_forces,
    case_remove_never_removes_named_volume,
    case_network_and_volume_create_are_idempotent,
    case_connect_network_later,
    case_missing_network_fails_at_start_not_at_create,
    case_image_present,
    case_pull_unknown_image_is_image_unavailable,
    case_build_tag_and_failed_build,
    case_exec_returns_exit_code_and_output,
    case_exec_stream_pipes_bytes_both_ways,
    case_archive_round_trip_in_a_created_container,
    case_exec_runs_the_containers_own_health_check,
    case_logs_tail,
    case_stream_logs_tail_since_follow,
    case_process_exit_code,
    case_kill,
    case_events_for_our_containers_only,
    case_events_consumer_cancel_cleans_up,
    case_healthcheck_healthy,
    case_healthcheck_unhealthy,
    case_no_healthcheck_has_no_health,
    case_crash_loop_is_restarting_with_a_restart_count,
    case_oom_kill_is_reported,
]


def case_id(case: Any) -> str:
    return str(case.__name__).removeprefix("case_")
