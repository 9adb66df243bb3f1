"""Golden tests of the rendered plan: text and JSON for a fixed desired state and host.
Regenerate with UPDATE_GOLDEN=1 after an intended change, and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core import render, snapshots
from reconciler.core.plans import compute
from tests.specfactory import container_json, desired_from
from tests.unit.test_planner import BASE, observed

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[str, str]:
    for name, value in (("old", "golden-secret-value-9f8e7d"), ("new", "golden-secret-changed")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "db.env").write_text(f"DB_PASSWORD={value}\n")
        (tmp_path / name / "db.env").chmod(0o600)
    old_text = BASE.replace("    image: db:1\n", "    image: db:1\n    env_file: [db.env]\n")
    old = desired_from(tmp_path / "old", old_text)
    new = desired_from(tmp_path / "new", old_text.replace("image: api:1", "image: api:2")
                       .replace("replicas: 2", "replicas: 3"))
    host = [container_json(old, "db", 1), container_json(old, "api", 1, cid="a1"),
            container_json(old, "api", 2, cid="a2"), container_json(old, "legacy", 1, cid="l1")]
    plan = compute(new, observed(new, *host))
    text = render.text(plan, revision="0123456789abcdef")
    as_json = render.as_json(plan, revision="0123456789abcdef")
    assert "golden-secret" not in text + as_json
    return text, as_json


def test_golden_text(mixed: tuple[str, str]) -> None:
    check("plan-mixed.txt", mixed[0])


def test_golden_json(mixed: tuple[str, str]) -> None:
    check("plan-mixed.json", mixed[1])


def test_golden_in_sync(tmp_path: Path) -> None:
    d = desired_from(tmp_path, BASE)
    plan = compute(d, observed(d, container_json(d, "db", 1), container_json(d, "api", 1),
                               container_json(d, "api", 2)))
    check("plan-in-sync.txt", render.text(plan))


def test_golden_no_engine(tmp_path: Path) -> None:
    d = desired_from(tmp_path, BASE)
    plan = compute(d, snapshots.empty("shop", engine_available=False))
    check("plan-empty-host.txt", render.text(plan))


EDGE = """
project: shop
defaults:
  update: {min_ready: 1s}
networks: {edge: {}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  api:
    tier: business
    image: api:1
    replicas: 2
    networks: [edge]
    expose: {port: 8080}
  nginx:
    tier: external
    image: nginx:1
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    ports: ["8088:80"]
    networks: [edge]
"""


def test_golden_edge_upstreams(tmp_path: Path) -> None:
    """A rollout of an exposed service (scaled 2 -> 3) and an nginx.conf change: the plan
    lists the servers each upstream gains and loses, and how the edge itself is updated
    (a changed mounted config is a `reload` step, never a new container)."""
    for name, conf in (("old", "events {}\n"), ("new", "events {}\nhttp {}\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "nginx.conf").write_text(conf)
    old = desired_from(tmp_path / "old", EDGE)
    new = desired_from(tmp_path / "new", EDGE.replace("image: api:1", "image: api:2")
                       .replace("replicas: 2", "replicas: 3"))
    host = [container_json(old, "api", 1, cid="a1"), container_json(old, "api", 2, cid="a2"),
            container_json(old, "nginx", 1, cid="n1")]
    plan = compute(new, observed(new, *host))
    check("plan-edge.txt", render.text(plan))


def test_golden_edge_image_change(tmp_path: Path) -> None:
    """Only an image or container-level change recreates the edge (stop-first here: it
    publishes a fixed host port), and the plan says what that costs."""
    (tmp_path / "nginx.conf").write_text("events {}\n")
    old = desired_from(tmp_path, EDGE)
    new = desired_from(tmp_path, EDGE.replace("image: nginx:1", "image: nginx:2"))
    host = [container_json(old, "api", 1, cid="a1"), container_json(old, "api", 2, cid="a2"),
            container_json(old, "nginx", 1, cid="n1")]
    check("plan-edge-image.txt", render.text(compute(new, observed(new, *host))))
