"""Does an nginx configuration let a second nginx bind next to the first? Pure.

The edge is replaced start-first (the new nginx starts in the same network namespace, held by
the edge's holder container, before the old one quits) only when every socket nginx listens
on is opened with `reuseport`: without it the new nginx cannot bind while the old one
listens. This reads the edge's configuration as mounted from the spec and answers yes only
when every `listen` it can read (and the implicit `*:80` of an http `server` block without
one), grouped by address, carries `reuseport` once per group (nginx takes socket options from
one `listen` of an address). Includes resolve among the mounted files and the reconciler's
own upstreams directory; an include into a directory where images keep their default server
blocks (`sites-enabled/`, `conf.d/`, ...) that the spec does not mount answers no, and so does
a main nginx.conf that is not mounted. Other unmounted includes (a named volume's TLS
snippet) are assumed to listen with reuseport too: if one does not, the new nginx cannot bind,
fails its gate, and the old one, never stopped, keeps serving.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

NGINX_PREFIX = "/etc/nginx"
MAX_DEPTH = 16  # include nesting
MAX_READS = 2000  # files read in all, includes included (a glob fan-out nests exponentially)
MAIN_CONF = "/etc/nginx/nginx.conf"
# where images keep their own `server` blocks (Debian's default site, the official image's
# default.conf, Alpine's http.d)
IMAGE_SERVER_DIRS = ("/etc/nginx/sites-enabled", "/etc/nginx/conf.d", "/etc/nginx/http.d",
                     "/etc/nginx/default.d", "/etc/nginx/vhosts.d")


@dataclass(frozen=True, slots=True)
class Reuse:
    """The answer: `ok` when every listening socket is opened with reuseport."""

    ok: bool
    reason: str  # why not (empty when ok)


def tokens(text: str) -> list[str]:
    """nginx's tokens: words (quotes removed), `;`, `{` and `}`; comments dropped."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in ";{}":
            out.append(c)
            i += 1
        elif c in "\"'":
            j = i + 1
            word = []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                word.append(text[j])
                j += 1
            out.append("".join(word))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}\"'" and not (
                    text[j] == "#" and j == i):
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _address(arg: str) -> str | None:
    """`listen` address as nginx groups it: `*:80`, `[::]:443`, `127.0.0.1:8080`; None for
    a unix socket."""
    if arg.startswith("unix:"):
        return None
    if arg.startswith("["):
        host, _, rest = arg.partition("]")
        port = rest[1:] if rest.startswith(":") else "80"
        return f"{host}]:{port}"
    if arg.isdigit():
        return f"*:{arg}"
    host, sep, port = arg.rpartition(":")
    if not sep:
        return f"{arg}:80"
    return f"{'*' if host in ('*', '0.0.0.0') else host}:{port}"


class _Unknown(Exception):
    pass


def reuseport(files: Mapping[str, str], mounted_dirs: tuple[str, ...] = (),
              own_dirs: tuple[str, ...] = (), *, complete: bool = False) -> Reuse:
    """`files`: container path -> text of each mounted configuration file (the main one at
    /etc/nginx/nginx.conf). `mounted_dirs`: container directories mounted from the spec (an
    include pattern inside one that matches no file matches nothing for sure). `own_dirs`:
    directories the reconciler writes (the upstreams file's), which hold no `server`.
    `complete`: `files` is everything nginx read (`nginx -T`), so an include that matches
    none of them matched nothing."""
    if complete:
        mounted_dirs = ("/",)
    if MAIN_CONF not in files:
        return Reuse(False, f"{MAIN_CONF} is not mounted from the spec (the image's own "
                            "configuration cannot be read)")
    groups: dict[tuple[str, str], bool] = {}
    reads = [MAX_READS]
    try:
        _walk(MAIN_CONF, files, mounted_dirs, own_dirs, groups, [], 0, reads)
    except _Unknown as exc:
        return Reuse(False, str(exc))
    if not groups:
        return Reuse(False, "no `listen` found")
    missing = sorted(f"{ctx} {addr}" for (ctx, addr), reuse in groups.items() if not reuse)
    if missing:
        return Reuse(False, "listen without reuseport: " + ", ".join(missing))
    return Reuse(True, "")


def _walk(path: str, files: Mapping[str, str], mounted_dirs: tuple[str, ...],
          own_dirs: tuple[str, ...], groups: dict[tuple[str, str], bool],
          stack: list[list[str]], depth: int, reads: list[int]) -> None:
    """Read one file's directives with `stack` the enclosing blocks (each: block name, and
    whether a `listen` was seen). `reads[0]`: files left to read."""
    if depth > MAX_DEPTH:
        raise _Unknown(f"include nesting deeper than {MAX_DEPTH}")
    reads[0] -= 1
    if reads[0] < 0:
        raise _Unknown(f"more than {MAX_READS} files read through includes")
    toks = tokens(files[path])
    words: list[str] = []
    for tok in toks:
        if tok == "{":
            stack.append([words[0] if words else "", ""])
            words = []
        elif tok == "}":
            if not stack:
                raise _Unknown(f"{path}: unbalanced braces")
            name, seen = stack.pop()
            parent = stack[-1][0] if stack else ""
            if name == "server" and parent == "http" and not seen:
                groups.setdefault(("http", "*:80"), False)  # nginx's implicit listen
            words = []
        elif tok == ";":
            if words:
                _directive(words, path, files, mounted_dirs, own_dirs, groups, stack, depth,
                           reads)
            words = []
        else:
            words.append(tok)


def _directive(words: list[str], path: str, files: Mapping[str, str],
               mounted_dirs: tuple[str, ...], own_dirs: tuple[str, ...],
               groups: dict[tuple[str, str], bool], stack: list[list[str]],
               depth: int, reads: list[int]) -> None:
    name, args = words[0], words[1:]
    if name == "listen" and args and stack and stack[-1][0] == "server":
        stack[-1][1] = "yes"
        ctx = stack[-2][0] if len(stack) > 1 else ""
        addr = _address(args[0])
        if addr is not None:
            key = (ctx or "http", addr)
            groups[key] = groups.get(key, False) or "reuseport" in args[1:]
    elif name == "include" and args:
        pattern = args[0] if args[0].startswith("/") else posixpath.join(NGINX_PREFIX,
                                                                          args[0])
        pattern = posixpath.normpath(pattern)
        matched = sorted(p for p in files if fnmatch.fnmatchcase(p, pattern))
        for inc in matched:
            _walk(inc, files, mounted_dirs, own_dirs, groups, stack, depth + 1, reads)
        if matched:
            return
        where = posixpath.dirname(pattern)
        if any(where == d or where.startswith(d.rstrip("/") + "/") for d in own_dirs):
            return  # the reconciler's upstreams: upstream blocks only
        if any(d == "/" or where == d or where.startswith(d.rstrip("/") + "/")
               for d in mounted_dirs):
            return  # a mounted directory with no such file: matches nothing
        if any(where == d or where.startswith(d + "/") for d in IMAGE_SERVER_DIRS):
            raise _Unknown(f"include {args[0]}: the image's own server blocks there are not "
                           "mounted from the spec (their `listen`s cannot be read)")
        # anything else that is not mounted (a named volume's snippets, a path the image
        # does not have): assumed to add no listening socket without reuseport; a new nginx
        # that cannot bind fails its gate and the old one keeps serving


DUMP_HEADER = re.compile(r"^# configuration file (/[^\n]*):\n", re.MULTILINE)


def dumped_files(dump: str) -> dict[str, str]:
    """`nginx -T`'s output split into path -> text (each file follows a `# configuration
    file PATH:` line)."""
    out: dict[str, str] = {}
    dump = "\n".join(ln for ln in dump.splitlines() if not ln.startswith("nginx: ")) + "\n"
    marks = list(DUMP_HEADER.finditer(dump))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(dump)
        out[m.group(1)] = dump[m.end():end]
    return out
