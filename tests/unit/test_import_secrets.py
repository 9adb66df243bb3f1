"""issue 15 items 5 and 6 in the importer: `secrets`/`configs` (file, environment, content;
short and long syntax), `network_mode: service:X`, `healthcheck.start_interval`, static
`ipv4_address` with `ipam`; every key still unsupported is listed with file:line. Small compose
files written for each test."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.core.desired import build
from reconciler.importer.model import ImportResult, Source
from reconciler.importer.translate import import_compose
from reconciler.loading import load
from tests.specfactory import KEY

VALUE = "import-secret-value-7f3a9c2e1b"

COMPOSE = """
services:
  db:
    image: postgres:16
    restart: unless-stopped
    environment:
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
    secrets:
      - db_password
      - source: api_token
        target: token
        uid: "999"
        gid: "999"
        mode: 0440
    configs:
      - source: initdb
        target: /docker-entrypoint-initdb.d/init.sql
      - motd
secrets:
  db_password:
    file: ./secrets/db_password.txt
  api_token:
    environment: API_TOKEN
configs:
  initdb:
    file: ./init.sql
  motd:
    content: |
      welcome to ${STACK_NAME}
"""


def _listed(result: ImportResult, *expected: str) -> None:
    """Each expected remark (as a prefix of its printed line) is among the import's."""
    lines = sorted(str(r) for r in result.remarks)
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    (project / "secrets" / "db_password.txt").write_text("from-a-file-" + VALUE)
    (project / "secrets" / "db_password.txt").chmod(0o600)
    (project / "init.sql").write_text("create table t (id int);\n")
    (project / "compose.yml").write_text(textwrap.dedent(COMPOSE))
    (project / ".git").mkdir()  # the checkout: files in it are inside the spec's repository
    return project


def test_secrets_and_configs_are_imported_and_mounted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    monkeypatch.setenv("API_TOKEN", VALUE)
    monkeypatch.setenv("STACK_NAME", "shop")
    out = project / "spec"
    secrets_dir = tmp_path / "host-secrets"
    code = cli.main(["import-compose", str(project / "compose.yml"), "-o", str(out),
                     "--secrets-dir", str(secrets_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert VALUE not in captured.out + captured.err
    spec_text = "\n".join(p.read_text() for p in sorted(out.glob("*.yaml")))
    assert VALUE not in spec_text
    assert "secrets.api_token.environment: the value of API_TOKEN is written to" in captured.out
    # the environment source became a generated 0600 file next to the env files
    blob = secrets_dir / "secrets-api_token"
    assert blob.read_text() == VALUE
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700

    loaded = load(out, strict=False)
    spec = loaded.spec
    assert spec.secrets["db_password"].file == "../secrets/db_password.txt"
    assert spec.configs["motd"].content == "welcome to shop\n"
    refs = {(r.source, r.target, r.mode, r.uid) for r in spec.services["db"].secrets}
    assert refs == {("db_password", None, None, None), ("api_token", "token", "0440", "999")}
    mounts = {f.target: f for f in build(loaded, KEY).services["db"].files}
    assert set(mounts) == {"/run/secrets/db_password", "/run/secrets/token",
                           "/docker-entrypoint-initdb.d/init.sql", "/motd"}
    assert mounts["/run/secrets/token"].mode == 0o440
    assert mounts["/run/secrets/db_password"].data == ("from-a-file-" + VALUE).encode()
    # the generated file lies outside the checkout: the host policy names its directory
    assert any("env_file_roots" in str(w) and "secrets-api_token" in str(w)
               for w in loaded.warnings)


def test_unset_environment_source_stays_environment_and_swarm_keys_are_listed() -> None:
    text = textwrap.dedent("""\
        services:
          app:
            image: app:1
            secrets: [{source: s, target: s, driver: x}]
        secrets:
          s: {environment: NOT_SET_ANYWHERE}
          ext: {external: true, name: prod_secret}
          drv: {file: ./x, driver: vault}
        configs:
          c: {template_driver: golang, content: x}
        """)
    result = import_compose([Source("c.yml", text)], environ={}, secrets_dir="/tmp/s")
    assert result.ok, [str(r) for r in result.remarks]
    _listed(result, "c.yml:4: services.app.secrets[0].driver: not supported (dropped)",
            "c.yml:6: secrets.s.environment: NOT_SET_ANYWHERE is not set here",
            "c.yml:7: secrets.ext.external: not supported (dropped): an external secret lives",
            "c.yml:7: secrets.ext.name: dropped (the name of a swarm object)",
            "c.yml:8: secrets.drv.driver: not supported (dropped): swarm only",
            "c.yml:10: configs.c.template_driver: not supported (dropped): swarm only")
    assert "environment: NOT_SET_ANYWHERE" in result.files["00-project.yaml"]


@pytest.mark.parametrize(("written", "mode"), [("0440", "0440"), ("0o400", "0400"),
                                                ("'0444'", "0444"), ("288", "0440")])
def test_modes_read_as_compose_reads_them(written: str, mode: str) -> None:
    text = (f"services:\n  app:\n    image: app:1\n    secrets: [{{source: s, mode: {written}}}]\n"
            "secrets:\n  s: {file: ./s}\n")
    result = import_compose([Source("c.yml", text)], environ={})
    assert result.ok, [str(r) for r in result.remarks]
    assert result.services["app"]["secrets"] == [{"source": "s", "mode": mode}]


NETWORKING = """
services:
  vpn:
    image: vpn:1
    networks:
      back: {ipv4_address: 172.28.5.10, ipv6_address: "2001:db8::10"}
    healthcheck:
      test: ["CMD", "true"]
      interval: 30s
      start_period: 60s
      start_interval: 2s
  app:
    image: app:1
    network_mode: service:vpn
networks:
  back:
    ipam:
      driver: default
      config:
        - subnet: 172.28.5.0/24
          gateway: 172.28.5.1
          aux_addresses: {router: 172.28.5.2}
"""


def test_network_mode_service_start_interval_and_static_addresses(tmp_path: Path) -> None:
    result = import_compose([Source("c.yml", textwrap.dedent(NETWORKING))], environ={})
    assert result.ok, [str(r) for r in result.remarks]
    vpn, app = result.services["vpn"], result.services["app"]
    assert app["network_mode"] == "service:vpn" and "networks" not in app
    assert app.get("depends_on") in (["vpn"], {"vpn": {"condition": "service_started"}})
    assert vpn["ipv4_address"] == {"back": "172.28.5.10"}
    assert vpn["healthcheck"]["start_interval"] == "2s"
    lines = {str(r) for r in result.remarks}
    assert "c.yml:6: services.vpn.networks.back.ipv6_address: not supported (dropped)" in lines
    assert ("c.yml:22: networks.back.ipam.config[0].aux_addresses: not supported (dropped)"
            in lines), sorted(lines)
    out = tmp_path / "spec"
    out.mkdir()
    for name, content in result.files.items():
        (out / name).write_text(content)
    loaded = load(out, strict=False)
    d = build(loaded, KEY)
    assert d.services["app"].joins == "vpn"
    assert d.services["vpn"].service.healthcheck is not None
    assert d.services["vpn"].service.healthcheck.start_interval == 2.0
    pools = loaded.spec.networks["back"]
    assert pools is not None and pools.ipam is not None
    assert pools.ipam.config[0].subnet == "172.28.5.0/24"


def test_container_network_mode_is_listed_not_dropped() -> None:
    text = "services:\n  app:\n    image: app:1\n    network_mode: container:abc\n"
    result = import_compose([Source("c.yml", text)], environ={})
    assert ("c.yml:4: services.app.network_mode: not supported (dropped): join a shared "
            "network, or use service:NAME for a service of this project"
            in {str(r) for r in result.remarks})


def test_no_value_is_printed_when_the_blob_exists(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    monkeypatch.setenv("API_TOKEN", VALUE)
    monkeypatch.setenv("STACK_NAME", "shop")
    secrets_dir = tmp_path / "host-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "secrets-api_token").write_text("old")
    code = cli.main(["import-compose", str(project / "compose.yml"), "-o",
                     str(project / "spec"), "--secrets-dir", str(secrets_dir)])
    captured = capsys.readouterr()
    assert code != 0
    assert "secret file(s) already exist" in captured.err
    assert VALUE not in captured.out + captured.err
    assert (secrets_dir / "secrets-api_token").read_text() == "old"
    assert not os.path.exists(project / "spec" / "00-project.yaml")


def test_no_key_is_dropped_silently() -> None:
    text = textwrap.dedent("""\
        services:
          app:
            image: app:1
            volumes:
              - type: volume
                target: /cache
                volume: {nocopy: true}
            logging: {driver: json-file, format: x}
          bad:
            image: app:1
            volumes: {data: /data}
            deploy: only-a-string
        """)
    result = import_compose([Source("c.yml", text)], environ={})
    _listed(result, "c.yml:7: services.app.volumes[0].volume: not supported (dropped)",
            "c.yml:8: services.app.logging.format: not supported (dropped)",
            "c.yml:11: services.bad.volumes: expected a list",
            "c.yml:12: services.bad.deploy: expected a mapping")
