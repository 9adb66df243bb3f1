"""Compose's `${VAR}` interpolation, and which interpolated values are secrets.

Every scalar that interpolation changed keeps the text it was written as (`Y.source`), so the
importer knows which values came from the environment or the `.env` file. Error messages quote
only compose text as written (`${X:?message}`: the message is not expanded), never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler.importer.model import Remark, Y, err

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"(?<!\$)(?:\$\$)*\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# a variable or environment name that usually holds a secret
_SECRET_NAME = re.compile(
    r"PASS|PWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|AUTH|API_?KEY|ACCESS_?KEY|(^|_)KEY($|_)|"
    r"(^|_)DSN($|_)|SALT|COOKIE|SESSION|SIGNING|ENCRYPT|CERT", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def references(source: str) -> list[str]:
    """The variable names a compose text refers to (`$$` escapes skipped)."""
    return _REFERENCE.findall(source)


def secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_value(y: Y, environ: Mapping[str, str], key: str = "") -> bool:
    """An interpolated value that took something from the environment or `.env` and looks
    like a secret: it refers to a secret-looking variable, is assigned to a secret-looking
    key, or holds a URL with a password. (Defaults written in the compose file are not.)"""
    if y.source is None:
        return False
    names = references(y.source)
    if not any(n in environ for n in names):
        return False
    if (key and secret_name(key)) or any(secret_name(n) for n in names if n in environ):
        return True
    return isinstance(y.value, str) and bool(_URL_PASSWORD.search(y.value))


class Interpolator:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.unset: dict[str, tuple[str, int | None, tuple[str | int, ...]]] = {}
        self.errors: list[Remark] = []

    def walk(self, y: Y, path: tuple[str | int, ...]) -> None:
        stack: list[tuple[Y, tuple[str | int, ...]]] = [(y, path)]
        while stack:
            node, here = stack.pop()
            if isinstance(node.value, dict):
                stack.extend((v, (*here, k)) for k, v in reversed(node.value.items()))
            elif isinstance(node.value, list):
                stack.extend((v, (*here, i)) for i, v in reversed(list(enumerate(node.value))))
            elif isinstance(node.value, str) and "$" in node.value:
                try:
                    expanded = self.expand(node.value, node, here)
                except ValueError as exc:
                    self.errors.append(err(node.file, node.line, here, str(exc)))
                    continue
                if expanded != node.value or references(node.value):
                    node.source = node.value
                node.value = expanded

    def expand(self, text: str, y: Y, path: tuple[str | int, ...]) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch != "$":
                out.append(ch)
                i += 1
                continue
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt == "{":
                end, depth = i + 2, 1
                while end < len(text) and depth:
                    if text[end] == "{":
                        depth += 1
                    elif text[end] == "}":
                        depth -= 1
                    end += 1
                if depth:
                    raise ValueError("invalid interpolation format: unbalanced braces")
                out.append(self.braced(text[i + 2:end - 1], y, path))
                i = end
            else:
                match = _NAME.match(text, i + 1)
                if match is None:
                    out.append("$")  # compose keeps a lone `$`
                    i += 1
                else:
                    out.append(self.lookup(match.group(0), y, path) or "")
                    i = match.end()
        return "".join(out)

    def lookup(self, name: str, y: Y, path: tuple[str | int, ...]) -> str | None:
        if name in self.environ:
            return self.environ[name]
        self.unset.setdefault(name, (y.file, y.line, path))
        return None

    def braced(self, body: str, y: Y, path: tuple[str | int, ...]) -> str:
        match = _NAME.match(body)
        if match is None:
            raise ValueError(f"invalid interpolation format ${{{body[:60]}}}")
        name, rest = match.group(0), body[match.end():]
        value = self.environ.get(name)
        if not rest:
            return self.lookup(name, y, path) or ""
        for op in (":-", ":?", ":+", "-", "?", "+"):
            if rest.startswith(op):
                word = rest[len(op):]
                break
        else:
            raise ValueError(f"invalid interpolation format ${{{body[:60]}}}")
        empty = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return self.expand(word, y, path) if empty else str(value)
        if op in (":+", "+"):
            return "" if empty else self.expand(word, y, path)
        if empty:  # the message as written: expanding it could print a secret
            message = " ".join(word.split()) or f"{name} is required"
            raise ValueError(f"required variable {name} is missing a value: {message}")
        return str(value)
