"""issue 15: the importer validates exactly like `validate` (profiles, host policy) and
`--profile` selects what is written; hub detection with --break-cycles; small compose files
written for each test."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.loading import load


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def compose(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project" / "compose.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


PROFILED = """
services:
  app:
    image: app:1
    restart: unless-stopped
  debug:
    image: busybox:1
    profiles: [debug]
    restart: unless-stopped
  worker:
    image: worker:1
    profiles: [jobs]
    restart: unless-stopped
"""


def test_profile_selects_what_is_written(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = compose(tmp_path, PROFILED)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out), "--profile",
                                "debug"], capsys)
    assert code == 0, stdout + stderr
    assert "services.worker: not written: its profiles (jobs)" in stdout
    spec = load(out, strict=False, profiles=["debug"]).spec
    assert set(spec.services) == {"app", "debug"}
    # without --profile everything is written, profiles kept for `--profile` at apply time
    out2 = tmp_path / "spec2"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out2)], capsys)
    assert code == 0, stdout + stderr
    assert set(load(out2, strict=False, profiles=["debug", "jobs"]).spec.services) == {
        "app", "debug", "worker"}


PRIVILEGED = """
services:
  agent:
    image: agent:1
    privileged: true
    restart: unless-stopped
"""


def test_import_validates_with_the_host_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    src = compose(tmp_path, PRIVILEGED)
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_privileged: true\n")
    os.chmod(policy, 0o644)
    monkeypatch.setenv("RECONCILER_POLICY", str(tmp_path / "absent.yaml"))
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(tmp_path / "a")],
                               capsys)
    assert code == 1 and "privileged" in stderr, stdout + stderr
    monkeypatch.setenv("RECONCILER_POLICY", str(policy))
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(tmp_path / "b")],
                               capsys)
    assert code == 0, stdout + stderr
    code, stdout, stderr = run(["validate", "--no-strict", "--spec", str(tmp_path / "b")],
                               capsys)
    assert code == 0, stdout + stderr


HUB = """
name: metro
services:
  postgres:
    image: postgres:16.4
    restart: unless-stopped
  redis:
    image: redis:7.2
    restart: unless-stopped
  api-gateway:
    image: ghcr.io/metro/api-gateway:1.4.2
    restart: unless-stopped
    depends_on:
      postgres: {condition: service_healthy}
      redis: {condition: service_healthy}
      auth-service: {condition: service_healthy}
  auth-service:
    image: ghcr.io/metro/auth-service:1.8.3
    restart: unless-stopped
    depends_on:
      postgres: {condition: service_healthy}
      api-gateway: {condition: service_healthy}
  user-service:
    image: ghcr.io/metro/user-service:1.12.0
    restart: unless-stopped
    depends_on:
      postgres: {condition: service_healthy}
      api-gateway: {condition: service_healthy}
  order-service:
    image: ghcr.io/metro/order-service:2.7.0
    restart: unless-stopped
    depends_on:
      redis: {condition: service_healthy}
      api-gateway: {condition: service_healthy}
  payment-service:
    image: ghcr.io/metro/payment-service:1.9.4
    restart: unless-stopped
    depends_on:
      api-gateway: {condition: service_healthy}
  nginx:
    image: nginx:1.26
    restart: unless-stopped
    ports: ["80:80"]
    depends_on: [api-gateway]
"""


def test_gateway_hub_break_cycles_drops_edges_into_the_hub(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = compose(tmp_path, HUB)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out), "--break-cycles"],
                               capsys)
    assert code == 0, stdout + stderr
    spec = load(out, strict=False).spec
    apps = {"auth-service", "user-service", "order-service", "payment-service"}
    for name in apps:
        assert "api-gateway" not in spec.services[name].depends_on, name
    # the edges OUT of the gateway stay: it still waits for what it calls
    assert set(spec.services["api-gateway"].depends_on) == {"postgres", "redis",
                                                            "auth-service"}
    assert list(spec.services["nginx"].depends_on) == ["api-gateway"]  # only the edge
    tiers = {n: s.tier for n, s in spec.services.items()}
    order = list(spec.tiers)
    assert tiers["api-gateway"] == "business"
    assert order.index(tiers["auth-service"]) < order.index("business")  # it calls it
    for name in ("user-service", "order-service", "payment-service"):
        assert order.index(tiers[name]) <= order.index("business")
    assert tiers["nginx"] == order[-1] and tiers["postgres"] == order[0]
    assert "api-gateway is the gateway hub" in stdout
    assert "the entire system fails" in stdout
    assert "nothing but the edge depends on it" in stdout
    # without --break-cycles the cycle is an error and the hub is named
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(tmp_path / "x")],
                               capsys)
    assert code == 1
    assert "api-gateway looks like the gateway hub" in stdout + stderr


def write_binds(spec_dir: Path, volumes: str) -> None:
    spec_dir.mkdir(exist_ok=True)
    (spec_dir / "stack.yaml").write_text(
        "project: binds\nservices:\n  app:\n    tier: business\n    image: app:1\n"
        f"    volumes: {volumes}\n")


def test_missing_bind_directory_is_a_warning_a_missing_file_an_error(tmp_path: Path) -> None:
    from reconciler.core.model import SpecError

    spec_dir = tmp_path / "spec"
    write_binds(spec_dir, '["./data:/data", "./conf.d:/etc/app/conf.d:ro"]')
    loaded = load(spec_dir, strict=False)
    shown = [str(w) for w in loaded.warnings]
    assert any("bind source directory" in w and "data does not exist" in w and "0755" in w
               for w in shown), shown
    (spec_dir / "data").mkdir()  # created (as the engine does): the fingerprint holds
    assert load(spec_dir, strict=False).fingerprint == loaded.fingerprint
    write_binds(spec_dir, '["./nginx.conf:/etc/nginx/nginx.conf:ro"]')
    with pytest.raises(SpecError) as err:
        load(spec_dir, strict=False)
    assert "nginx.conf does not exist: it looks like a file" in str(err.value.problems[0])


KEYS = """
services:
  app:
    image: app:1
    pids_limit: 200
    dns: 10.0.0.53
    dns_search: [corp.example, example]
  setup:
    image: setup:1
    stdin_open: true
"""


def test_new_keys_reach_the_container_body_and_restart_defaults_to_no(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.core.blueprint import container_config
    from reconciler.core.desired import build

    src = compose(tmp_path, KEYS)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    assert "compose.yml:10: services.setup.stdin_open: not supported" in stdout  # listed, file:line
    loaded = load(out, strict=False)
    app = loaded.spec.services["app"]
    assert (app.pids_limit, app.dns, app.dns_search) == (
        200, ("10.0.0.53",), ("corp.example", "example"))
    assert app.restart.value == "no" and loaded.spec.services["setup"].restart.value == "no"
    desired = build(loaded, b"k" * 32)
    body = container_config(desired.services["app"], replica=1)
    host = body["HostConfig"]
    assert (host["PidsLimit"], host["Dns"], host["DnsSearch"]) == (
        200, ["10.0.0.53"], ["corp.example", "example"])
    assert desired.services["app"].public_config["pids_limit"] == 200
    before = desired.services["app"].fingerprint
    spec_file = next(p for p in out.glob("*.yaml") if "pids_limit" in p.read_text())
    spec_file.write_text(spec_file.read_text().replace("pids_limit: 200", "pids_limit: 300"))
    assert build(load(out, strict=False), b"k" * 32).services["app"].fingerprint != before


SYSCTLS = """
services:
  cache:
    image: redis:7
    restart: always
    sysctls:
      net.core.somaxconn: 1024
  other:
    image: app:1
    sysctls: ["kernel.shmmax=1000"]
"""


def test_sysctls_are_imported_and_gated_by_the_host_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.core.blueprint import container_config
    from reconciler.core.desired import build
    from reconciler.core.model import SpecError

    src = compose(tmp_path, SYSCTLS)
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_sysctls: [net.core.somaxconn, kernel.shm*]\n")
    os.chmod(policy, 0o644)
    monkeypatch.setenv("RECONCILER_POLICY", str(policy))
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    from reconciler.loading import load_policy

    loaded = load(out, strict=False, policy=load_policy())
    assert loaded.spec.services["other"].sysctls == {"kernel.shmmax": "1000"}
    body = container_config(build(loaded, b"k" * 32).services["cache"], replica=1)
    assert body["HostConfig"]["Sysctls"] == {"net.core.somaxconn": "1024"}
    with pytest.raises(SpecError) as err:  # no policy: refused, naming key and policy
        load(out, strict=False)
    assert "sysctl net.core.somaxconn is refused (host policy: allow_sysctls)" in "\n".join(
        str(p) for p in err.value.problems)


ALIASES = """
services:
  prosody:
    image: prosody:1
    restart: always
    networks:
      meet.jitsi:
        aliases: [xmpp.meet.jitsi]
networks:
  meet.jitsi: {}
"""


def test_network_aliases_are_carried_to_the_endpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.core.blueprint import container_config
    from reconciler.core.desired import build

    src = compose(tmp_path, ALIASES)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    loaded = load(out, strict=False)
    svc = build(loaded, b"k" * 32).services["prosody"]
    endpoints = container_config(svc, replica=1)["NetworkingConfig"]["EndpointsConfig"]
    assert list(endpoints.values()) == [{"Aliases": ["prosody", "xmpp.meet.jitsi"]}]
    assert svc.public_config["network_aliases"] == {"meet.jitsi": ["xmpp.meet.jitsi"]}


LINKS = """
services:
  db:
    image: postgres:16
    restart: always
  app:
    image: app:1
    restart: always
    links: ["db:database", db]
"""


def test_links_become_network_aliases_of_the_linked_service(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = compose(tmp_path, LINKS)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    spec = load(out, strict=False).spec
    assert spec.services["db"].network_aliases == {"default": ("database",)}
    assert "db" in spec.services["app"].depends_on
    assert "db is also reachable as 'database'" in stdout


ANON = """
services:
  search:
    image: meili:1
    restart: always
    volumes: ["/meili_data", {type: volume, target: /cache}]
"""


def test_anonymous_volumes_become_labelled_named_volumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = compose(tmp_path, ANON)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    loaded = load(out, strict=False)
    spec = loaded.spec
    assert list(spec.services["search"].volumes) == [
        "search-anon-meili-data:/meili_data", "search-anon-cache:/cache"]
    for name in ("search-anon-meili-data", "search-anon-cache"):
        assert not spec.volume(name).external  # the reconciler creates and labels it
    assert "anonymous volume at /meili_data: written as the named volume" in stdout
    from reconciler.core.desired import build

    assert build(loaded, b"k" * 32).services["search"].order.value == "stop-first"
