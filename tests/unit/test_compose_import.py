"""`reconciler import-compose`, the editor schema and the host install files (no Docker)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler import cli
from reconciler.core.desired import build
from reconciler.importer import Kind, Source, image_role, import_compose
from reconciler.loading import load

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "compose"
REALWORLD = Path(__file__).resolve().parents[3] / "shared" / "realworld"
KEY = b"test-key"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- (a) round trip of the demo ----------------------------------------------------------


def test_demo_compose_imports_to_the_demo_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(FIXTURES / "demo-compose.yml"),
                                "--overrides", str(FIXTURES / "demo-overrides.yml"),
                                "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    assert "next: reconciler --dry-run --spec" in stdout
    assert "container_name: dropped" in stdout
    assert "looks like the edge proxy" in stdout  # nginx: noted, no `edge:` invented

    imported = build(load(out, strict=False), KEY)
    demo = build(load(ROOT / "deploy" / "demo", strict=False), KEY)
    assert imported.tiers == demo.tiers
    assert set(imported.services) == set(demo.services)
    for name, want in demo.services.items():
        got = imported.services[name]
        assert (got.tier, got.replicas, got.service.image, got.order) == (
            want.tier, want.replicas, want.service.image, want.order), name
    # with the profile, the profile-only service comes along too
    both = [build(load(d, strict=False, profiles=["admin"]), KEY)
            for d in (out, ROOT / "deploy" / "demo")]
    assert both[0].services["admin-console"].tier == both[1].services["admin-console"].tier

    files = sorted(p.name for p in out.iterdir())
    assert files == ["00-project.yaml", "10-infrastructure.yaml", "20-core.yaml",
                     "30-business.yaml", "40-external.yaml"]
    for path in out.iterdir():
        assert path.read_text().startswith(
            "# yaml-language-server: $schema=../reconciler.schema.json\n")
    assert load(out, strict=False).spec.project == "demo"


def test_existing_output_is_not_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spec"
    out.mkdir()
    (out / "mine.yaml").write_text("project: mine\n")
    argv = ["import-compose", str(FIXTURES / "demo-compose.yml"), "-o", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 1 and "--force" in err
    assert (out / "mine.yaml").read_text() == "project: mine\n"
    code, _, _ = run([*argv, "--force"], capsys)
    assert code == 0 and not (out / "mine.yaml").exists()


# --- (b) the seed's problem file ---------------------------------------------------------

SEED = """\
name: metro
services:
  postgres:
    image: postgres:16.4
    volumes: ["pg-data:/var/lib/postgresql/data"]
  redis:
    image: redis:7.2
  kafka:
    image: confluentinc/cp-kafka:7.6.0
  api-gateway:
    image: ghcr.io/metro/api-gateway:1.4.2
    depends_on: [kafka, postgres, redis, auth-service]
    healthcheck:
      test: wget -qO- http://127.0.0.1:8080/health
      timeout: 5s
      retries: 3
  auth-service:
    image: ghcr.io/metro/auth-service:1.8.3
    depends_on: [api-gateway]
  user-service:
    image: ghcr.io/metro/user-service:1.12.0
    depends_on: [api-gateway]
  orders:
    image: ghcr.io/metro/orders:2.7.0
    depends_on:
      api-gateway: {condition: service_healthy}
  nginx:
    image: nginx:1.26
    ports: ["80:80"]
volumes:
  pg-data: {}
"""


def test_seed_cycle_is_reported_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = tmp_path / "docker-compose.prod.yml"
    compose.write_text(SEED)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(compose), "-o", str(out)], capsys)
    text = stdout + stderr
    assert code == 1
    assert "api-gateway -> auth-service -> api-gateway" in text
    assert "auth-service (core) -> api-gateway (business)" in text
    assert "proposed edges to drop:\n  auth-service -> api-gateway" in text
    assert "--break-cycles" in text
    assert not out.exists()


def test_seed_with_break_cycles_writes_a_valid_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = tmp_path / "docker-compose.prod.yml"
    compose.write_text(SEED)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(compose), "-o", str(out),
                                "--break-cycles"], capsys)
    assert code == 0, stdout + stderr
    assert ("services.auth-service.depends_on.api-gateway: dropped: nothing but the edge depends"
            " on the gateway hub api-gateway") in stdout
    spec = load(out, strict=False).spec
    assert {n: s.tier for n, s in spec.services.items()} == {
        "postgres": "infrastructure", "redis": "infrastructure", "kafka": "infrastructure",
        "auth-service": "core", "api-gateway": "business", "user-service": "business",
        "orders": "business", "nginx": "external",
    }
    assert "api-gateway" not in spec.services["auth-service"].depends_on
    # tight health checks: warned with the production values, compose values kept
    assert re.search(r"services\.api-gateway\.healthcheck: too tight for production: "
                     r"timeout 5s \(production: 15s\), retries 3 \(production: 5\), "
                     r"start_period 0s \(production: 90s\)", stdout)
    assert spec.services["api-gateway"].healthcheck is not None
    assert spec.services["api-gateway"].healthcheck.timeout == 5.0


def test_cycles_are_all_reported_not_just_the_first() -> None:
    text = """\
services:
  a: {image: x/a, depends_on: [b]}
  b: {image: x/b, depends_on: [a]}
  c: {image: x/c, depends_on: [d]}
  d: {image: x/d, depends_on: [c]}
"""
    result = import_compose([Source("c.yml", text)], environ={})
    assert not result.ok
    assert {" -> ".join(c) for c in result.cycles.cycles} == {"a -> b -> a", "c -> d -> c"}
    assert len(result.cycles.drop) == 2


# --- (c) real-world compose files ---------------------------------------------------------

REALWORLD_FILES = sorted(p for p in REALWORLD.glob("*") if p.suffix in (".yml", ".yaml")) \
    if REALWORLD.is_dir() else []
_LOCATED = re.compile(r"^\s*(error: |warning: )?\S+:\d+: [\w.\-\[\]]+: ", re.M)


@pytest.mark.skipif(not REALWORLD_FILES, reason=f"{REALWORLD} is absent")
@pytest.mark.parametrize("path", REALWORLD_FILES, ids=lambda p: p.name[:40])
def test_realworld_file_imports_without_a_traceback(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spec"
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_DEBUG"}
    os.environ["RECONCILER_DEBUG"] = "1"  # a crash must surface as a test failure
    try:
        code, stdout, stderr = run(["import-compose", str(path), "-o", str(out),
                                    "--secrets-dir", str(tmp_path / "secrets")], capsys)
    finally:
        os.environ.clear()
        os.environ.update(env)
    text = stdout + stderr
    assert "Traceback" not in text and "internal error" not in text
    if code == 0:
        load(out, strict=False)
    else:
        assert code == 1
        assert _LOCATED.search(stderr), text  # the failure names file, line and key
    # every unsupported key is listed with file, line and key path
    data = YAML(typ="safe").load(path.read_text())
    for name, svc in (data.get("services") or {}).items():
        for key in svc:
            if key in _HANDLED or key.startswith("x-"):
                continue
            pattern = (rf"{re.escape(path.name)}:\d+: services\.{re.escape(name)}\."
                       rf"{re.escape(key)}: not supported \(dropped\)")
            assert re.search(pattern, stdout), (name, key)


_HANDLED = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "networks", "healthcheck", "depends_on", "restart", "labels",
    "stop_grace_period", "stop_signal", "user", "working_dir", "hostname", "profiles",
    "privileged", "network_mode", "pid", "ipc", "cap_add", "shm_size", "deploy",
    "container_name", "mem_limit", "cpus", "scale", "pull_policy", "extends",
    "logging", "ulimits", "init", "read_only", "tmpfs", "security_opt", "cap_drop",
    "extra_hosts", "links", "pids_limit", "dns", "dns_search", "sysctls", "secrets", "configs",
}


# --- (d) interpolation and merging of -f files --------------------------------------------


def test_interpolation_forms() -> None:
    text = """\
services:
  app:
    image: "${REGISTRY:-ghcr.io/acme}/app:${TAG-latest}"
    environment:
      A: "${SET}"
      B: "${EMPTY:-fallback}"
      C: "${EMPTY-kept-empty}"
      D: "$SET/$$HOME/${SET:+alt}"
      E: "${MISSING}"
      F: "${NESTED:-${SET}-x}"
    command: echo "$$PATH"
"""
    result = import_compose([Source("c.yml", text)],
                            environ={"SET": "value", "EMPTY": "", "TAG": "1.2"})
    app = result.services["app"]
    assert app["image"] == "ghcr.io/acme/app:1.2"
    assert app["environment"] == {"A": "value", "B": "fallback", "C": "", "D":
                                  "value/$HOME/alt", "E": "", "F": "value-x"}
    assert app["command"] == ["echo", "$PATH"]
    warnings = [str(r) for r in result.remarks if r.kind is Kind.WARNING]
    assert any("variable MISSING is not set" in w and w.startswith("c.yml:9:")
               for w in warnings), warnings


def test_required_variable_stops_the_import() -> None:
    text = "services:\n  app:\n    image: \"acme/app:${TAG:?set TAG to the release}\"\n"
    result = import_compose([Source("c.yml", text)], environ={})
    assert not result.ok
    assert [str(r) for r in result.errors] == [
        "c.yml:3: services.app.image: required variable TAG is missing a value: "
        "set TAG to the release"]


def test_dotenv_next_to_the_first_file_and_environment_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\nPORT=8080\n")
    (tmp_path / "compose.yml").write_text(
        "services:\n  web:\n    image: acme/web:${TAG}\n    ports: [\"${PORT}:80\"]\n")
    monkeypatch.setenv("TAG", "from-env")
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(tmp_path / "compose.yml"), "-o",
                                str(out)], capsys)
    assert code == 0, stdout + stderr
    web = load(out, strict=False).spec.services["web"]
    assert web.image == "acme/web:from-env"
    assert web.ports == ("8080:80",)


def test_two_files_merge_like_compose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "base.yml").write_text("""\
services:
  web:
    image: acme/web:1
    command: ["serve", "--port", "80"]
    environment: {A: "1", B: "1"}
    ports: ["8080:80"]
    volumes: ["data:/data", "./conf:/etc/web:ro"]
    labels: [team=web]
  db:
    image: postgres:16
volumes:
  data: {}
""")
    (tmp_path / "prod.yml").write_text("""\
services:
  web:
    image: acme/web:2
    command: serve --prod
    environment: [B=2, C=3]
    ports: ["127.0.0.1:9090:9090"]
    volumes: ["./conf-prod:/etc/web:ro"]
    depends_on: [db]
    ulimits: {nofile: 1024}
    stdin_open: true
""")
    (tmp_path / "conf-prod").mkdir()
    # bind mounts must come from the spec's repository: make tmp_path one
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(tmp_path / "base.yml"),
                                str(tmp_path / "prod.yml"), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    assert re.search(r"prod\.yml:10: services\.web\.stdin_open: not supported \(dropped\)", stdout)
    web = load(out, strict=False).spec.services["web"]
    assert web.ulimits["nofile"].soft == 1024
    assert web.image == "acme/web:2"
    assert web.command == ("serve", "--prod")  # replaced, split like compose
    assert web.environment == {"A": "1", "B": "2", "C": "3"}
    assert web.ports == ("8080:80", "127.0.0.1:9090:9090")  # appended
    assert web.volumes == ("data:/data", "../conf-prod:/etc/web:ro")  # same target replaced
    assert web.labels == {"team": "web"}
    assert list(web.depends_on) == ["db"]
    assert web.tier == "core"


def test_key_mapping_and_notes() -> None:
    text = """\
version: "3.8"
x-common: &common
  restart: "on-failure:3"
services:
  web:
    <<: *common
    image: acme/web:1
    build: .
    container_name: web
    env_file: [{path: ./web.env, required: false}]
    ports:
      - target: 80
        published: 8080
        host_ip: 127.0.0.1
        protocol: tcp
    volumes:
      - type: bind
        source: ./static
        target: /srv/static
        read_only: true
      - data:/data:Z
      - /anonymous
      - type: tmpfs
        target: /tmp
    networks:
      front: {aliases: [www]}
    healthcheck:
      test: ["CMD", "true"]
      interval: 10s
      timeout: 20s
      retries: 6
      start_interval: 1s
    stop_grace_period: 1m30s
    user: 1000
    working_dir: /srv
    cap_add: [NET_BIND_SERVICE]
    shm_size: 256m
    deploy:
      replicas: 3
      resources:
        limits: {memory: 512m, cpus: "0.5"}
        reservations: {memory: 256m}
      update_config:
        order: start-first
        parallelism: 2
        delay: 5s
        monitor: 15s
        failure_action: rollback
      placement: {constraints: [node.role == manager]}
    logging: {driver: json-file}
    stdin_open: true
secrets:
  token: {file: ./token}
networks:
  front: {driver: bridge, ipam: {config: [{subnet: 10.0.0.0/24}]}}
volumes:
  data: {driver_opts: {type: nfs}}
"""
    result = import_compose([Source("c.yml", text)], environ={},
                            project_dir="/srv/app", out_dir="/srv/app/specs")
    assert result.ok, [str(r) for r in result.remarks]
    web = result.services["web"]
    assert web["restart"] == "on-failure"
    assert web["env_file"] == ["../web.env"]
    assert web["ports"] == ["127.0.0.1:8080:80"]
    assert web["volumes"] == ["../static:/srv/static:ro", "data:/data",
                              "web-anon-anonymous:/anonymous"]
    assert web["networks"] == ["front"]
    assert web["healthcheck"] == {"test": ["CMD", "true"], "interval": "10s",
                                  "timeout": "20s", "retries": 6, "start_interval": "1s"}
    assert web["replicas"] == 3
    assert web["logging"] == {"driver": "json-file"}
    assert web["resources"] == {"memory": "512m", "cpus": 0.5}
    assert web["update"] == {"order": "start-first", "parallelism": 2, "min_ready": "15s"}
    assert (web["stop_grace_period"], web["user"], web["working_dir"]) == ("1m30s", "1000",
                                                                           "/srv")
    lines = {str(r) for r in result.remarks}
    for expected in (
        "c.yml:1: version: ignored (obsolete in compose too)",
        "c.yml:42: services.web.deploy.resources.reservations: not supported (dropped): only "
        "limits are enforced",
        "c.yml:49: services.web.deploy.placement: not supported (dropped): swarm only",
        "c.yml:51: services.web.stdin_open: not supported (dropped)",
    ):
        assert expected in lines, (expected, sorted(lines))
    texts = "\n".join(sorted(lines))
    assert web["image"] == "acme/web:1" and web["build"] == {"context": ".."}
    for fragment in ("services.web.container_name: dropped",
                     "services.web.volumes[1]: SELinux relabel suffix :Z dropped",
                     "services.web.volumes[2]: anonymous volume at",
                     "services.web.volumes[3]: not supported (dropped): tmpfs mount",
                     "services.web.deploy.update_config.failure_action: dropped",
                     "services.web.env_file[0].required: required: false is not supported",
                     "volumes.data.driver_opts: not supported (dropped)"):
        assert fragment in texts, fragment


def test_build_string_and_mapping_forms_are_translated() -> None:
    text = """\
services:
  api:
    build: ./api
  web:
    image: acme/web:2
    build:
      context: web
      dockerfile: docker/Dockerfile.prod
      target: runtime
      args:
        - MODE=production
        - FROM_SHELL
      cache_from: [acme/web:cache]
    pull_policy: build
  db:
    image: postgres:16
"""
    result = import_compose([Source("c.yml", text)], environ={},
                            project_dir="/srv/app", out_dir="/srv/app/specs")
    assert result.ok, [str(r) for r in result.remarks]
    assert "image" not in result.services["api"]
    assert result.services["api"]["build"] == {"context": "../api"}
    assert result.services["web"]["image"] == "acme/web:2"
    assert result.services["web"]["build"] == {
        "context": "../web", "dockerfile": "docker/Dockerfile.prod", "target": "runtime",
        "args": {"MODE": "production"}}
    lines = "\n".join(str(r) for r in result.remarks)
    assert "c.yml:12: services.web.build.args.FROM_SHELL: dropped: it takes its value from " \
           "the environment" in lines
    assert "c.yml:13: services.web.build.cache_from: not supported (dropped)" in lines
    assert "c.yml:14: services.web.pull_policy: build: dropped, a `build:` image is built" \
        in lines and "pull_policy" not in result.services["web"]
    # the build-only service is written without an image: the reconciler names it
    assert any("context: ../api" in text for text in result.files.values())


def test_build_args_from_env_files_are_refused_and_remote_contexts_too() -> None:
    text = """\
services:
  api:
    build:
      context: ./api
      args:
        VERSION: ${VERSION}
        CHANNEL: ${CHANNEL:-stable}
  web:
    build: https://github.com/acme/web.git#main
"""
    result = import_compose([Source("c.yml", text)], environ={"VERSION": "1.2.3"})
    assert not result.ok and not result.files
    errors = [str(e) for e in result.errors]
    assert any(e.startswith("c.yml:6: services.api.build.args.VERSION: takes $VERSION from "
                            "the environment or .env: build args are literal") for e in errors)
    assert any(e.startswith("c.yml:9: services.web.build: remote build context") for e in errors)
    assert not any("CHANNEL" in e for e in errors)  # a default written in the file is literal
    assert all("1.2.3" not in e for e in errors)


def test_tiers_option_and_overrides() -> None:
    text = """\
services:
  pg: {image: "bitnami/postgresql:16"}
  app: {image: acme/app, depends_on: [pg]}
  worker: {image: acme/worker, depends_on: [app]}
  proxy: {image: "traefik:v3", depends_on: [app]}
"""
    result = import_compose([Source("c.yml", text)], environ={},
                            tiers=["data", "apps", "edge"])
    assert result.placement == {"pg": "data", "app": "apps", "worker": "apps", "proxy": "edge"}
    assert sorted(result.files) == ["00-project.yaml", "10-data.yaml", "20-apps.yaml",
                                    "30-edge.yaml"]
    result = import_compose([Source("c.yml", text)], environ={}, overrides={"app": "external"})
    # worker depends on app: moved up with it (a service never precedes its dependencies)
    assert result.placement["app"] == "external" and result.placement["worker"] == "external"
    assert any("services.worker: tier external instead of business" in str(r)
               for r in result.remarks)


@pytest.mark.parametrize(("image", "role"), [
    ("postgres:16", "infrastructure"), ("bitnami/redis:7", "infrastructure"),
    ("confluentinc/cp-kafka:7.6.0", "infrastructure"), ("confluentinc/cp-server:7",
                                                         "infrastructure"),
    ("docker.elastic.co/elasticsearch/elasticsearch:8.1", "infrastructure"),
    ("minio/minio@sha256:abc", "infrastructure"), ("nginx:1.26-alpine", "external"),
    ("kong:3", "external"), ("ghcr.io/acme/api:1", None), ("acme/postgres-exporter", None),
])
def test_well_known_images(image: str, role: str | None) -> None:
    assert image_role(image) == role


def test_written_spec_that_does_not_validate_names_file_line_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "compose.yml").write_text(
        "services:\n  a:\n    image: x/a\n    ports: [\"8080:80\"]\n"
        "  b:\n    image: x/b\n    ports: [\"8080:81\"]\n")
    out = tmp_path / "spec"
    code, _, stderr = run(["import-compose", str(tmp_path / "compose.yml"), "-o",
                           str(out)], capsys)
    assert code == 1
    assert re.search(r"spec/20-core\.yaml:\d+: services\.b\.ports\[0\]: host port 8080/tcp",
                     stderr), stderr


# --- (e) the committed JSON Schema -------------------------------------------------------


def test_committed_schema_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(["schema"], capsys)
    assert code == 0
    committed = (ROOT / "reconciler.schema.json").read_text()
    assert json.loads(committed) == json.loads(stdout), \
        "reconciler.schema.json is stale: run `reconciler schema > reconciler.schema.json`"
    assert "required" not in json.loads(stdout)  # a file is one part of a spec


def test_schema_validates_shipped_specs_and_rejects_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "reconciler.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    yaml = YAML(typ="safe")
    files = sorted((ROOT / "specs").glob("*.yaml")) + sorted(
        (ROOT / "deploy" / "demo").glob("*.yaml"))
    assert files
    for path in files:
        errors = [e.message for e in validator.iter_errors(yaml.load(path.read_text()))]
        assert not errors, (path.name, errors)
    core = yaml.load((ROOT / "specs" / "20-core.yaml").read_text())
    name = next(iter(core["services"]))
    core["services"][name]["enviroment"] = {"A": "1"}
    assert any("'enviroment' was unexpected" in e.message
               for e in validator.iter_errors(core))
    project = yaml.load((ROOT / "specs" / "00-project.yaml").read_text())
    project["tier"] = ["a"]
    assert not validator.is_valid(project)


# --- (f) host installation files ----------------------------------------------------------


def test_install_dry_run_changes_nothing() -> None:
    script = ROOT / "deploy" / "install.sh"
    watched = [Path("/opt/reconciler"), Path("/var/lib/reconciler"), Path("/opt/env"),
               Path("/srv/metro-spec"), Path("/etc/systemd/system/reconciler.service")]

    def state() -> list[tuple[str, bool, float | None]]:
        return [(str(p), p.exists(), p.stat().st_mtime if p.exists() else None)
                for p in watched]

    before = state()
    proc = subprocess.run(["bash", str(script), "--dry-run",
                           "https://example.invalid/metro-spec.git"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert state() == before
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[dry-run]")]
    assert len(steps) >= 6, proc.stdout
    for fragment in ("/opt/reconciler/venv", "/var/lib/reconciler", "/opt/env",
                     "/srv/metro-spec", "reconciler.service", "systemctl"):
        assert fragment in proc.stdout, fragment


def test_install_requires_a_spec_repo() -> None:
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "usage" in (proc.stdout + proc.stderr).lower()


def test_systemd_unit_is_hardened() -> None:
    unit = ROOT / "deploy" / "reconciler.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["ExecStart"].startswith("/opt/reconciler/venv/bin/reconciler run ")
    for option in ("--spec /srv/metro-spec/specs", "--git-pull 30s",
                   "--metrics-addr 172.17.0.1:9321"):
        assert option in service["ExecStart"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/reconciler" in service["ReadWritePaths"]
    assert "/srv/metro-spec" in service["ReadWritePaths"]
    assert service["PrivateTmp"] == "yes" and service["ProtectHome"] == "yes"
    assert service["Restart"] == "on-failure" and "RestartSec" in service
    assert "docker.service" in parser["Unit"]["After"]
    assert "docker.service" in parser["Unit"]["Requires"]
    assert "StartLimitBurst" in parser["Unit"] and "StartLimitIntervalSec" in parser["Unit"]
    assert service["StandardOutput"] == "journal"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "reconciler.service"
    unit.write_text((ROOT / "deploy" / "reconciler.service").read_text())
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    output = proc.stdout + proc.stderr
    # On a build machine the binary, docker.service or systemd itself may be missing: only
    # syntax problems of the unit count.
    syntax = [line for line in output.splitlines()
              if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid", line)
              and "reconciler.service" in line]
    assert not syntax, output


def test_spec_repo_workflow_is_valid_yaml() -> None:
    workflow = YAML(typ="safe").load(
        (ROOT / "deploy" / "ci" / "spec-repo-workflow.yml").read_text())
    assert "pull_request" in workflow["on"]
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    text = "\n".join(steps)
    assert "reconciler validate --no-strict" in text
    assert "--dry-run --json" in text
    assert "GITHUB_STEP_SUMMARY" in text
    assert "docker push" not in text and "ssh " not in text


def test_migration_guide_exists() -> None:
    text = (ROOT / "MIGRATION.md").read_text()
    for fragment in ("import-compose", "--dry-run", "docker compose", "install.sh",
                     "back to compose"):
        assert fragment in text, fragment


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_a_one_shot_service_others_wait_for_becomes_a_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  migrate: {image: 'tool:1', restart: 'no', command: [migrate]}\n"
        "  once: {image: 'tool:1', restart: 'no'}\n"
        "  api:\n"
        "    image: 'api:1'\n"
        "    depends_on: {migrate: {condition: service_completed_successfully}}\n")
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(compose), "-o", str(out)], capsys)
    assert code == 0, stdout + stderr
    services = build(load(out, strict=False), KEY).services
    assert services["migrate"].service.job
    assert services["migrate"].service.restart.value == "no"
    # nobody waits for `once` to complete: it stays a service with its own restart policy
    assert not services["once"].service.job and services["once"].service.restart.value == "no"
    assert services["api"].service.depends_on["migrate"].condition == (
        "service_completed_successfully")
