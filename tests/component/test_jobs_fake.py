"""Jobs (`kind: job`) on the fake engine: a job runs to completion in its tier, gates its
dependents on exit 0, runs again only when its own fingerprint changes, is never re-run by a
no-op pass or a revert, and a failing job fails the rollout like a failed health gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.persistence import State
from reconciler.reconcile import PassStatus
from tests.component.fakes import FakeContainer, FakeRuntime
from tests.component.test_reconcile_fake import make
from tests.specfactory import write_spec

SPEC = """
project: shop
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 1}
  update: {min_ready: 1s, deadline: 30s}
networks: {backend: {}}
services:
  db: {tier: infrastructure, image: "db:1", networks: [backend]}
  migrate:
    tier: core
    kind: job
    image: "tool:1"
    command: ["sh", "-c", "echo migrated v1; exit 0"]
    networks: [backend]
    depends_on: [db]
  api:
    tier: business
    image: "api:1"
    networks: [backend]
    depends_on: {migrate: {condition: service_completed_successfully}}
"""
IMAGES = {"db:1", "tool:1", "api:1", "api:2"}


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime(images=set(IMAGES))


def of(fake: FakeRuntime, service: str) -> list[FakeContainer]:
    return sorted((c for c in fake.containers.values()
                   if c.labels.get("reconciler.service") == service), key=lambda c: c.created)


async def test_a_job_runs_once_and_gates_its_dependents(tmp_path: Path,
                                                        fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake, SPEC)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    [job], [api] = of(fake, "migrate"), of(fake, "api")
    assert job.state == "exited" and job.exit_code == 0 and job.logs == ["migrated v1"]
    assert job.host_config["RestartPolicy"]["Name"] == ""  # forced to "no"
    assert job.finished_at is not None and api.started_at is not None
    assert api.started_at >= job.finished_at
    assert State(tmp_path / "state").history()[-1].jobs == {"migrate": 0}
    # a no-op pass (and the resync after the job's own `die`) never runs it again
    writes = fake.write_calls
    again = await rec.reconcile()
    assert again.result is PassStatus.NOOP and fake.write_calls == writes
    assert of(fake, "migrate") == [job]


async def test_a_changed_job_runs_once_more_and_the_older_run_is_pruned(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    [first] = of(fake, "migrate")
    write_spec(tmp_path / "spec", SPEC.replace("migrated v1", "migrated v2"))
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    [second] = of(fake, "migrate")
    assert second.id != first.id and second.logs == ["migrated v2"]
    assert second.exit_code == 0
    assert (await rec.reconcile()).result is PassStatus.NOOP
    assert of(fake, "migrate") == [second]


async def test_a_failing_job_fails_the_rollout_and_the_revert_does_not_rerun_the_old_one(
        tmp_path: Path, fake: FakeRuntime) -> None:
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    [first] = of(fake, "migrate")
    started = first.started_at
    write_spec(tmp_path / "spec", SPEC.replace("echo migrated v1; exit 0", "echo boom; exit 3")
               .replace('image: "api:1"', 'image: "api:2"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK, res.message
    assert "job exited with code 3" in res.message and "boom" in res.message
    # back on last-good: the old record is still there, never started again; the failed
    # run is pruned by the revert; api never moved to api:2
    assert of(fake, "migrate") == [first] and first.started_at == started
    assert [c.config["Image"] for c in of(fake, "api")] == ["api:1"]
    entry = State(tmp_path / "state").history()[-1]
    assert entry.jobs == {"migrate": 3}


async def test_a_revert_after_a_later_failure_does_not_rerun_the_older_job(
        tmp_path: Path, fake: FakeRuntime) -> None:
    from tests.component.fakes import ImageBehaviour

    fake.images.add("api:bad")
    fake.set_behaviour("api:bad", ImageBehaviour(health="unhealthy"))
    rec, _ = make(tmp_path, fake, SPEC)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    [first] = of(fake, "migrate")
    started = first.started_at
    write_spec(tmp_path / "spec", SPEC.replace("migrated v1", "migrated v2")
               .replace('image: "api:1"', 'image: "api:bad"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK, res.message
    # the new job ran (forward-only); the revert found the old generation's record done
    # and did not run it again
    assert of(fake, "migrate") == [first] and first.started_at == started
    assert (await rec.reconcile()).result is PassStatus.NOOP


async def test_a_done_job_is_not_a_service_short_of_healthy_replicas(
        tmp_path: Path, fake: FakeRuntime) -> None:
    """The controller's replica gauges (what ReconcilerServiceUnhealthy compares) leave jobs
    out: an exited-0 job is done, not 0 of 1 healthy forever."""
    from prometheus_client import CollectorRegistry

    from reconciler.controller import Controller
    from reconciler.telemetry import Metrics

    rec, _ = make(tmp_path, fake, SPEC)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED
    registry = CollectorRegistry()
    ctl = Controller(rec, metrics=Metrics(registry, version="test"), watch_spec=False,
                     follow_events=False)
    await ctl._export(res, [])

    def replicas(service: str, tier: str, state: str) -> float | None:
        return registry.get_sample_value("reconciler_service_replicas",
                                         {"service": service, "tier": tier, "state": state})

    assert replicas("db", "infrastructure", "healthy") == 1
    assert replicas("api", "business", "desired") == 1
    assert replicas("migrate", "core", "desired") is None
    assert replicas("migrate", "core", "healthy") is None
    assert registry.get_sample_value("reconciler_steps_total",
                                     {"action": "create", "outcome": "ok"}) == 3
