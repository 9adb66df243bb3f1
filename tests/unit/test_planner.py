"""The planner table: desired + observed in, step lines out (one readable id per case)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core import snapshots
from reconciler.core.desired import Desired
from reconciler.core.plans import ImageAction, ImageNeed, Lane, Phase, Plan, compute
from reconciler.core.specs import PullPolicy
from tests.specfactory import container_json, desired_from, foreign_json

BASE = """
project: shop
defaults:
  update: {min_ready: 1s}
networks: {backend: {}}
volumes: {db-data: {}}
services:
  db:
    tier: infrastructure
    image: db:1
    volumes: ["db-data:/data"]
    networks: [backend]
  api:
    tier: business
    image: api:1
    replicas: 2
    networks: [backend]
    depends_on: [db]
"""


def lines(plan: Plan) -> list[str]:
    return [f"{s.id} ({s.reason})" for s in plan.steps]


def observed(desired: Desired, *items: dict[str, Any]) -> snapshots.Snapshot:
    return snapshots.parse(
        desired.project, items,
        networks=[{"Name": n, "Labels": {"reconciler.project": desired.project}}
                  for n in desired.networks],
        volumes=[{"Name": v, "Labels": {"reconciler.project": desired.project}}
                 for v in desired.volumes],
    )


def in_sync(d: Desired) -> list[dict[str, Any]]:
    return [container_json(d, "db", 1), container_json(d, "api", 1), container_json(d, "api", 2)]


def variant(tmp_path: Path, old: str, new: str) -> Desired:
    text = BASE.replace(old, new)
    assert text != BASE
    return desired_from(tmp_path / "v", text)


CASES: dict[str, Any] = {}


def case(fn: Any) -> Any:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


@case
def case_empty_host(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    return d, snapshots.empty("shop"), [
        "create-network shop_backend (network missing)",
        "create-volume shop_db-data (volume missing)",
        "create db[1] (new service)",
        "create api[1] (new service)",
        "create api[2] (new service)",
    ]


@case
def case_in_sync(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    return d, observed(d, *in_sync(d)), []


@case
def case_changed_image(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired_from(tmp_path, BASE)
    new = variant(tmp_path, "image: api:1", "image: api:2")
    return new, observed(new, *in_sync(old)), [
        "replace api[1] start-first (config changed)",
        "replace api[2] start-first (config changed)",
    ]


@case
def case_changed_env_file_content(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    (tmp_path / ".git").mkdir()  # one checkout holds both spec dirs and the env file
    env = tmp_path / "db.env"
    env.write_text("DB_PASSWORD=first-strong-secret-value\n")
    env.chmod(0o600)
    text = BASE.replace("    image: db:1\n", f"    image: db:1\n    env_file: [{env}]\n")
    old = desired_from(tmp_path / "a", text)
    env.write_text("DB_PASSWORD=second-strong-secret-value\n")
    new = desired_from(tmp_path / "b", text)
    plan = compute(new, observed(new, *in_sync(old)))
    assert [c.field for c in plan.steps[0].changes] == ["env_file." + str(env)]
    return new, observed(new, *in_sync(old)), ["replace db[1] stop-first (config changed)"]


@case
def case_scaled_up(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = variant(tmp_path, "replicas: 2", "replicas: 3")
    return d, observed(d, *in_sync(d)), ["create api[3] (replica missing)"]


@case
def case_scaled_down(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = variant(tmp_path, "replicas: 2", "replicas: 1")
    cur = [container_json(d, "db", 1), container_json(d, "api", 1), container_json(d, "api", 2)]
    return d, observed(d, *cur), [
        f"remove api[2] {cur[2]['Names'][0][1:]} (scaled down)",
    ]


@case
def case_orphan(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    gone = container_json(d, "legacy", 1)
    return d, observed(d, *in_sync(d), gone), [
        f"remove legacy[1] {gone['Names'][0][1:]} (service no longer in the spec)",
    ]


@case
def case_stopped_container(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    items = in_sync(d)
    items[1] = container_json(d, "api", 1, state="exited", status="Exited (137) 3 seconds ago")
    return d, observed(d, *items), ["start api[1] (container stopped)"]


@case
def case_unhealthy_container(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    items = in_sync(d)
    items[0] = container_json(d, "db", 1, status="Up 5 minutes (unhealthy)")
    return d, observed(d, *items), ["recreate db[1] (container unhealthy)"]


@case
def case_foreign_container_ignored(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    other = container_json(d, "legacy", 1, cid="id-other-project")  # would be an orphan...
    other["Labels"]["reconciler.project"] = "shop-staging"  # ...but it is not ours
    return d, observed(d, *in_sync(d), foreign_json(), other), []


@case
def case_start_first_vs_stop_first(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired_from(tmp_path, BASE)
    new = desired_from(tmp_path / "both", BASE.replace("image: db:1", "image: db:2")
                       .replace("image: api:1", "image: api:2"))
    return new, observed(new, *in_sync(old)), [
        "replace db[1] stop-first (config changed)",
        "replace api[1] start-first (config changed)",
        "replace api[2] start-first (config changed)",
    ]


@case
def case_interrupted_start_first(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired_from(tmp_path, BASE)
    new = variant(tmp_path, "image: api:1", "image: api:2")
    items = [*in_sync(old), container_json(new, "api", 1, status="Up 1 second (health: starting)")]
    return new, observed(new, *items), [
        "replace api[1] start-first (finish an interrupted update)",
        "replace api[2] start-first (config changed)",
    ]


@case
def case_retry_a_failed_new_generation(
        tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired_from(tmp_path, BASE)
    new = variant(tmp_path, "image: api:1", "image: api:2")
    items = [*in_sync(old), container_json(new, "api", 1, status="Up 9 seconds (unhealthy)")]
    old_name = old.services["api"].container_name(1)
    return new, observed(new, *items), [
        "recreate api[1] (retry a service that failed to start)",
        f"remove api[1] {old_name} (finish an interrupted update)",
        "replace api[2] start-first (config changed)",
    ]


@case
def case_created_not_started(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    items = in_sync(d)
    items[2] = container_json(d, "api", 2, state="created", status="Created")
    return d, observed(d, *items), ["start api[2] (container created but never started)"]


@case
def case_dead_and_paused(tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    items = in_sync(d)
    items[1] = container_json(d, "api", 1, state="dead", status="Dead")
    items[2] = container_json(d, "api", 2, state="paused", status="Up 1 minute (Paused)")
    return d, observed(d, *items), [
        "recreate api[1] (container dead)", "recreate api[2] (container paused)",
    ]


@case
def case_retry_a_service_that_failed_to_start(
        tmp_path: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired_from(tmp_path, BASE)
    items = in_sync(d)
    items[0] = container_json(d, "db", 1, status="Up 2 minutes (health: starting)")
    return d, observed(d, *items), ["recreate db[1] (retry a service that failed to start)"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_planner_table(name: str, tmp_path: Path) -> None:
    desired, snapshot, expected = CASES[name](tmp_path)
    retry = ("db", "api") if name.startswith("retry") else ()
    assert lines(compute(desired, snapshot, retry=retry)) == expected


def test_tiers_are_planned_in_spec_order(tmp_path: Path) -> None:
    d = desired_from(tmp_path, BASE.replace("tier: business", "tier: core"))
    plan = compute(d, snapshots.empty("shop"))
    tiers = [s.tier for s in plan.steps if s.service]
    assert tiers == ["infrastructure", "core", "core"]


def test_images_needed_are_listed_once(tmp_path: Path) -> None:
    d = desired_from(tmp_path, BASE)
    images = compute(d, snapshots.empty("shop")).images
    assert [(i.ref, i.policy.value) for i in images] == [("api:1", "missing"), ("db:1", "missing")]


# --- how each step is carried out: decided here, only read by the executor --------------------

def how(plan: Plan) -> list[str]:
    """One line per step: id, phase, lane (parallelism), stop order, grace, upstream, claim."""
    out = []
    for s in plan.steps:
        parts = [s.id, s.phase.value]
        if s.phase is not Phase.OBJECTS:
            parts += [f"{s.lane.value}/{s.parallelism}",
                      "stop-first" if s.stop_first else "start-first",
                      f"grace={s.stop_grace_s:g}", f"upstream={s.upstream}",
                      "claim" if s.claim else "no-claim"]
        out.append(" ".join(parts))
    return out


HOW_SPEC = BASE.replace("""    replicas: 2
""", """    replicas: 2
    stop_grace_period: 30s
    update: {parallelism: 2}
""")


def test_how_a_cold_start_runs(tmp_path: Path) -> None:
    d = desired_from(tmp_path, HOW_SPEC)
    assert how(compute(d, snapshots.empty("shop"))) == [
        "create-network shop_backend objects",
        "create-volume shop_db-data objects",
        "create db[1] tier free/1 start-first grace=10 upstream=None claim",
        "create api[1] tier free/2 start-first grace=30 upstream=None claim",
        "create api[2] tier free/2 start-first grace=30 upstream=None claim",
    ]


def test_how_updates_and_repairs_run(tmp_path: Path) -> None:
    old = desired_from(tmp_path / "old", HOW_SPEC)
    new = desired_from(tmp_path / "new", HOW_SPEC.replace("image: db:1", "image: db:2")
                       .replace("replicas: 2", "replicas: 1"))
    items = [container_json(old, "db", 1), container_json(new, "api", 1, state="dead",
                                                          status="Dead"),
             container_json(new, "api", 2), container_json(new, "legacy", 1)]
    items[3]["Labels"]["reconciler.tier"] = "business"  # an orphan in a tier that still exists
    plan = compute(new, observed(new, *items))
    legacy = items[3]["Names"][0][1:]
    assert how(plan) == [
        "replace db[1] stop-first tier throttled/1 stop-first grace=10 upstream=None claim",
        "recreate api[1] tier throttled/2 stop-first grace=30 upstream=None claim",
        f"remove api[2] {items[2]['Names'][0][1:]} tier after/2 start-first grace=30 "
        "upstream=None no-claim",
        f"remove legacy[1] {legacy} last after/1 start-first grace=10 upstream=None no-claim",
    ]
    assert [s.id for s in plan.in_tier("business")] == [s.id for s in plan.steps[1:3]]
    assert [s.id for s in plan.orphans()] == [plan.steps[3].id]


def test_a_container_being_removed_is_replaced_stop_first(tmp_path: Path) -> None:
    d = desired_from(tmp_path, HOW_SPEC)
    items = in_sync(d)
    items[0] = container_json(d, "db", 1, state="removing", status="Removal In Progress")
    assert how(compute(d, observed(d, *items))) == [
        "create db[1] tier throttled/1 stop-first grace=10 upstream=None claim",
    ]


def test_the_claim_is_exactly_this_replica_of_this_generation(tmp_path: Path) -> None:
    d = desired_from(tmp_path, HOW_SPEC)
    step = compute(d, snapshots.empty("shop")).steps[-1]
    assert dict(step.claim) == {"reconciler.project": "shop", "reconciler.service": "api",
                                "reconciler.replica": "2",
                                "reconciler.fingerprint": d.services["api"].fingerprint}


def test_interrupted_update_adopts_and_never_stops_what_it_adopts(tmp_path: Path) -> None:
    old = desired_from(tmp_path, BASE)
    new = variant(tmp_path, "image: api:1", "image: api:2")
    items = [*in_sync(old), container_json(new, "api", 1, status="Up 1 second (health: starting)")]
    step = compute(new, observed(new, *items)).steps[0]
    assert step.adopt is not None and step.adopt.id not in {o.id for o in step.old}
    assert not step.stop_first and step.lane is Lane.THROTTLED


EDGE_SPEC = """
project: shop
networks: {edge: {}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  api: {tier: business, image: "api:1", networks: [edge], expose: {port: 8080}}
  worker: {tier: business, image: "worker:1", networks: [edge]}
  nginx: {tier: external, image: "nginx:1", networks: [edge]}
"""


def test_only_exposed_services_change_an_upstream(tmp_path: Path) -> None:
    d = desired_from(tmp_path, EDGE_SPEC)
    plan = compute(d, snapshots.empty("shop"))
    assert {s.service: s.upstream for s in plan.steps if s.service} == {
        "api": "api", "worker": None, "nginx": None}


@pytest.mark.parametrize(("policy", "present", "missing"), [
    (PullPolicy.MISSING, ImageAction.USE, ImageAction.PULL),
    (PullPolicy.ALWAYS, ImageAction.PULL, ImageAction.PULL),
    (PullPolicy.NEVER, ImageAction.USE, ImageAction.FAIL),
])
def test_pull_policy_is_decided_in_the_plan(policy: PullPolicy, present: ImageAction,
                                            missing: ImageAction) -> None:
    need = ImageNeed.of("x:1", policy)
    assert (need.if_present, need.if_missing) == (present, missing)


DEGRADE = """
project: shop
services:
  db: {tier: infrastructure, image: db:1}
  cache: {tier: infrastructure, image: cache:1}
  auth: {tier: core, image: auth:1, depends_on: [db]}
  mail: {tier: core, image: mail:1}
  api: {tier: business, image: api:1, depends_on: [auth, cache]}
  notify: {tier: business, image: notify:1, depends_on: [mail]}
  nginx: {tier: external, image: nginx:1, depends_on: [api]}
"""


@pytest.mark.parametrize(("failed", "held", "planned"), [
    ((), {}, ["db", "cache", "auth", "mail", "api", "notify", "nginx"]),
    # a leaf failing holds nothing else: the edge still comes up
    (("mail",), {"mail": (), "notify": ("mail",)}, ["db", "cache", "auth", "api", "nginx"]),
    # transitively: db -> auth -> api -> nginx
    (("db",), {"db": (), "auth": ("db",), "api": ("db",), "nginx": ("db",)},
     ["cache", "mail", "notify"]),
    (("db", "mail"), {"db": (), "mail": (), "auth": ("db",), "api": ("db",), "nginx": ("db",),
                      "notify": ("mail",)}, ["cache"]),
    (("unknown",), {}, ["db", "cache", "auth", "mail", "api", "notify", "nginx"]),
])
def test_a_failed_service_holds_only_what_depends_on_it(
        tmp_path: Path, failed: tuple[str, ...], held: dict[str, tuple[str, ...]],
        planned: list[str]) -> None:
    d = desired_from(tmp_path, DEGRADE)
    plan = compute(d, snapshots.empty("shop"), hold=failed)
    assert dict(plan.held) == held
    assert sorted(s.service for s in plan.steps) == sorted(planned)
    if failed == ("db", "mail"):
        assert plan.notes == ("degraded: db, mail failed, api, auth, nginx waiting on db, "
                              "notify waiting on mail (held back; the failed services are "
                              "retried with backoff)",)


# --- jobs: run when their own fingerprint has no finished run; older runs pruned last ------

JOB_SPEC = """
project: shop
services:
  migrate: {tier: core, kind: job, image: "tool:1", command: ["sh", "-c", "echo v1"]}
  api:
    tier: core
    image: "api:1"
    depends_on: {migrate: {condition: service_completed_successfully}}
"""


def _job(d: Desired, code: int | None, *, fp: str | None = None,
         created: int = 1) -> dict[str, Any]:
    if code is None:
        return container_json(d, "migrate", 1, fingerprint=fp, created=created)
    return container_json(d, "migrate", 1, state="exited", fingerprint=fp, created=created,
                          status=f"Exited ({code}) 3 seconds ago")


JOB_CASES: dict[str, Any] = {
    # name: (observed job containers given (desired, older fingerprint), expected lines)
    "first run": (lambda d, old: [], ["create migrate[1] (new service)"]),
    "done": (lambda d, old: [_job(d, 0)], []),
    "failed before": (lambda d, old: [_job(d, 2)], ["start migrate[1] (job failed before: "
                                                    "run it again)"]),
    "changed": (lambda d, old: [_job(d, 0, fp=old)], [
        "replace migrate[1] (config changed)",
        "remove migrate[1] shop-migrate-1-{old} (older run of a job (pruned once every tier "
        "passed))"]),
    # a revert: the desired generation's own run is done; the newer one is only pruned
    "revert finds its run": (lambda d, old: [_job(d, 0), _job(d, 3, fp=old, created=2)], [
        "remove migrate[1] shop-migrate-1-{old} (older run of a job (pruned once every tier "
        "passed))"]),
}


@pytest.mark.parametrize("name", sorted(JOB_CASES))
def test_job_table(name: str, tmp_path: Path) -> None:
    d = desired_from(tmp_path, JOB_SPEC)
    old = "0123456789abcdef"
    found, expected = JOB_CASES[name]
    items = [*found(d, old), container_json(d, "api", 1)]
    plan = compute(d, observed(d, *items))
    assert lines(plan) == [e.replace("{old}", old[:8]) for e in expected]
    for s in plan.steps:
        assert s.job == (s.service == "migrate")
        assert not s.stop_first
        assert (s.phase is Phase.LAST) == (s.action.value == "remove")


# --- order inside a tier: same-tier depends_on, one service at a time for updates ---------

ORDER_SPEC = """
project: shop
volumes: {data: {}}
TIER_PARALLELISM
services:
  db: {tier: core, image: "db:1", volumes: ["data:/d"]}
  cache: {tier: core, image: "cache:1"}
  auth: {tier: core, image: "auth:1", depends_on: {db: {condition: service_healthy}}}
  worker: {tier: core, image: "worker:1", depends_on: {cache: {condition: service_started}}}
  migrate: {tier: core, kind: job, image: "tool:1", depends_on: [db]}
  api:
    tier: core
    image: "api:1"
    depends_on: {migrate: {condition: service_completed_successfully}, auth: {}}
"""


def _order_lines(plan: Plan) -> list[str]:
    out = []
    for s in plan.steps:
        if s.phase is Phase.TIER:
            out.append(f"{s.service}: " + (", ".join(f"{w.service} {w.until}" for w in s.after)
                                           or "-"))
    return out


def _images_bumped(text: str) -> str:
    for name in ("db", "cache", "auth", "worker", "api"):
        text = text.replace(f'"{name}:1"', f'"{name}:2"')
    return text


ORDER_CASES: dict[str, tuple[str, bool, list[str]]] = {
    # name: (tier_parallelism line, host already runs the :1 generation, expected lines)
    "cold start: only depends_on orders": ("", False, [
        "api: auth healthy, migrate healthy",  # `{}` is service_healthy; a job: exited 0
        "auth: db healthy",
        "cache: -",
        "db: -",
        "migrate: db healthy",
        "worker: cache started",
    ]),
    # every service replaced: one at a time in dependency order (cache, db, auth, api,
    # worker), db (stop-first, a named volume) alone: all before it done and their old
    # containers stopped, all after it wait for it
    "update: one by one": ("", True, [
        "api: auth healthy, auth ready, db ready",
        "auth: db healthy, db ready",
        "cache: -",
        "db: cache stopped",
        "worker: api ready, cache started, db ready",
    ]),
    # two at a time, but never next to the stateful db
    "update: tier_parallelism 2": ("tier_parallelism: {core: 2}", True, [
        "api: auth healthy, db ready",
        "auth: cache ready, db healthy, db ready",
        "cache: -",
        "db: cache stopped",
        "worker: auth ready, cache started, db ready",
    ]),
}


@pytest.mark.parametrize("name", sorted(ORDER_CASES))
def test_order_inside_a_tier(name: str, tmp_path: Path) -> None:
    line, running, expected = ORDER_CASES[name]
    text = ORDER_SPEC.replace("TIER_PARALLELISM", line)
    old = desired_from(tmp_path / "old", text)
    new = desired_from(tmp_path / "new", _images_bumped(text)) if running else old
    items = []
    if running:
        items = [container_json(old, n, 1) for n in ("db", "cache", "auth", "worker", "api")]
        items.append(container_json(new, "migrate", 1, state="exited",
                                    status="Exited (0) 1 minute ago"))
    assert _order_lines(compute(new, observed(new, *items))) == expected


def test_plan_text_shows_the_order(tmp_path: Path) -> None:
    from reconciler.core import render

    d = desired_from(tmp_path, ORDER_SPEC.replace("TIER_PARALLELISM", ""))
    text = render.text(compute(d, snapshots.empty("shop")))
    assert "  order: 1) cache, db  2) auth, migrate, worker  3) api" in text
    assert "after auth healthy, migrate healthy" in text
    assert "job (forward-only: a revert does not undo it)" in text
