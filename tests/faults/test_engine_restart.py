"""The engine restarts while a tier waits on its health gate (`reconciler run`).

A private dockerd (own socket, data and exec roots) is started for the test and restarted
mid-rollout; the host's engine, shared with other test runs, is never touched. The outage
alone must cause no quarantine and no revert, and the controller must converge within 30 s
of the engine answering again."""

from __future__ import annotations

import time

import pytest

from tests.dockerkit import Controller, Host
from tests.faults import kit

pytestmark = pytest.mark.docker


def test_engine_restart_mid_rollout_is_not_a_failed_rollout(host: Host) -> None:
    figures = kit.Figures("engine restart mid-rollout")
    with kit.private_engine() as engine:
        env = {"DOCKER_HOST": engine.url}
        kit.write_stack(host, kit.DUO)
        ctl = Controller(host, "--resync", "3s", env=env).start()
        try:
            ctl.wait_pass("converged", timeout=90)
            data = kit.plant_sentinel(host, url=engine.url)
            # a rollout whose health gate waits long enough to restart the engine under it
            n = len(ctl.passes())
            kit.write_stack(host, kit.version(kit.DUO, "web", "2", ', HEALTH_DELAY: "4"'))
            ctl.wait_for(lambda ln: ln.get("event") == "tier-start"
                         and ln.get("tier") == "business", timeout=60, what="business tier")
            time.sleep(0.5)  # the new web container is up and its gate is waiting
            t_stop = time.monotonic()
            engine.stop()
            down_s = time.monotonic() - t_stop
            engine.start()
            back = time.monotonic()
            figures.notes.append(f"engine down {back - t_stop:.1f}s (stop {down_s:.1f}s)")

            def converged() -> bool:
                for p in ctl.passes()[n:]:
                    if p.get("result") == "converged" and p.get("steps", 0) > 0:
                        cs = kit.containers(host, engine.url)
                        return (kit.all_healthy(cs) and kit.one_per_replica(cs) and any(
                            "APP_VERSION=2" in c["Config"]["Env"] for c in cs))
                return False

            took = kit.wait_for(converged, 60, 0.5)
            passes = ctl.passes()[n:]
            kit.record("controller log", ctl.text())
            assert took is not None, ctl.text()[-4000:]
            results = [p["result"] for p in passes]
            assert "rolled_back" not in results, results
            assert not (host.state / "quarantine.json").exists() or \
                (host.state / "quarantine.json").read_text().strip() in ("", "{}")
            assert kit.sentinel(host, url=engine.url) == data
            assert kit.state_consistent(host.state) == []
            figures.trial(took <= 30.0, took)
            figures.notes.append(f"passes after the change: {results}")
            figures.show()
            assert took <= 30.0, f"converged {took:.1f}s after the engine answered again"
            cs = kit.containers(host, engine.url)
            assert sorted(c["Config"]["Labels"]["reconciler.service"] for c in cs) == [
                "db", "web"]
        finally:
            ctl.stop()
            kit.record("controller log", ctl.text())
