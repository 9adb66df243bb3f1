"""Registry credentials for pulls, found where the docker CLI keeps them.

`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`): a `credHelpers` entry for the
image's registry, else `credsStore`, run as `docker-credential-<name> get` with the registry on
stdin; else the `auths` entry (`auth` = base64 user:password, or `username`/`password`, or
`identitytoken`). Shell (reads files, runs the helper); it decides nothing else. A credential is
never logged, printed or put into an error message: errors name the file, the registry or the
helper, never a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HUB = "docker.io"
HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
            "registry-1.docker.io", "https://registry-1.docker.io")
HELPER_TIMEOUT_S = 20.0
MAX_CONFIG_BYTES = 1 << 20

Runner = Callable[..., subprocess.CompletedProcess[str]]


class CredentialError(Exception):
    """The credential configuration cannot be used (the message carries no secret)."""


def registry_of(ref: str) -> str:
    """The registry host of an image reference, as docker decides it (`docker.io` for Hub)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return HUB


def qualified(ref: str) -> str:
    """The reference with its registry spelled out (Hub images as `docker.io/library/x`)."""
    if registry_of(ref) != HUB or ref.startswith("docker.io/"):
        return ref
    return f"{HUB}/{ref}" if "/" in ref else f"{HUB}/library/{ref}"


def config_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _host(key: str) -> str:
    text = key.split("://", 1)[-1]
    return text.split("/", 1)[0]


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CredentialError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CredentialError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{path}: not a JSON object")
    return data


def _keys_for(registry: str) -> tuple[str, ...]:
    return HUB_KEYS if registry == HUB else (registry, f"https://{registry}",
                                             f"http://{registry}")


def _from_helper(helper: str, registry: str, run: Runner,
                 env: Mapping[str, str] | None) -> dict[str, str] | None:
    program = f"docker-credential-{helper}"
    server = HUB_KEYS[0] if registry == HUB else registry
    try:
        proc = run([program, "get"], input=server, capture_output=True, text=True,
                   timeout=HELPER_TIMEOUT_S, check=False,
                   env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise CredentialError(f"credential helper {program} is configured but not "
                              "installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialError(f"credential helper {program} did not answer in "
                              f"{HELPER_TIMEOUT_S:.0f}s") from None
    if proc.returncode != 0:
        return None  # "credentials not found in native keychain": pull anonymously
    try:
        got = json.loads(proc.stdout)
    except ValueError:
        raise CredentialError(f"credential helper {program}: unexpected answer") from None
    user, secret = got.get("Username"), got.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":
        return {"identitytoken": secret}
    return {"username": user, "password": secret}


def _from_auths(entry: object, path: Path, registry: str) -> dict[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return {"identitytoken": entry["identitytoken"]}
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialError(f"{path}: auths entry for {registry} is not base64 "
                                  "user:password") from None
        if not sep:
            raise CredentialError(f"{path}: auths entry for {registry} is not user:password")
        return {"username": user, "password": password}
    name, word = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(word, str) and name:
        return {"username": name, "password": word}
    return None


def credentials_for(ref: str, *, env: Mapping[str, str] | None = None,
                    run: Runner = subprocess.run) -> dict[str, str] | None:
    """The X-Registry-Auth fields for pulling `ref` (with `serveraddress`), or None."""
    registry = registry_of(ref)
    path = config_file(env)
    config = _load(path)
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    assert isinstance(helpers, dict)
    helper = next((helpers[k] for k in helpers if _host(k) in map(_host, _keys_for(registry))),
                  None) or config.get("credsStore")
    found: dict[str, str] | None = None
    if isinstance(helper, str) and helper:
        found = _from_helper(helper, registry, run, env)
    if found is None:
        auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
        assert isinstance(auths, dict)
        hosts = set(map(_host, _keys_for(registry)))
        for key, entry in auths.items():
            if _host(str(key)) in hosts and (found := _from_auths(entry, path, registry)):
                break
    if found is None:
        return None
    return {**found, "serveraddress": HUB_KEYS[0] if registry == HUB else registry}
