"""Env files: dotenv parsing and the secret-hygiene checks of `reconciler validate`.

Pure: works on text and file facts the loader gathered. Findings name file and key, never a
value; `Secret` values mask themselves in repr/str so a stray log line cannot leak them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
JWT_KEY = re.compile(r"JWT", re.I)
DB_PASSWORD_KEY = re.compile(
    r"(POSTGRES|PG|MYSQL|MARIADB|MONGO|DB|DATABASE|REDIS|RABBITMQ|AMQP).*(PASSWORD|PASS)$", re.I
)
MIN_JWT_LENGTH = 32

WEAK_PASSWORDS: frozenset[str] = frozenset({
    "", "password", "passw0rd", "p@ssw0rd", "password1", "password123", "secret", "changeme",
    "change-me", "changeit", "admin", "admin123", "administrator", "root", "toor", "postgres",
    "mysql", "mongo", "mongodb", "redis", "rabbitmq", "guest", "test", "testing", "default",
    "example", "letmein", "qwerty", "123456", "1234567", "12345678", "123456789", "1234567890",
    "111111", "000000", "abc123", "pass", "user", "demo", "minioadmin", "grafana", "kafka",
    "your-secret", "your_secret", "yoursecret", "mysecret", "supersecret", "secretkey",
    "secret_key", "jwt_secret", "jwtsecret", "dev", "development", "prod", "production",
    "metro", "welcome", "welcome1", "master", "dragon", "sunshine", "iloveyou", "trustno1",
})


class Secret(str):
    """A str whose repr/str never show the value (format() still yields it for Docker)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('(sensitive)')"

    def __str__(self) -> str:
        return "(sensitive)"

    @property
    def value(self) -> str:
        """The secret itself (for Docker and for redaction only)."""
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class EnvFile:
    """What the loader found at one env-file path. `values` is empty when not readable."""

    path: str  # absolute
    declared: str  # as written in the spec
    readable: bool
    problem: str | None = None  # why it is not readable / not acceptable as a file
    is_symlink: bool = False
    mode: int | None = None  # st_mode & 0o777
    values: Mapping[str, Secret] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict)  # key -> line number


@dataclass(frozen=True, slots=True)
class EnvFinding:
    """One finding of the env-file checks: file, key and what is wrong (no value)."""

    path: str
    line: int | None
    key: str | None
    message: str


def parse_dotenv(text: str) -> tuple[dict[str, Secret], dict[str, int], list[tuple[int, str]]]:
    """Parse `KEY=VALUE` lines (comments, `export`, quotes). Returns values, lines, errors."""
    values: dict[str, Secret] = {}
    lines: dict[str, int] = {}
    errors: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            errors.append((number, "expected KEY=VALUE"))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = Secret(value)
        lines[key] = number
    return values, lines, errors


def check_env_files(by_service: Mapping[str, Iterable[EnvFile]]) -> list[EnvFinding]:
    """The checks of the old validate-prod-env.sh, over every service's env files."""
    out: list[EnvFinding] = []
    checked: set[str] = set()
    db_passwords: dict[str, dict[str, tuple[str, EnvFile]]] = {}  # value -> key -> first use
    for service in sorted(by_service):
        for env in by_service[service]:
            if not env.readable:
                if env.is_symlink and env.path not in checked:  # never followed
                    checked.add(env.path)
                    out.append(EnvFinding(env.path, None, None,
                                          "is a symlink: env files must be regular files"))
                elif not env.is_symlink:
                    out.append(EnvFinding(env.path, None, None, f"env file of {service}: "
                                                                f"{env.problem or 'not readable'}"))
                continue
            for key, value in sorted(env.values.items()):
                if DB_PASSWORD_KEY.search(key):
                    db_passwords.setdefault(value.value, {}).setdefault(key, (service, env))
            if env.path in checked:
                continue
            checked.add(env.path)
            if env.is_symlink:
                out.append(EnvFinding(env.path, None, None,
                                      "is a symlink: env files must be regular files"))
            if env.mode is not None and env.mode & 0o077:
                out.append(EnvFinding(env.path, None, None,
                                      f"mode {env.mode:04o} is too open: use 0600 or stricter"))
            for key, value in sorted(env.values.items()):
                line = env.lines.get(key)
                plain = value.value
                if SECRET_KEY.search(key) and plain.strip().lower() in WEAK_PASSWORDS:
                    out.append(EnvFinding(env.path, line, key,
                                          "empty, default or weak value: set a strong secret"))
                elif JWT_KEY.search(key) and SECRET_KEY.search(key) and (
                        len(plain) < MIN_JWT_LENGTH):
                    out.append(EnvFinding(env.path, line, key,
                                          f"JWT secret shorter than {MIN_JWT_LENGTH} characters"))
    # One database user, one password: the same value under two different password keys
    # (AUTH_DB_PASSWORD == ORDERS_DB_PASSWORD) is a shared credential. A server and its
    # client sharing one env file (and so one key) is the normal case and is not flagged.
    for users in db_passwords.values():
        if len(users) > 1:
            keys = sorted(users)
            service, env = users[keys[-1]]
            out.append(EnvFinding(env.path, env.lines.get(keys[-1]), keys[-1],
                                  "database password is the same as " + ", ".join(
                                      f"{k} ({users[k][0]})" for k in keys[:-1])
                                  + ": use one password per database user"))
    return out


SENSITIVE = "(sensitive)"
MIN_REDACTED_LENGTH = 3  # shorter values are too common in text to hide


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (longest first, so overlapping ones never leave a
    tail) replaced by "(sensitive)". The one redaction of the package: engine error messages,
    container log tails."""
    for secret in sorted({s.value if isinstance(s, Secret) else s for s in secrets},
                         key=len, reverse=True):
        if len(secret) >= MIN_REDACTED_LENGTH:
            text = text.replace(secret, SENSITIVE)
    return text
