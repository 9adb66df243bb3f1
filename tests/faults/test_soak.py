"""Soak: random spec changes (good and bad) and random container kills against a small stack
under `reconciler run`. Every change either converges or is reverted and quarantined, the
controller's memory does not grow beyond 20% after warm-up, the volume sentinel is intact.

RECONCILER_SOAK_SECONDS sets the length (default 120, the CI variant); the 15-minute run is
`test_soak_long` (marked slow: RECONCILER_SOAK_SECONDS=900 pytest -m slow)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.dockerkit import Controller, Host, docker
from tests.faults import kit

pytestmark = pytest.mark.docker


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(host: Host, seconds: float) -> None:
    rng = random.Random(int(os.environ.get("RECONCILER_SOAK_SEED", "9")))
    figures = kit.Figures(f"soak {seconds:.0f}s")
    kit.write_stack(host, kit.DUO)
    ctl = Controller(host, "--resync", "3s").start()
    assert ctl.proc is not None
    try:
        ctl.wait_pass("converged", timeout=120)
        data = kit.plant_sentinel(host)
        start = time.monotonic()
        warm: list[int] = []
        late: list[int] = []
        n = 0
        while time.monotonic() - start < seconds:
            n += 1
            action = rng.choice(["good", "good", "bad", "kill"])
            before = len(ctl.passes())
            t0 = time.monotonic()
            if action == "kill":
                victim = rng.choice(kit.containers(host))
                docker("kill", victim["Id"], check=False)
                ok = kit.wait_for(lambda: (cs := kit.containers(host)) != [] and len(cs) == 2
                                  and kit.all_healthy(cs), 60) is not None
            else:
                extra = ', EXIT_IMMEDIATELY: "1"' if action == "bad" else ""
                service = rng.choice(["db", "web"])
                kit.write_stack(host, kit.version(kit.DUO, service, f"s{n}", extra))
                want = "rolled_back" if action == "bad" else "converged"
                try:
                    ctl.wait_pass(want, after=before, timeout=90)
                    ok = True
                except AssertionError:
                    ok = False
                if ok and action == "bad":
                    ok = any(p["result"] == "rolled_back" for p in ctl.passes()[before:])
            took = time.monotonic() - t0
            ok = ok and kit.sentinel(host) == data
            figures.trial(ok, took)
            (warm if time.monotonic() - start < seconds / 4 else late).append(
                rss_kib(ctl.proc.pid))
            assert ok, f"step {n} ({action}) failed:\n{ctl.text()[-3000:]}"
        base = max(warm) if warm else rss_kib(ctl.proc.pid)
        final = max(late[-3:]) if late else base
        figures.notes.append(f"{n} changes/kills; RSS after warm-up {base} KiB, at the end "
                             f"{final} KiB ({(final / base - 1) * 100:+.1f}%)")
        figures.show()
        assert final <= base * 1.2, f"RSS grew from {base} to {final} KiB"
    finally:
        ctl.stop()
        kit.record("controller log", ctl.text())


def test_soak(host: Host) -> None:
    soak(host, float(os.environ.get("RECONCILER_SOAK_SECONDS", "120")))


@pytest.mark.slow
def test_soak_long(host: Host) -> None:
    soak(host, float(os.environ.get("RECONCILER_SOAK_LONG_SECONDS", "900")))
