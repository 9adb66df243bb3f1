"""Engine API faults through a fault-injecting proxy between `reconciler apply` and dockerd:
500s, hangs, connection resets, answers lost after the engine acted ("drop"), and slow
answers, at the list, create, start and inspect calls of a start-first rollout.

Every call is bounded (RECONCILER_ENGINE_TIMEOUT=5), the pass fails or completes cleanly (no
traceback), an engine that does not answer quarantines nothing, no retry creates a duplicate,
and the next clean pass converges (to the spec, or to last-good when the fault was an engine
*answer* — a 500 — that failed the rollout and got it quarantined)."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.dockerkit import Host
from tests.faults import kit

pytestmark = pytest.mark.docker

CALLS = {
    "list": r"^GET /containers/json",
    "create": r"^POST /containers/create",
    "start": r"^POST /containers/[0-9a-f]{64}/start",
    "inspect": r"^GET /containers/[0-9a-f]{64}/json",
}
FAULTS = ("500", "hang", "reset", "drop", "slow")
SUBSET = {("create", "drop"), ("create", "500"), ("start", "hang"), ("inspect", "reset"),
          ("list", "hang"), ("start", "slow")}
FULL = os.environ.get("RECONCILER_FULL_FAULTS") == "1"
CASES = [(c, f) for c in CALLS for f in FAULTS if FULL or (c, f) in SUBSET]
TIMEOUT_S = 5.0


def in_sync(h: Host, spec: str | None = None) -> bool:
    plan = kit.cli(h, "plan", "--json", spec=None if spec is None else h.root / spec)
    cs = kit.containers(h)
    return plan.returncode == 0 and kit.all_healthy(cs) and kit.one_per_replica(cs)


def test_engine_api_faults(host: Host, tmp_path_factory: pytest.TempPathFactory) -> None:
    sock = tmp_path_factory.mktemp("proxy") / "docker.sock"
    proxy = kit.FaultProxy(sock).start()
    env = {"DOCKER_HOST": proxy.url, "RECONCILER_ENGINE_TIMEOUT": str(TIMEOUT_S)}
    figures = kit.Figures("engine API faults")
    failures: list[str] = []
    try:
        kit.write_stack(host, kit.DUO)
        first = kit.cli(host, "apply", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        data = kit.plant_sentinel(host)
        for n, (call, fault) in enumerate(CASES):
            label = f"{fault}@{call}"
            kit.write_stack(host, kit.version(kit.DUO, "web", f"f{n}"))
            creates = len(proxy.requests(CALLS["create"]))
            rule = proxy.add(CALLS[call], fault, times=1, delay_s=TIMEOUT_S / 2)
            t0 = time.monotonic()
            faulty = kit.cli(host, "apply", env=env, timeout=120)
            took = time.monotonic() - t0
            proxy.clear()
            out = faulty.stdout + faulty.stderr
            problems = []
            if rule.hits != 1:
                problems.append(f"the fault was not injected ({rule.hits} hits)")
            if "Traceback" in out or "internal error" in out:
                problems.append(f"not a clean failure:\n{out[-1500:]}")
            if faulty.returncode not in (0, 1):
                problems.append(f"exit {faulty.returncode}")
            quarantined = (host.state / "quarantine.json").exists() and json.loads(
                (host.state / "quarantine.json").read_text())
            if fault in ("hang", "reset", "drop") and quarantined:
                problems.append(f"an engine that did not answer quarantined the spec:\n{out}")
            if fault == "slow" and faulty.returncode != 0:
                problems.append(f"a slow (in-time) answer failed the pass:\n{out[-1500:]}")
            cs = kit.containers(host)
            if not kit.no_duplicate(cs):
                problems.append("a duplicate container after the faulty pass: "
                                + ", ".join(c["Name"] for c in cs))
            # the next clean pass converges
            t1 = time.monotonic()
            clean = kit.cli(host, "apply", env=env)
            expected = None
            if quarantined:
                expected = json.loads((host.state / "last-good.json").read_text())["directory"]
            ok = kit.wait_for(lambda e=expected: in_sync(host, e), 30) is not None
            converge_s = time.monotonic() - t1
            if not ok:
                problems.append(f"the next clean pass did not converge:\n"
                                f"{clean.stdout[-1500:]}{clean.stderr[-1500:]}")
            if kit.sentinel(host) != data:
                problems.append("the volume sentinel changed")
            if kit.state_consistent(host.state):
                problems.append(f"state: {kit.state_consistent(host.state)}")
            n_creates = len(proxy.requests(CALLS["create"])) - creates
            figures.trial(not problems, converge_s)
            print(f"  {label}: faulty pass exit {faulty.returncode} in {took:.1f}s"
                  f"{' (quarantined)' if quarantined else ''}; clean pass converged in "
                  f"{converge_s:.1f}s; {n_creates} create call(s)")
            if problems:
                failures.append(f"{label}: " + "; ".join(problems))
            if quarantined:  # start the next trial from a known good spec
                (host.state / "quarantine.json").unlink()
        figures.notes.append(f"cases {', '.join(f'{f}@{c}' for c, f in CASES)}")
        figures.show()
        assert not failures, "\n".join(failures)
    finally:
        proxy.stop()
