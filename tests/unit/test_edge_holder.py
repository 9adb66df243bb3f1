"""The edge's network holder: which nginx configurations let a new nginx bind next to the old
one (`core.nginxconf`), how `desired` splits the edge into `<edge>.net` (networks, aliases,
ports) and nginx in its namespace, and the planner's table: a container-level change of the
edge is a start-first replacement in the same namespace (stop-first without reuseport), a
change of the ports replaces the holder and recreates nginx, and an edge from before the
holder hands its ports over once."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import snapshots, swarm
from reconciler.core.desired import MIGRATE_REQ, Desired, build, holder_name
from reconciler.core.nginxconf import reuseport, tokens
from reconciler.core.plans import Action, Lane, compute
from reconciler.core.specs import HostPolicy, UpdateOrder
from tests.specfactory import KEY, container_json, load_text

MAIN = "/etc/nginx/nginx.conf"

REUSE_CASES = {
    "reuseport on the only listen": ({MAIN: "http { server { listen 80 reuseport; } }"}, True),
    "no reuseport": ({MAIN: "http { server { listen 80; } }"}, False),
    "once per address is enough": (
        {MAIN: "http { server { listen 80 default_server reuseport; }\n"
               "server { listen 80; server_name b; } }"}, True),
    "a second port without it": (
        {MAIN: "http { server { listen 80 reuseport; listen 8443 ssl; } }"}, False),
    "implicit listen of a server without one": (
        {MAIN: "http { server { listen 8080 reuseport; } server { server_name x; } }"}, False),
    "implicit *:80 covered by a reuseport listen 80": (
        {MAIN: "http { server { listen 80 reuseport; } server { server_name x; } }"}, True),
    "ipv6 and 0.0.0.0 group as nginx does": (
        {MAIN: "http { server { listen 0.0.0.0:80 reuseport; listen [::]:80 reuseport; }"
               " server { listen 80; listen [::]:80; } }"}, True),
    "reuseport in a comment does not count": (
        {MAIN: "http { server { listen 80; # reuseport\n } }"}, False),
    "quoted words": ({MAIN: 'http { server { listen "80" reuseport; } }'}, True),
    "unix sockets are not ports": (
        {MAIN: "http { server { listen unix:/run/x.sock; listen 80 reuseport; } }"}, True),
    "stream servers too": (
        {MAIN: "stream { server { listen 5432; proxy_pass db:5432; } }\n"
               "http { server { listen 80 reuseport; } }"}, False),
    "a mounted include is read": (
        {MAIN: "http { include /etc/nginx/include/*.conf; }",
         "/etc/nginx/include/site.conf": "server { listen 80; }"}, False),
    "a relative include resolves under /etc/nginx": (
        {MAIN: "http { include include/site.conf; }",
         "/etc/nginx/include/site.conf": "server { listen 80 reuseport; }"}, True),
    "the image's default sites are not visible": (
        {MAIN: "http { include /etc/nginx/sites-enabled/*; "
               "server { listen 80 reuseport; } }"}, False),
    "an unmounted snippet elsewhere is assumed fine": (
        {MAIN: "http { server { listen 80 reuseport; include /etc/nginx/secrets/*.conf; } }"},
        True),
    "no main config mounted": ({"/etc/nginx/conf.d/a.conf": "server { listen 80; }"}, False),
    "no listen at all": ({MAIN: "events {}"}, False),
    "unbalanced braces": ({MAIN: "http { server { listen 80 reuseport; } } }"}, False),
}


@pytest.mark.parametrize("name", sorted(REUSE_CASES))
def test_reuseport_table(name: str) -> None:
    files, ok = REUSE_CASES[name]
    result = reuseport(files, own_dirs=("/etc/nginx/conf.d",))
    assert result.ok is ok, result.reason
    assert bool(result.reason) is not ok


def test_reuseport_follows_includes_into_own_and_mounted_dirs() -> None:
    conf = {MAIN: "http { include /etc/nginx/conf.d/*.conf; include /etc/nginx/inc/*.map; "
                  "server { listen 80 reuseport; } }"}
    # conf.d is the reconciler's upstreams directory; inc/ is mounted and holds no .map
    assert reuseport(conf, mounted_dirs=("/etc/nginx/inc",),
                     own_dirs=("/etc/nginx/conf.d",)).ok
    # conf.d not ours and not mounted: the image's default.conf would be included
    assert not reuseport(conf, mounted_dirs=("/etc/nginx/inc",)).ok


def test_include_loops_are_bounded() -> None:
    conf = {MAIN: "http { include /etc/nginx/a.conf; }",
            "/etc/nginx/a.conf": "include /etc/nginx/a.conf;"}
    result = reuseport(conf)
    assert not result.ok and "nesting" in result.reason


def test_tokens() -> None:
    assert tokens("a 'b c' \"d;\" e;# x\n{}") == ["a", "b c", "d;", "e", ";", "{", "}"]


SPEC = """
project: shop
networks: {edge: {}, back: {}}
volumes: {certs: {}}
defaults:
  environment: {REV: "1"}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  api:
    tier: business
    image: api:1
    networks: [edge]
    expose: {port: 8080}
  nginx:
    tier: external
    image: nginx:1
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "certs:/etc/nginx/certs:ro"]
    ports: ["8088:80"]
    networks: [edge, back]
    network_aliases: {edge: [www]}
    hostname: edge-host
    sysctls: {net.core.somaxconn: "1024"}
"""

POLICY = HostPolicy(allow_sysctls=("net.core.somaxconn",))
REUSE_CONF = "events {}\nhttp { server { listen 80 reuseport; } }\n"
PLAIN_CONF = "events {}\nhttp { server { listen 80; } }\n"


def desired(tmp: Path, spec: str = SPEC, conf: str = REUSE_CONF, *,
            holder: bool = True) -> Desired:
    root = tmp / f"v{len(list(tmp.iterdir()))}"
    root.mkdir(parents=True)
    (root / "nginx.conf").write_text(conf)
    return build(load_text(root, spec, policy=POLICY), KEY, edge_holder=holder)


def test_the_edge_is_split_into_a_holder_and_nginx(tmp_path: Path) -> None:
    d = desired(tmp_path)
    assert d.edge_holder == "nginx.net"
    holder, nginx = d.services["nginx.net"], d.services["nginx"]
    h = holder.service
    assert (h.ports, h.networks, h.hostname) == (("8088:80",), ("edge", "back"), "edge-host")
    assert h.network_aliases == {"edge": ("nginx", "www"), "back": ("nginx",)}
    assert (h.entrypoint, h.command, h.stop_signal) == (("sleep",), ("infinity",), "SIGKILL")
    assert h.healthcheck is not None and not h.healthcheck.active
    assert h.environment == {} and h.volumes == ()
    assert h.sysctls["net.core.somaxconn"] == "1024"
    assert holder.order is UpdateOrder.STOP_FIRST and holder.tier == "external"
    n = nginx.service
    assert n.network_mode == "service:nginx.net" and nginx.joins == "nginx.net"
    assert (n.ports, n.networks, n.hostname, n.network_aliases) == ((), (), None, {})
    assert "net.core.somaxconn" not in n.sysctls
    assert n.environment == {"REV": "1"} and nginx.edge and not holder.edge
    # reuseport on every listen and the named volume read-only: start-first
    assert nginx.order is UpdateOrder.START_FIRST


def test_tcp_migrate_req_is_set_when_the_kernel_has_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "nginx.conf").write_text(REUSE_CONF)
    loaded = load_text(root, SPEC, policy=POLICY)
    from dataclasses import replace
    with_it = build(replace(loaded, tcp_migrate_req=True), KEY, edge_holder=True)
    without = build(replace(loaded, tcp_migrate_req=False), KEY, edge_holder=True)
    assert with_it.services["nginx.net"].service.sysctls[MIGRATE_REQ] == "1"
    assert MIGRATE_REQ not in without.services["nginx.net"].service.sysctls


def test_edge_order(tmp_path: Path) -> None:
    assert desired(tmp_path, conf=PLAIN_CONF).services["nginx"].order is UpdateOrder.STOP_FIRST
    writable = SPEC.replace("certs:/etc/nginx/certs:ro", "certs:/etc/nginx/certs")
    assert desired(tmp_path, writable).services["nginx"].order is UpdateOrder.STOP_FIRST
    explicit = SPEC.replace("    sysctls:", "    update: {order: stop-first}\n    sysctls:")
    assert desired(tmp_path, explicit).services["nginx"].order is UpdateOrder.STOP_FIRST
    forced = SPEC.replace("    sysctls:", "    update: {order: start-first}\n    sysctls:")
    assert desired(tmp_path, forced, PLAIN_CONF).services["nginx"].order is \
        UpdateOrder.START_FIRST


def test_no_holder_for_swarm_or_an_edge_without_fixed_ports(tmp_path: Path) -> None:
    assert desired(tmp_path, holder=False).edge_holder is None
    assert "nginx.net" not in desired(tmp_path, holder=False).services
    random_port = SPEC.replace('"8088:80"', '"80"')
    assert desired(tmp_path, random_port).edge_holder is None


def test_holder_name_avoids_the_spec_services() -> None:
    assert holder_name("nginx", {"nginx": 1}) == "nginx.net"
    assert holder_name("nginx", {"nginx.net": 1, "nginx.net.net": 1}) == "nginx.net.net.net"


def test_an_env_or_image_change_of_the_edge_keeps_the_holder(tmp_path: Path) -> None:
    old = desired(tmp_path)
    env = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'))
    image = desired(tmp_path, SPEC.replace("nginx:1", "nginx:2"))
    ports = desired(tmp_path, SPEC.replace('"8088:80"', '"8089:80"'))
    holder = old.services["nginx.net"].fingerprint
    assert env.services["nginx.net"].fingerprint == holder
    assert image.services["nginx.net"].fingerprint == holder
    assert ports.services["nginx.net"].fingerprint != holder
    # nginx carries the holder's fingerprint: new ports, a new namespace, a new nginx
    assert ports.services["nginx"].fingerprint != old.services["nginx"].fingerprint


def host(d: Desired, *, edge_fp: str | None = None, joined: str | None = "h1",
         holder: bool = True, holder_fp: str | None = None) -> snapshots.Snapshot:
    items = [container_json(d, "api", 1, cid="a1"),
             container_json(d, "nginx", 1, cid="n1", fingerprint=edge_fp, joined=joined)]
    if holder:
        items.append(container_json(d, "nginx.net", 1, cid="h1", fingerprint=holder_fp))
    return snapshots.parse(d.project, items,
                           networks=[{"Name": n, "Labels": {"reconciler.project": d.project}}
                                     for n in d.networks],
                           volumes=[{"Name": v, "Labels": {"reconciler.project": d.project}}
                                    for v in d.volumes])


def ids(d: Desired, snap: snapshots.Snapshot) -> list[str]:
    return [f"{s.id} ({s.reason})" for s in compute(d, snap).steps]


def test_plan_in_sync(tmp_path: Path) -> None:
    d = desired(tmp_path)
    assert ids(d, host(d)) == []


def test_plan_edge_change_is_start_first_in_the_same_namespace(tmp_path: Path) -> None:
    old = desired(tmp_path)
    new = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'))
    snap = host(new, edge_fp=old.services["nginx"].fingerprint)
    plan = compute(new, snap)
    edge = [s for s in plan.steps if s.service == "nginx"]
    assert [s.id for s in edge] == ["replace nginx[1] start-first"]
    assert edge[0].retire_later and not edge[0].stop_first
    assert not [s for s in plan.steps if s.service == "nginx.net"]


def test_plan_edge_change_without_reuseport_is_stop_first(tmp_path: Path) -> None:
    old = desired(tmp_path, conf=PLAIN_CONF)
    new = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'), PLAIN_CONF)
    plan = compute(new, host(new, edge_fp=old.services["nginx"].fingerprint))
    assert [s.id for s in plan.steps if s.service == "nginx"] == ["replace nginx[1] stop-first"]


def test_plan_new_ports_replace_the_holder_then_recreate_nginx(tmp_path: Path) -> None:
    old = desired(tmp_path)
    new = desired(tmp_path, SPEC.replace('"8088:80"', '"8089:80"'))
    snap = host(new, edge_fp=old.services["nginx"].fingerprint,
                holder_fp=old.services["nginx.net"].fingerprint)
    plan = compute(new, snap)
    steps = {s.service: s for s in plan.steps if s.service in ("nginx", "nginx.net")}
    assert steps["nginx.net"].action is Action.REPLACE and steps["nginx.net"].stop_first
    # nginx waits for the new holder to run (the implied service_started of joining it)
    assert "nginx.net" in {w.service for w in steps["nginx"].after}


def test_plan_upgrade_hands_the_ports_from_the_old_edge_to_the_holder(tmp_path: Path) -> None:
    """An edge created before holders owns its namespace and the port: the holder's create
    stops it first (the edge's grace), and nginx is created in the holder afterwards."""
    old = desired(tmp_path, holder=False)
    new = desired(tmp_path)
    snap = host(new, edge_fp=old.services["nginx"].fingerprint, joined=None, holder=False)
    plan = compute(new, snap)
    steps = {s.service: s for s in plan.steps if s.service in ("nginx", "nginx.net")}
    holder, nginx = steps["nginx.net"], steps["nginx"]
    assert holder.action is Action.CREATE and holder.stop_first
    assert [o.id for o in holder.old] == ["n1"] and holder.lane is Lane.THROTTLED
    assert holder.stop_grace_s == 10.0
    assert nginx.action is Action.CREATE and nginx.old == () and not nginx.stop_first
    assert "nginx.net" in {w.service for w in nginx.after}


def test_swarm_refuses_a_start_first_edge_on_a_fixed_port(tmp_path: Path) -> None:
    forced = SPEC.replace("    sysctls:", "    update: {order: start-first}\n    sysctls:")
    root = tmp_path / "s"
    root.mkdir()
    (root / "nginx.conf").write_text(REUSE_CONF)
    loaded = load_text(root, forced, policy=POLICY)
    found = [f for f in swarm.findings(loaded.spec) if f.path[-1] == "order"]
    assert found and "start-first" in found[0].message


def test_validate_allows_a_start_first_edge_but_not_a_writable_volume(tmp_path: Path) -> None:
    from reconciler.core.model import SpecError
    forced = SPEC.replace("    sysctls:", "    update: {order: start-first}\n    sysctls:")
    desired(tmp_path, forced)  # fixed port and a read-only named volume: fine
    with pytest.raises(SpecError, match="writable"):
        desired(tmp_path, forced.replace("certs:/etc/nginx/certs:ro", "certs:/etc/nginx/certs"))


def test_restarting_the_holder_recreates_nginx_in_the_new_namespace(tmp_path: Path) -> None:
    from reconciler.core.restarts import restart_plan
    d = desired(tmp_path)
    plan = restart_plan(d, host(d), "nginx.net")
    assert [f"{s.id} ({s.reason})" for s in plan.steps] == [
        "replace nginx.net[1] stop-first (restart requested)",
        "recreate nginx[1] (the container whose network it joins was replaced)"]
    assert "nginx.net" in {w.service for w in plan.steps[1].after}
    # restarting nginx alone: start-first next to the old one, the holder untouched
    assert [s.id for s in restart_plan(d, host(d), "nginx").steps] == [
        "replace nginx[1] start-first"]


def test_nginx_dump_is_split_into_files_and_read_completely() -> None:
    from reconciler.core.nginxconf import dumped_files
    dump = ("# configuration file /etc/nginx/nginx.conf:\n"
            "http { include /etc/nginx/secrets/*.conf; include /etc/nginx/sites-enabled/*;\n"
            "server { listen 80 reuseport; } }\n\n"
            "# configuration file /etc/nginx/secrets/tls.conf:\n"
            "server { listen 443 ssl; }\n"
            "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n")
    files = dumped_files(dump)
    assert sorted(files) == ["/etc/nginx/nginx.conf", "/etc/nginx/secrets/tls.conf"]
    found = reuseport(files, complete=True)
    assert not found.ok and "*:443" in found.reason  # the snippet nginx read
    files["/etc/nginx/secrets/tls.conf"] = "server { listen 443 ssl reuseport; }\n"
    # complete: sites-enabled/ matched nothing nginx read, so it holds nothing
    assert reuseport(files, complete=True).ok


def test_only_a_start_first_held_edge_is_bind_checked(tmp_path: Path) -> None:
    old = desired(tmp_path)
    new = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'))
    plan = compute(new, host(new, edge_fp=old.services["nginx"].fingerprint))
    assert [s.bind_check for s in plan.steps if s.service == "nginx"] == [True]
    plain_old = desired(tmp_path, conf=PLAIN_CONF)
    plain = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'), PLAIN_CONF)
    plan = compute(plain, host(plain, edge_fp=plain_old.services["nginx"].fingerprint))
    assert [s.bind_check for s in plan.steps if s.service == "nginx"] == [False]


def test_upstreams_use_the_address_on_a_network_the_holder_shares(tmp_path: Path) -> None:
    """nginx in its holder's namespace has no networks of its own: an exposed service on two
    networks is reached by its address on the one the holder (the edge's namespace) is on."""
    from reconciler.edges import render_upstreams
    spec = SPEC.replace("    networks: [edge]\n    expose:", "    networks: [other, edge]\n"
                        "    expose:").replace("networks: {edge: {}, back: {}}",
                                              "networks: {edge: {}, back: {}, other: {}}")
    d = desired(tmp_path, spec)
    item = container_json(d, "api", 1, cid="a1")
    item["NetworkSettings"] = {"Networks": {"shop_other": {"IPAddress": "10.0.9.9"},
                                            "shop_edge": {"IPAddress": "10.0.1.5"}}}
    snap = snapshots.parse(d.project, [item])
    text = render_upstreams(d, snap.containers)
    assert "server 10.0.1.5:8080" in text and "10.0.9.9" not in text


def test_an_include_fan_out_is_bounded() -> None:
    """Three layers of 50 files, each including the whole next layer: 125,000 reads at a
    nesting of only 3, refused after MAX_READS."""
    files = {MAIN: "http { include /etc/nginx/l1/*.conf; }"}
    for layer in (1, 2, 3):
        body = f"include /etc/nginx/l{layer + 1}/*.conf;" if layer < 3 else "server { }"
        files.update({f"/etc/nginx/l{layer}/{i}.conf": body for i in range(50)})
    result = reuseport(files)
    assert not result.ok and "files read" in result.reason


def test_the_plan_says_why_a_held_edge_goes_stop_first(tmp_path: Path) -> None:
    old = desired(tmp_path, conf=PLAIN_CONF)
    new = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'), PLAIN_CONF)
    plan = compute(new, host(new, edge_fp=old.services["nginx"].fingerprint))
    assert any("nginx is replaced stop-first" in n and "*:80" in n for n in plan.notes)
    assert not compute(new, host(new)).notes  # nothing to replace: nothing said
    start_first = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'))
    assert start_first.edge_note == ""


def test_the_running_edges_config_decides_the_order(tmp_path: Path) -> None:
    """The shell reads the running nginx's whole config only when the plan asks
    (`bind_check`); with that fact in the snapshot the planner decides: proven reuseport keeps
    start-first, a socket without it makes the step stop-first and the plan says why."""
    from reconciler.core.snapshots import with_edge_reuse
    old = desired(tmp_path)
    new = desired(tmp_path, SPEC.replace('REV: "1"', 'REV: "2"'))
    snap = host(new, edge_fp=old.services["nginx"].fingerprint)
    proven = compute(new, with_edge_reuse(snap, {"n1": ""}))
    (edge,) = [s for s in proven.steps if s.service == "nginx"]
    assert (edge.id, edge.bind_check, edge.stop_first) == (
        "replace nginx[1] start-first", False, False)
    refused = compute(new, with_edge_reuse(snap, {"n1": "listen without reuseport: http *:443"}))
    (edge,) = [s for s in refused.steps if s.service == "nginx"]
    assert (edge.id, edge.bind_check, edge.stop_first, edge.retire_later) == (
        "replace nginx[1] stop-first", False, True, False)
    assert any("stop-first after all" in n and "*:443" in n for n in refused.notes)
