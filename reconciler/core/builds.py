"""Images built from the spec checkout (`build:`): what is built, under which name, and which
files of the context are sent (`.dockerignore`). Pure: the shell (`reconciler.buildctx`)
walks and hashes the files; this module only decides on names and relative paths.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# the name the Dockerfile gets in the context archive when it lives outside the context
OUTSIDE_DOCKERFILE = ".reconciler.Dockerfile"
DIGEST_LENGTH = 16  # hex digits of the content hash in the image tag


@dataclass(frozen=True, slots=True)
class BuildContext:
    """One service's build, resolved on the host by the loader: real paths inside the spec
    checkout, the content digest of everything sent, and the image names."""

    service: str
    context: str  # real path of the context directory
    dockerfile: str  # real path of the Dockerfile
    dockerfile_name: str  # its name inside the context archive
    args: tuple[tuple[str, str], ...]  # literal build args from the spec, sorted
    target: str | None
    digest: str  # sha256 of the files sent + Dockerfile + args + target
    ref: str  # the image containers run: `<project>-<service>:<digest>`
    tags: tuple[str, ...] = field(default=())  # more names for it (the service's `image:`)
    roots: tuple[str, ...] = ()  # where the context's symlinks may point (the checkout)
    forbidden: tuple[str, ...] = ()  # where they may not (its .git)
    withheld: tuple[str, ...] = ()  # real paths never sent (the spec's env files)
    files: tuple[str, ...] = ()  # host paths of the files and links sent (kept with last-good)


def image_ref(project: str, service: str, digest: str) -> str:
    """`<project>-<service>:<digest[:16]>`: a changed context is a changed name (and so a
    changed fingerprint). Lowercased, with what Docker refuses in a repository name
    replaced by `-`."""
    repo = re.sub(r"[^a-z0-9._-]+", "-", f"{project}-{service}".lower()).strip("._-")
    return f"{repo or 'build'}:{digest[:DIGEST_LENGTH]}"


def finish_digest(files_digest: str, dockerfile_name: str, dockerfile: bytes,
                  args: Mapping[str, str], target: str | None) -> str:
    """The build's identity: the context's files, the Dockerfile (name and bytes), the
    build args and the target."""
    h = hashlib.sha256()
    h.update(b"reconciler-build-v1\0" + files_digest.encode() + b"\0")
    h.update(dockerfile_name.encode() + b"\0" + hashlib.sha256(dockerfile).digest())
    for key in sorted(args):
        h.update(f"\0arg {key}={args[key]}".encode())
    h.update(f"\0target {target or ''}".encode())
    return h.hexdigest()


# --- .dockerignore ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """One `.dockerignore` line: a pattern (`!` lines are exceptions)."""

    pattern: str
    exclude: bool
    regex: re.Pattern[str]


def _translate(pattern: str) -> str:
    """A Go `filepath.Match` pattern with Docker's `**` as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/`: any number of directories, or none
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1:end]
                negate = body.startswith(("!", "^"))
                body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[")
                out += "[" + ("^" if negate else "") + body + "]"
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return out


def parse_dockerignore(text: str) -> tuple[IgnoreRule, ...]:
    """The rules of a `.dockerignore` file: comments and blank lines skipped, each pattern
    cleaned like Docker does (leading `/` and `./` dropped, `a/../b` folded)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        if not exclude:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        rules.append(IgnoreRule(line, exclude, re.compile(_translate(line), re.DOTALL)))
    return tuple(rules)


def ignored(rules: Iterable[IgnoreRule], path: str) -> bool:
    """Whether `path` (relative to the context, `/`-separated) is left out: the last rule
    that matches the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for rule in rules:
        if any(rule.regex.fullmatch(p) for p in prefixes):
            out = rule.exclude
    return out


def may_hold_exceptions(rules: Iterable[IgnoreRule], directory: str) -> bool:
    """Whether an exception (`!` rule) could bring back something below an ignored
    `directory` (then the walk must still look inside it)."""
    for rule in rules:
        if rule.exclude:
            continue
        if "**" in rule.pattern or rule.pattern.startswith(directory + "/"):
            return True
        head = rule.pattern.split("/")[: directory.count("/") + 1]
        if re.fullmatch(_translate("/".join(head)), directory):
            return True
    return False
