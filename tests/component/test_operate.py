"""`reconciler restart`, `logs` and `exec` on the fake engine: a restart is an update of the
same generation (every replica replaced once, in the update order, health-gated), and refuses
a service that is not in sync; logs are prefixed per replica and bounded by --tail/--since."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from reconciler import operate
from reconciler.core.plans import Action, Reason
from reconciler.core.restarts import RESTART_SUFFIX, RestartRefused, restart_plan
from tests.component.fakes import FakeRuntime
from tests.component.test_reconcile_fake import IMAGES, make, running


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime(images=set(IMAGES))


async def test_restart_replaces_each_replica_once_same_fingerprint(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    assert (await rec.reconcile()).ok
    before = running(fake, "api")
    fps = {c.labels["reconciler.fingerprint"] for c in fake.containers.values()
           if c.labels.get("reconciler.service") == "api"}
    _, plan, outcome = await rec.converge(
        rec.load_candidate(), planner=lambda d, s: restart_plan(d, s, "api"))
    assert outcome is not None and outcome.ok
    assert [s.action for s in plan.steps] == [Action.REPLACE] * 3
    assert {s.reason for s in plan.steps} == {Reason.RESTART}
    after = running(fake, "api")
    assert len(after) == 3 and not set(after) & set(before)
    assert all(name.endswith(RESTART_SUFFIX) for name in after)
    assert {c.labels["reconciler.fingerprint"] for c in fake.containers.values()
            if c.labels.get("reconciler.service") == "api"} == fps
    assert running(fake, "db")  # nothing else touched
    # the host is in sync afterwards: a normal pass does nothing; a second restart toggles back
    assert (await rec.reconcile()).result.value == "noop"
    await rec.converge(rec.load_candidate(), planner=lambda d, s: restart_plan(d, s, "api"))
    assert sorted(running(fake, "api")) == sorted(before)


async def test_restart_refuses_unknown_or_out_of_sync_service(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    loaded = rec.load_candidate()
    with pytest.raises(RestartRefused, match="not in sync"):  # nothing applied yet
        await rec.converge(loaded, planner=lambda d, s: restart_plan(d, s, "api"))
    assert not fake.containers
    with pytest.raises(RestartRefused, match="no service 'nope'"):
        await rec.converge(loaded, planner=lambda d, s: restart_plan(d, s, "nope"))


async def test_logs_prefixed_per_replica_with_tail(tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake)
    assert (await rec.reconcile()).ok
    containers = await operate.service_containers(fake, "shop", "api")
    for c in containers:
        fake.append_log(c.id, f"hello from {c.replica}", "second line")
    out = io.StringIO()
    await operate.print_logs(fake, containers, out=out, tail=1, since=None, follow=False)
    assert out.getvalue().splitlines() == [
        "api-1 | second line", "api-2 | second line", "api-3 | second line"]
    out = io.StringIO()
    await operate.print_logs(fake, containers, out=out, tail=None, since=fake.now + 1,
                             follow=False)
    assert out.getvalue() == ""
    with pytest.raises(operate.OperateError, match="no containers of service 'ghost'"):
        await operate.service_containers(fake, "shop", "ghost")


async def test_exec_picks_a_running_replica_and_passes_the_exit_code(
        tmp_path: Path, fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, _ = make(tmp_path, fake)
    assert (await rec.reconcile()).ok
    containers = await operate.service_containers(fake, "shop", "api")
    assert operate.pick_replica(containers, 2).replica == 2
    with pytest.raises(operate.OperateError, match="replica 9"):
        operate.pick_replica(containers, 9)
    monkeypatch.setattr(operate.shutil, "which", lambda _: None)  # the runtime's exec
    out = io.StringIO()
    code = await operate.run_exec(fake, containers[0], ["sh", "-c", "echo hi; exit 3"],
                                  out=out, isatty=lambda: False)
    assert (code, out.getvalue()) == (3, "hi\n")
    assert operate.exec_argv("abc", ["ls"], tty=True) == ["docker", "exec", "-i", "-t", "abc",
                                                          "ls"]


def test_since_parses_durations_timestamps_and_times() -> None:
    assert operate.parse_since("10m", now=1000.0) == 400.0
    assert operate.parse_since("1700000000", now=0) == 1_700_000_000.0
    assert operate.parse_since("2023-11-14T22:13:20Z", now=0) == 1_700_000_000.0
    with pytest.raises(operate.OperateError, match="--since"):
        operate.parse_since("yesterday-ish", now=0)
