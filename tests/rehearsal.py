"""The rehearsal of the production stack: `make rehearsal` (or `python -m tests.rehearsal`)
applies specs/ on this machine and checks every URL of the seed through the edge, the
monitoring wiring and the metrics against a real Prometheus, then removes what it made.

- Images under the production names (deploy/rehearsal/build.sh, cached by content hash): real
  postgres, redis, prometheus and nginx from Debian's packages, busybox stand-ins for the rest.
- A throwaway copy of the repository (specs/, nginx/, deploy/prometheus, deploy/grafana) in a
  temp dir, changed by `OVERLAY` only -- the per-environment values: a unique project name
  (and so volume names), env files generated 0600 with strong random values, the edge
  published on a free port of 127.0.0.1 instead of 80/443, fast health-check timing (every 2 s:
  each probe is an exec in the engine, and ~20 containers share 2 cores), and the
  reconciler's metrics address (the docker0 gateway, as in deploy/reconciler.service, on a
  free port). A host policy file and the state dir live in the same temp dir.
- Every request is to 127.0.0.1 or a container this run started, bounded in count and time.
Exit status 0 when every check passed; the table of checks and the wall time are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.loading import load
from tests.loadgen import run_load
from tests.monitoring import dashboard, dashboard_queries, substitute

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "deploy" / "rehearsal" / "build.sh"
ENV_ROOT = "/opt/env/metro/"
EDGE_USER = "ops"
ALLOWED_ORIGIN = "https://app.metro.example"  # listed in nginx/include/cors-origins.map

# Images built from Debian packages (service -> build.sh kind); every other service gets a
# busybox stand-in listening on these ports (Metro's own services: 8080).
REAL = {"postgres": "postgres", "redis": "redis", "prometheus": "prometheus", "nginx": "nginx"}
STANDIN_PORTS = {"mongodb": "27017", "kafka": "9092;9093", "grafana": "3000",
                 "pgadmin": "5050", "mongo-express": "8081", "redis-commander": "8082"}


def overlay(project: str, env_dir: Path, edge_port: int, metrics: str,
            nofile: int) -> list[tuple[str, str, str, int]]:
    """(file, old, new, expected count): the only differences from the shipped repository.
    Each `old` must occur exactly `count` times, so a change in specs/ that the rehearsal
    does not know about fails here instead of silently rehearsing something else."""
    return [
        ("specs/00-project.yaml", "project: metro\n", f"project: {project}\n", 1),
        ("specs/00-project.yaml", "name: metro_", f"name: {project}_", 8),
        ("specs/00-project.yaml",
         "healthcheck: {interval: 45s, timeout: 15s, retries: 5, start_period: 90s}",
         "healthcheck: {interval: 2s, timeout: 5s, retries: 5, start_period: 60s}", 1),
        ("specs/00-project.yaml",
         "update: {order: auto, parallelism: 1, min_ready: 10s, deadline: 300s, drain: 5s}",
         "update: {order: auto, parallelism: 1, min_ready: 1s, deadline: 120s, drain: 0.5s}",
         1),
        ("specs/10-infrastructure.yaml", ENV_ROOT, f"{env_dir}/", 8),
        # a VPS raises the open-files limit for mongodb and kafka; a machine (or sandbox) whose
        # hard limit is lower runs them with that limit
        ("specs/10-infrastructure.yaml", "nofile: {soft: 64000, hard: 64000}",
         f"nofile: {{soft: {min(64000, nofile)}, hard: {min(64000, nofile)}}}", 1),
        ("specs/10-infrastructure.yaml", "nofile: {soft: 100000, hard: 100000}",
         f"nofile: {{soft: {min(100000, nofile)}, hard: {min(100000, nofile)}}}", 1),
        ("specs/20-core.yaml", ENV_ROOT, f"{env_dir}/", 3),
        ("specs/30-business.yaml", ENV_ROOT, f"{env_dir}/", 4),
        ("specs/40-external.yaml", ENV_ROOT, f"{env_dir}/", 4),
        ("specs/40-external.yaml", 'ports: ["80:80", "443:443"]',
         f'ports: ["127.0.0.1:{edge_port}:80"]', 1),
        ("deploy/prometheus/prometheus.yml", "scrape_interval: 15s", "scrape_interval: 2s", 1),
        ("deploy/prometheus/prometheus.yml", "scrape_timeout: 10s", "scrape_timeout: 2s", 1),
        ("deploy/prometheus/prometheus.yml", "evaluation_interval: 15s",
         "evaluation_interval: 2s", 1),
        ("deploy/prometheus/prometheus.yml", '"172.17.0.1:9321"', f'"{metrics}"', 1),
    ]


# Keys of each env file (the comments in specs/ name them); value kinds: p = password,
# k = 64-character key, or a literal.
ENV_KEYS: dict[str, dict[str, str]] = {
    "postgres": {"POSTGRES_PASSWORD": "p"},
    "redis": {"REDIS_PASSWORD": "p:redis"},
    "mongodb": {"MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD": "p"},
    "auth-service": {"AUTH_DB_PASSWORD": "p", "JWT_SECRET": "k:jwt", "REDIS_PASSWORD": "p:redis"},
    "user-service": {"USER_DB_PASSWORD": "p", "REDIS_PASSWORD": "p:redis"},
    "notification-service": {"MONGO_URL": "mongodb://mongodb:27017/notifications",
                             "SMTP_PASSWORD": "p", "SMS_API_KEY": "k"},
    "api-gateway": {"JWT_SECRET": "k:jwt", "REDIS_PASSWORD": "p:redis"},
    "catalog-service": {"MONGO_URL": "mongodb://mongodb:27017/catalog",
                        "REDIS_PASSWORD": "p:redis"},
    "order-service": {"ORDER_DB_PASSWORD": "p"},
    "payment-service": {"PAYMENT_DB_PASSWORD": "p", "PSP_API_KEY": "k",
                        "PSP_WEBHOOK_SECRET": "k"},
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD": "p"},
    "pgadmin": {"PGADMIN_DEFAULT_EMAIL": "ops@metro.example", "PGADMIN_DEFAULT_PASSWORD": "p"},
    "mongo-express": {"ME_CONFIG_MONGODB_URL": "mongodb://mongodb:27017",
                      "ME_CONFIG_BASICAUTH_USERNAME": "ops", "ME_CONFIG_BASICAUTH_PASSWORD": "p"},
    "redis-commander": {"REDIS_PASSWORD": "p:redis", "HTTP_USER": "ops", "HTTP_PASSWORD": "p"},
}


def write_env_files(env_dir: Path) -> None:
    """One 0600 file per service; a value shared by design (the redis password, the JWT key)
    is the same in every file that names it, every other secret is unique."""
    env_dir.mkdir(mode=0o700, parents=True)
    shared: dict[str, str] = {}
    for service, keys in ENV_KEYS.items():
        lines = []
        for key, kind in keys.items():
            kind_name, _, share = kind.partition(":")
            if kind_name in ("p", "k"):
                value = shared.get(share) if share else None
                if value is None:
                    value = secrets.token_urlsafe(24 if kind_name == "p" else 48)
                    if share:
                        shared[share] = value
            else:
                value = kind
            lines.append(f"{key}={value}\n")
        path = env_dir / f"{service}.env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)


def htpasswd_line(user: str, password: str) -> str:
    """nginx's `{SSHA}` scheme (salted SHA-1, needs no crypt(3)); operators use
    `openssl passwd -6` (deploy/install.sh)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


# --- small helpers ------------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(*args: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
    """The docker CLI; with check=False a failure or a hung engine (timeout) gives ""."""
    try:
        return run("docker", *args, timeout=timeout, check=check, stdin=stdin).stdout
    except subprocess.TimeoutExpired:
        if check:
            raise
        return ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         auth: tuple[str, str] | None = None, timeout: float = 5) -> Response:
    """One request (127.0.0.1 only), redirects not followed; status 0 when it failed."""
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers), resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read().decode(errors="replace"))
    except (urllib.error.URLError, OSError) as exc:
        return Response(0, {}, str(exc))


def until(check: Callable[[], Any], *, timeout: float, interval: float = 0.5) -> Any:
    """`check()` until it returns something truthy, at most `timeout` seconds (bounded: at
    most timeout/interval + 1 attempts); the last result either way."""
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = check()
    return result


@dataclass
class Report:
    rows: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.rows.append((name, bool(ok), detail))
        mark = "ok  " if ok else "FAIL"
        print(f"  {mark} {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return bool(ok)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.rows if not ok]


# --- the rehearsal ------------------------------------------------------------------------


@dataclass
class Rehearsal:
    root: Path
    project: str
    edge_port: int
    gateway_ip: str
    metrics_port: int
    report: Report = field(default_factory=Report)
    daemon: subprocess.Popen[bytes] | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def spec(self) -> Path:
        return self.repo / "specs"

    @property
    def env_dir(self) -> Path:
        # inside the spec checkout: env files may come from there under any host policy
        return self.spec / "env"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def metrics_addr(self) -> str:
        return f"{self.gateway_ip}:{self.metrics_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (EDGE_USER, self.password)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RECONCILER_POLICY=str(self.root / "policy.yaml"), NO_COLOR="1",
                   PYTHONUNBUFFERED="1")
        return env

    def cli(self, *args: str, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "reconciler.cli", *args, "--spec", str(self.spec),
                   "--state-dir", str(self.state), env=self.env(), timeout=timeout, check=check)

    # -- setting up ---------------------------------------------------------------------
    def prepare(self) -> None:
        for part in ("specs", "nginx", "deploy/prometheus", "deploy/grafana"):
            shutil.copytree(REPO / part, self.repo / part)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        for name, old, new, count in overlay(self.project, self.env_dir, self.edge_port,
                                             self.metrics_addr, nofile):
            path = self.repo / name
            text = path.read_text()
            found = text.count(old)
            if found != count:
                raise RuntimeError(f"overlay: {name}: {old!r} found {found} times, "
                                   f"expected {count} (specs/ changed? update OVERLAY)")
            path.write_text(text.replace(old, new))
        run("git", "init", "-q", str(self.repo))  # a checkout, like /srv/metro-spec
        write_env_files(self.env_dir)
        policy = self.root / "policy.yaml"
        policy.write_text("# rehearsal host policy: nothing dangerous allowed\n"
                          "allow_privileged: false\nallow_docker_socket: false\n")
        policy.chmod(0o600)
        # the edge's secrets volume: the basic-auth user (deploy/install.sh does this on a host)
        volume = f"{self.project}_edge_secrets"
        docker("volume", "create", volume)
        docker("run", "--rm", "-i", "-v", f"{volume}:/s", "--entrypoint", "sh",
               "reconciler-demo/app:1.0", "-c", "cat > /s/monitoring.htpasswd",
               stdin=htpasswd_line(EDGE_USER, self.password))

    def images(self) -> list[str]:
        """build.sh arguments: one image per image name (a job runs the image of the service
        it works on: postgres-roles is the postgres image, kafka-topics the kafka one)."""
        spec = load(REPO / "specs", strict=False, profiles=["admin"]).spec
        args, seen = [], set()
        services = sorted(spec.services.items(), key=lambda item: (item[1].job, item[0]))
        for name, svc in services:
            if svc.image in seen:
                continue
            seen.add(svc.image)
            if name in REAL:
                args.append(f"{REAL[name]}={svc.image}")
            else:
                args.append(f"standin={svc.image},{name},{STANDIN_PORTS.get(name, '8080')}")
        return args

    # -- the daemon -------------------------------------------------------------------------
    def start_daemon(self) -> bool:
        with (self.root / "daemon.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "reconciler.cli", "run", "--spec", str(self.spec),
                 "--state-dir", str(self.state), "--metrics-addr", self.metrics_addr,
                 "--resync", "10s"], env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://{self.metrics_addr}/readyz"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # our own daemon
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        return bool(until(ready, timeout=90))

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
        self.daemon = None

    # -- Prometheus through the edge ------------------------------------------------------
    def prom(self, query: str) -> list[dict[str, Any]] | None:
        url = (f"{self.base}/prometheus/api/v1/query?"
               + urllib.parse.urlencode({"query": query}))
        resp = http(url, auth=self.auth)
        data = resp.json()
        if resp.status != 200 or not isinstance(data, dict) or data.get("status") != "success":
            return None
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def prom_value(self, query: str) -> float:
        result = self.prom(query) or []
        values = [float(r["value"][1]) for r in result]
        return max(values) if values else float("nan")

    def containers(self, service: str) -> list[str]:
        return docker("ps", "-q", "--filter", f"label=reconciler.project={self.project}",
                      "--filter", f"label=reconciler.service={service}").split()

    # -- cleaning up ----------------------------------------------------------------------
    def cleanup(self) -> bool:
        """Remove the project's containers, networks and volumes; False if some are left."""
        self.stop_daemon()
        label = f"label=reconciler.project={self.project}"
        # One container at a time, killed before it is removed: a parallel `docker rm -f` of
        # many containers with health-check execs in flight is hard on the 20.10 engine.
        for _ in range(3):
            ids = docker("ps", "-aq", "--filter", label, check=False).split()
            if not ids:
                break
            for cid in ids:
                docker("kill", cid, check=False, timeout=60)
            for cid in ids:
                docker("rm", "-f", "-v", cid, check=False, timeout=60)
        nets = docker("network", "ls", "-q", "--filter", label, check=False).split()
        if nets:
            docker("network", "rm", *nets, check=False)
        vols = [v for v in docker("volume", "ls", "-q", check=False).split()
                if v.startswith(f"{self.project}_")]
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)
        return not docker("ps", "-aq", "--filter", label, check=False).split()


def check_urls(r: Rehearsal) -> None:
    rep, base = r.report, r.base
    health = until(lambda: (lambda x: x if x.status == 200 else None)(http(base + "/health")),
                   timeout=30)
    doc = health.json() if health else None
    services = {s for t in (doc or {}).get("tiers", []) for s in t["services"]}
    rep.check("/health: the stack's health from the reconciler, every tier",
              bool(health) and doc is not None and doc["status"] == "ok"
              and [t["tier"] for t in doc["tiers"]] == ["infrastructure", "core", "business",
                                                         "external"]
              and {"postgres", "kafka", "api-gateway", "nginx"} <= services,
              f"{health.status if health else 'no 200'}: {str(doc)[:120]}")
    disc = http(base + "/v1/discovery")
    body = disc.json() or {}
    rep.check("/v1/discovery -> api-gateway", disc.status == 200
              and body.get("service") == "api-gateway" and body.get("path") == "/v1/discovery",
              f"{disc.status} {disc.body[:80]}")
    docs = http(base + "/api-docs/")
    rep.check("/api-docs/ -> api-gateway", docs.status == 200
              and (docs.json() or {}).get("path") == "/api-docs/", f"{docs.status}")
    rep.check("/api-docs redirects to /api-docs/",
              http(base + "/api-docs").status == 301)
    # CORS: preflight answered at the edge, allow-list from nginx/include/cors-origins.map
    pre = http(base + "/v1/orders", method="OPTIONS",
               headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization"})
    rep.check("CORS preflight from an allowed origin answered at the edge",
              pre.status == 204 and pre.headers.get("Access-Control-Allow-Origin")
              == ALLOWED_ORIGIN and "POST" in pre.headers.get("Access-Control-Allow-Methods", "")
              and "reached the app" not in pre.body, f"{pre.status} {pre.headers}")
    bad = http(base + "/v1/orders", method="OPTIONS",
               headers={"Origin": "https://evil.example",
                        "Access-Control-Request-Method": "POST"})
    rep.check("CORS preflight from another origin: no Allow-Origin",
              bad.status == 204 and "Access-Control-Allow-Origin" not in bad.headers,
              f"{bad.status}")
    get = http(base + "/v1/orders", headers={"Origin": ALLOWED_ORIGIN})
    rep.check("CORS on a simple request: Allow-Origin + Vary: Origin",
              get.status == 200 and get.headers.get("Access-Control-Allow-Origin")
              == ALLOWED_ORIGIN and "Origin" in get.headers.get("Vary", ""), f"{get.status}")
    # monitoring: basic auth from outside the allow-list, open from an allow-listed address
    for path, service in (("/grafana/", "grafana"), ("/prometheus/-/ready", None)):
        anon = http(base + path)
        authed = until(lambda p=path: (lambda x: x if x.status == 200 else None)(
            http(base + p, auth=r.auth)), timeout=30)
        ok = anon.status == 401 and bool(authed)
        if ok and service:
            ok = (authed.json() or {}).get("path") == path
        rep.check(f"{path}: 401 without auth, 200 with a monitoring.htpasswd user", ok,
                  f"{anon.status}/{authed.status if authed else 'not 200'}")
    wrong = http(base + "/grafana/", auth=(EDGE_USER, "wrong-password"))
    rep.check("/grafana/ with a wrong password: 401", wrong.status == 401)
    (edge,) = r.containers("nginx")[:1] or [""]
    inside = run("docker", "exec", edge, "timeout", "5", "wget", "-qO-",
                 "http://127.0.0.1/prometheus/-/ready", check=False)
    rep.check("/prometheus/ open from an allow-listed address (127.0.0.1 in the edge)",
              inside.returncode == 0 and "Ready" in inside.stdout, inside.stdout[:60])
    rep.check("/grafana and /prometheus redirect to the sub-path",
              http(base + "/grafana").status == 301 and http(base + "/prometheus").status == 301)
    admin = http(base + "/pgadmin/", auth=r.auth)
    rep.check("/pgadmin/ without --profile admin: 404", admin.status == 404, f"{admin.status}")
    rep.check("unknown path: JSON 404", http(base + "/nope").status == 404)
    rep.check("/favicon.ico: 204 at the edge", http(base + "/favicon.ico").status == 204)


def check_grafana(r: Rehearsal) -> None:
    rep = r.report
    (grafana,) = r.containers("grafana")[:1] or [""]
    ds = run("docker", "exec", grafana, "cat",
             "/etc/grafana/provisioning/datasources/prometheus.yml", check=False).stdout
    boards = run("docker", "exec", grafana, "ls", "/var/lib/grafana/dashboards/reconciler",
                 "/etc/grafana/provisioning/dashboards", check=False).stdout
    url = re.search(r"url:\s*(\S+)", ds)
    rep.check("Grafana provisioned: datasource + reconciler dashboard",
              url is not None and "reconciler.json" in boards and "reconciler.yml" in boards,
              url.group(1) if url else ds[:80])
    if url:
        query = run("docker", "exec", grafana, "timeout", "5", "wget", "-qO-",
                    f"{url.group(1)}/api/v1/query?query=up", check=False)
        rep.check("the datasource URL answers inside the stack (Grafana's network)",
                  '"status":"success"' in query.stdout, query.stdout[:60])


def check_metrics(r: Rehearsal) -> None:
    rep = r.report
    instance = r.metrics_addr
    scraped = until(lambda: r.prom_value(f'up{{job="reconciler",instance="{instance}"}}') == 1,
                    timeout=40)
    rep.check("the stack's Prometheus scrapes the reconciler at the unit's address "
              "(docker0 gateway)", scraped, instance)
    rep.check("Prometheus scrapes itself under its route prefix",
              r.prom_value('up{job="prometheus"}') == 1)
    services = until(lambda: (lambda v: v if v >= 8 else 0)(
        len([x for x in r.prom('up{job="metro-services"} == 1') or []])), timeout=40)
    rep.check("Prometheus finds every Metro service replica by DNS", services >= 8,
              f"{services} targets up")
    groups = http(f"{r.base}/prometheus/api/v1/rules", auth=r.auth).json() or {}
    names = {g["name"] for g in groups.get("data", {}).get("groups", [])}
    rep.check("alert rules loaded (reconciler, reconciler-edge)",
              {"reconciler", "reconciler-edge"} <= names, ", ".join(sorted(names)))

    # traffic, then a broken gateway: both replicas close connections without an answer and
    # fail their health check; the edge answers the friendly 503 (counted as 502s), Docker
    # marks them unhealthy, the reconciler replaces them
    for _ in range(20):
        http(f"{r.base}/v1/orders")
    gateways = r.containers("api-gateway")
    for cid in gateways:
        docker("exec", cid, "touch", "/tmp/broken")
    broken = until(lambda: http(f"{r.base}/v1/orders").status == 503, timeout=10)
    friendly = http(f"{r.base}/v1/orders")
    rep.check("no reachable gateway: the edge's friendly JSON 503",
              bool(broken) and (friendly.json() or {}).get("error") == "service_unavailable"
              and friendly.headers.get("Retry-After") == "5", f"{friendly.status}")
    for _ in range(10):
        http(f"{r.base}/v1/orders")
    recovered = until(lambda: http(f"{r.base}/v1/orders").status == 200
                      and not set(gateways) & set(r.containers("api-gateway")), timeout=90)
    rep.check("the reconciler replaced the unhealthy gateways (drift repair through the edge)",
              recovered)
    for _ in range(20):
        http(f"{r.base}/v1/orders")
    series = {
        "reconciler_edge_requests_total{upstream=\"api-gateway\",status_class=\"2xx\"}": 1,
        "reconciler_edge_gateway_errors_total{upstream=\"api-gateway\",code=\"502\"}": 1,
        "reconciler_health_check_failures_total{service=\"api-gateway\"}": 1,
        "reconciler_reconcile_duration_seconds_count{result=\"converged\"}": 1,
        "reconciler_reconcile_duration_seconds_count{result=\"noop\"}": 1,
    }
    for query, minimum in series.items():
        got = until(lambda q=query, m=minimum: r.prom_value(q) >= m, timeout=40)
        rep.check(f"metric {query} >= {minimum}", got, f"{r.prom_value(query)}")
    alert = ('sum by (job, instance, upstream) (increase(reconciler_edge_gateway_errors_total'
             '{code="502"}[5m])) > 0 and on (job, instance) sum by (job, instance) '
             '(increase(reconciler_steps_total[5m])) > 0')
    rep.check("EdgeBadGatewayDuringRollout's expression is true for the broken rollout",
              bool(until(lambda: r.prom(alert), timeout=20)))
    # every dashboard query returns data from the real Prometheus
    missing = []
    for where, expr in dashboard_queries(dashboard()):
        query = substitute(expr, job="reconciler", instance=instance)
        if not until(lambda q=query: r.prom(q), timeout=10, interval=1):
            missing.append(where)
    rep.check("every dashboard query returns data", not missing, "; ".join(missing[:5]))


def check_admin(r: Rehearsal) -> None:
    rep = r.report
    res = r.cli("apply", "--profile", "admin", timeout=600)
    rep.check("apply --profile admin converges", res.returncode == 0, res.stdout[-200:])
    for path, service in (("/pgadmin/", "pgadmin"), ("/mongo-express/", "mongo-express"),
                          ("/redis-commander/", "redis-commander")):
        anon = http(r.base + path)
        got = until(lambda p=path: (lambda x: x if x.status == 200 else None)(
            http(r.base + p, auth=r.auth)), timeout=30)
        rep.check(f"{path} with --profile admin: 401 anonymous, 200 with auth",
                  anon.status == 401 and bool(got)
                  and (got.json() or {}).get("service") == service,
                  f"{anon.status}/{got.status if got else 'not 200'}")


TOPICS = ("metro.notifications", "metro.orders", "metro.payments", "metro.users")
# role -> (the service whose env file has its password, the key)
ROLES = {"auth_service": ("auth-service", "AUTH_DB_PASSWORD"),
         "user_service": ("user-service", "USER_DB_PASSWORD"),
         "order_service": ("order-service", "ORDER_DB_PASSWORD"),
         "payment_service": ("payment-service", "PAYMENT_DB_PASSWORD")}


def env_value(r: Rehearsal, service: str, key: str) -> str:
    for line in (r.env_dir / f"{service}.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name == key:
            return value
    raise KeyError(f"{key} not in {service}.env")


def psql(r: Rehearsal, sql: str, *, user: str = "metro", password: str | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """psql in the postgres container: over the local socket as the owner, or over TCP as
    `user` with `password` (on stdin, never on a command line) -- scram authentication."""
    (pg,) = r.containers("postgres")[:1] or [""]
    if password is None:
        return run("docker", "exec", pg, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-U",
                   user, "-d", "metro", "-c", sql, check=False, timeout=60)
    return run("docker", "exec", "-i", pg, "sh", "-c",
               'read -r PGPASSWORD; export PGPASSWORD; exec psql -X -At -v ON_ERROR_STOP=1 '
               '-h 127.0.0.1 -U "$0" -d metro -c "$1"', user, sql,
               stdin=password + "\n", check=False, timeout=60)


def job_containers(r: Rehearsal) -> dict[str, str]:
    """Container id -> state of the jobs' containers (running or exited)."""
    out = {}
    for job in ("postgres-roles", "kafka-topics"):
        for line in docker("ps", "-a", "--format", "{{.ID}} {{.State}}", "--filter",
                           f"label=reconciler.project={r.project}", "--filter",
                           f"label=reconciler.service={job}", check=False).splitlines():
            cid, _, state = line.partition(" ")
            out[cid] = state
    return out


def check_jobs(r: Rehearsal) -> None:
    """The one-shot jobs of specs/ ran once, exited 0 (kept as the record), and did their
    work: the topics exist on the broker, every service's role logs in with its password."""
    rep = r.report
    res = r.cli("status", "--json")
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = {}
    jobs = {s["name"]: s for s in doc.get("services", []) if s.get("job")}
    for name in ("postgres-roles", "kafka-topics"):
        job = jobs.get(name, {})
        rep.check(f"job {name}: ran once, exit 0, the exited container kept as the record",
                  bool(job.get("ok")) and job.get("exited") == [0] and job.get("running") == 0
                  and len(job.get("containers", [])) == 1, f"exited {job.get('exited')}")
    (kafka,) = r.containers("kafka")[:1] or [""]
    topics = docker("exec", kafka, "ls", "/var/lib/kafka/data/topics", check=False).split()
    logs = r.cli("logs", "kafka-topics", "--tail", "50")
    rep.check("kafka-topics created the topics on the broker (auto-create is off)",
              sorted(topics) == sorted(TOPICS)
              and all(f"Created topic {t}." in logs.stdout for t in TOPICS), ", ".join(topics))
    before = job_containers(r)
    again = r.cli("apply")
    rep.check("a second apply is a no-op: no job runs again",
              again.returncode == 0 and "No changes" in again.stdout
              and job_containers(r) == before and len(before) == 2,
              (again.stdout + again.stderr).strip()[:100])
    logins = {}
    for role, (service, key) in ROLES.items():
        got = psql(r, "SELECT current_user || ' ' || current_schema()", user=role,
                   password=env_value(r, service, key))
        logins[role] = got.stdout.strip() == f"{role} {role}"
    wrong = psql(r, "SELECT 1", user="auth_service", password="not-the-password")
    rep.check("postgres-roles: each service's role logs in over TCP (scram) with the password "
              "from its own env file, into its own schema; a wrong password is refused",
              all(logins.values()) and wrong.returncode != 0
              and "password authentication failed" in wrong.stderr,
              ", ".join(k for k, v in logins.items() if not v) or "4 roles")


def check_backup_restore(r: Rehearsal, timings: dict[str, float]) -> None:
    """A change to postgres and mongodb: each is backed up through its hook (pg_dump -Fc,
    mongodump --archive) before its stop-first replacement; the data is then lost and
    `reconciler restore` brings it back (pg_restore, mongorestore --archive --drop)."""
    rep = r.report
    jobs_before = job_containers(r)
    token = secrets.token_hex(6)
    made = psql(r, "CREATE TABLE rehearsal_sentinel (v text); "
                   f"INSERT INTO rehearsal_sentinel VALUES ('kept-{token}')")
    (mongo,) = r.containers("mongodb")[:1] or [""]
    docker("exec", mongo, "sh", "-c", "mkdir -p /data/db/catalog && echo "
           f"'{{\"sentinel\": \"kept-{token}\"}}' > /data/db/catalog/sentinel.json")
    infra = r.spec / "10-infrastructure.yaml"
    text = infra.read_text()
    for old, new in (("      PGDATA: /var/lib/postgresql/data/pgdata\n",
                      "      PGDATA: /var/lib/postgresql/data/pgdata\n"
                      "      REHEARSAL_GENERATION: \"2\"\n"),
                     ('    command: ["--wiredTigerCacheSizeGB", "0.25"]\n',
                      '    command: ["--wiredTigerCacheSizeGB", "0.25"]\n'
                      '    environment: {REHEARSAL_GENERATION: "2"}\n')):
        if text.count(old) != 1:
            raise RuntimeError(f"10-infrastructure.yaml: {old!r} not found once")
        text = text.replace(old, new)
    infra.write_text(text)
    plan = r.cli("--dry-run")
    t0 = time.monotonic()
    res = r.cli("apply", timeout=600)
    timings["backup-apply"] = time.monotonic() - t0
    rep.check("a change to postgres and mongodb: each backed up by its hook before its "
              "stop-first replacement", made.returncode == 0 and res.returncode == 0
              and "* backup postgres from" in plan.stdout
              and "* backup mongodb from" in plan.stdout,
              f"{timings['backup-apply']:.0f}s {made.stderr.strip()[:100]}")
    listed = r.cli("backups", "--json")
    try:
        entries = json.loads(listed.stdout)
    except ValueError:
        entries = []
    newest = {e["service"]: e for e in sorted(entries, key=lambda e: e["file"])}
    ok = {s: bool(newest.get(s, {}).get("checksum_ok")) for s in ("postgres", "mongodb")}
    heads = {}
    for service, magic in (("postgres", b"PGDMP"), ("mongodb", b"\x1f\x8b")):
        entry = newest.get(service)
        if entry:
            path = r.state / "backups" / r.project / service / entry["file"]
            heads[service] = path.read_bytes()[:len(magic)] == magic
    rep.check("backups listed, checksums ok; postgres's is a pg_dump custom-format archive "
              "(PGDMP), mongodb's gzip", all(ok.values()) and heads == {"postgres": True,
                                                                         "mongodb": True},
              ", ".join(f"{s} {newest[s]['size']} B" for s in newest if s in ok))
    # the data is lost ...
    psql(r, "DROP TABLE rehearsal_sentinel")
    (mongo,) = r.containers("mongodb")[:1] or [""]
    docker("exec", mongo, "rm", "-rf", "/data/db/catalog", check=False)
    gone = psql(r, "SELECT count(*) FROM rehearsal_sentinel")
    # ... and restored through the hooks, into the running (new) containers
    t0 = time.monotonic()
    res = r.cli("restore", "postgres", timeout=300)
    timings["restore-postgres"] = time.monotonic() - t0
    back = psql(r, "SELECT v FROM rehearsal_sentinel")
    rep.check("reconciler restore postgres (pg_restore --clean --single-transaction): the "
              "dropped table is back", gone.returncode != 0 and res.returncode == 0
              and back.stdout.strip() == f"kept-{token}" and token not in res.stdout,
              f"{timings['restore-postgres']:.1f}s {(res.stdout + res.stderr).strip()[-120:]}")
    t0 = time.monotonic()
    res = r.cli("restore", "mongodb", timeout=300)
    timings["restore-mongodb"] = time.monotonic() - t0
    (mongo,) = r.containers("mongodb")[:1] or [""]
    doc = docker("exec", mongo, "cat", "/data/db/catalog/sentinel.json", check=False)
    rep.check("reconciler restore mongodb (mongorestore --archive --drop, stand-in): the "
              "deleted data is back", res.returncode == 0 and f"kept-{token}" in doc,
              f"{timings['restore-mongodb']:.1f}s {(res.stdout + res.stderr).strip()[-120:]}")
    roles = psql(r, "SELECT count(*) FROM pg_roles WHERE rolname LIKE '%\\_service'")
    rep.check("the roles are still there after postgres's replacement, and no job ran again",
              roles.stdout.strip() == "4" and job_containers(r) == jobs_before,
              roles.stdout.strip())


EDGE_CHANGE = ("    resources: {memory: 128m, cpus: 0.5}\n",
               "    resources: {memory: 160m, cpus: 0.5}\n")


def check_edge_swap(r: Rehearsal) -> None:
    """A container-level change of the Metro edge (its memory limit) under load through it:
    a new nginx starts next to the old one in the holder's namespace (nginx.conf listens
    with reuseport), 0 failed requests, the holder (the published port) untouched."""
    rep = r.report
    external = r.spec / "40-external.yaml"
    text = external.read_text()
    if text.count(EDGE_CHANGE[0]) != 1:
        raise RuntimeError(f"40-external.yaml: {EDGE_CHANGE[0]!r} not found once")
    holder = r.containers("nginx.net")
    external.write_text(text.replace(*EDGE_CHANGE))
    plan = r.cli("--dry-run")

    async def under_load() -> tuple[Any, subprocess.CompletedProcess[str]]:
        load = asyncio.create_task(run_load(
            f"http://127.0.0.1:{r.edge_port}/v1/discovery", seconds=60, max_requests=20000,
            concurrency=4, stop=(stop := asyncio.Event()), min_requests=500))
        await asyncio.sleep(1)
        res = await asyncio.to_thread(r.cli, "apply")
        await asyncio.sleep(1)
        stop.set()
        return await load, res

    result, res = asyncio.run(under_load())  # (main runs everything without a proxy)
    rep.check("an edge change under load: start-first next to the old nginx in its holder's "
              "namespace, 0 failed requests, the holder kept",
              res.returncode == 0 and "start-first" in plan.stdout and result.failed == 0
              and result.total >= 500 and r.containers("nginx.net") == holder,
              f"{result.summary()}; {(res.stdout + res.stderr).strip()[-200:]}")


def rehearse(*, keep: bool = False) -> int:
    started = time.monotonic()
    ipam = json.loads(docker("network", "inspect", "bridge"))[0]["IPAM"]["Config"][0]
    # docker0's address (the engine assigns the subnet's first host unless told otherwise)
    gateway = ipam.get("Gateway") or str(ipaddress.ip_network(ipam["Subnet"])[1])
    r = Rehearsal(root=Path(tempfile.mkdtemp(prefix="metro-rehearsal-")),
                  project=f"metro-rh{secrets.token_hex(3)}", edge_port=free_port(),
                  gateway_ip=gateway, metrics_port=free_port(gateway))
    rep = r.report
    print(f"rehearsal: project {r.project}, edge http://127.0.0.1:{r.edge_port}, "
          f"metrics {r.metrics_addr}, dir {r.root}", flush=True)
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        run("bash", str(BUILD), *r.images(), timeout=900)
        timings["images"] = time.monotonic() - t0
        r.prepare()
        res = r.cli("validate", "--host-memory", "8g")
        rep.check("validate (strict, generated env files, 8 GiB host)", res.returncode == 0
                  and "sizing:" in res.stdout and "exceed" not in res.stderr,
                  (res.stdout + res.stderr).strip().splitlines()[-1] if res.stdout else "")
        res = r.cli("--dry-run")
        rep.check("dry-run plans the whole stack (exit 2)", res.returncode == 2,
                  res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr)
        t0 = time.monotonic()
        res = r.cli("apply", timeout=900)
        timings["apply"] = time.monotonic() - t0
        if not rep.check("apply converges tier by tier", res.returncode == 0,
                         f"{timings['apply']:.0f}s"):
            print(res.stdout[-4000:], res.stderr[-2000:], file=sys.stderr)
            return 1
        if not rep.check("reconciler run: ready, metrics on the docker0 gateway",
                         r.start_daemon()):
            print((r.root / "daemon.log").read_text()[-4000:], file=sys.stderr)
            return 1
        time.sleep(6)  # the daemon starts reading the edge's access log (every 5 s)
        t0 = time.monotonic()
        check_urls(r)
        check_grafana(r)
        check_metrics(r)
        timings["checks"] = time.monotonic() - t0
        r.stop_daemon()
        t0 = time.monotonic()
        check_jobs(r)
        check_backup_restore(r, timings)
        timings["data"] = time.monotonic() - t0
        t0 = time.monotonic()
        check_admin(r)
        timings["admin"] = time.monotonic() - t0
        t0 = time.monotonic()
        check_edge_swap(r)
        timings["edge"] = time.monotonic() - t0
    except Exception as exc:  # report, clean up, fail
        rep.check("rehearsal ran to the end", False, f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        if r.daemon is not None and rep.failed:
            print((r.root / "daemon.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        if keep:
            r.stop_daemon()
            print(f"kept: project {r.project} in {r.root}; remove it with\n"
                  f"  docker ps -aq --filter label=reconciler.project={r.project} "
                  "| xargs -r docker rm -f -v\n"
                  f"  docker network ls -q --filter label=reconciler.project={r.project} "
                  "| xargs -r docker network rm\n"
                  f"  docker volume ls -q | grep '^{r.project}_' | xargs -r docker volume rm\n"
                  f"  rm -rf {r.root}")
        else:
            t0 = time.monotonic()
            rep.check("cleanup: the rehearsal's containers, networks and volumes removed",
                      r.cleanup())
            shutil.rmtree(r.root, ignore_errors=True)
            timings["cleanup"] = time.monotonic() - t0
    wall = time.monotonic() - started
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    print(f"rehearsal: {len(rep.rows) - len(rep.failed)}/{len(rep.rows)} checks passed in "
          f"{wall:.0f}s wall ({parts})")
    if rep.failed:
        print("FAILED: " + "; ".join(rep.failed), file=sys.stderr)
    return 1 if rep.failed else 0


@contextlib.contextmanager
def _no_proxy() -> Iterator[None]:
    """Requests go to 127.0.0.1 and our own daemon only: never through a proxy."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().endswith("_proxy")}
    try:
        yield
    finally:
        os.environ.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rehearsal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack running for a look (prints how to remove it)")
    args = parser.parse_args(argv)
    with _no_proxy():
        return rehearse(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
