"""The edge's hand-over of `reconciler migrate` on the fake engine (the order of the engine
calls; the real timings are in tests/e2e/test_migrate.py): the holder runs with no network
before compose's edge stops, is connected the moment compose's edge died, and a refused
connect (the port not yet released) restarts it and connects again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler import migrate
from reconciler.core.blueprint import container_config
from reconciler.core.desired import build
from reconciler.runtimes import Conflict
from tests.component.fakes import FakeRuntime
from tests.specfactory import KEY, load_text

SPEC = """
project: shop
networks: {edge: {}, backend: {internal: true}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  nginx:
    tier: external
    image: nginx:1
    ports: ["127.0.0.1:18080:80"]
    networks: [edge, backend]
"""


class Rewiring(FakeRuntime):
    """The fake plus the network detach `migrate` uses on Docker, logging the order."""

    def __init__(self) -> None:
        super().__init__(images={"nginx:1"})
        self.log: list[str] = []

    async def disconnect_network(self, container_id: str, network: str) -> None:
        self.log.append(f"disconnect {network}")
        del self.container(container_id).networks[network]

    async def connect_network(self, container_id: str, network: str, *,
                              aliases: Sequence[str]) -> None:
        self.log.append(f"connect {network}")
        await super().connect_network(container_id, network, aliases=aliases)

    async def stop_container(self, container_id: str, *, timeout_s: float) -> None:
        self.log.append(f"stop {self.container(container_id).name}")
        await super().stop_container(container_id, timeout_s=timeout_s)

    async def start_container(self, container_id: str) -> None:
        self.log.append(f"start {self.container(container_id).name}")
        await super().start_container(container_id)


async def setup(tmp_path: Path) -> tuple[Rewiring, migrate._Migrating, migrate.Move,
                                         migrate._Held]:
    desired = build(load_text(tmp_path, SPEC), KEY, edge_holder=True)
    fake = Rewiring()
    for net in desired.networks:
        await fake.create_network(net, labels={}, internal=net.endswith("backend"))
    compose = fake.seed_container("shop_nginx_1", {"Image": "nginx:1", "Labels": {
        migrate.COMPOSE_PROJECT: "shop", migrate.COMPOSE_SERVICE: "nginx"}})
    found = migrate.compose_containers(await fake.list_containers(
        label=f"{migrate.COMPOSE_PROJECT}=shop"), "shop")
    moves = migrate.moves(desired, found)
    (move,) = [m for m in moves if m.service == "nginx.net"]
    assert [c.id for c in move.compose] == [compose]

    async def stop(c: migrate.ComposeContainer, grace: float) -> None:
        await fake.stop_container(c.id, timeout_s=grace)

    mig = migrate._Migrating(fake, tier_moves=moves, stop=stop, say=lambda _: None)
    holder = desired.services["nginx.net"]
    body = container_config(holder, 1)
    cid = await fake.create_container("shop-nginx.net-1", body)
    outside = mig._holdable(body, desired)
    assert outside == ["shop_edge"]  # the internal network binds no port: it stays
    held = await mig._hold(cid, body, outside)
    assert held is not None
    fake.log.clear()
    return fake, mig, move, held


async def test_the_holder_runs_unconnected_and_is_connected_after_composes_edge_died(
        tmp_path: Path) -> None:
    fake, mig, move, held = await setup(tmp_path)
    holder = fake.container(held.cid)
    # only the network that binds ports was detached; the internal one stays
    assert holder.state == "running" and list(holder.networks) == ["shop_backend"]
    assert held.endpoints == [("shop_edge", ["nginx.net", "nginx"])]
    marks: list[tuple[str, float]] = []
    stops, restarted = await mig._hand_over(move, held, 1.0, "shop", marks)
    assert stops is not None and restarted is False
    await stops
    assert fake.log == ["stop shop_nginx_1", "connect shop_edge"]
    assert fake.container("shop_nginx_1").state == "exited"
    assert set(holder.networks) == {"shop_backend", "shop_edge"}
    assert [m[0] for m in marks] == ["stop sent", "compose's exited",
                                     "nginx.net connected (ports bound)"]


async def test_a_refused_connect_restarts_the_holder_and_connects_again(
        tmp_path: Path) -> None:
    fake, mig, move, held = await setup(tmp_path)
    fake.fail_next("connect_network", Conflict("Bind for 127.0.0.1:18080 failed: port is "
                                               "already allocated"))
    stops, restarted = await mig._hand_over(move, held, 1.0, "shop", [])
    assert stops is not None and restarted is True
    await stops
    assert fake.log == ["stop shop_nginx_1", "connect shop_edge", "stop shop-nginx.net-1",
                        "start shop-nginx.net-1", "connect shop_edge"]
    holder = fake.container(held.cid)
    assert holder.state == "running" and "shop_edge" in holder.networks


async def test_a_holder_that_cannot_be_connected_is_removed_for_the_executor(
        tmp_path: Path) -> None:
    fake, mig, move, held = await setup(tmp_path)
    fake.fail_next("connect_network", Conflict("port is already allocated"), times=2)
    stops, _ = await mig._hand_over(move, held, 1.0, "shop", [])
    assert stops is None
    assert held.cid not in fake.containers  # the executor creates it normally
    assert fake.container("shop_nginx_1").state == "exited"


async def test_a_runtime_without_network_detach_gets_the_plain_order(tmp_path: Path) -> None:
    desired = build(load_text(tmp_path, SPEC), KEY, edge_holder=True)
    fake = FakeRuntime(images={"nginx:1"})
    mig = migrate._Migrating(fake, tier_moves=[], stop=lambda c, g: None, say=lambda _: None)
    body = container_config(desired.services["nginx.net"], 1)
    assert mig._holdable(body, desired) == []  # created as usual, started after the stop
