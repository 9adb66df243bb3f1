"""The edge's network holder for real: a container-level change of the edge (its environment)
is applied under load by a new nginx started next to the old one in the holder's network
namespace (the shipped nginx.conf listens with `reuseport`): 0 failed requests, the holder
and its published port untouched. An edge created before holders existed (it owns its port)
hands the port to the holder once, and the edge serves again.

Own project and published port on 127.0.0.1 per test; load only to that port, bounded
(tests/loadgen.py through test_edge's helpers). Figures are printed (`-s`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.dockerkit import NGINX, REPO, Host, docker, wait_until
from tests.e2e.test_edge import (
    STACK,
    assert_zero_failures,
    edge_stack,
    free_port,
    get,
    report,
    rollout_under_load,
)

pytestmark = pytest.mark.docker

EDGE_ENV = ("    stop_signal: SIGQUIT\n",
            '    stop_signal: SIGQUIT\n    environment: {EDGE_REVISION: "1"}\n')


def test_edge_change_is_a_start_first_replacement_under_load(host: Host) -> None:
    text, port = edge_stack(host, **{EDGE_ENV[0]: EDGE_ENV[1]})
    services = host.by_service()
    (holder,), (edge,) = services["nginx.net"], services["nginx"]
    assert edge["HostConfig"]["NetworkMode"] == f"container:{holder['Id']}"
    assert holder["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == str(port)
    assert holder["HostConfig"]["Sysctls"].get("net.ipv4.tcp_migrate_req") == "1"

    changed = text.replace('EDGE_REVISION: "1"', 'EDGE_REVISION: "2"')
    host.write(changed)
    preview = host.cli("--dry-run")
    assert "nginx[1]" in preview.stdout and "start-first" in preview.stdout, preview.stdout
    host.write(text)

    result, rc, out, took = rollout_under_load(host, port, changed)
    report("edge environment changed: start-first next to the old nginx", result, took)
    assert rc == 0, out
    assert_zero_failures(result, host, out)
    services = host.by_service()
    (holder_after,), (edge_after,) = services["nginx.net"], services["nginx"]
    assert holder_after["Id"] == holder["Id"]  # the port never moved
    assert edge_after["Id"] != edge["Id"]
    assert "EDGE_REVISION=2" in edge_after["Config"]["Env"]
    assert edge_after["HostConfig"]["NetworkMode"] == f"container:{holder['Id']}"


UPGRADE = """
import sys
from reconciler import reconcile
from reconciler.cli import main
reconcile.Reconciler.edge_holder = False  # the release before holders
sys.exit(main(sys.argv[1:]))
"""


def test_an_edge_without_a_holder_hands_its_port_over_once(host: Host) -> None:
    port = free_port()
    host.write(STACK.replace("PORT", str(port)))
    shutil.copy(REPO / "nginx" / "nginx.conf", host.spec / "nginx.conf")
    old = subprocess.run([sys.executable, "-c", UPGRADE, "apply", "--spec", str(host.spec),
                          "--state-dir", str(host.state)], capture_output=True, text=True,
                         timeout=240, check=False)
    assert old.returncode == 0, old.stdout + old.stderr
    services = host.by_service()
    assert "nginx.net" not in services
    (edge,) = services["nginx"]
    assert edge["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == str(port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/v1/x")[0] == 200, timeout=15, what="the old edge serves")

    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    services = host.by_service()
    (holder,), (new_edge,) = services["nginx.net"], services["nginx"]
    assert new_edge["Id"] != edge["Id"]
    assert new_edge["HostConfig"]["NetworkMode"] == f"container:{holder['Id']}"
    assert not docker("ps", "-aq", "--filter", f"id={edge['Id']}").strip()
    wait_until(lambda: get(base + "/v1/x")[0] == 200, timeout=15, what="the edge serves")
    again = host.cli("apply")
    assert again.returncode == 0 and "in sync" in again.stdout + again.stderr, again.stdout


SNIPPET_VOLUME = ('    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]\n',
                  '    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", '
                  '"edge-secrets:/etc/nginx/secrets:ro"]\n')


def test_a_listen_without_reuseport_in_a_volume_falls_back_to_stop_first(host: Host) -> None:
    """The spec's nginx.conf has reuseport, but it includes /etc/nginx/secrets/*.conf from a
    volume whose snippet listens on another port without it: the plan says start-first (it
    cannot read the volume), the executor reads the running nginx's `nginx -T`, goes
    stop-first, and the change lands."""
    volume = f"{host.project}_edge-secrets"
    docker("volume", "create", "--label", f"reconciler.project={host.project}", volume)
    try:
        docker("run", "--rm", "-v", f"{volume}:/s", "--entrypoint", "sh", NGINX, "-c",
               "echo 'listen 8443;' > /s/extra.conf")
        text, port = edge_stack(host, **{
            EDGE_ENV[0]: EDGE_ENV[1], SNIPPET_VOLUME[0]: SNIPPET_VOLUME[1],
            "networks: {edge: {}}\n": "networks: {edge: {}}\nvolumes: {edge-secrets: {}}\n"})
        (edge,) = host.by_service()["nginx"]
        host.write(text.replace('EDGE_REVISION: "1"', 'EDGE_REVISION: "2"'))
        res = host.cli("apply")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "stop-first after all" in out and "*:8443" in out, out
        (after,) = host.by_service()["nginx"]
        assert after["Id"] != edge["Id"] and "EDGE_REVISION=2" in after["Config"]["Env"]
        wait_until(lambda: get(f"http://127.0.0.1:{port}/v1/x")[0] == 200, timeout=15,
                   what="the edge serves")
    finally:
        host.cleanup()
        docker("volume", "rm", "-f", volume, check=False)
