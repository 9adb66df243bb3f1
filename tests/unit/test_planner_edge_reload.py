"""The planner table for the edge's mounted config: a changed nginx.conf (or a file of a
mounted directory) is a `reload` step, never a new container; only an image or
container-level change recreates the edge; an edge created before staged copies existed (no
config-digest label) is recreated once; the digest a reload applied (state dir) counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core import snapshots
from reconciler.core.desired import Desired, build
from reconciler.core.plans import Action, Lane, Plan, compute
from reconciler.core.render import text
from tests.specfactory import KEY, container_json, load_text

SPEC = """
project: shop
networks: {edge: {}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  api:
    tier: business
    image: api:1
    networks: [edge]
    expose: {port: 8080}
    volumes: ["./app.conf:/etc/app.conf:ro"]
  nginx:
    tier: external
    image: nginx:1
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "./include:/etc/nginx/include:ro"]
    ports: ["8088:80"]
    networks: [edge]
"""

FILES = {"nginx.conf": "events {}\n", "include/cors.conf": "# cors\n", "app.conf": "a=1\n"}


def desired(tmp: Path, *, spec: str = SPEC, staged: bool = True, **files: str) -> Desired:
    """The spec with its mounted files (`files` override FILES: `include__cors_conf` is
    include/cors.conf) in a fresh directory per variant."""
    content = dict(FILES)
    content.update({k.replace("__", "/").replace("_conf", ".conf"): v
                    for k, v in files.items()})
    root = tmp / f"v{len(list(tmp.iterdir())) if tmp.exists() else 0}"
    for name, body in content.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    loaded = load_text(root, spec)
    return build(loaded, KEY, edge_conf_dir=str(tmp / "staged") if staged else None)


def host(d: Desired, *, edge: dict[str, Any] | None = None) -> snapshots.Snapshot:
    items = [container_json(d, "api", 1, cid="a1"),
             container_json(d, "nginx", 1, cid="n1", **(edge or {}))]
    return snapshots.parse(d.project, items,
                           networks=[{"Name": n, "Labels": {"reconciler.project": d.project}}
                                     for n in d.networks])


def lines(plan: Plan) -> list[str]:
    return [f"{s.id} ({s.reason})" for s in plan.steps]


def case_in_sync(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    d = desired(tmp)
    return d, host(d), []


def case_nginx_conf_changed(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, nginx_conf="events {}\nhttp {}\n")
    return new, host(old), ["reload nginx[1] (mounted config changed)"]


def case_file_in_mounted_directory_changed(
        tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, include__cors_conf="# cors v2\n")
    return new, host(old), ["reload nginx[1] (mounted config changed)"]


def case_image_and_config_changed(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, spec=SPEC.replace("nginx:1", "nginx:2"), nginx_conf="events {}\n#2\n")
    return new, host(old), ["replace nginx[1] stop-first (config changed)"]


def case_container_level_change(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, spec=SPEC.replace('ports: ["8088:80"]', 'ports: ["8089:80"]'))
    return new, host(old), ["replace nginx[1] stop-first (config changed)"]


def case_edge_without_staged_copies_is_recreated(
        tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    """An edge created before staging mounts the checkout: a renamed-in nginx.conf is
    invisible to it (a single-file mount pins the inode), so reloading cannot work."""
    old = desired(tmp)
    new = desired(tmp, nginx_conf="events {}\nhttp {}\n")
    return new, host(old, edge={"config_digest": ""}), [
        "recreate nginx[1] (mounted config changed; this edge mounts the checkout, not staged "
        "copies)"]


def case_reload_already_applied(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, nginx_conf="events {}\nhttp {}\n")
    snap = snapshots.with_applied(host(old), {"n1": new.services["nginx"].config_digest})
    return new, snap, []


def case_reverted_after_a_reload(tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    """A reload applied a new config, the rollout failed later: last-good reloads back."""
    old = desired(tmp)
    new = desired(tmp, nginx_conf="events {}\nhttp {}\n")
    snap = snapshots.with_applied(host(old), {"n1": new.services["nginx"].config_digest})
    return old, snap, ["reload nginx[1] (mounted config changed)"]


def case_stopped_edge_is_started_not_reloaded(
        tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    old = desired(tmp)
    new = desired(tmp, nginx_conf="events {}\nhttp {}\n")
    return new, host(old, edge={"state": "exited", "status": "Exited (0) 1 minute ago"}), [
        "start nginx[1] (container stopped)"]


def case_other_service_mounted_file_still_replaces(
        tmp: Path) -> tuple[Desired, snapshots.Snapshot, list[str]]:
    """Only the edge reloads: an app cannot, so its mounted file is in its fingerprint."""
    old = desired(tmp)
    new = desired(tmp, app_conf="a=2\n")
    return new, host(old), ["replace api[1] start-first (config changed)"]


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items()
         if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_planner_edge_config(name: str, tmp_path: Path) -> None:
    d, snap, expected = CASES[name](tmp_path)
    assert lines(compute(d, snap)) == expected


def test_reload_step_takes_nothing_away_and_dry_run_shows_it(tmp_path: Path) -> None:
    old = desired(tmp_path)
    new = desired(tmp_path, nginx_conf="events {}\nhttp {}\n")
    plan = compute(new, host(old))
    (step,) = plan.steps
    assert step.action is Action.RELOAD and step.target is not None
    assert step.target.id == "n1" and not step.old and not step.stop_first
    assert step.lane is Lane.FREE and not plan.images and not plan.upstreams
    shown = text(plan)
    assert "~ nginx[1]  reload" in shown and "1 to reload." in shown
    assert "mounted config reloaded gracefully" in shown


def test_config_digest_is_not_in_the_edge_fingerprint(tmp_path: Path) -> None:
    a = desired(tmp_path)
    b = desired(tmp_path, nginx_conf="events {}\n# other\n")
    assert a.services["nginx"].fingerprint == b.services["nginx"].fingerprint
    assert a.services["nginx"].config_digest != b.services["nginx"].config_digest
    assert a.services["api"].fingerprint == b.services["api"].fingerprint
    # a changed app file changes the app's fingerprint (it cannot reload)
    c = desired(tmp_path, app_conf="a=3\n")
    assert c.services["api"].fingerprint != a.services["api"].fingerprint


def test_staged_edge_mounts_copies_and_creates_stage_them(tmp_path: Path) -> None:
    d = desired(tmp_path)
    nginx = d.services["nginx"]
    staged = dict(nginx.staged)
    assert [Path(s).name for s in staged] == ["nginx.conf", "include"]
    assert all(t.startswith(str(tmp_path / "staged") + "/") for t in staged.values())
    assert {b.split(":")[0] for b in nginx.binds} >= set(staged.values())
    assert not any(b.startswith(tuple(staged)) for b in nginx.binds)
    plan = compute(d, snapshots.empty("shop"))
    edge_steps = [s for s in plan.steps if s.service == "nginx"]
    assert [s.stage_config for s in edge_steps] == [True]
    assert not any(s.stage_config for s in plan.steps if s.service == "api")
    # without a staging directory (a preview) the same fingerprint and digest, no staging
    preview = desired(tmp_path, staged=False)
    assert preview.services["nginx"].fingerprint == nginx.fingerprint
    assert preview.services["nginx"].config_digest == nginx.config_digest
    assert not preview.services["nginx"].staged


def test_every_step_action_is_a_known_metrics_label() -> None:
    """`reconciler_steps_total{action}` refuses unknown values: a reload (or backup) step
    must not break the controller's export."""
    from reconciler.telemetry import ACTIONS

    assert {a.value for a in Action} <= set(ACTIONS)
