"""A network alias resolves for other containers on that network (the real engine)."""

from __future__ import annotations

import pytest

from tests.dockerkit import APP, Host

pytestmark = pytest.mark.docker


def test_network_alias_resolves(host: Host) -> None:
    host.write(f"""
project: PROJECT
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 2s, retries: 2, start_period: 5s}}
  update: {{min_ready: 300ms, deadline: 20s}}
networks: {{meet: {{}}}}
services:
  prosody:
    tier: core
    image: {APP}:1.0
    environment: {{APP_NAME: prosody}}
    networks: [meet]
    network_aliases: {{meet: [xmpp.meet.jitsi]}}
  web:
    tier: business
    image: {APP}:1.0
    environment: {{APP_NAME: web}}
    networks: [meet]
""")
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    res = host.cli("exec", "--spec", str(host.spec), "--state-dir", str(host.state), "web",
                   "--", "sh", "-c", "timeout 5 wget -qO- http://xmpp.meet.jitsi:8080/health",
                   spec=False)
    assert res.returncode == 0, res.stdout + res.stderr
