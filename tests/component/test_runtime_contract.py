"""The runtime contract (tests/contract_cases.py) on `FakeRuntime`, plus the fake's scripting.

No real sleeps: the fake changes state synchronously and `Harness.eventually` checks once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from reconciler.runtimes import JSON, EngineFailure, EngineUnavailable, ImageUnavailable
from tests.component.fakes import FakeRuntime, ImageBehaviour
from tests.contract_cases import CASES, LABEL_PROJECT, Case, Harness, case_id

IMAGE = "reconciler-test/busybox:contract"
UNHEALTHY = "reconciler-test/unhealthy:contract"
HOG = "reconciler-test/memory-hog:contract"
MISSING = "reconciler-test/does-not-exist:0"


@pytest.fixture
async def fake() -> AsyncIterator[FakeRuntime]:
    runtime = FakeRuntime(images={IMAGE, UNHEALTHY, HOG}, pullable={"reconciler-demo/app:1.0"})
    runtime.set_behaviour(UNHEALTHY, ImageBehaviour(health="unhealthy"))
    runtime.set_behaviour(HOG, ImageBehaviour(oom_on_start=True))
    yield runtime
    await runtime.close()


@pytest.fixture
def harness(fake: FakeRuntime) -> Harness:
    project = f"rt{uuid.uuid4().hex[:10]}"

    async def create_foreign(name: str) -> str:
        return fake.seed_container(name, {"Image": IMAGE, "Labels": {"owner": "someone-else"},
                                          "Cmd": ["sh", "-c", "while true; do sleep 1; done"]})

    return Harness(runtime=fake, kind="fake", project=project, image=IMAGE,
                   unhealthy_image=UNHEALTHY, missing_image=MISSING, oom_image=HOG,
                   create_foreign=create_foreign, poll_s=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_contract(case: Case, harness: Harness) -> None:
    await case(harness)


# ----------------------------------------------------------------------------- fake-only


def _config(image: str = IMAGE, *, healthcheck: bool = True, restart: str = "no") -> JSON:
    body: JSON = {"Image": image, "Labels": {LABEL_PROJECT: "p"},
                  "HostConfig": {"RestartPolicy": {"Name": restart}}}
    if healthcheck:
        body["Healthcheck"] = {"Test": ["CMD-SHELL", "true"], "Interval": 10**9, "Retries": 3}
    return body


async def test_image_behaviour_starting_then_set_health(fake: FakeRuntime) -> None:
    fake.set_behaviour(IMAGE, ImageBehaviour(health="starting"))
    stream = fake.events(label=LABEL_PROJECT)
    await stream.connect()
    cid = await fake.create_container("a", _config())
    await fake.start_container(cid)
    item = (await fake.list_containers(label=LABEL_PROJECT))[0]
    assert item["Status"] == "Up Less than a second (health: starting)"
    fake.advance(2)
    fake.set_health(cid, "healthy")
    item = (await fake.list_containers(label=LABEL_PROJECT))[0]
    assert item["Status"] == "Up 2 seconds (healthy)"
    fake.set_health(cid, "unhealthy")
    health = (await fake.inspect_container(cid))["State"]["Health"]
    assert health["Status"] == "unhealthy"
    assert health["FailingStreak"] == 3
    actions = [(await anext(stream)).action for _ in range(4)]
    assert actions == ["create", "start", "health_status: healthy", "health_status: unhealthy"]
    await stream.aclose()


async def test_exit_on_start_and_restart_policy(fake: FakeRuntime) -> None:
    fake.set_behaviour(IMAGE, ImageBehaviour(exit_on_start=2))
    cid = await fake.create_container("a", _config(healthcheck=False))
    await fake.start_container(cid)
    state = (await fake.inspect_container(cid))["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 2)
    fake.advance(3)
    item = (await fake.list_containers(label=LABEL_PROJECT))[0]
    assert item["Status"] == "Exited (2) 3 seconds ago"


async def test_crash_restarts_with_policy_and_oom(fake: FakeRuntime) -> None:
    cid = await fake.create_container("a", _config(restart="unless-stopped"))
    await fake.start_container(cid)
    fake.crash(cid, 1)
    info = await fake.inspect_container(cid)
    assert info["RestartCount"] == 1
    assert info["State"]["Status"] == "restarting"  # the engine waits before restarting
    fake.advance(0.3)
    info = await fake.inspect_container(cid)
    assert info["State"]["Running"] is True
    fake.oom(cid)
    fake.advance(1.0)
    info = await fake.inspect_container(cid)
    assert info["RestartCount"] == 2
    other = await fake.create_container("b", _config(restart="no"))
    await fake.start_container(other)
    fake.oom(other)
    state = (await fake.inspect_container(other))["State"]
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 137, True)


async def test_calls_write_calls_and_fail_next(fake: FakeRuntime) -> None:
    await fake.list_containers(label=LABEL_PROJECT)
    assert fake.write_calls == 0
    fake.fail_next("create_container", EngineUnavailable("boom"))
    with pytest.raises(EngineUnavailable):
        await fake.create_container("a", _config())
    cid = await fake.create_container("a", _config())
    await fake.start_container(cid)
    await fake.pull_image("reconciler-demo/app:1.0")
    assert await fake.image_present("reconciler-demo/app:1.0")
    with pytest.raises(ImageUnavailable):
        await fake.pull_image("nope:1")
    assert fake.calls["create_container"] == 2
    assert fake.write_calls == 5
    fake.fail_next("list_containers", EngineFailure("x"), times=2)
    for _ in range(2):
        with pytest.raises(EngineFailure):
            await fake.list_containers(label=LABEL_PROJECT)
    assert await fake.list_containers(label=LABEL_PROJECT)


async def test_seed_is_not_a_call_and_drop_ends_streams(fake: FakeRuntime) -> None:
    fake.seed_container("leftover", _config(), running=False)
    assert fake.write_calls == 0
    stream = fake.events(label=LABEL_PROJECT)
    await stream.connect()
    fake.drop_event_streams()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_exec_scripting(fake: FakeRuntime) -> None:
    from reconciler.runtimes import ExecResult

    cid = fake.seed_container("edge", _config(healthcheck=False))
    fake.exec_results[("nginx", "-s", "reload")] = ExecResult(1, "emerg: bad config\n")
    assert (await fake.exec_in_container(cid, ["nginx", "-s", "reload"])).exit_code == 1
    assert (await fake.exec_in_container(cid, ["nginx", "-t"])).exit_code == 0
    assert fake.exec_log[-1] == (cid, ("nginx", "-t"))
