"""Tables for the host-access rules: the host policy parser (fails closed), Docker's name
grammar, namespace modes, the keyed spec fingerprint, confined `.git/HEAD` refs, bounded
digests and the state dir's owner/mode/link checks. Pure or tmp-file only, no Docker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler import hostfiles, loading
from reconciler.core.model import SpecError
from reconciler.core.specs import HostPolicy, Spec, name_problem, validate
from reconciler.loading import load, load_policy, parse_policy
from reconciler.persistence import State, StateError, read_key

# --- the policy parser ------------------------------------------------------------------------

# policy text -> expected problem (None: accepted), checked key, expected value
POLICY_TABLE: dict[str, tuple[str, str | None, str, Any]] = {
    "bool-true": ("allow_privileged: true\n", None, "allow_privileged", True),
    "bool-false": ("allow_privileged: false\n", None, "allow_privileged", False),
    "bool-no": ("allow_privileged: no\n", "must be true or false (a YAML boolean), not 'no'",
                "allow_privileged", None),
    "bool-quoted-false": ('allow_docker_socket: "false"\n', "not 'false'",
                          "allow_docker_socket", None),
    "bool-off": ("allow_host_namespaces: off\n", "not 'off'", "allow_host_namespaces", None),
    "bool-one": ("allow_privileged: 1\n", "not 1", "allow_privileged", None),
    "bool-null": ("allow_privileged:\n", "not None", "allow_privileged", None),
    "list-as-string": ("allow_bind_mounts: /srv/data\n", "must be a list (e.g. [a, b]), not "
                       "'/srv/data'", "allow_bind_mounts", None),
    "list-ok": ("allow_bind_mounts: [/srv/data, /srv/www/]\n", None, "allow_bind_mounts",
                ("/srv/data", "/srv/www")),
    "list-relative": ("allow_bind_mounts: [srv/data]\n", "'srv/data' is not an absolute path",
                      "allow_bind_mounts", None),
    "list-dotdot": ("allow_bind_mounts: [/srv/../etc]\n", "no . or .. parts",
                    "allow_bind_mounts", None),
    "list-double-slash": ("allow_bind_mounts: ['//']\n", "write exactly / to allow that",
                          "allow_bind_mounts", None),
    "list-of-numbers": ("allow_bind_mounts: [1, 2]\n", "must be a list of strings",
                        "allow_bind_mounts", None),
    "env-roots-default": ("allow_privileged: false\n", None, "env_file_roots", ("/opt/env",)),
    "env-roots-set": ("env_file_roots: [/etc/metro/env]\n", None, "env_file_roots",
                      ("/etc/metro/env",)),
    "env-roots-empty": ("env_file_roots: []\n", None, "env_file_roots", ()),
    "env-roots-string": ("env_file_roots: /opt/env\n", "must be a list", "env_file_roots",
                         None),
    "caps-ok": ("allow_capabilities: [sys_admin, CAP_NET_ADMIN]\n", None,
                "allow_capabilities", frozenset({"SYS_ADMIN", "NET_ADMIN"})),
    "caps-string": ("allow_capabilities: SYS_ADMIN\n", "must be a list", "allow_capabilities",
                    None),
    "caps-odd": ("allow_capabilities: ['SYS_ADMIN; rm']\n", "is not a capability name",
                 "allow_capabilities", None),
    "unknown-key": ("allow_everything: true\n", "unknown key", "allow_everything", None),
}


def write_policy(tmp_path: Path, text: str, mode: int = 0o644) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("case", list(POLICY_TABLE))
def test_policy_table(tmp_path: Path, case: str) -> None:
    text, problem, key, value = POLICY_TABLE[case]
    path = write_policy(tmp_path, text)
    if problem is None:
        policy = load_policy(str(path))
        assert getattr(policy, key) == value
        return
    with pytest.raises(SpecError) as err:
        load_policy(str(path))
    shown = str(err.value)
    assert f"{path}:1: {key}: " in shown, shown
    assert problem in shown and "nothing dangerous is allowed" in shown, shown


def test_slash_is_allowed_only_as_written_and_is_acknowledged(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "allow_privileged: false\nallow_bind_mounts: [/]\n")
    policy = load_policy(str(path))
    assert policy.allow_bind_mounts == ("/",)
    assert policy.notices == ((2, "allow_bind_mounts",
                               "`/` allows every path of the host to be bind-mounted"),)
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "spec.yaml").write_text("project: shop\nservices:\n  web:\n    tier: core\n"
                                    "    image: web:1\n    volumes: ['/srv:/srv']\n")
    loaded = load(spec, strict=False, policy=policy)
    assert [str(w) for w in loaded.warnings] == [
        f"{path}:2: warning: allow_bind_mounts: `/` allows every path of the host to be "
        "bind-mounted"]


def test_every_key_wrong_at_once_names_each(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "allow_privileged: yes\nallow_bind_mounts: /\n"
                                  "env_file_roots: [relative]\n")
    with pytest.raises(SpecError) as err:
        load_policy(str(path))
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "allow_privileged", "allow_bind_mounts", "env_file_roots"]


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_group_or_world_writable_policy_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_policy(tmp_path, "allow_privileged: true\n", mode)
    with pytest.raises(SpecError, match=f"mode {mode:04o}: it must not be group- or "
                                        "world-writable"):
        load_policy(str(path))


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400])
def test_private_policy_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    assert load_policy(str(write_policy(tmp_path, "allow_privileged: true\n",
                                        mode))).allow_privileged


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_policy_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "allow_privileged: true\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(SpecError, match="owned by uid 65534: it must be owned by root"):
        load_policy(str(path))


def test_policy_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "policy.yaml")
    with pytest.raises(SpecError, match="is a FIFO, not a regular file"):
        load_policy(str(tmp_path / "policy.yaml"))  # never opened: would block


def test_absent_policy_allows_nothing(tmp_path: Path) -> None:
    assert load_policy(str(tmp_path / "absent.yaml")) == HostPolicy()


def test_parse_policy_is_pure() -> None:
    values, problems, notices = parse_policy({"allow_privileged": "no",
                                              "allow_bind_mounts": ["/"]})
    assert problems == [("allow_privileged", "must be true or false (a YAML boolean), not "
                                             "'no'")]
    assert values == {"allow_bind_mounts": ("/",)} and notices[0][0] == "allow_bind_mounts"


# --- names -------------------------------------------------------------------------------------

NAMES: dict[str, bool] = {
    "data": True, "pg-data": True, "my_vol.1": True, "A9": True, "x": True,
    "/": False, "/var/run/docker.sock": False, "./data": False, "../data": False,
    "~/data": False, ".hidden": False, "-flag": False, "_x": False, "container:foo": False,
    "a b": False, "a/b": False, "": False, "x" * 129: False, "x" * 128: True,
    "data\n": False, "dätä": False,
}


@pytest.mark.parametrize("name", list(NAMES))
def test_name_grammar(name: str) -> None:
    assert (name_problem(name) is None) is NAMES[name], name_problem(name)


def _spec(**kw: Any) -> Spec:
    data = {"project": "shop", "services": {"web": {"tier": "core", "image": "web:1"}}}
    services = kw.pop("service", {})
    data["services"]["web"].update(services)  # type: ignore[index]
    data.update(kw)
    return Spec.model_validate(data)


# spec fragment -> expected (key path, words) of the finding, or None when valid by default
SPEC_TABLE: dict[str, tuple[dict[str, Any], tuple[tuple[str | int, ...], str] | None]] = {
    "volume-name-root": ({"volumes": {"x": {"external": True, "name": "/"}},
                          "service": {"volumes": ["x:/h"]}},
                         (("volumes", "x", "name"), "'/' is a path")),
    "volume-name-socket": ({"volumes": {"x": {"external": True,
                                              "name": "/var/run/docker.sock"}},
                            "service": {"volumes": ["x:/s"]}},
                           (("volumes", "x", "name"), "is a path")),
    "volume-key-path": ({"volumes": {"/etc": {}}}, (("volumes", "/etc"), "is a path")),
    "network-external-host": ({"networks": {"h": {"external": True, "name": "host"}},
                               "service": {"networks": ["h"]}},
                              (("networks", "h", "name"), "allow_host_namespaces")),
    "network-key-host-external": ({"networks": {"host": {"external": True}}},
                                  (("networks", "host"), "allow_host_namespaces")),
    "network-name-bridge": ({"networks": {"n": {"name": "bridge"}}},
                            (("networks", "n", "name"), "allow_host_namespaces")),
    "network-name-none": ({"networks": {"n": {"external": True, "name": "none"}}},
                          (("networks", "n", "name"), "allow_host_namespaces")),
    "network-name-container": ({"networks": {"n": {"external": True,
                                                   "name": "container:db"}}},
                               (("networks", "n", "name"), "not a name")),
    "network-key-host-own": ({"networks": {"host": {}}}, None),  # becomes shop_host
    "pid-host": ({"service": {"pid": "host"}}, (("services", "web", "pid"),
                                                "allow_host_namespaces")),
    "pid-container": ({"service": {"pid": "container:foo"}},
                      (("services", "web", "pid"), "allow_host_namespaces")),
    "ipc-container": ({"service": {"ipc": "container:foo"}},
                      (("services", "web", "ipc"), "allow_host_namespaces")),
    "ipc-shareable": ({"service": {"ipc": "shareable"}}, None),
    "network-mode-container": ({"service": {"network_mode": "container:foo"}},
                               (("services", "web", "network_mode"), "allow_host_namespaces")),
    "network-mode-bridge": ({"service": {"network_mode": "bridge"}},
                            (("services", "web", "network_mode"), "allow_host_namespaces")),
    "network-mode-none": ({"service": {"network_mode": "none"}}, None),
    "network-mode-service": ({"service": {"network_mode": "service:web"}},
                             (("services", "web", "network_mode"), "the service itself")),
    "network-mode-foreign-service": ({"service": {"network_mode": "service:other"}},
                                     (("services", "web", "network_mode"),
                                      "not a service of this project")),
    "network-mode-other-network": ({"service": {"network_mode": "otherproject_backend"}},
                                   (("services", "web", "network_mode"),
                                    "unsupported value")),
    "bind-git": ({"service": {"volumes": ["/repo/.git:/g"]}},
                 (("services", "web", "volumes", 0), "never mountable")),
}
ALLOW_ALL = HostPolicy(allow_host_namespaces=True, allow_bind_mounts=("/",),
                       allow_docker_socket=True)


@pytest.mark.parametrize("case", list(SPEC_TABLE))
def test_names_and_namespaces(case: str) -> None:
    fragment, expected = SPEC_TABLE[case]
    findings = [f for f in validate(_spec(**fragment)) if not f.warning]
    if expected is None:
        assert findings == []
        return
    path, words = expected
    assert [f.path for f in findings] == [path], findings
    assert words in findings[0].message, findings[0].message
    if "allow_host_namespaces" in words or "Docker socket" in words:
        # allowed by the host policy, and only by it
        assert [f for f in validate(_spec(**fragment), policy=ALLOW_ALL) if not f.warning] == []
    if "is a path" in words or "not a name" in words or "never mountable" in words:
        # no policy makes a path a name, or .git mountable
        assert [f for f in validate(_spec(**fragment), policy=ALLOW_ALL) if not f.warning]


def test_a_mount_holding_the_docker_socket_needs_allow_docker_socket() -> None:
    spec = _spec(service={"volumes": ["/var/run:/r"]})
    findings = validate(spec, policy=HostPolicy(allow_bind_mounts=("/var",)))
    assert [f.message for f in findings] == [
        "bind mount of /var/run contains the Docker socket: refused (host policy: "
        "allow_docker_socket)"]
    assert validate(spec, policy=HostPolicy(allow_bind_mounts=("/var",),
                                            allow_docker_socket=True)) == []


def test_project_name_is_never_a_path() -> None:
    for bad in ("../x", "/", "a/b", "Shop"):
        with pytest.raises(ValueError):
            _spec(project=bad)


# --- keyed spec fingerprint --------------------------------------------------------------------

ENV_SPEC = """\
project: shop
services:
  web:
    tier: core
    image: web:1
    env_file: [web.env]
"""
SECRET = "hunter2-but-longer-Zq8"


def _unkeyed(loaded: loading.LoadedSpec) -> str:
    """The release's spec fingerprint: sha256 over spec digests and env contents."""
    h = hashlib.sha256(loaded.digest.encode())
    for service in sorted(loaded.env_files):
        for env in loaded.env_files[service]:
            content = "\n".join(f"{k}={v.value}" for k, v in sorted(env.values.items()))
            h.update(f"{env.path}\0{env.readable}\0{content}".encode())
    h.update(",".join(loaded.profiles).encode())
    return h.hexdigest()[:12]


def test_spec_fingerprint_is_keyed_with_the_host_key(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(ENV_SPEC)
    (tmp_path / "web.env").write_text(f"WEB_PASSWORD={SECRET}\n")
    (tmp_path / "web.env").chmod(0o600)
    one = load(tmp_path, key=b"1" * 32)
    two = load(tmp_path, key=b"2" * 32)
    assert one.fingerprint != two.fingerprint
    assert one.fingerprint == load(tmp_path, key=b"1" * 32).fingerprint  # stable per key
    unkeyed = {_unkeyed(one), hashlib.sha256(f"WEB_PASSWORD={SECRET}".encode()).hexdigest(),
               hashlib.sha256(SECRET.encode()).hexdigest()}
    for shown in (one.fingerprint, two.fingerprint, load(tmp_path).fingerprint):
        assert not any(shown in u or u[:12] in shown for u in unkeyed)
    # a changed secret is still a changed spec
    (tmp_path / "web.env").write_text(f"WEB_PASSWORD={SECRET}-2\n")
    assert load(tmp_path, key=b"1" * 32).fingerprint != one.fingerprint


# --- .git/HEAD ---------------------------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("head", "files", "expected"), [
    (f"{SHA}\n", {}, SHA),
    ("ref: refs/heads/main\n", {"refs/heads/main": f"{SHA}\n"}, SHA),
    ("ref: refs/heads/main\n", {"packed-refs": f"# pack\n{SHA} refs/heads/main\n"}, SHA),
    ("ref: ../../../../../../../../etc/hostname\n", {}, None),
    ("ref: /etc/hostname\n", {}, None),
    ("ref: refs/../../outside\n", {}, None),
    ("ref: refs/heads/main\n", {"refs/heads/main": "\x1b[31mnot a sha\n"}, None),
    ("\x1b]0;pwned\x07\n", {}, None),
])
def test_git_head_is_confined(tmp_path: Path, head: str, files: dict[str, str],
                              expected: str | None) -> None:
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text(head)
    for name, text in files.items():
        (git / name).parent.mkdir(parents=True, exist_ok=True)
        (git / name).write_text(text)
    (tmp_path / "outside").write_text(f"{SHA}\n")
    spec = tmp_path / "spec"
    spec.mkdir()
    assert loading._git_revision(spec) == expected


def test_git_ref_symlinked_out_of_the_git_dir_is_not_read(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "elsewhere").write_text(f"{SHA}\n")
    (git / "refs" / "heads" / "main").symlink_to(tmp_path / "elsewhere")
    assert loading._git_revision(tmp_path) is None


# --- bounded digests ---------------------------------------------------------------------------


def test_digest_budget_is_shared_and_refuses_beyond(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "b").write_bytes(b"y" * 1000)
    budget = [1500]
    assert loading._digest_tree(tmp_path / "a", budget)[1] is None
    assert budget == [500]
    digest, problem = loading._digest_tree(tmp_path / "b", budget)
    assert digest == "" and problem is not None and "to fingerprint: refused" in problem


def test_digest_never_opens_special_files_and_hashes_links_as_text(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.conf").write_text("a")
    (conf / "link").symlink_to("/dev/zero")  # read whole, this would never end
    digest, problem = loading._digest_tree(conf, [1 << 20])
    assert problem is None and digest
    os.mkfifo(conf / "pipe")
    digest, problem = loading._digest_tree(conf, [1 << 20])
    assert digest == "" and problem is not None and "pipe, which is a FIFO" in problem


def test_read_regular_refuses_links_fifos_and_big_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    assert hostfiles.read_regular(tmp_path / "f", limit=5) == b"12345"
    with pytest.raises(hostfiles.Refused, match="larger than 4 bytes"):
        hostfiles.read_regular(tmp_path / "f", limit=4)
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(hostfiles.Refused, match="is a symlink"):
        hostfiles.read_regular(tmp_path / "l", limit=10)
    os.mkfifo(tmp_path / "p")
    with pytest.raises(hostfiles.Refused, match="is a FIFO"):
        hostfiles.read_regular(tmp_path / "p", limit=10)


# --- state dir ---------------------------------------------------------------------------------


def test_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o777)
    refused = "mode 0777: it must not be group- or world-writable"
    with pytest.raises(StateError, match=refused), State(root).lock():
        pass
    with pytest.raises(StateError, match="world-writable"):
        read_key(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"), State(root).lock():
        pass


def test_lock_and_state_files_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / "lock").symlink_to(victim)
    with pytest.raises(StateError, match="a symlink: refused"), State(root).lock():
        pass
    assert victim.read_text() == "precious\n"
    (root / "lock").unlink()
    (root / "history.jsonl").symlink_to(victim)
    with pytest.raises(StateError, match="is a symlink"):
        State(root).history()
    (root / "host.key").symlink_to(victim)
    with pytest.raises(StateError, match="is a symlink"):
        read_key(root)
    with State(root).lock():  # the real thing still works
        pass
