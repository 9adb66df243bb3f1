"""The specs we ship: specs/ (production Metro stack), deploy/demo/ (runs on local images) and
the nginx edge config they share. Pure file checks, no Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.core.model import LoadedSpec, SpecError
from reconciler.core.specs import (
    DEFAULT_TIERS,
    UpdateOrder,
    active_services,
    parse_mount,
    parse_port,
    resolved_order,
)
from reconciler.loading import load

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"
DEMO = REPO / "deploy" / "demo"
NGINX = REPO / "nginx"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"

ADMIN_TOOLS = {"pgadmin", "mongo-express", "redis-commander"}
STATEFUL = {"postgres", "redis", "mongodb", "kafka"}
SECRETISH = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)


@pytest.fixture(scope="module")
def prod() -> LoadedSpec:
    return load(SPECS, strict=False)


@pytest.fixture(scope="module")
def prod_admin() -> LoadedSpec:
    return load(SPECS, strict=False, profiles=["admin"])


def _copy_demo(tmp: Path, *, chmod: bool = True) -> Path:
    """The demo with the repo layout it needs (`../../nginx/nginx.conf`), in a git checkout."""
    shutil.copytree(DEMO, tmp / "deploy" / "demo")
    shutil.copytree(NGINX, tmp / "nginx")
    subprocess.run(["git", "init", "-q", str(tmp)], check=True)
    demo = tmp / "deploy" / "demo"
    for env in (demo / "env").glob("*.env"):
        env.chmod(0o600 if chmod else 0o644)
    return demo


@pytest.fixture()
def demo_dir(tmp_path: Path) -> Path:
    return _copy_demo(tmp_path)


# --- specs/: the production stack ------------------------------------------------------------


def test_production_spec_only_warns_about_absent_env_files(prod: LoadedSpec) -> None:
    assert prod.warnings, "the host's env files are not in the repo: expect warnings"
    for warning in prod.warnings:
        assert "env file of" in warning.message and "file not found" in warning.message, warning
        assert warning.location.file.startswith("/opt/env/metro/"), warning


def test_production_spec_with_admin_profile_only_warns_about_env_files(
    prod_admin: LoadedSpec,
) -> None:
    assert all("env file of" in w.message for w in prod_admin.warnings)
    assert set(active_services(prod_admin.spec, prod_admin.profiles)) >= ADMIN_TOOLS


def test_production_spec_is_strictly_invalid_without_the_hosts_secrets() -> None:
    with pytest.raises(SpecError) as err:
        load(SPECS, strict=True)
    assert all("env file of" in p.message for p in err.value.problems)


def test_production_tiers_in_order(prod: LoadedSpec) -> None:
    assert prod.spec.project == "metro"
    assert prod.spec.tiers == DEFAULT_TIERS == ("infrastructure", "core", "business", "external")
    files = {name: Path(f).name for name, f in prod.service_files.items()}
    prefix = {"infrastructure": "10-", "core": "20-", "business": "30-", "external": "40-"}
    for name, svc in prod.spec.services.items():
        assert svc.tier is not None
        assert files[name].startswith(prefix[svc.tier]), (name, files[name])


def test_production_defaults_are_production_timings(prod: LoadedSpec) -> None:
    health = prod.spec.defaults["healthcheck"]
    assert health == {"interval": "45s", "timeout": "15s", "retries": 5, "start_period": "90s"}
    assert prod.spec.defaults["restart"] == "unless-stopped"
    assert prod.spec.edge is not None and prod.spec.edge.service == "nginx"
    assert prod.spec.edge.upstreams_file == "/etc/nginx/conf.d/upstreams.conf"


def test_api_gateway_has_two_replicas_behind_the_edge(prod: LoadedSpec) -> None:
    gateway = prod.spec.services["api-gateway"]
    assert gateway.replicas == 2
    assert gateway.expose is not None and gateway.expose.port == 8080
    assert resolved_order(prod.spec, gateway) is UpdateOrder.START_FIRST
    assert [n for n, s in prod.spec.services.items() if s.expose] == [
        "api-gateway", "prometheus", "grafana", "pgadmin", "mongo-express", "redis-commander"]


def test_nothing_depends_on_api_gateway_and_only_on_earlier_tiers(
    prod_admin: LoadedSpec,
) -> None:
    spec = prod_admin.spec
    index = {tier: i for i, tier in enumerate(spec.tiers)}
    for name, svc in spec.services.items():
        assert "api-gateway" not in svc.depends_on, name
        for dep in svc.depends_on:
            dep_tier = spec.services[dep].tier
            assert svc.tier and dep_tier
            assert index[dep_tier] <= index[svc.tier], (name, dep)


def test_every_production_service_has_limits_and_a_healthcheck(prod_admin: LoadedSpec) -> None:
    for name, svc in prod_admin.spec.services.items():
        assert svc.resources.memory and svc.resources.cpus, name
        if svc.job:  # its exit code is the gate; never restarted
            assert svc.restart == "no", name
            assert svc.healthcheck is None or not svc.healthcheck.active, name
            continue
        assert svc.healthcheck is not None and svc.healthcheck.active, name
        assert svc.healthcheck.interval == 45 and svc.healthcheck.retries == 5, name
        assert svc.restart == "unless-stopped", name


def test_production_images_are_pinned(prod_admin: LoadedSpec) -> None:
    for name, svc in prod_admin.spec.services.items():
        repo, _, tag = svc.image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("latest", ""), (name, svc.image)
        assert re.search(r"\d+\.\d+", tag), (name, svc.image)


def test_production_secrets_only_in_host_env_files(prod_admin: LoadedSpec) -> None:
    for name, svc in prod_admin.spec.services.items():
        for key in svc.environment:
            assert not SECRETISH.search(key), f"{name}: {key} belongs in an env file"
        for declared in svc.env_file:
            if svc.job:  # a job reads the env files of the services whose credentials it sets
                assert declared.removeprefix("/opt/env/metro/").removesuffix(".env") in (
                    prod_admin.spec.services), (name, declared)
                continue
            assert declared == f"/opt/env/metro/{name}.env", (name, declared)


def test_stateful_services_are_stop_first_on_named_volumes(prod: LoadedSpec) -> None:
    for name in STATEFUL:
        svc = prod.spec.services[name]
        assert svc.update.order is UpdateOrder.STOP_FIRST, name
        assert any(parse_mount(v).named for v in svc.volumes), name


def test_kafka_is_one_kraft_broker_with_a_bounded_heap(prod: LoadedSpec) -> None:
    brokers = [s for s in prod.spec.services.values() if "kafka" in s.image and not s.job]
    assert len(brokers) == 1
    (broker,) = brokers
    env = broker.environment
    assert broker.image.startswith(("apache/kafka:", "bitnami/kafka:"))
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_HEAP_OPTS"] == "-Xmx512m -Xms512m"
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "1"
    assert broker.resources.memory == 1024**3  # heap + page cache + off-heap


def test_postgres_and_mongodb_have_dump_and_restore_hooks(prod: LoadedSpec) -> None:
    """Backups before any step stops or replaces them, through the stores' own dump tools;
    no password on a command line."""
    hooks = {"postgres": ("pg_dump -Fc", "pg_restore --clean --if-exists --single-transaction"),
             "mongodb": ("mongodump", "mongorestore")}
    for name, (dump, restore) in hooks.items():
        backup = prod.spec.services[name].backup
        assert backup is not None and backup.command and backup.restore, name
        assert dump in " ".join(backup.command), name
        assert restore in " ".join(backup.restore), name
        for command in (backup.command, backup.restore):
            text = " ".join(command)
            assert not re.search(r"(^|\s)(-p|--password)[\s=]", text), (name, text)
    mongo = " ".join(prod.spec.services["mongodb"].backup.command)  # type: ignore[union-attr]
    assert "--archive" in mongo and "--config=" in mongo and "umask 077" in mongo


def test_jobs_create_the_topics_and_the_roles_the_services_assume(prod: LoadedSpec) -> None:
    services = prod.spec.services
    topics, roles = services["kafka-topics"], services["postgres-roles"]
    for job, needs in ((topics, "kafka"), (roles, "postgres")):
        assert job.job and job.tier == "infrastructure" and needs in job.depends_on
        assert job.restart == "no"
    # auto-create is off: the job creates every topic, idempotently
    assert services["kafka"].environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = "\n".join(topics.command or ())
    assert "--create" in script and "--if-not-exists" in script
    assert "--replication-factor 1" in script
    # every DB_USER a service connects as is a role the job creates, with the password from
    # that service's own env file (read through \getenv, never a command line)
    sql = "\n".join(roles.command or ())
    users = {svc.environment["DB_USER"]: name for name, svc in services.items()
             if "DB_USER" in svc.environment}
    assert set(users) == {"auth_service", "user_service", "order_service", "payment_service"}
    for user, service in users.items():
        assert f"'{user}'" in sql and f"ALTER ROLE {user} LOGIN PASSWORD :'" in sql, user
        assert f"/opt/env/metro/{service}.env" in roles.env_file, user
        key = f"{user.split('_')[0].upper()}_DB_PASSWORD"
        assert f"\\getenv {user.split('_')[0]}_pw {key}" in sql, user
    assert "ON_ERROR_STOP=1" in sql and "PGPASSWORD=\"$POSTGRES_PASSWORD\"" in sql


def test_default_sizing_fits_an_8_gib_host_with_the_start_first_surge(
    prod: LoadedSpec, prod_admin: LoadedSpec,
) -> None:
    from reconciler.core.sizing import memory_findings, memory_fit

    for loaded in (prod, prod_admin):
        fit = memory_fit(loaded.spec, host_memory=8 * 1024**3, profiles=loaded.profiles)
        assert fit.unlimited == ()
        assert fit.peak <= 7.5 * 1024**3, fit  # ~0.5 GiB left for the OS even at the peak
        assert memory_findings(fit) == []
    fit = memory_fit(prod.spec, host_memory=8 * 1024**3)
    assert fit.limits == 6 * 1024**3 and fit.surge == 1024**3 and fit.surge_tier == "business"
    for name in ("postgres", "mongodb", "kafka", "redis"):
        assert prod.spec.services[name].resources.memory_reservation, name


def test_edge_publishes_80_and_443_and_mounts_the_repo_nginx_conf(prod: LoadedSpec) -> None:
    nginx = prod.spec.services["nginx"]
    assert {parse_port(p).host_port for p in nginx.ports} == {"80", "443"}
    assert "../nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx.volumes
    assert resolved_order(prod.spec, nginx) is UpdateOrder.STOP_FIRST
    mounted = {Path(m.host_path) for m in prod.mounted["nginx"]}
    assert NGINX / "nginx.conf" in mounted


def test_admin_tools_are_off_by_default_and_only_behind_the_edge(
    prod: LoadedSpec,
    prod_admin: LoadedSpec,
) -> None:
    assert ADMIN_TOOLS.isdisjoint(active_services(prod.spec))
    assert set(active_services(prod.spec, ["admin"])) >= ADMIN_TOOLS
    text = (NGINX / "nginx.conf").read_text()
    for name in ADMIN_TOOLS:
        svc = prod_admin.spec.services[name]
        assert svc.profiles == ("admin",)
        assert svc.expose is not None and not svc.ports, name
        assert name in text
    for name, svc in prod_admin.spec.services.items():  # only the edge publishes host ports
        assert name == "nginx" or not svc.ports, (name, svc.ports)


# --- deploy/demo: the runnable demo ------------------------------------------------------------


def test_demo_validates_strictly_with_private_env_files(demo_dir: Path) -> None:
    loaded = load(demo_dir, strict=True)
    assert loaded.warnings == ()
    assert loaded.spec.project == "demo"
    assert loaded.spec.tiers == DEFAULT_TIERS
    assert not loaded.unknown_env


def test_demo_env_files_must_be_chmod_600(tmp_path: Path) -> None:
    demo = _copy_demo(tmp_path, chmod=False)
    with pytest.raises(SpecError) as err:
        load(demo, strict=True)
    assert err.value.problems
    assert all("too open" in p.message for p in err.value.problems)


def test_demo_shape_matches_production(demo_dir: Path) -> None:
    loaded = load(demo_dir, strict=True, profiles=["admin"])
    spec = loaded.spec
    tiers = {svc.tier for svc in spec.services.values()}
    assert tiers == set(DEFAULT_TIERS)
    assert 10 <= len(spec.services) <= 14
    gateway = spec.services["api-gateway"]
    assert gateway.replicas == 2 and gateway.expose is not None and gateway.expose.port == 8080
    for name, svc in spec.services.items():
        assert "api-gateway" not in svc.depends_on, name
        assert svc.resources.memory and svc.resources.cpus, name
        assert svc.healthcheck is not None and svc.healthcheck.active, name
        assert svc.healthcheck.interval == 1 and svc.healthcheck.timeout == 2, name
        assert svc.healthcheck.retries == 3 and svc.healthcheck.start_period == 0, name
        assert svc.update.min_ready == 1 and svc.update.deadline == 60, name
        assert svc.image.startswith("reconciler-demo/"), name


def test_demo_health_delay_shrinks_per_tier(demo_dir: Path) -> None:
    spec = load(demo_dir, strict=True).spec
    delays: dict[str, set[int]] = {}
    for svc in spec.services.values():
        if svc.image.startswith("reconciler-demo/app:"):
            assert svc.tier is not None
            delays.setdefault(svc.tier, set()).add(int(svc.environment["HEALTH_DELAY"]))
    assert delays["infrastructure"] == {2}
    assert delays["core"] == {1} and delays["business"] == {1}


def test_demo_edge_and_stateful_db(demo_dir: Path) -> None:
    loaded = load(demo_dir, strict=True)
    spec = loaded.spec
    assert spec.edge is not None and spec.edge.service == "nginx"
    nginx = spec.services["nginx"]
    assert nginx.image == "reconciler-demo/nginx:1.22"
    assert [parse_port(p).host_port for p in nginx.ports] == ["8088"]
    assert resolved_order(spec, nginx) is UpdateOrder.STOP_FIRST
    assert "../../nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx.volumes
    [mounted] = loaded.mounted["nginx"]
    assert mounted.digest and mounted.host_path.endswith("/nginx/nginx.conf")
    db = spec.services["db"]
    assert "db-data:/data" in db.volumes
    assert resolved_order(spec, db) is UpdateOrder.STOP_FIRST


def test_demo_admin_profile(demo_dir: Path) -> None:
    spec = load(demo_dir, strict=True).spec
    optional = {n for n, s in spec.services.items() if s.profiles}
    assert optional and all(spec.services[n].profiles == ("admin",) for n in optional)
    assert optional.isdisjoint(active_services(spec))
    assert optional <= set(active_services(spec, ["admin"]))
    with_admin = load(demo_dir, strict=True, profiles=["admin"])
    assert with_admin.profiles == ("admin",)
    for name in optional:
        for port in with_admin.spec.services[name].ports:
            assert parse_port(port).host_ip == "127.0.0.1"


def test_demo_env_files_are_strong(demo_dir: Path) -> None:
    for env in (demo_dir / "env").glob("*.env"):
        for line in env.read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.partition("=")
            if SECRETISH.search(key):
                assert len(value) >= 32, f"{env.name}: {key}"


# --- nginx/ and the Prometheus config ---------------------------------------------------------


def test_nginx_conf_proxies_to_the_exposed_service_by_name(prod: LoadedSpec) -> None:
    text = (NGINX / "nginx.conf").read_text()
    assert "proxy_pass http://api-gateway;" in text  # always there: a direct upstream
    for name in ("grafana", "prometheus"):  # optional: by name through the enabled map
        assert f"set $edge_service {name};" in text
    assert "proxy_pass http://$edge_service;" in text
    assert "include /etc/nginx/conf.d/*.conf;" in text
    assert not re.search(r"^\s*daemon\s", text, re.M), "daemon off comes from the command line"
    assert "non_idempotent" not in re.sub(r"#.*", "", text)
    assert "error_page 502 503 504 = @unavailable;" in text
    assert "server_tokens off;" in text


def _nginx_test_dir(tmp: Path) -> Path:
    """nginx.conf with the container paths rewritten into tmp, and the sample upstreams."""
    (tmp / "conf.d").mkdir()
    text = (NGINX / "nginx.conf").read_text()
    text = text.replace("/etc/nginx/conf.d/", f"{tmp}/conf.d/")
    text = text.replace("/etc/nginx/secrets/", f"{tmp}/secrets/")
    text = text.replace("/etc/nginx/include/", f"{NGINX}/include/")
    text = text.replace("/var/log/nginx/edge/", f"{tmp}/")
    text = text.replace("/run/nginx.pid", f"{tmp}/nginx.pid")
    (tmp / "nginx.conf").write_text(text)
    sample = (NGINX / "conf.d.sample" / "upstreams.conf").read_text()
    # container names resolve only on the Docker network
    sample = re.sub(r"server [a-z0-9-]+-[0-9a-f]{8}:", "server 127.0.0.1:", sample)
    (tmp / "conf.d" / "upstreams.conf").write_text(sample)
    return tmp


@pytest.mark.skipif(
    shutil.which("nginx") is None or not Path("/etc/nginx/mime.types").exists(),
    reason="needs the Debian nginx package",
)
def test_nginx_conf_passes_nginx_t_with_the_sample_upstreams(tmp_path: Path) -> None:
    conf = _nginx_test_dir(tmp_path)
    result = subprocess.run(
        ["nginx", "-t", "-c", str(conf / "nginx.conf"), "-p", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    shutil.which("nginx") is None or not Path("/etc/nginx/mime.types").exists(),
    reason="needs the Debian nginx package",
)
def test_nginx_conf_without_the_gateway_upstream_fails(tmp_path: Path) -> None:
    conf = _nginx_test_dir(tmp_path)
    (conf / "conf.d" / "upstreams.conf").write_text("")
    result = subprocess.run(
        ["nginx", "-t", "-c", str(conf / "nginx.conf"), "-p", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "api-gateway" in result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs the Debian prometheus package")
def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sizing_check_warns_only_when_the_peak_exceeds_the_host(prod: LoadedSpec) -> None:
    from reconciler.core.sizing import memory_findings, memory_fit

    small = memory_fit(prod.spec, host_memory=4 * 1024**3)
    (finding,) = memory_findings(small)
    assert finding.warning and "exceed the host's memory 4.0 GiB" in finding.message
    assert "tier business: api-gateway, catalog-service, order-service, payment-service" in (
        finding.message)
    # stop-first services never surge; parallelism is capped by the replicas
    assert all(prod.spec.services[n].update.order != "stop-first"
               for n in small.surge_services)


def test_validate_prints_the_sizing_and_warns_on_a_small_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from reconciler import cli

    assert cli.main(["validate", "--no-strict", "--spec", str(SPECS),
                     "--host-memory", "8g"]) == 0
    out = capsys.readouterr()
    assert "sizing: memory limits 6.0 GiB + start-first surge 1.0 GiB = 7.0 GiB" in out.out
    assert "exceed" not in out.err
    assert cli.main(["validate", "--no-strict", "--spec", str(SPECS), "--profile", "admin",
                     "--host-memory", "6g"]) == 0  # a warning, not a failure
    assert "7.5 GiB exceed the host's memory 6.0 GiB" in capsys.readouterr().err


def test_one_env_dir_everywhere_and_the_workflow_pins_a_commit_of_this_repository() -> None:
    """specs/, install.sh, README and MIGRATION.md name one env-file directory; the spec-repo
    workflow installs the reconciler from git at a pinned commit, not an unpublished version."""
    texts = {p: p.read_text() for p in [*SPECS.glob("*.yaml"), REPO / "README.md",
                                        REPO / "MIGRATION.md", REPO / "deploy" / "install.sh"]}
    for path, text in texts.items():
        assert "/opt/metro/env" not in text, path
        for match in re.findall(r"/opt/env/[\w.-]+\.env", text):
            raise AssertionError(f"{path}: {match} is not under /opt/env/metro/")
        if path.suffix != ".yaml" or "env_file" in text:
            assert "/opt/env/metro" in text, path
    assert "ENV_DIR=$ENV_ROOT/metro" in texts[REPO / "deploy" / "install.sh"]
    workflow = (REPO / "deploy" / "ci" / "spec-repo-workflow.yml").read_text()
    assert "reconciler==" not in workflow
    assert 'git+${RECONCILER_GIT}@${RECONCILER_REV}' in workflow
    assert "RECONCILER_REV:" in workflow and "--host-memory" in workflow


def test_a_job_counts_in_its_tiers_surge_not_in_the_resident_limits(prod: LoadedSpec) -> None:
    from reconciler.core.sizing import memory_fit

    services = prod.spec.services
    from reconciler.core.specs import active_services

    resident = sum((s.resources.memory or 0) * s.replicas
                   for s in active_services(prod.spec, ()).values() if not s.job)
    fit = memory_fit(prod.spec, host_memory=8 * 1024**3)
    assert fit.limits == resident
    # a job larger than any surge becomes the surge of its tier
    job = services["kafka-topics"]
    big = job.model_copy(update={"resources": job.resources.model_copy(
        update={"memory": 3 * 1024**3})})
    fit = memory_fit(prod.spec.model_copy(update={"services": {**services, "kafka-topics": big}}),
                     host_memory=8 * 1024**3)
    assert (fit.limits, fit.surge_tier) == (resident, "infrastructure")
    assert fit.surge == 3 * 1024**3 + (services["postgres-roles"].resources.memory or 0)
