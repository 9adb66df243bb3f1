"""`build:` through the reconciler on the fake engine: a build runs in the first phase, before
a container is stopped, and only when the content-addressed image is missing; a failing build
fails the pass with nothing stopped, created or removed."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.model import LoadedSpec
from reconciler.loading import load
from reconciler.reconcile import PassStatus
from tests.component.fakes import FakeRuntime
from tests.component.test_reconcile_fake import make, running

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 1s, deadline: 30s}
services:
  db: {tier: infrastructure, image: "db:1"}
  web:
    tier: business
    image: shop/web:dev
    build: {context: ./app, args: {MODE: fast}}
    replicas: 2
    depends_on: [db]
"""


def context(tmp_path: Path, text: str = "one\n") -> None:
    app = tmp_path / "spec" / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "Dockerfile").write_text("FROM db:1\nCOPY msg /msg\n")
    (app / "msg").write_text(text)


def loaded(tmp_path: Path) -> LoadedSpec:
    return load(tmp_path / "spec")


async def test_built_before_anything_stops_and_only_when_missing(tmp_path: Path) -> None:
    fake = FakeRuntime(images={"db:1"})
    context(tmp_path)
    rec, events = make(tmp_path, fake, SPEC)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    ref = loaded(tmp_path).builds["web"].ref
    assert fake.built == [ref] and "shop/web:dev" in fake.images
    assert fake.calls["pull_image"] == 0  # a built image is never pulled
    kinds = [e.kind for e in events]
    assert kinds.index("build") < kinds.index("tier-start")
    old = running(fake, "web")
    assert len(old) == 2

    # unchanged: no build, no write
    writes = fake.write_calls
    assert (await rec.reconcile()).result is PassStatus.NOOP
    assert fake.write_calls == writes and fake.built == [ref]

    # changed content: a new name, built first, then the rollout replaces both replicas
    context(tmp_path, "two\n")
    events.clear()
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    new = loaded(tmp_path).builds["web"].ref
    assert new != ref and fake.built == [ref, new]
    assert {fake.containers[c].config["Image"] for c in fake.containers
            if fake.containers[c].labels["reconciler.service"] == "web"} == {new}
    assert set(running(fake, "web")).isdisjoint(old)


async def test_a_failing_build_stops_nothing(tmp_path: Path) -> None:
    fake = FakeRuntime(images={"db:1"})
    context(tmp_path)
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    before = {c.id: (c.name, c.state) for c in fake.containers.values()}
    calls = dict(fake.calls)
    context(tmp_path, "broken\n")
    fake.failing_builds.add(loaded(tmp_path).builds["web"].ref)
    res = await rec.reconcile()
    assert res.result in (PassStatus.FAILED, PassStatus.ROLLED_BACK), res.message
    assert "build failed: " in res.message and "returned a non-zero code: 1" in res.message
    assert "last output lines:" in res.message
    assert {c.id: (c.name, c.state) for c in fake.containers.values()} == before
    for method in ("create_container", "stop_container", "remove_container", "kill_container"):
        assert fake.calls[method] == calls.get(method, 0), method
