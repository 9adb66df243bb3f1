"""The two-node lab itself (tests/swarmkit.py, deploy/swarm-lab.sh), and what Swarm gives on
this kernel: two Ready nodes with their own hostnames and the images, an overlay network
between them (names resolve to task addresses on both nodes), host-mode published ports on
127.0.0.1 of the task's node, and virtual IPs that answer only where IPVS exists."""

from __future__ import annotations

import time

import pytest

from tests.swarmkit import NODES, SwarmLab

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("swarm")]

PROJECT = "rswlabprobe"
LABEL = f"reconciler.project={PROJECT}"
IMAGE = "reconciler-demo/app:1.0"
PORT = 18080


def test_lab_nodes_overlay_host_ports_and_vips(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab
    nodes = lab.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}}")
    assert sorted(nodes.split("\n")[:-1]) == [f"{lab.name}-{n} Ready Active" for n in NODES]
    for node in NODES:
        assert lab.docker("image", "inspect", "-f", "{{.Id}}", IMAGE, node=node).strip()
    print(f"\n[swarm] lab up in {lab.up_seconds:.1f}s; IPVS {'present' if lab.ipvs else 'absent'}")
    lab.remove_project(PROJECT)
    try:
        lab.docker("network", "create", "-d", "overlay", "--attachable", "--label", LABEL,
                   f"{PROJECT}_net")
        common = ["--network", f"{PROJECT}_net", "--label", LABEL, "--no-resolve-image", "-d",
                  "--replicas", "2", "--replicas-max-per-node", "1"]
        lab.docker("service", "create", "--name", f"{PROJECT}-rr", "--endpoint-mode", "dnsrr",
                   "--publish", f"mode=host,target=8080,published={PORT}", *common, IMAGE)
        lab.docker("service", "create", "--name", f"{PROJECT}-vip", *common, IMAGE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = lab.docker("service", "ps", "--filter", "desired-state=running", "--format",
                                 "{{.Node}} {{.CurrentState}}", f"{PROJECT}-rr", f"{PROJECT}-vip")
            if running.count("Running") == 4:
                break
            time.sleep(0.5)
        assert sorted(ln.split()[0] for ln in running.splitlines()) == sorted(
            f"{lab.name}-{n}" for n in NODES for _ in range(2)), running

        for node in NODES:  # host-mode published port: 127.0.0.1 in each node's namespace
            status, body = lab.get(node, f"http://127.0.0.1:{PORT}/v1/x")
            assert status == 200, (node, body)

        # a probe on the manager reaches the tasks on both nodes over the overlay network
        probe = lab.docker("run", "-d", "--rm", "--network", f"{PROJECT}_net", "--label", LABEL,
                           IMAGE, "sleep", "60").strip()
        # the name resolves to both tasks' addresses (once gossip has told the manager about
        # the worker's task), and each answers over the overlay
        script = (
            "for try in $(seq 40); do "
            f"  ips=$(nslookup {PROJECT}-rr 2>/dev/null "
            "        | awk '/^Name:/{n=1} n && /^Address/{print $NF}'); "
            '  [ "$(echo $ips | wc -w)" -ge 2 ] && break; sleep 0.5; '
            "done; "
            "for ip in $ips; do timeout 3 wget -qO- http://$ip:8080/v1/x; echo; done; "
            f"echo VIP; timeout 3 wget -qO- http://{PROJECT}-vip:8080/v1/x; echo rc=$?")
        out = lab.docker("exec", probe, "sh", "-c", script, timeout=60)
        rr, _, vip = out.partition("VIP")
        hosts = {ln.split('"host":"')[1].split('"')[0] for ln in rr.splitlines() if '"host"' in ln}
        assert len(hosts) == 2, out  # both replicas (one per node) answered
        if lab.ipvs:
            assert "rc=0" in vip, out
        else:
            assert "rc=0" not in vip, out  # no IPVS: the virtual IP does not answer
    finally:
        lab.remove_project(PROJECT)
        leftover = lab.docker("ps", "-aq", "--filter", f"label={LABEL}").strip()
        assert not leftover, leftover
