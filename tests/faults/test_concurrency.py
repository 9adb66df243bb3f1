"""Two reconcilers on one host: the second refuses (naming the holder) and never acts; a lock
left by a SIGKILLed reconciler is recovered (the lock is flock(2)-based, so the kernel drops
it with the process; the stale pid in the file is only informative)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.persistence import State, StateError
from tests.dockerkit import Controller, Host
from tests.faults import kit


def test_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    state = State(tmp_path / "state")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from reconciler.persistence import State
        with State(Path({str(state.root)!r})).lock():
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held = rf"another reconciler holds .*\(pid {holder.pid}\)"
        with pytest.raises(StateError, match=held), state.lock():
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        with state.lock():  # the kernel released the flock of the killed holder
            assert (state.root / "lock").read_text() == str(os.getpid())
        print(f"FIGURES stale lock (in-process): recovered {time.monotonic() - t0:.3f}s after "
              "the holder was SIGKILLed")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.docker
def test_second_reconciler_refuses_and_never_acts(host: Host) -> None:
    figures = kit.Figures("concurrency")
    kit.write_stack(host, kit.DUO)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=120)
        before = host.ids()
        other = host.root / "other-spec"  # a spec the intruder would act on
        kit.write_stack(host, kit.version(kit.DUO, "web", "2"), spec=other)
        with host.watch("create", "start", "kill", "stop", "die", "destroy") as events:
            apply = kit.cli(host, "apply", spec=other)
            run = subprocess.run([sys.executable, "-m", "reconciler.cli", "run", "--spec",
                                  str(other), "--state-dir", str(host.state)],
                                 capture_output=True, text=True, timeout=60, check=False)
            kit.record("second run", run.stdout + run.stderr)
        assert ctl.proc is not None
        for res in (apply, run):
            assert res.returncode == 1, res.stdout + res.stderr
            assert f"another reconciler holds {host.state / 'lock'} (pid {ctl.proc.pid})" \
                in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
        assert events == [], events  # the refused reconcilers caused no engine event
        assert host.ids() == before
        figures.trial(True, 0.0)
        # the holder is SIGKILLed: its lock goes with it, the next reconciler acts
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait(10)
        assert (host.state / "lock").read_text().strip() == str(ctl.proc.pid)  # stale pid
        t0 = time.monotonic()
        took_over = kit.cli(host, "apply", spec=other)
        seconds = time.monotonic() - t0
        assert took_over.returncode == 0, took_over.stdout + took_over.stderr
        web = host.by_service()["web"]
        assert len(web) == 1 and "APP_VERSION=2" in web[0]["Config"]["Env"]
        figures.trial(True, seconds)
        figures.notes.append("second apply and second run refused with the holder's pid, "
                             "zero engine events; after SIGKILL of the holder the next apply "
                             "took the lock and converged")
        figures.show()
    finally:
        ctl.stop()
        kit.record("controller log", ctl.text())
