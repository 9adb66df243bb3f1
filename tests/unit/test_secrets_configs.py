"""Top-level `secrets`/`configs` and their per-service use: confinement like env files,
mount paths and modes, keyed digests in the fingerprint, values never shown; plus the
network keys of the same issue (network_mode service:X in the planner, ipv4_address with
ipam, healthcheck.start_interval)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.core import snapshots
from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired, build
from reconciler.core.model import SpecError
from reconciler.core.plans import Action, Plan, Reason, compute
from reconciler.core.specs import HostPolicy
from reconciler.filestore import FileStore
from tests.specfactory import KEY, container_json, desired_from, load_text

VALUE = "tr0ub4dor-and-3-more-words-2026"

SPEC = """
project: shop
secrets:
  db_pw: {file: ./db_pw.txt}
  token: {environment: SHOP_TOKEN_FOR_TEST}
configs:
  app_conf: {content: "greeting = hello\\n"}
  nginx: {file: ./nginx.conf}
services:
  api:
    tier: business
    image: api:1
    secrets: [db_pw, {source: token, target: /etc/token, mode: "0400", uid: "1000"}]
    configs: [app_conf, {source: nginx, target: /etc/nginx/nginx.conf}]
"""


def _files(tmp: Path, value: str = VALUE, *, mode: int = 0o600) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db_pw.txt").write_text(value)
    (tmp / "db_pw.txt").chmod(mode)
    (tmp / "nginx.conf").write_text("events {}\n")


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TOKEN_FOR_TEST", "token-" + VALUE)


def _problems(exc: pytest.ExceptionInfo[SpecError]) -> str:
    return "\n".join(str(p) for p in exc.value.problems)


def test_mount_paths_modes_and_read_only_binds(tmp_path: Path) -> None:
    _files(tmp_path)
    d = build(load_text(tmp_path, SPEC, strict=True), KEY, files_dir="/state/files")
    api = d.services["api"]
    got = {(f.kind, f.name): (f.target, f"{f.mode:04o}", f.uid) for f in api.files}
    assert got == {
        ("secrets", "db_pw"): ("/run/secrets/db_pw", "0444", None),
        ("secrets", "token"): ("/etc/token", "0400", 1000),
        ("configs", "app_conf"): ("/app_conf", "0444", None),
        ("configs", "nginx"): ("/etc/nginx/nginx.conf", "0444", None),
    }
    body = container_config(api, 1)
    binds = body["HostConfig"]["Binds"]
    assert all(b.startswith(f"/state/files/shop/api-{api.fingerprint}/") and b.endswith(":ro")
               for b in binds), binds
    assert {b.split(":")[1] for b in binds} == {t for t, _, _ in got.values()}
    # the value is nowhere in the create body, the labels or the repr
    shown = json.dumps(body) + repr(d) + json.dumps(dict(api.public_config))
    assert VALUE not in shown and "hello" not in shown
    assert api.public_config["secrets"]["/run/secrets/db_pw"].startswith("db_pw 0444 sha:")


def test_a_changed_secret_changes_the_fingerprint_and_nothing_else_does(
        tmp_path: Path) -> None:
    _files(tmp_path / "a")
    _files(tmp_path / "b", VALUE + "-rotated")
    _files(tmp_path / "c")
    a = desired_from(tmp_path / "a", SPEC, strict=True).services["api"]
    b = desired_from(tmp_path / "b", SPEC, strict=True).services["api"]
    c = desired_from(tmp_path / "c", SPEC, strict=True).services["api"]
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == c.fingerprint
    assert a.public_config["secrets"] != b.public_config["secrets"]


def test_a_changed_config_content_rolls(tmp_path: Path) -> None:
    _files(tmp_path / "a")
    _files(tmp_path / "b")
    a = desired_from(tmp_path / "a", SPEC, strict=True).services["api"]
    b = desired_from(tmp_path / "b", SPEC.replace("hello", "bye"), strict=True).services["api"]
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(("case", "words"), [
    ("outside", "outside the spec checkout and the host's env_file_roots"),
    ("symlink", "is a symlink, not a regular file"),
    ("loose", "is readable by others (mode 0644): chmod 600"),
    ("missing", "file not found"),
    ("unset", "the variable SHOP_TOKEN_FOR_TEST is not set"),
    ("fifo", "is a FIFO, not a regular file"),
])
def test_file_sources_are_confined_like_env_files(case: str, words: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "spec"
    _files(spec_dir)
    text = SPEC
    outside = tmp_path / "elsewhere.txt"
    outside.write_text(VALUE)
    outside.chmod(0o600)
    if case == "outside":
        text = SPEC.replace("./db_pw.txt", str(outside))
    elif case == "symlink":
        (spec_dir / "db_pw.txt").rename(spec_dir / "real.txt")
        (spec_dir / "db_pw.txt").symlink_to(spec_dir / "real.txt")
    elif case == "loose":
        (spec_dir / "db_pw.txt").chmod(0o644)
    elif case == "missing":
        (spec_dir / "db_pw.txt").unlink()
    elif case == "unset":
        monkeypatch.delenv("SHOP_TOKEN_FOR_TEST")
    elif case == "fifo":
        (spec_dir / "db_pw.txt").unlink()
        os.mkfifo(spec_dir / "db_pw.txt")
    with pytest.raises(SpecError) as exc:
        load_text(spec_dir, text, strict=True)
    shown = _problems(exc)
    assert words in shown
    assert "secrets.db_pw" in shown or "secrets.token" in shown
    assert ":" in shown.split(" ")[0]  # file:line first
    assert VALUE not in shown
    # a preview only warns, and plans with the fingerprint unknown
    loaded = load_text(spec_dir, text, strict=False)
    assert any(words in str(w) for w in loaded.warnings)
    if case != "loose":
        assert loaded.unknown_env


def test_a_policy_root_admits_a_file_outside_the_checkout(tmp_path: Path) -> None:
    spec_dir = tmp_path / "spec"
    _files(spec_dir)
    roots = tmp_path / "secrets"
    roots.mkdir(mode=0o700)
    (roots / "pw").write_text(VALUE)
    (roots / "pw").chmod(0o600)
    policy = HostPolicy(env_file_roots=(str(roots),))
    loaded = load_text(spec_dir, SPEC.replace("./db_pw.txt", str(roots / "pw")), strict=True,
                       policy=policy)
    assert loaded.contents[("secrets", "db_pw")].data == VALUE.encode()


@pytest.mark.parametrize(("fragment", "words"), [
    ("secrets: [nope]", "undefined secret 'nope'"),
    ("configs: [{source: nope}]", "undefined config 'nope'"),
    ("secrets: [{source: db_pw, mode: 0440}]", 'quoted octal string such as "0440"'),
    ("secrets: [{source: db_pw, mode: '0999'}]", 'quoted octal string'),
    ("secrets: [{source: db_pw, target: ../../etc/x}]", "is not a clean path"),
    ("secrets: [db_pw, {source: db_pw}]", "/run/secrets/db_pw is mounted twice"),
    ("secrets: [{source: db_pw, uid: root}]", "numeric ids"),
])
def test_bad_service_references(fragment: str, words: str, tmp_path: Path) -> None:
    _files(tmp_path)
    line = ('    secrets: [db_pw, {source: token, target: /etc/token, mode: "0400", uid: "1000"}]'
            if fragment.startswith("secrets") else
            "    configs: [app_conf, {source: nginx, target: /etc/nginx/nginx.conf}]")
    text = SPEC.replace(line, "    " + fragment)
    assert text != SPEC
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    assert words in _problems(exc)


def test_a_secret_value_in_the_spec_is_refused(tmp_path: Path) -> None:
    _files(tmp_path)
    text = SPEC.replace("token: {environment: SHOP_TOKEN_FOR_TEST}",
                        f"token: {{content: {VALUE}}}")
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    shown = _problems(exc)
    assert "a secret's value does not belong in the spec" in shown
    assert VALUE not in shown


def test_file_store_writes_mode_and_prunes(tmp_path: Path) -> None:
    _files(tmp_path / "spec")
    store = FileStore(tmp_path / "state" / "files")
    d = build(load_text(tmp_path / "spec", SPEC.replace(', uid: "1000"', ""), strict=True),
              KEY, files_dir=str(store.root))
    api = d.services["api"]
    store.materialise(api)
    store.materialise(api)  # idempotent
    by_target = {f.target: Path(f.host_path) for f in api.files}
    secret = by_target["/run/secrets/db_pw"]
    assert secret.read_text() == VALUE
    assert secret.stat().st_mode & 0o777 == 0o444
    assert by_target["/etc/token"].stat().st_mode & 0o777 == 0o400
    assert secret.parent.stat().st_mode & 0o777 == 0o700
    assert (store.root / "shop").stat().st_mode & 0o777 == 0o700
    assert store.prune("shop", {f"api-{api.fingerprint}"}) == []
    assert store.prune("shop", set()) == [f"api-{api.fingerprint}"]
    assert not secret.exists()


def test_file_store_refuses_paths_outside_its_directory(tmp_path: Path) -> None:
    _files(tmp_path / "spec")
    store = FileStore(tmp_path / "state" / "files")
    d = build(load_text(tmp_path / "spec", SPEC, strict=True), KEY)  # preview: no files dir
    with pytest.raises(ValueError, match="outside the files directory"):
        store.materialise(d.services["api"])


# --- network_mode: service:X ----------------------------------------------------------------

JOIN = """
project: shop
networks: {back: {}}
services:
  vpn:
    tier: core
    image: vpn:1
    networks: [back]
  app:
    tier: business
    image: app:1
    network_mode: "service:vpn"
  side:
    tier: core
    image: side:1
    network_mode: "service:vpn"
"""


def _joined(d: Desired, service: str, joined: str, **kw: Any) -> dict[str, Any]:
    item = container_json(d, service, 1, **kw)
    item["HostConfig"] = {"NetworkMode": f"container:{joined}"}
    return item


def _lines(plan: Plan) -> list[str]:
    return [f"{s.id} ({s.reason})" for s in plan.steps]


def _snap(d: Desired, *items: dict[str, Any]) -> snapshots.Snapshot:
    return snapshots.parse(d.project, items, networks=[
        {"Name": n, "Labels": {"reconciler.project": d.project}} for n in d.networks])


def test_joined_service_carries_the_fingerprint_of_the_one_it_joins(tmp_path: Path) -> None:
    a = desired_from(tmp_path / "a", JOIN)
    b = desired_from(tmp_path / "b", JOIN.replace("vpn:1", "vpn:2"))
    assert a.services["app"].public_config["network_of"] == a.services["vpn"].fingerprint
    assert a.services["app"].fingerprint != b.services["app"].fingerprint
    assert a.services["vpn"].fingerprint != b.services["vpn"].fingerprint


@pytest.mark.parametrize(("case", "expected"), [
    # everything in place: nothing to do
    ("in-sync", []),
    # vpn's container was recreated (a new id, same generation): both joiners follow it
    ("vpn-recreated-outside", ["recreate app[1] (the container whose network it joins was "
                               "replaced)",
                               "recreate side[1] (the container whose network it joins was "
                               "replaced)"]),
    # vpn is unhealthy: the plan recreates it, and the joiners after it (side: same tier)
    ("vpn-unhealthy", ["recreate vpn[1] (container unhealthy)",
                       "recreate app[1] (the container whose network it joins was replaced)",
                       "recreate side[1] (the container whose network it joins was "
                       "replaced)"]),
    # vpn's stopped container is started again: a new namespace, the joiners follow
    ("vpn-stopped", ["start vpn[1] (container stopped)",
                     "recreate app[1] (the container whose network it joins was replaced)",
                     "recreate side[1] (the container whose network it joins was replaced)"]),
    # a new vpn image: vpn and, through the fingerprint, its joiners are replaced
    ("vpn-new-image", ["replace side[1] start-first (config changed)",
                       "replace vpn[1] start-first (config changed)",
                       "replace app[1] start-first (config changed)"]),
])
def test_planner_rejoins_after_the_joined_container_changes(case: str, expected: list[str],
                                                            tmp_path: Path) -> None:
    d = desired_from(tmp_path, JOIN)
    old = desired_from(tmp_path / "old", JOIN.replace("vpn:1", "vpn:0"))
    vpn_id = "id-vpn-1"
    vpn: dict[str, Any] = {"cid": vpn_id}
    source = d
    if case == "vpn-recreated-outside":
        vpn = {"cid": "id-vpn-2"}
    elif case == "vpn-unhealthy":
        vpn["status"] = "Up 1 minute (unhealthy)"
    elif case == "vpn-stopped":
        vpn.update(state="exited", status="Exited (0) 1 minute ago")
    elif case == "vpn-new-image":
        source = old
    items = [container_json(source, "vpn", 1, **vpn),
             _joined(source, "app", vpn_id), _joined(source, "side", vpn_id)]
    plan = compute(d, _snap(d, *items))
    assert _lines(plan) == expected
    if case in ("vpn-unhealthy", "vpn-new-image"):
        side = next(s for s in plan.steps if s.service == "side")
        assert any(w.service == "vpn" for w in side.after)  # same tier: after vpn started
    if expected and case != "vpn-new-image":
        assert all(s.action in (Action.RECREATE, Action.START) for s in plan.steps)
        assert Reason.JOINED_REPLACED in {s.reason for s in plan.steps}


@pytest.mark.parametrize(("fragment", "words"), [
    ("    networks: [back]\n    network_mode: \"service:vpn\"",
     "networks cannot be set with network_mode: service:vpn"),
    ("    ports: [\"8080:80\"]\n    network_mode: \"service:vpn\"",
     "ports cannot be set with network_mode"),
    ("    network_mode: \"service:app\"", "service:app is the service itself"),
])
def test_network_mode_service_rules(fragment: str, words: str, tmp_path: Path) -> None:
    text = JOIN.replace('    image: app:1\n    network_mode: "service:vpn"',
                        "    image: app:1\n" + fragment)
    assert text != JOIN
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    assert words in _problems(exc)


def test_a_joined_service_in_a_later_tier_is_refused(tmp_path: Path) -> None:
    text = JOIN.replace("    tier: core\n    image: side:1", "    tier: infrastructure\n"
                        "    image: side:1")
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    assert "service:vpn is in a later tier (core): it must run first" in _problems(exc)


# --- static addresses, start_interval --------------------------------------------------------

IPV4 = """
project: shop
networks:
  back:
    ipam: {config: [{subnet: 172.30.9.0/24, gateway: 172.30.9.1}]}
services:
  dns:
    tier: core
    image: dns:1
    networks: [back]
    ipv4_address: {back: 172.30.9.53}
"""


def test_ipv4_address_reaches_the_endpoint_and_forces_stop_first(tmp_path: Path) -> None:
    d = desired_from(tmp_path, IPV4)
    body = container_config(d.services["dns"], 1)
    endpoint = body["NetworkingConfig"]["EndpointsConfig"]["shop_back"]
    assert endpoint["IPAMConfig"] == {"IPv4Address": "172.30.9.53"}
    assert d.services["dns"].order.value == "stop-first"
    assert d.networks["shop_back"].ipam is not None


@pytest.mark.parametrize(("old", "new", "words"), [
    ("172.30.9.53}", "172.31.0.5}", "is not in a subnet of network 'back'"),
    ("172.30.9.53}", "not-an-ip}", "is not an IPv4 address"),
    ("    ipv4_address: {back: 172.30.9.53}", "    ipv4_address: {front: 172.30.9.53}",
     "'front' is not one of the service's networks"),
    ("    ipv4_address:", "    replicas: 2\n    ipv4_address:", "replicas must be 0 or 1"),
    ("    ipv4_address:", "    update: {order: start-first}\n    ipv4_address:",
     "start-first cannot keep a fixed ipv4_address"),
    ("subnet: 172.30.9.0/24", "subnet: 172.30.9.0/99", "is not a subnet (CIDR)"),
])
def test_bad_static_addresses(old: str, new: str, words: str, tmp_path: Path) -> None:
    text = IPV4.replace(old, new)
    assert text != IPV4
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    assert words in _problems(exc)


def test_two_services_cannot_share_an_address(tmp_path: Path) -> None:
    text = IPV4 + ("  dns2:\n    tier: core\n    image: dns:1\n    networks: [back]\n"
                   "    ipv4_address: {back: 172.30.9.53}\n")
    with pytest.raises(SpecError) as exc:
        load_text(tmp_path, text, strict=True)
    assert "172.30.9.53 on back is already dns's address" in _problems(exc)


def test_start_interval_is_set_on_the_container_and_fingerprinted(tmp_path: Path) -> None:
    base = ('project: shop\nservices:\n  api:\n    tier: core\n    image: api:1\n'
            '    healthcheck: {test: ["CMD", "true"], interval: 30s}\n')
    a = desired_from(tmp_path / "a", base)
    b = desired_from(tmp_path / "b", base.replace("interval: 30s", "interval: 30s, "
                                                  "start_interval: 1s"))
    assert "StartInterval" not in container_config(a.services["api"], 1)["Healthcheck"]
    assert container_config(b.services["api"], 1)["Healthcheck"]["StartInterval"] == 10**9
    assert a.services["api"].fingerprint != b.services["api"].fingerprint


def test_a_file_path_variable_is_not_taken_for_a_secret(tmp_path: Path) -> None:
    _files(tmp_path)
    text = SPEC.replace("    image: api:1\n", "    image: api:1\n    environment: {"
                        "POSTGRES_PASSWORD_FILE: /run/secrets/db_pw, API_TOKEN: x}\n")
    loaded = load_text(tmp_path, text, strict=False)
    shown = [str(w) for w in loaded.warnings if "looks like a secret" in str(w)]
    assert len(shown) == 1 and "API_TOKEN" in shown[0]


async def test_a_failing_containers_log_tail_never_shows_a_secret_file(tmp_path: Path) -> None:
    from reconciler.execute import Executor

    _files(tmp_path)
    api = desired_from(tmp_path, SPEC, strict=True).services["api"]

    class Logs:
        async def container_logs(self, cid: str, *, tail: int) -> str:
            return f"connecting with password {VALUE}\nfatal: token token-{VALUE}\n"

    tail = await Executor(Logs())._log_tail("cid", api)  # type: ignore[arg-type]
    assert VALUE not in tail and "(sensitive)" in tail
