"""The pure parts of `reconciler migrate`: which compose containers, in which order, and
the restore script."""

from __future__ import annotations

from pathlib import Path

from reconciler import migrate
from reconciler.core.desired import build
from tests.specfactory import KEY, desired_from, load_text
from tests.unit.test_planner import BASE

SPEC = BASE


def listed(service: str, n: int, *, project: str = "shop", state: str = "running") -> dict:
    return {"Id": f"id-{project}-{service}-{n}", "Names": [f"/{project}_{service}_{n}"],
            "State": state, "Labels": {"com.docker.compose.project": project,
                                       "com.docker.compose.service": service}}


def test_only_the_named_projects_containers_and_the_order(tmp_path: Path) -> None:
    d = desired_from(tmp_path, SPEC)
    found = migrate.compose_containers(
        [listed("db", 1), listed("api", 1), listed("api", 2, state="exited"),
         listed("db", 1, project="other"), listed("old-worker", 1),
         {"Id": "x", "Names": ["/x"], "State": "running", "Labels": {}}], "shop")
    assert [c.name for c in found] == ["shop_api_1", "shop_api_2", "shop_db_1",
                                       "shop_old-worker_1"]
    moves = {m.service: m for m in migrate.moves(d, found)}
    assert moves["db"].stop_first is True  # named volume
    assert moves["api"].stop_first is False
    assert [c.name for c in moves["api"].compose] == ["shop_api_1"]  # running ones only
    assert [c.name for c in migrate.leftovers(d, found)] == ["shop_old-worker_1"]
    text = migrate.sequence_text(d, found, backed_up=["db: volume copy"])
    assert text.index("Tier infrastructure") < text.index("Tier business")
    assert "db: stop shop_db_1, then start ours" in text
    assert "shop_old-worker_1" in text


def test_a_job_is_shown_as_run_once(tmp_path: Path) -> None:
    spec = SPEC.replace("  api:\n", "  migrate:\n    tier: infrastructure\n    kind: job\n"
                        "    image: db:1\n    depends_on: [db]\n  api:\n", 1)
    d = desired_from(tmp_path, spec)
    text = migrate.sequence_text(d, migrate.compose_containers([listed("db", 1)], "shop"),
                                 backed_up=[])
    assert "migrate: run once to completion (job" in text


EDGE = SPEC + """  nginx:
    tier: external
    image: nginx:1
    ports: ["80:80"]
    networks: [backend]
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
"""


def test_the_edge_holder_takes_compose_edges_ports_and_the_edge_starts_in_it(
        tmp_path: Path) -> None:
    """One host: `nginx.net` holds the edge's published ports, so it is what stops compose's
    nginx first; our nginx (in its namespace) has no compose container and starts right
    after it, and the dry run says so in that order."""
    d = build(load_text(tmp_path, EDGE), KEY, edge_holder=True)
    assert d.edge_holder == "nginx.net"
    found = migrate.compose_containers([listed("db", 1), listed("api", 1), listed("nginx", 1)],
                                       "shop")
    ext = [m for m in migrate.moves(d, found) if m.tier == "external"]
    assert [(m.service, m.stop_first, [c.name for c in m.compose]) for m in ext] == [
        ("nginx.net", True, ["shop_nginx_1"]), ("nginx", True, [])]
    assert migrate.published(d.services["nginx.net"]) == [("127.0.0.1", 80)]
    assert migrate.published(d.services["nginx"]) == []  # nginx publishes nothing itself
    assert migrate.leftovers(d, found) == []
    text = migrate.sequence_text(d, found, backed_up=[])
    assert ("nginx.net: start ours with no network; stop shop_nginx_1; the moment it exited, "
            "connect ours") in text
    assert "nginx: start ours in nginx.net's network namespace" in text
    assert text.index("nginx.net: start") < text.index("nginx: start ours")


def test_restore_script_removes_ours_and_starts_the_running_ones_in_order() -> None:
    found = migrate.compose_containers(
        [listed("db", 1), listed("api", 1), listed("api", 2, state="exited")], "shop")
    script = migrate.restore_script("shop", found, ["id-shop-db-1", "id-shop-api-1"])
    lines = script.splitlines()
    assert "docker ps -aq --filter label=reconciler.project=shop" in script
    starts = [ln for ln in lines if ln.startswith("docker start")]
    assert starts == ["docker start id-shop-db-1 >/dev/null  # shop_db_1",
                      "docker start id-shop-api-1 >/dev/null  # shop_api_1"]
    assert "volume" not in script  # volumes untouched


def test_published_ports_to_poll_at_the_hand_over(tmp_path: Path) -> None:
    """The edge's fixed TCP host ports, polled on the host itself for a wildcard binding;
    random host ports and UDP are not polled."""
    spec = SPEC.replace("    image: api:1\n", "    image: api:1\n    ports: [\"80:80\", "
                        "\"127.0.0.2:8443:443\", \"9000\", \"5353:53/udp\"]\n", 1).replace(
        "replicas: 2", "replicas: 1")  # fixed host ports: one replica
    assert spec != SPEC
    d = desired_from(tmp_path, spec)
    assert migrate.published(d.services["api"]) == [("127.0.0.1", 80), ("127.0.0.2", 8443)]
    assert migrate.published(d.services["db"]) == []


async def test_answers_needs_an_http_status_line_not_just_an_accept() -> None:
    import asyncio

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # accepts, answers nothing (Docker's proxy with no app behind it)

    for handler, expected in ((http, True), (mute, False)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            assert await migrate.answers("127.0.0.1", port, timeout_s=2) is expected
    assert await migrate.answers("127.0.0.1", port, timeout_s=2) is False  # closed
