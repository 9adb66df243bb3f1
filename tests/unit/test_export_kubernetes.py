"""`export.kubernetes`: golden exports of deploy/demo and specs/, offline validation against
the Kubernetes API schemas (kubernetes-validate), structural checks of the CRDs it cannot
check (Argo CD Application, ExternalSecret, SealedSecret), sync waves that follow the tiers,
and a property test: every service appears, env-file keys only as Secret references, and no
env-file value anywhere in the output. The keys added later (secrets, configs, build,
placement, dns, sysctls, aliases, ...) are each translated or listed with file:line.

Regenerate the golden directories with UPDATE_GOLDEN=1 after an intended change, and review
the diff (tests/golden/k8s-demo/, tests/golden/k8s-specs/)."""

from __future__ import annotations

import argparse
import base64
import math
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.model import LoadedSpec
from reconciler.export.kubernetes import (
    APPLICATION,
    KUSTOMIZATION,
    MANIFEST_KINDS_WITHOUT_SCHEMA,
    WAVE,
    EdgeMode,
    Export,
    Kind,
    Mounted,
    Options,
    SecretsMode,
    dns_label,
    export,
)
from reconciler.exporting import (
    EXPORT_POLICY,
    _registry,
    dump,
    read_mounted,
    spec_locations,
    write,
)
from reconciler.loading import load

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
VERSION = "1.33"
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


def load_rel(spec: str, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> LoadedSpec:
    """Load as a user in the repo root does (relative paths keep the golden files stable)."""
    monkeypatch.chdir(REPO)
    return load(spec, strict=False, policy=EXPORT_POLICY, **kw)


def run(loaded: LoadedSpec, options: Options, *, stub_contents: bool = False) -> Export:
    contents = read_mounted(loaded)
    if stub_contents:  # the golden files check the structure, not nginx.conf's text
        contents = {p: Mounted({k: f"(golden: content of {k})\n" for k in m.files},
                               m.directory, m.problem) for p, m in contents.items()}
    return export(loaded, options=options, locations=spec_locations(loaded), contents=contents)


def findings_text(result: Export) -> str:
    return "".join(f"{f.kind}: {f}\n" for f in result.findings)


def check_golden(name: str, result: Export, tmp: Path) -> None:
    out = tmp / name
    write(result, out)
    (out / "FINDINGS.txt").write_text(findings_text(result))
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
    assert golden.is_dir(), f"missing {golden}; run with UPDATE_GOLDEN=1"
    got = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
    want = {p.relative_to(golden).as_posix(): p.read_text()
            for p in golden.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(want)
    for name_ in sorted(got):
        assert got[name_] == want[name_], f"{name_} differs from the golden file"


def demo(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Export:
    options = Options(**{"edge": EdgeMode.NGINX, "argocd_app": "demo",
                         "repo": "https://git.example.org/ops/demo.git",
                         "path": "deploy/k8s", **kw})
    return run(load_rel("deploy/demo", monkeypatch), options, stub_contents=True)


def production(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Export:
    options = Options(**{"secrets": SecretsMode.EXTERNAL_SECRET, **kw})
    return run(load_rel("specs", monkeypatch), options, stub_contents=True)


def test_golden_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check_golden("k8s-demo", demo(monkeypatch), tmp_path)


def test_golden_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check_golden("k8s-specs", production(monkeypatch), tmp_path)


# --- offline validation -------------------------------------------------------------------


def schema_errors(result: Export, version: str = VERSION) -> tuple[int, list[str]]:
    checked, errors = 0, []
    for filename, doc in result.documents():
        if doc["kind"] in MANIFEST_KINDS_WITHOUT_SCHEMA:
            continue
        checked += 1
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: "
                          f"{'.'.join(map(str, exc.path))}: {exc.message}")
    return checked, errors


@pytest.mark.parametrize("spec", ["deploy/demo", "specs"])
@pytest.mark.parametrize("edge", list(EdgeMode))
@pytest.mark.parametrize("secrets", list(SecretsMode))
def test_every_manifest_validates(monkeypatch: pytest.MonkeyPatch, spec: str, edge: EdgeMode,
                                  secrets: SecretsMode) -> None:
    loaded = load_rel(spec, monkeypatch, profiles=("admin",))
    result = run(loaded, Options(edge=edge, secrets=secrets))
    checked, errors = schema_errors(result)
    assert errors == []
    assert checked >= 25
    for _name, doc in result.documents():
        if doc["kind"] not in MANIFEST_KINDS_WITHOUT_SCHEMA:
            continue
        check_crd(doc)


@pytest.mark.parametrize("version", ["1.25", "1.29", "1.33", "1.37"])
def test_validates_for_older_and_newer_clusters(monkeypatch: pytest.MonkeyPatch,
                                                version: str) -> None:
    result = run(load_rel("deploy/demo", monkeypatch), Options(kubernetes_version=version))
    assert schema_errors(result, version)[1] == []
    prestop = next(doc for _n, doc in result.documents() if doc["kind"] == "Deployment"
               and doc["metadata"]["name"] == "api-gateway")
    hook = prestop["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    # the sleep action exists from 1.30 on; before, the image's own sleep
    assert ("sleep" in hook) == (version >= "1.30")


def check_crd(doc: dict[str, Any]) -> None:
    """Structural checks of what kubernetes-validate has no schema for."""
    kind = doc["kind"]
    if kind != "Kustomization":
        assert doc["metadata"]["name"] == dns_label(doc["metadata"]["name"])
    if kind == "Kustomization":
        assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert doc["resources"] and all(isinstance(r, str) for r in doc["resources"])
    elif kind == "Application":
        assert doc["apiVersion"] == "argoproj.io/v1alpha1"
        spec = doc["spec"]
        assert set(spec["source"]) == {"repoURL", "targetRevision", "path"}
        assert all(spec["source"].values())
        assert spec["destination"]["namespace"] and spec["destination"]["server"]
        retry = spec["syncPolicy"]["retry"]
        assert retry["limit"] > 0 and set(retry["backoff"]) == {"duration", "factor",
                                                                "maxDuration"}
    elif kind == "ExternalSecret":
        assert doc["apiVersion"] == "external-secrets.io/v1"
        spec = doc["spec"]
        assert spec["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
        assert spec["target"]["name"] == doc["metadata"]["name"]
        assert ("data" in spec) != ("dataFrom" in spec)
        for item in spec.get("data", []):
            assert set(item) == {"secretKey", "remoteRef"}
            assert set(item["remoteRef"]) == {"key", "property"}
        for item in spec.get("dataFrom", []):
            assert set(item) == {"extract"} and item["extract"]["key"]
    elif kind == "SealedSecret":
        assert doc["apiVersion"] == "bitnami.com/v1alpha1"
        template = doc["spec"]["template"]
        assert template["metadata"]["name"] == doc["metadata"]["name"]
        assert isinstance(doc["spec"]["encryptedData"], dict)
    else:
        raise AssertionError(f"unexpected kind without a schema: {kind}")


def test_crd_checks_can_fail() -> None:
    bad = {"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
           "metadata": {"name": "x"}, "spec": {"secretStoreRef": {"kind": "Nope"}}}
    with pytest.raises(AssertionError):
        check_crd(bad)
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


# --- meaning ----------------------------------------------------------------------------------


def by_kind(result: Export, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _n, doc in result.documents()
            if doc["kind"] == kind}


def test_waves_follow_the_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_rel("specs", monkeypatch)
    result = run(loaded, Options())
    tiers = loaded.spec.tiers
    assert set(result.waves) >= {"postgres", "auth-service", "api-gateway", "grafana"}
    for a, wa in result.waves.items():
        for b, wb in result.waves.items():
            ta, tb = loaded.spec.services[a].tier, loaded.spec.services[b].tier
            assert ta is not None and tb is not None
            if tiers.index(ta) < tiers.index(tb):
                assert wa < wb, (a, b)
        for dep in loaded.spec.services[a].depends_on:
            assert result.waves[dep] < wa or (
                loaded.spec.services[dep].tier != loaded.spec.services[a].tier
                and result.waves[dep] <= wa), (dep, a)
    docs = [d for _n, d in result.documents() if d["kind"] in WORKLOADS]
    assert {d["metadata"]["annotations"][WAVE] for d in docs} == {
        str(w) for w in result.waves.values()}
    shared = [d for _n, d in result.documents() if d["kind"] in ("NetworkPolicy", "Namespace")]
    assert all(int(d["metadata"]["annotations"][WAVE]) < 0 for d in shared)


def test_specs_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(load_rel("specs", monkeypatch), Options())
    sts, deps = by_kind(result, "StatefulSet"), by_kind(result, "Deployment")
    # specs/ keeps the compose project's data: its volumes are external, so the stores mount
    # the existing claims (one writer: Recreate) instead of getting volumeClaimTemplates
    assert sts == {}
    for store in ("postgres", "redis", "mongodb", "kafka", "prometheus", "grafana"):
        spec = deps[store]["spec"]
        assert spec["strategy"] == {"type": "Recreate"}, store
        claims = [v["persistentVolumeClaim"]["claimName"]
                  for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims and all(c.startswith("metro-") for c in claims), (store, claims)
    gw = deps["api-gateway"]["spec"]
    assert gw["replicas"] == 2
    assert gw["strategy"] == {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert (gw["minReadySeconds"], gw["progressDeadlineSeconds"]) == (10, 300)
    c = gw["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["exec"]["command"] == ["wget", "-qO-",
                                                      "http://127.0.0.1:8080/health"]
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["timeoutSeconds"],
            c["livenessProbe"]["failureThreshold"]) == (45, 15, 5)
    # Docker's budget: start_period 90s, then 5 retries 45s apart; probed every 10s
    startup = c["startupProbe"]
    assert startup["periodSeconds"] == 10
    assert startup["failureThreshold"] == math.ceil((90 + 5 * 45) / 10)
    assert c["resources"]["limits"] == {"memory": "256Mi", "cpu": "750m"}
    assert c["envFrom"] == [{"secretRef": {"name": "api-gateway-env"}}]
    pg = deps["postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert pg["readinessProbe"]["exec"]["command"][:2] == ["/bin/sh", "-c"]
    services = by_kind(result, "Service")
    assert services["postgres"]["spec"]["clusterIP"] == "None"
    assert services["api-gateway"]["spec"]["ports"][0]["port"] == 8080
    ingress = by_kind(result, "Ingress")["metro-edge"]["spec"]["rules"][0]["http"]["paths"]
    assert ingress[0]["backend"]["service"] == {"name": "api-gateway", "port": {"number": 8080}}
    assert "nginx" not in deps and "nginx" not in sts  # replaced by the Ingress
    unmapped = {f.path[-1] for f in result.findings if f.kind is Kind.UNMAPPED}
    assert {"ulimits", "logging"} <= unmapped
    policies = by_kind(result, "NetworkPolicy")
    backend = policies["network-backend"]["spec"]
    assert len(backend["egress"]) == 1  # internal: members only, no route out
    assert len(policies["network-egress"]["spec"]["egress"]) == 2


def test_unmapped_keys_are_listed_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""\
        project: odd
        networks: {n: {}}
        services:
          weird:
            tier: core
            image: x:1
            privileged: true
            network_mode: host
            ulimits: {nofile: 1024}
            volumes: ["/var/log:/host-logs:ro", "/scratch"]
            restart: "no"
            healthcheck: {test: ["CMD", "true"]}
            stop_signal: SIGINT
            user: postgres
          task:
            tier: core
            image: x:1
            restart: on-failure
            networks: [n]
          app:
            tier: business
            image: x:1
            networks: [n]
            depends_on: {task: {condition: service_completed_successfully}}
        """))
    loaded = load(tmp_path, strict=False, policy=EXPORT_POLICY)
    result = export(loaded, locations=spec_locations(loaded), contents=read_mounted(loaded))
    lines = [str(f) for f in result.findings if f.kind is Kind.UNMAPPED]
    spec = str(tmp_path / "spec.yaml")
    for expected in (f"{spec}:7: services.weird.privileged",
                     f"{spec}:8: services.weird.network_mode",
                     f"{spec}:9: services.weird.ulimits",
                     f"{spec}:10: services.weird.volumes[0]: host bind mount of /var/log",
                     f"{spec}:11: services.weird.restart",
                     f"{spec}:13: services.weird.stop_signal",
                     f"{spec}:14: services.weird.user"):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    jobs = by_kind(result, "Job")
    assert set(jobs) == {"task"}
    hook = jobs["task"]["metadata"]["annotations"]
    assert hook["argocd.argoproj.io/hook"] == "Sync"  # gates `app`
    assert jobs["task"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    weird = by_kind(result, "Deployment")["weird"]["spec"]["template"]["spec"]
    assert "privileged" not in str(weird) and "hostNetwork" not in weird
    assert {"name": "anon-1", "emptyDir": {}} in weird["volumes"]
    assert schema_errors(result)[1] == []


ODD = """\
project: odd
networks: {n: {}, i: {internal: true}}
volumes: {shared: {}, ext: {external: true, name: legacy_data}, own: {driver: nfs}}
edge: {service: web}
services:
  web:
    tier: external
    image: nginx:1
    ports: ["80:80", "443:443"]
    networks: [n]
  Api_One:
    tier: core
    image: api:1
    expose: {port: 8080, path: /api}
    networks: [n, i]
    volumes: ["shared:/s", "ext:/e:ro"]
    tmpfs: ["/run:size=64m", "/tmp"]
    shm_size: 1g
    extra_hosts: ["db.local:10.0.0.5", "host.docker.internal:host-gateway"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    user: "1000:1000"
    read_only: true
    hostname: api
    labels: {com.example.team: payments}
    healthcheck: {test: ["NONE"]}
    ports: ["9000-9002:9000-9002", "53:53/udp"]
  api2:
    tier: core
    image: api:2
    expose: {port: 8081, path: /api}
    networks: [i]
    volumes: ["shared:/s", "own:/o"]
    update: {order: stop-first}
    replicas: 3
    init: true
    security_opt: ["seccomp=unconfined"]
"""


@pytest.mark.parametrize("edge", list(EdgeMode))
def test_less_common_keys(tmp_path: Path, edge: EdgeMode) -> None:
    (tmp_path / "spec.yaml").write_text(ODD)
    loaded = load(tmp_path, strict=False, policy=EXPORT_POLICY)
    result = export(loaded, options=Options(edge=edge), locations=spec_locations(loaded))
    assert schema_errors(result)[1] == []
    text = findings_text(result)
    assert "services.Api_One: named 'api-one' in Kubernetes" in text
    assert "services.api2.init: init: no equivalent" in text
    assert "services.Api_One.ports[0]: port range" in text
    assert "host-gateway" in text and "seccomp=unconfined" in text
    assert (":31: services.api2.expose.path: path '/api' is already routed to api-one" in text
            ) == (edge is EdgeMode.INGRESS)
    shared = by_kind(result, "PersistentVolumeClaim")["shared"]["spec"]
    assert shared["accessModes"] == ["ReadWriteMany"]
    api = by_kind(result, "Deployment")["api-one"]["spec"]["template"]["spec"]
    c = api["containers"][0]
    assert c["securityContext"] == {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsUser": 1000,
                                    "runAsGroup": 1000}
    assert {"name": "ext", "persistentVolumeClaim": {"claimName": "legacy-data"}} in api[
        "volumes"]
    assert {"name": "tmpfs-0", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}} in api[
        "volumes"]
    assert api["hostAliases"] == [{"ip": "10.0.0.5", "hostnames": ["db.local"]}]
    assert api["hostname"] == "api"
    assert by_kind(result, "StatefulSet")["api2"]["spec"]["replicas"] == 3
    if edge is EdgeMode.NGINX:
        lb = by_kind(result, "Service")["web"]["spec"]
        assert lb["type"] == "LoadBalancer"
        assert [p["port"] for p in lb["ports"]] == [80, 443]
        assert by_kind(result, "Deployment")["web"]["spec"]["strategy"]["type"] == (
            "RollingUpdate")  # start-first: the host ports are not exported
    else:
        assert "web" not in by_kind(result, "Deployment")


def test_yaml_quotes_what_yaml_1_1_would_misread() -> None:
    text = dump(({"data": {"a": "yes", "b": "on", "c": "12:30", "d": "plain", "e": "1e3"}},))
    assert "a: 'yes'" in text and "b: 'on'" in text and "c: '12:30'" in text
    assert "d: plain" in text and "e: '1e3'" in text


# --- property: services, secrets by reference, no value anywhere -----------------------------

KEY = st.from_regex(r"[A-Z][A-Z0-9_]{0,7}", fullmatch=True)


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True),
                          min_size=1, max_size=6, unique=True))
    tiers = ["infrastructure", "core", "business", "external"]
    services: dict[str, Any] = {}
    for i, name in enumerate(names):
        tier = draw(st.integers(0, 3))
        svc: dict[str, Any] = {"tier": tiers[tier], "image": f"img/{name}:1",
                               "replicas": draw(st.integers(0, 3))}
        keys = draw(st.lists(KEY, max_size=3, unique=True))
        if keys:
            svc["env_file"] = [f"{name}.env"]
            svc["_secrets"] = {k: f"canary{i}x{j}Zq" for j, k in enumerate(keys)}
        plain = draw(st.lists(KEY.filter(lambda k, ks=tuple(keys): k not in ks), max_size=2,
                              unique=True))
        if plain:
            svc["environment"] = {k: "plain" for k in plain}
        svc["networks"] = draw(st.lists(st.sampled_from(["backend", "front"]), max_size=2,
                                        unique=True))
        if draw(st.booleans()):  # a secret file, mounted under /run/secrets
            svc["secrets"] = [f"{name}-s"]
            svc["_file"] = f"canary{i}fileZq"
        if draw(st.booleans()):
            svc["volumes"] = [f"{name}-data:/data"]
            svc["update"] = {"order": "stop-first"}
        if draw(st.booleans()):
            svc["healthcheck"] = {"test": ["CMD-SHELL", "true"],
                                  "interval": draw(st.sampled_from(["1s", "45s", "1m30s"])),
                                  "start_period": draw(st.sampled_from(["0s", "30s"]))}
        earlier = [n for n in names[:i] if tiers.index(services[n]["tier"]) <= tier]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        if deps:
            svc["depends_on"] = deps
        services[name] = svc
    return services


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack=stacks(), secrets=st.sampled_from(list(SecretsMode)))
def test_property_services_appear_and_secrets_stay_references(
        stack: dict[str, Any], secrets: SecretsMode) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = ["project: prop", "networks: {backend: {internal: true}, front: {}}",
                 "volumes: {" + ", ".join(f"{n}-data: {{}}" for n in stack
                                          if "volumes" in stack[n]) + "}",
                 "secrets: {" + ", ".join(f"{n}-s: {{file: ./{n}-s.txt}}" for n in stack
                                          if "_file" in stack[n]) + "}",
                 "services:"]
        for name, svc in stack.items():
            if "_file" in svc:
                secret_file = root / f"{name}-s.txt"
                secret_file.write_text(svc["_file"])
                secret_file.chmod(0o600)
            values = svc.pop("_secrets", {})
            if values:
                env = root / f"{name}.env"
                env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
                env.chmod(0o600)
                svc["_keys"] = sorted(values)
            body = {k: v for k, v in svc.items() if not k.startswith("_")}
            lines.append(f"  {name}: " + repr_yaml(body))
        (root / "spec.yaml").write_text("\n".join(lines) + "\n")
        loaded = load(root, strict=False, policy=EXPORT_POLICY)
        result = export(loaded, options=Options(secrets=secrets))
        texts = {name: dump(docs) for name, docs in result.manifests.items()}
        texts.update(result.scripts)
        everything = "\n".join(texts.values())
        assert "canary" not in everything
        workloads = {d["metadata"]["name"]: d for _n, d in result.documents()
                     if d["kind"] in WORKLOADS}
        assert set(workloads) == {dns_label(n) for n in stack}
        for name, svc in stack.items():
            pod = workloads[dns_label(name)]["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env_names = {e["name"] for e in container.get("env", [])}
            for key in svc.get("_keys", []):
                assert key not in env_names
                assert container["envFrom"] == [{"secretRef": {"name": f"{name}-env"}}]
            if "secrets" in svc:
                assert {"name": "secrets-0", "mountPath": f"/run/secrets/{name}-s",
                        "subPath": f"{name}-s", "readOnly": True} in container["volumeMounts"]
            if "volumes" in svc:
                assert workloads[dns_label(name)]["kind"] == "StatefulSet"
        assert schema_errors(result)[1] == []


def repr_yaml(value: Any) -> str:
    """Flow-style YAML of plain data (strings double-quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {repr_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(repr_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


def test_application_and_kustomization(monkeypatch: pytest.MonkeyPatch) -> None:
    result = demo(monkeypatch)
    kustomization = result.manifests[KUSTOMIZATION][0]
    assert APPLICATION not in kustomization["resources"]  # Argo CD must not manage itself
    assert sorted(kustomization["resources"]) == sorted(
        n for n in result.manifests if n not in (KUSTOMIZATION, APPLICATION))
    app = result.manifests[APPLICATION][0]
    assert app["spec"]["source"]["path"] == "deploy/k8s"
    assert app["spec"]["destination"]["namespace"] == "demo"


# --- the keys added since the first export: secrets, configs, build, Swarm placement, ... -----

NEW_KEYS = """\
project: newkeys
engine: swarm
tier_parallelism: {core: 2}
networks:
  n: {}
  fixed: {ipam: {config: [{subnet: 10.77.0.0/24}]}}
secrets:
  db_password: {file: ./secrets/db.txt}
  api_token: {environment: K8SX_TOKEN}
configs:
  app_conf: {content: "listen 8080\\n"}
  file_conf: {file: ./conf/app.ini}
  env_conf: {environment: K8SX_CONF}
services:
  app:
    tier: core
    build: ./app
    networks: [n, fixed]
    ipv4_address: {fixed: 10.77.0.10}
    secrets:
      - db_password
      - {source: api_token, target: token, mode: "0400", uid: "1000", gid: "1000"}
    configs:
      - app_conf
      - {source: file_conf, target: /etc/app/app.ini, mode: "0440"}
      - env_conf
    healthcheck: {test: ["CMD", "true"], interval: 30s, start_period: 60s, start_interval: 2s}
    pids_limit: 200
    dns: [1.1.1.1, 8.8.8.8, 9.9.9.9]
    dns_search: [example.internal]
    sysctls: {net.ipv4.tcp_syncookies: 1, net.core.somaxconn: 1024}
    network_aliases: {n: [app-alias, app.legacy]}
    resources: {memory: 512m, memory_reservation: 256m}
    update: {delay: 5s, failure_action: rollback, monitor: 10s, max_failure_ratio: 0.5}
    placement:
      constraints: [node.labels.zone==eu-1, node.hostname!=web-2, node.role==manager,
                    node.id==abc, engine.labels.x==y]
      max_replicas_per_node: 1
    backup: {volumes: true}
  edge:
    tier: external
    image: nginx:1
    networks: [n]
    replicas: 2
    placement: {global: true, constraints: [node.role!=manager]}
  spread:
    tier: external
    image: nginx:1
    replicas: 4
    networks: [n]
    placement: {max_replicas_per_node: 2}
  sidecar:
    tier: external
    image: busybox:1
    network_mode: service:app
  once:
    tier: core
    kind: job
    image: busybox:1
    healthcheck: {test: ["CMD", "true"]}
"""
SECRET_FILE_CANARY = "canary-secret-file-Zq7"
SECRET_ENV_CANARY = "canary-secret-env-Zq7"


def new_keys_spec(root: Path, monkeypatch: pytest.MonkeyPatch, text: str = NEW_KEYS) -> Path:
    (root / "spec.yaml").write_text(text)
    (root / "app").mkdir()
    (root / "app" / "Dockerfile").write_text("FROM busybox:1\n")
    (root / "secrets").mkdir()
    secret = root / "secrets" / "db.txt"
    secret.write_text(SECRET_FILE_CANARY)
    secret.chmod(0o600)
    (root / "conf").mkdir()
    (root / "conf" / "app.ini").write_text("a=1\n")
    monkeypatch.setenv("K8SX_TOKEN", SECRET_ENV_CANARY)
    monkeypatch.setenv("K8SX_CONF", "from-the-environment")
    return root


def export_new_keys(root: Path, **kw: Any) -> Export:
    loaded = load(root, strict=False, policy=EXPORT_POLICY)
    return export(loaded, options=Options(**kw), locations=spec_locations(loaded),
                  contents=read_mounted(loaded))


def workload(result: Export, name: str) -> dict[str, Any]:
    return next(d for _n, d in result.documents()
                if d["kind"] in (*WORKLOADS, "DaemonSet") and d["metadata"]["name"] == name)


# (line, key path, kind, text): every new key is either translated (then a note says how
# where it is looser) or listed, with its file:line
NEW_KEY_FINDINGS = [
    (2, "engine", Kind.NOTE, "the export targets Kubernetes"),
    (3, "tier_parallelism.core", Kind.UNMAPPED, "Argo CD applies a wave's objects together"),
    (6, "networks.fixed.ipam", Kind.UNMAPPED, "pod addresses come from"),
    (13, "configs.env_conf.environment", Kind.NOTE, "the value of $K8SX_CONF"),
    (17, "services.app.build", Kind.WARNING, "built on the host and exists only there"),
    (19, "services.app.ipv4_address.fixed", Kind.UNMAPPED, "fixed address 10.77.0.10"),
    (22, "services.app.secrets[1].uid", Kind.UNMAPPED, "owned by root"),
    (22, "services.app.secrets[1].gid", Kind.UNMAPPED, "fsGroup"),
    (28, "services.app.pids_limit", Kind.UNMAPPED, "podPidsLimit"),
    (29, "services.app.dns", Kind.UNMAPPED, "nameservers 9.9.9.9"),
    (29, "services.app.dns", Kind.NOTE, "dnsConfig: the cluster DNS stays first"),
    (31, "services.app.sysctls.net.core.somaxconn", Kind.UNMAPPED, "not a safe sysctl"),
    (32, "services.app.network_aliases.n", Kind.UNMAPPED, "'app.legacy' is not a DNS-1123"),
    (32, "services.app.network_aliases.n", Kind.NOTE, "'app-alias': a headless Service"),
    (34, "services.app.update.delay", Kind.UNMAPPED, "Swarm's update config"),
    (34, "services.app.update.failure_action", Kind.UNMAPPED, "Swarm's update config"),
    (34, "services.app.update.monitor", Kind.UNMAPPED, "Swarm's update config"),
    (34, "services.app.update.max_failure_ratio", Kind.UNMAPPED, "Swarm's update config"),
    (36, "services.app.placement.constraints[2]", Kind.NOTE, "add a toleration"),
    (37, "services.app.placement.constraints[3]", Kind.UNMAPPED, "'node.id==abc'"),
    (37, "services.app.placement.constraints[4]", Kind.UNMAPPED, "'engine.labels.x==y'"),
    (39, "services.app.backup", Kind.UNMAPPED, "Velero"),
    (45, "services.edge.placement.global", Kind.NOTE, "a DaemonSet"),
    (51, "services.spread.placement.max_replicas_per_node", Kind.UNMAPPED,
     "topologySpreadConstraint"),
    (55, "services.sidecar.network_mode", Kind.UNMAPPED, "one more container in app's pod"),
]


@pytest.mark.parametrize(("line", "key", "kind", "text"), NEW_KEY_FINDINGS,
                         ids=[f"{k}-{kind.name}" for _l, k, kind, _t in NEW_KEY_FINDINGS])
def test_new_keys_are_translated_or_listed_with_file_and_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: int, key: str, kind: Kind,
        text: str) -> None:
    result = export_new_keys(new_keys_spec(tmp_path, monkeypatch))
    prefix = f"{tmp_path / 'spec.yaml'}:{line}: {key}: "
    mine = [str(f) for f in result.findings if f.kind is kind]
    assert any(f.startswith(prefix) and text in f for f in mine), (prefix, text, mine)


def test_new_keys_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = export_new_keys(new_keys_spec(tmp_path, monkeypatch))
    assert schema_errors(result)[1] == []
    app = workload(result, "app")
    pod = app["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # secrets and configs: one-item volumes, mounted by subPath where the spec mounts them
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/run/secrets/db_password", "/run/secrets/token", "/app_conf",
                           "/etc/app/app.ini", "/env_conf"}
    assert all(m["readOnly"] for m in mounts.values())
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = volumes[mounts["/run/secrets/token"]["name"]]["secret"]
    assert token == {"secretName": "api-token-secret", "defaultMode": 0o400,
                     "items": [{"key": "api_token", "path": "api_token"}]}
    assert mounts["/run/secrets/token"]["subPath"] == "api_token"
    assert volumes[mounts["/run/secrets/db_password"]["name"]]["secret"]["defaultMode"] == 0o444
    ini = volumes[mounts["/etc/app/app.ini"]["name"]]["configMap"]
    assert (ini["name"], ini["defaultMode"]) == ("file-conf-config", 0o440)
    configs = by_kind(result, "ConfigMap")
    assert configs["app-conf-config"]["data"] == {"app_conf": "listen 8080\n"}
    assert configs["file-conf-config"]["data"] == {"file_conf": "a=1\n"}
    assert configs["env-conf-config"]["data"] == {"env_conf": "from-the-environment"}
    assert "configs.yaml" in result.manifests[KUSTOMIZATION][0]["resources"]
    # the rest of the pod
    assert c["image"].startswith("newkeys-app:")
    assert c["resources"] == {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] == 2  # start_interval
    assert startup["failureThreshold"] == math.ceil((60 + 3 * 30) / 2)
    assert pod["dnsConfig"] == {"nameservers": ["1.1.1.1", "8.8.8.8"],
                                "searches": ["example.internal"]}
    assert pod["securityContext"] == {"sysctls": [{"name": "net.ipv4.tcp_syncookies",
                                                   "value": "1"}]}
    assert pod["nodeSelector"] == {"zone": "eu-1"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["web-2"]},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    services = by_kind(result, "Service")
    assert services["app-alias"]["spec"]["selector"] == services["app"]["spec"]["selector"]
    assert "app.legacy" not in services
    edge = workload(result, "edge")
    assert edge["kind"] == "DaemonSet" and "replicas" not in edge["spec"]
    assert edge["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"] == [{"key": "node-role.kubernetes.io/control-plane",
                                 "operator": "DoesNotExist"}]
    assert workload(result, "once")["kind"] == "Job"  # kind: job, even with a health check
    assert workload(result, "spread")["kind"] == "Deployment"
    assert "affinity" not in workload(result, "spread")["spec"]["template"]["spec"]
    assert "images" not in result.manifests[KUSTOMIZATION][0]  # no --registry


@pytest.mark.parametrize("secrets", list(SecretsMode))
def test_secret_files_and_variables_never_reach_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets: SecretsMode) -> None:
    root = new_keys_spec(tmp_path, monkeypatch)
    loaded = load(root, strict=False, policy=EXPORT_POLICY)
    # the loader did read them (a canary that is absent proves nothing)
    assert loaded.contents[("secrets", "db_password")].data == SECRET_FILE_CANARY.encode()
    assert loaded.contents[("secrets", "api_token")].data == SECRET_ENV_CANARY.encode()
    result = export(loaded, options=Options(secrets=secrets), locations=spec_locations(loaded))
    out = tmp_path / "out"
    write(result, out)
    everything = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    everything += findings_text(result)
    assert "canary" not in everything
    assert schema_errors(result)[1] == []
    if secrets is SecretsMode.SCRIPT:
        script = result.scripts["create-secrets.sh"]
        assert ("apply db-password-secret --from-file=db_password=./secrets/db.txt"
                in script)
        assert ': "${K8SX_TOKEN?' in script
        assert ("printf '%s' \"$K8SX_TOKEN\" | apply api-token-secret "
                "--from-file=api_token=/dev/stdin") in script
    elif secrets is SecretsMode.SEALED_SECRET:
        sealed = by_kind(result, "SealedSecret")
        assert sealed["db-password-secret"]["spec"]["encryptedData"] == {
            "db_password": "SEAL-ME"}
        assert "seal db-password-secret --from-file=db_password=" in (
            result.scripts["seal-secrets.sh"])
        for doc in sealed.values():
            check_crd(doc)
    else:
        external = by_kind(result, "ExternalSecret")
        assert external["api-token-secret"]["spec"]["data"] == [
            {"secretKey": "api_token",
             "remoteRef": {"key": "newkeys/api-token-secret", "property": "api_token"}}]
        for doc in external.values():
            check_crd(doc)


def test_script_creates_secrets_from_files_and_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run create-secrets.sh against a fake kubectl: the Secret gets the exact bytes."""
    root = new_keys_spec(tmp_path, monkeypatch)
    result = export_new_keys(root)
    out = tmp_path / "out"
    write(result, out)
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "kubectl.log"
    (fake / "kubectl").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in *"create secret"*)
            for a in "$@"; do case "$a" in --from-file=*)
                f="${{a#--from-file=*=}}"; printf '%s=' "$a" >> {log}
                cat "$f" >> {log}; echo >> {log};; esac; done;;
        esac
        """))
    (fake / "kubectl").chmod(0o755)
    import subprocess
    env = {"PATH": f"{fake}:/usr/bin:/bin", "K8SX_TOKEN": "tok en\n", "SPEC_DIR": str(root)}
    done = subprocess.run(["sh", str(out / "create-secrets.sh")], env=env, timeout=30,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "--from-file=api_token=/dev/stdin=tok en", "",
        f"--from-file=db_password=./secrets/db.txt={SECRET_FILE_CANARY}"]
    unset = {k: v for k, v in env.items() if k != "K8SX_TOKEN"}
    done = subprocess.run(["sh", str(out / "create-secrets.sh")], env=unset, timeout=30,
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "K8SX_TOKEN" in done.stderr


def test_registry_renames_built_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = export_new_keys(new_keys_spec(tmp_path, monkeypatch),
                             registry="registry.example.com/team")
    image = workload(result, "app")["spec"]["template"]["spec"]["containers"][0]["image"]
    repo, tag = image.rsplit(":", 1)
    assert result.manifests[KUSTOMIZATION][0]["images"] == [
        {"name": repo, "newName": f"registry.example.com/team/{repo}"}]
    warning = [str(f) for f in result.findings if f.kind is Kind.WARNING]
    assert len(warning) == 1 and f"registry.example.com/team/{repo}:{tag}" in warning[0]


def test_unreadable_config_is_listed_not_mounted(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = new_keys_spec(tmp_path, monkeypatch)
    monkeypatch.delenv("K8SX_CONF")
    result = export_new_keys(root)
    text = findings_text(result)
    assert "configs.env_conf: config env_conf was not readable at export" in text
    assert "services.app.configs[2]: config env_conf is not mounted" in text
    assert "env-conf-config" not in by_kind(result, "ConfigMap")
    mounts = workload(result, "app")["spec"]["template"]["spec"]["containers"][0][
        "volumeMounts"]
    assert "/env_conf" not in {m["mountPath"] for m in mounts}
    assert schema_errors(result)[1] == []


@pytest.mark.parametrize(("version", "mapped"), [("1.25", ["net.ipv4.tcp_syncookies"]),
                                                 ("1.33", ["net.ipv4.tcp_fin_timeout",
                                                           "net.ipv4.tcp_syncookies"])])
def test_sysctls_follow_the_safe_set_of_the_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str,
        mapped: list[str]) -> None:
    text = NEW_KEYS.replace("{net.ipv4.tcp_syncookies: 1, net.core.somaxconn: 1024}",
                            "{net.ipv4.tcp_syncookies: 1, net.ipv4.tcp_fin_timeout: 30}")
    result = export_new_keys(new_keys_spec(tmp_path, monkeypatch, text),
                             kubernetes_version=version)
    pod = workload(result, "app")["spec"]["template"]["spec"]
    assert [s["name"] for s in pod["securityContext"]["sysctls"]] == mapped
    listed = "services.app.sysctls.net.ipv4.tcp_fin_timeout: sysctl" in findings_text(result)
    assert listed == (version == "1.25")
    assert schema_errors(result, version)[1] == []


def test_global_with_own_volumes_stays_a_statefulset(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""\
        project: g
        volumes: {data: {}}
        services:
          db:
            tier: core
            image: x:1
            volumes: ["data:/data"]
            placement: {global: true}
        """))
    result = export_new_keys(tmp_path)
    assert workload(result, "db")["kind"] == "StatefulSet"
    assert "services.db.placement.global: global: a DaemonSet has no volumeClaimTemplates" in (
        findings_text(result))
    assert schema_errors(result)[1] == []


def test_binary_config_goes_to_binary_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = new_keys_spec(tmp_path, monkeypatch)
    (root / "conf" / "app.ini").write_bytes(b"\x00\xff\xfe binary")
    result = export_new_keys(root)
    cm = by_kind(result, "ConfigMap")["file-conf-config"]
    assert "data" not in cm
    assert base64.b64decode(cm["binaryData"]["file_conf"]) == b"\x00\xff\xfe binary"
    assert schema_errors(result)[1] == []


@pytest.mark.parametrize(("value", "ok"), [("registry.example.com/team", True),
                                           ("localhost:5000", True), ("ghcr.io/org/sub/", True),
                                           ("Registry.example.com", False), ("a b", False),
                                           ("https://registry.example.com", False)])
def test_registry_option_is_checked(value: str, ok: bool) -> None:
    if ok:
        assert _registry(value) == value.rstrip("/")
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            _registry(value)
