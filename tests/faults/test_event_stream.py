"""The event stream is cut and stays unavailable (new subscriptions hang) while containers
are removed and stopped and more than 256 events (the daemon's replay buffer) go by: the
periodic resync finds the drift without any event: the repair pass starts within
resync + 5 s of the drift (asserted), the repair completes (healthy) within 30 s (asserted;
reported — it includes the health gates), and the stream recovers when /events answers
again."""

from __future__ import annotations

import datetime
import subprocess
import time

import pytest

from tests.dockerkit import APP, Controller, Host, docker
from tests.faults import kit

pytestmark = pytest.mark.docker

RESYNC_S = 3.0


def test_cut_event_stream_and_256_missed_events_repaired_by_resync(
        host: Host, tmp_path_factory: pytest.TempPathFactory) -> None:
    figures = kit.Figures("event stream cut, >256 events missed")
    proxy = kit.FaultProxy(tmp_path_factory.mktemp("proxy") / "docker.sock").start()
    stack = kit.DUO.replace("    depends_on: [db]\n", "    depends_on: [db]\n    replicas: 2\n")
    kit.write_stack(host, stack)
    ctl = Controller(host, "--resync", f"{RESYNC_S:g}s",
                     env={"DOCKER_HOST": proxy.url, "RECONCILER_ENGINE_TIMEOUT": "10"}).start()
    noise = f"{host.project}-noise"
    counter = None
    try:
        ctl.wait_pass("converged", timeout=120)
        webs = [c["Id"] for c in host.by_service()["web"]]
        # cut the stream; new subscriptions hang (the API keeps working)
        proxy.add(r"^GET /events", "hang")
        proxy.cut()
        ctl.wait_for(lambda ln: ln.get("event") == "event stream ended; reconnecting",
                     timeout=30, what="stream ended")
        counter = subprocess.Popen(["docker", "events", "--format", "{{.Type}}"],
                                   stdout=subprocess.PIPE, text=True)
        # more than 256 events nobody sees: a foreign container probing its health at 50 ms
        docker("run", "-d", "--name", noise, "--health-cmd", "true", "--health-interval",
               "50ms", f"{APP}:1.0")
        time.sleep(1.0)
        n = len(ctl.passes())
        t0, wall0 = time.monotonic(), time.time()
        docker("rm", "-f", webs[0])
        docker("stop", "-t", "1", webs[1])

        def repaired() -> bool:
            cs = host.by_service().get("web", [])
            return (len(cs) == 2 and kit.all_healthy(cs) and webs[0] not in
                    {c["Id"] for c in cs})

        took = kit.wait_for(repaired, 60, 0.2)
        assert took is not None, ctl.text()[-3000:]
        repair_s = time.monotonic() - t0
        assert kit.wait_for(lambda: any(p.get("steps") for p in ctl.passes()[n:]), 60)
        line = next(p for p in ctl.passes()[n:] if p.get("steps"))
        assert "resync" in line["triggers"], line
        ended = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        detect_s = ended.timestamp() - line["seconds"] - wall0  # drift -> repair pass start
        assert all("engine-event" not in p["triggers"] for p in ctl.passes()[n:]), \
            "an event reached the controller through a hung stream"
        kit.wait_for(lambda: False, max(0.0, 8.0 - repair_s))  # let the noise reach 256+
        docker("rm", "-f", noise)
        counter.terminate()
        seen = len((counter.communicate(timeout=10)[0] or "").splitlines())
        assert seen > 256, f"only {seen} events happened while the stream was down"
        # the engine serves /events again: the stream reconnects and resyncs
        proxy.clear()
        ctl.wait_for(lambda ln: ln.get("event") == "pass"
                     and "events-connected" in ln.get("triggers", []), timeout=60,
                     what="resync after reconnect")
        figures.trial(detect_s <= RESYNC_S + 5.0 and repair_s <= 30.0, repair_s)
        figures.notes.append(f"{seen} events while the stream was down; drift (1 removed, "
                             f"1 stopped) found by the resync timer ({RESYNC_S:g}s) "
                             f"{detect_s:.1f}s after it happened, repaired (healthy) after "
                             f"{repair_s:.1f}s")
        figures.show()
        assert detect_s <= RESYNC_S + 5.0, f"the repair pass started after {detect_s:.1f}s"
        assert repair_s <= 30.0, f"repaired after {repair_s:.1f}s"
    finally:
        if counter is not None and counter.poll() is None:
            counter.kill()
        docker("rm", "-f", noise, check=False)
        ctl.stop()
        kit.record("controller log", ctl.text())
        proxy.stop()
