"""A reconcile pass on the fake engine with an nginx edge whose mounted config changes: the
pass reloads the running edge (nginx -t, SIGHUP) instead of recreating it, records the
applied digest so the next pass is a no-op, and a config failing `nginx -t` fails the pass
without a signal. Time is the fake's own clock."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.persistence import State
from reconciler.reconcile import PassStatus, Reconciler
from reconciler.runtimes import ExecResult
from tests.component.fakes import FakeRuntime
from tests.component.test_reconcile_fake import Clock
from tests.specfactory import write_spec
from tests.unit.test_edge_config_reload import SPEC

TEST = ("nginx", "-t", "-q")


def setup(tmp_path: Path) -> tuple[Reconciler, FakeRuntime, Path]:
    fake = FakeRuntime(images={"nginx:1"})
    fake.exec_results[TEST] = ExecResult(0, "")
    fake.exec_results[("ps", "-o", "pid,args")] = ExecResult(1, "")  # no ps: a short settle
    spec = write_spec(tmp_path / "spec", SPEC)
    (spec / "nginx.conf").write_text("events {}\n")
    (spec / "include").mkdir()
    (spec / "include" / "a.conf").write_text("# a\n")
    clock = Clock(fake)
    rec = Reconciler(spec_dir=spec, state=State(tmp_path / "state"), runtime=fake,
                     clock=clock, sleep=clock.sleep, wall=clock, poll_s=0.5)
    return rec, fake, spec


def replace_like_git(path: Path, text: str) -> None:
    path.with_name(".new").write_text(text)
    os.replace(path.with_name(".new"), path)


def edges(fake: FakeRuntime) -> list[str]:
    return [c.id for c in fake.containers.values()
            if c.labels.get("reconciler.service") == "nginx"]


async def test_config_change_reloads_the_running_edge(tmp_path: Path) -> None:
    rec, fake, spec = setup(tmp_path)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    before = edges(fake)
    replace_like_git(spec / "nginx.conf", "events {}\nhttp {}\n")
    fake.exec_log.clear()
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    assert res.plan is not None and [s.id for s in res.plan.steps] == ["reload nginx[1]"]
    assert edges(fake) == before  # nothing recreated
    assert (before[0], TEST) in fake.exec_log
    staged = tmp_path / "state" / "edge-conf" / "shop" / "mounts" / "0-nginx.conf"
    assert staged.read_text() == "events {}\nhttp {}\n"
    again = await rec.reconcile()  # the applied digest is recorded: in sync
    assert again.result is PassStatus.NOOP, again.message


async def test_config_failing_nginx_t_fails_the_pass_without_a_signal(tmp_path: Path) -> None:
    rec, fake, spec = setup(tmp_path)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    before = edges(fake)
    replace_like_git(spec / "nginx.conf", "broken;\n")
    fake.exec_results[TEST] = ExecResult(1, "nginx: [emerg] unknown directive \"broken\"")
    kills = fake.calls["kill_container"]
    res = await rec.reconcile()
    assert res.result is not PassStatus.CONVERGED
    assert "nginx -t failed" in res.message, res.message
    assert fake.calls["kill_container"] == kills  # never signalled
    assert edges(fake) == before
    staged = tmp_path / "state" / "edge-conf" / "shop" / "mounts" / "0-nginx.conf"
    assert staged.read_text() == "events {}\n"
