"""A real two-node Docker Swarm on this machine for tests: the session fixture `swarm_lab`
brings up deploy/swarm-lab.sh (a manager and a worker dockerd, each in its own network
namespace, images loaded into both) and tears it down after the session.

The tests' lab is named after the checkout (`rsw-` + 6 hex digits of its path: two worktrees on
one machine never share, nor tear down, each other's lab; a crashed session's lab is cleaned up
by the next session of the same checkout) on 10.214.0.0/16 inside the lab's own namespaces;
SWARM_LAB_NAME / SWARM_LAB_NET override. An operator's lab from the README
(`reconciler-swarm`, 10.213) runs next to it.
SWARM_LAB_KEEP=1 leaves the lab up after the session (a later session reuses it at once).

Traffic goes only to 127.0.0.1 inside a node's network namespace (where host-mode published
ports live): `lab.load(...)` runs tests/loadgen.py there as a subprocess.
Run as `python -m tests.swarmkit load URL ...` it is that subprocess (JSON on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dockerkit import REPO, require_engine
from tests.loadgen import LoadResult, run_load

SCRIPT = REPO / "deploy" / "swarm-lab.sh"
LAB_NAME = os.environ.get("SWARM_LAB_NAME") or "rsw-" + hashlib.sha256(
    str(REPO).encode()).hexdigest()[:6]
LAB_NET = os.environ.get("SWARM_LAB_NET", "10.214")
NODES = ("manager", "worker")


@dataclass(frozen=True)
class SwarmLab:
    """The two nodes: docker endpoints (unix sockets), network namespaces, addresses."""

    name: str
    hosts: dict[str, str]      # node -> unix:///run/<name>/<node>.sock
    netns: dict[str, str]      # node -> network namespace name
    addrs: dict[str, str]      # node -> address on the lab's veth
    ipvs: bool                 # /proc/net/ip_vs exists (it does not on these machines)
    up_seconds: float          # how long `swarm-lab.sh up` took in this session

    @property
    def env(self) -> dict[str, str]:
        """Environment for the CLI: the Docker endpoint is the manager."""
        return {"DOCKER_HOST": self.hosts["manager"]}

    def docker(self, *args: str, node: str = "manager", timeout: float = 60,
               check: bool = True) -> str:
        proc = subprocess.run(["docker", "-H", self.hosts[node], *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker ({node}) {' '.join(args[:3])}: {proc.stderr.strip()}")
        return proc.stdout

    def inspect(self, *ids: str, node: str = "manager", kind: str = "container",
                ) -> list[dict[str, Any]]:
        """`docker inspect --type kind` of ids (ids that went away meanwhile are left out)."""
        if not ids:
            return []
        out = self.docker("inspect", "--type", kind, *ids, node=node, check=False).strip()
        return list(json.loads(out)) if out else []

    def node_names(self) -> dict[str, str]:
        """node id -> hostname (<lab>-manager, <lab>-worker)."""
        out = self.docker("node", "ls", "--format", "{{.ID}} {{.Hostname}}")
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())

    def node_id(self, node: str) -> str:
        return next(i for i, n in self.node_names().items() if n == f"{self.name}-{node}")

    def services(self, project: str) -> dict[str, dict[str, Any]]:
        """reconciler.service label -> `docker service inspect` of our project's services."""
        ids = self.docker("service", "ls", "-q", "--filter",
                          f"label=reconciler.project={project}").split()
        out: dict[str, dict[str, Any]] = {}
        for svc in self.inspect(*ids, kind="service"):
            labels = svc["Spec"].get("Labels") or {}
            out[labels.get("reconciler.service", svc["Spec"]["Name"])] = svc
        return out

    def tasks(self, service_id: str, *, running: bool = True) -> list[dict[str, Any]]:
        args = ["service", "ps", "-q", "--no-trunc", service_id]
        if running:
            args += ["--filter", "desired-state=running"]
        return self.inspect(*self.docker(*args).split(), kind="task")

    def node_of(self, project: str, service: str) -> str:
        """The node ("manager"/"worker") where `service`'s first running task runs."""
        svc = self.services(project)[service]
        names = self.node_names()
        for task in self.tasks(svc["ID"]):
            if task["Status"]["State"] == "running":
                return names[task["NodeID"]].removeprefix(f"{self.name}-")
        raise AssertionError(f"no running task of {service}")

    def netns_run(self, node: str, *argv: str, timeout: float = 60,
                  ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns[node], *argv],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=REPO)

    def get(self, node: str, url: str) -> tuple[int, str]:
        """One GET to a 127.0.0.1 URL inside the node's namespace: (status, body)."""
        assert url.startswith("http://127.0.0.1:"), url
        code = ("import sys, urllib.request, urllib.error\n"
                "try:\n"
                f"    r = urllib.request.urlopen({url!r}, timeout=5)\n"
                "    print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "    print(e.code); print(e.read().decode())\n"
                "except OSError as e:\n"
                "    print(0); print(e)\n")
        res = self.netns_run(node, sys.executable, "-c", code, timeout=20)
        status, _, body = res.stdout.partition("\n")
        return (int(status) if status.strip().isdigit() else 0), body

    @contextlib.contextmanager
    def load(self, node: str, url: str, *, seconds: float, max_requests: int,
             concurrency: int = 6, min_requests: int = 0,
             ) -> Iterator[list[LoadResult]]:
        """Load against a 127.0.0.1 URL inside `node`'s namespace for the block's duration
        (at least min_requests, at most `seconds`/`max_requests`). The result list is filled
        when the block exits."""
        stop_file = Path(f"/run/{self.name}-load-{os.getpid()}-{time.monotonic_ns()}")
        ready_file = stop_file.with_suffix(".ready")
        cmd = ["ip", "netns", "exec", self.netns[node], sys.executable, "-m", "tests.swarmkit",
               "load", url, "--seconds", str(seconds), "--max-requests", str(max_requests),
               "--concurrency", str(concurrency), "--min-requests", str(min_requests),
               "--stop-file", str(stop_file), "--ready-file", str(ready_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO)
        results: list[LoadResult] = []
        try:
            # the block starts once the load runs (a Python start on a busy machine takes
            # seconds): bounded, and a load that died is reported below
            deadline = time.monotonic() + 60
            while not ready_file.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            yield results
        finally:
            stop_file.touch()
            try:
                out, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            stop_file.unlink(missing_ok=True)
            ready_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise AssertionError(f"load in {node}'s namespace failed: {err[-2000:]}")
        results.append(LoadResult(**json.loads(out)))

    @contextlib.contextmanager
    def watch(self, *events: str) -> Iterator[list[dict[str, Any]]]:
        """Container events on BOTH nodes while the block runs (each with "node" added)."""
        procs = {}
        for node in NODES:
            args = ["docker", "-H", self.hosts[node], "events", "--format", "{{json .}}",
                    "--filter", "type=container"]
            for ev in events or ("start", "die", "health_status"):
                args += ["--filter", f"event={ev}"]
            procs[node] = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        seen: list[dict[str, Any]] = []
        try:
            yield seen
        finally:
            time.sleep(0.3)
            for node, proc in procs.items():
                proc.terminate()
                out, _ = proc.communicate(timeout=10)
                seen.extend({**json.loads(line), "node": node}
                            for line in out.splitlines() if line.strip())
            seen.sort(key=lambda e: e.get("timeNano", 0))

    def remove_project(self, project: str) -> None:
        """Remove our project's services, networks and volumes from the cluster."""
        sel = f"label=reconciler.project={project}"
        ids = self.docker("service", "ls", "-q", "--filter", sel, check=False).split()
        if ids:
            self.docker("service", "rm", *ids, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                self.docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.id={i}",
                            node=n, check=False).strip() for n in NODES for i in ids):
            time.sleep(0.5)
        for node in NODES:
            strays = self.docker("ps", "-aq", "--filter", sel, node=node, check=False).split()
            if strays:  # containers run outside a service (`docker run --network ...`)
                self.docker("rm", "-f", *strays, node=node, check=False)
            # an overlay network keeps its endpoints for a moment after the tasks are gone
            while self.docker("network", "ls", "-q", "--filter", sel, node=node, check=False,
                              ).split() and time.monotonic() < deadline:
                nets = self.docker("network", "ls", "-q", "--filter", sel, node=node,
                                   check=False).split()
                self.docker("network", "rm", *nets, node=node, check=False)
                time.sleep(0.5)
            vols = self.docker("volume", "ls", "-q", "--filter", sel, node=node,
                               check=False).split()
            if vols:
                self.docker("volume", "rm", "-f", *vols, node=node, check=False)


def _require_lab_tools() -> None:
    reason = ""
    if os.geteuid() != 0:
        reason = "the swarm lab needs root (network namespaces, dockerd)"
    else:
        missing = [c for c in ("ip", "dockerd", "unshare", "flock") if shutil.which(c) is None]
        if missing:
            reason = f"missing {', '.join(missing)} (run deploy/setup.sh)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no swarm lab possible: {reason}")
        pytest.skip(reason)


def lab_script(command: str, *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "SWARM_LAB_NAME": LAB_NAME,
                               "SWARM_LAB_NET": LAB_NET})


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def lab_up() -> SwarmLab:
    started = time.monotonic()
    res = lab_script("up")
    took = time.monotonic() - started
    if res.returncode != 0:
        raise AssertionError(f"swarm-lab.sh up failed ({res.returncode}):\n{res.stderr[-3000:]}")
    env = parse_env(res.stdout)
    print(f"\n[swarm] lab up in {took:.1f}s\n{res.stderr.strip()}")
    return SwarmLab(
        name=env["SWARM_LAB_NAME"],
        hosts={n: env[f"SWARM_LAB_{n.upper()}_HOST"] for n in NODES},
        netns={n: env[f"SWARM_LAB_{n.upper()}_NETNS"] for n in NODES},
        addrs={n: env[f"SWARM_LAB_{n.upper()}_ADDR"] for n in NODES},
        ipvs=env.get("SWARM_LAB_IPVS") == "yes", up_seconds=took)


@pytest.fixture(scope="session")
def swarm_lab() -> Iterator[SwarmLab]:
    require_engine()
    _require_lab_tools()
    lab = lab_up()
    try:
        yield lab
    finally:
        if os.environ.get("SWARM_LAB_KEEP") != "1":
            started = time.monotonic()
            res = lab_script("down")
            print(f"\n[swarm] lab down in {time.monotonic() - started:.1f}s "
                  f"(rc {res.returncode}) {res.stderr.strip()}")


# --- the load subprocess (inside a node's network namespace) ------------------------------------

async def _load_main(args: argparse.Namespace) -> LoadResult:
    stop = asyncio.Event()

    async def watch_stop() -> None:
        while not stop.is_set():
            if Path(args.stop_file).exists():
                stop.set()
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_stop())
    Path(args.ready_file).touch()
    try:
        return await run_load(args.url, seconds=args.seconds, max_requests=args.max_requests,
                              concurrency=args.concurrency, stop=stop,
                              min_requests=args.min_requests)
    finally:
        stop.set()
        await watcher


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.swarmkit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load", help="tests/loadgen.py with a stop file, JSON out")
    load.add_argument("url")
    load.add_argument("--seconds", type=float, required=True)
    load.add_argument("--max-requests", type=int, required=True)
    load.add_argument("--concurrency", type=int, default=6)
    load.add_argument("--min-requests", type=int, default=0)
    load.add_argument("--stop-file", required=True)
    load.add_argument("--ready-file", required=True, help="touched when the load starts")
    args = parser.parse_args(argv)
    result = asyncio.run(_load_main(args))
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
