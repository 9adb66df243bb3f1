"""The one YAML reader of the spec loader and the compose importer: hostile text ends in a
clean, located error, never in a crash, a hang or a blown memory budget.

Every document is first walked as a stream of parser events (the event parser keeps its own
stack: it neither recurses nor builds anything) and refused when it nests deeper than
`MAX_DEPTH`, holds more than `MAX_ALIASES` aliases, or would expand (aliases and merge keys
counted at their full size, scalars by their bytes) to more than `MAX_NODES` values or
`MAX_TEXT_BYTES` of text. Only a document within the caps is composed — by the C loader (fast,
no key lines) or by the round-trip loader (with the line of every key) — and converted to
`Located` nodes: keys become strings, and two keys that collide after that conversion (`1` and
`"1"`) are an error. A `Budget` carries the node and text caps over several files (one spec
directory, one import). Errors are `YamlRefused` with file, line and key path; they quote no
value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, merge_attrib
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
)

from reconciler.hostfiles import Refused, read_regular_file

MAX_FILE_BYTES = 1024 * 1024  # one file
MAX_DEPTH = 32  # nested mappings/sequences
MAX_ALIASES = 1000  # alias events in one file
MAX_NODES = 200_000  # values after alias expansion (per Budget)
MAX_TEXT_BYTES = 16 * 1024 * 1024  # scalar text after alias expansion (per Budget)

KeyPath = tuple[str | int, ...]


@dataclass(slots=True)
class Located:
    """A YAML value and where it was written (a mapping entry: the line of its key)."""

    value: Any  # dict[str, Located] | list[Located] | str | int | float | bool | None
    file: str
    line: int | None
    source: str | None = None  # the text as written, when the importer interpolated it


class YamlRefused(Exception):
    """The text is not YAML we accept; `line` is 1-based (None: the whole file)."""

    def __init__(self, file: str, line: int | None, message: str, path: KeyPath = ()) -> None:
        self.file, self.line, self.message, self.path = file, line, message, path
        super().__init__(message)


class _Fallback(Exception):
    """The C parser failed: the round-trip parser decides (and locates the error)."""


@dataclass(slots=True)
class Budget:
    """Node and text caps shared by every file read with it (after alias expansion)."""

    nodes: int = MAX_NODES
    text: int = MAX_TEXT_BYTES


def read_text(path: str, name: str, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file (no symlink, FIFO or device; at most `limit` bytes) as UTF-8 text."""
    try:
        data = read_regular_file(path, limit)
    except Refused as exc:
        raise YamlRefused(name, None, exc.reason) from None
    return decode(data, name)


def decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlRefused(name, None, "not UTF-8 text") from None


def parse(text: str, name: str, *, lines: bool = True,
          budget: Budget | None = None) -> Located | None:
    """One YAML document (None when the file holds none). `lines=False` takes the C loader
    and records no lines; its errors are decided (and located) by the round-trip parser."""
    budget = budget if budget is not None else Budget()
    if len(text) > MAX_FILE_BYTES:
        raise YamlRefused(name, None, f"file is larger than {MAX_FILE_BYTES} bytes")
    if not lines:
        try:
            return _parse(text, name, budget, pure=False)
        except _Fallback:
            pass
    return _parse(text, name, budget, pure=True)


def _parse(text: str, name: str, budget: Budget, *, pure: bool) -> Located | None:
    spent = Budget(budget.nodes, budget.text)
    try:
        _prescan(_yaml(pure), text, name, spent)
        with warnings.catch_warnings():  # a redefined anchor is legal YAML: the last one wins
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            docs = [d for d in _yaml(pure).load_all(text) if d is not None]
    except YamlRefused:
        raise
    except MarkedYAMLError as exc:
        if not pure:
            raise _Fallback from None
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise YamlRefused(name, line, message.split(" with value")[0][:200]) from None
    except YAMLError as exc:
        if not pure:
            raise _Fallback from None
        raise YamlRefused(name, None,
                          " ".join(str(exc).split()).split(" with value")[0][:200]) from None
    except Exception as exc:
        if not pure:
            raise _Fallback from None
        raise YamlRefused(name, None, f"invalid YAML (the parser failed: "
                                      f"{type(exc).__name__})") from None
    if len(docs) > 1:
        raise YamlRefused(name, None, "one YAML document per file")
    try:
        root = _Converter(name).convert(docs[0], 1 if pure else None, ()) if docs else None
    except YamlRefused:
        if not pure:
            raise _Fallback from None  # the round-trip parser knows the line
        raise
    budget.nodes, budget.text = spent.nodes, spent.text
    return root


def _yaml(pure: bool) -> YAML:
    """YAML 1.2, duplicate keys rejected: round-trip (key lines) or the C safe loader."""
    yaml = YAML(typ="rt" if pure else "safe", pure=pure)
    yaml.allow_duplicate_keys = False
    return yaml


@dataclass(slots=True)
class _Frame:
    anchor: str | None
    nodes: int  # expanded totals when the collection started
    text: int
    mapping: bool
    entries: int = 0  # events seen directly inside (a mapping: keys and values)
    key: str | int = 0  # the key (mapping) or index (sequence) of the current entry


def _prescan(yaml: YAML, text: str, name: str, budget: Budget) -> None:
    """Walk the events once; refuse before anything is composed. Expanded sizes: every value
    counts 1 node (+ its bytes for a scalar); an alias counts the whole anchored value."""
    aliases = nodes = text_bytes = 0
    anchors: dict[str, tuple[int, int]] = {}
    frames: list[_Frame] = []

    def refuse(line: int | None, message: str) -> YamlRefused:
        return YamlRefused(name, line, message, tuple(f.key for f in frames))

    def enter(event: Any, line: int | None, n: int, t: int) -> None:
        """One node (scalar, alias or collection start) inside the current collection."""
        nonlocal nodes, text_bytes
        if frames:
            frame = frames[-1]
            if frame.mapping:
                if frame.entries % 2 == 0:
                    frame.key = str(getattr(event, "value", None) or "?")[:64]
            else:
                frame.key = frame.entries
            frame.entries += 1
        nodes += n
        text_bytes += t
        if nodes > budget.nodes:
            raise refuse(line, f"more than {MAX_NODES} values after expanding aliases "
                               "(YAML bomb?)")
        if text_bytes > budget.text:
            raise refuse(line, f"more than {MAX_TEXT_BYTES} bytes of text after expanding "
                               "aliases (YAML bomb?)")

    for event in yaml.parse(text):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, DocumentStartEvent):
            anchors.clear()
        elif isinstance(event, ScalarEvent):
            size = len(event.value.encode("utf-8", "surrogatepass"))
            enter(event, line, 1, size)
            if event.anchor:
                anchors[event.anchor] = (1, size)
        elif isinstance(event, CollectionStartEvent):
            n0, t0 = nodes, text_bytes
            enter(event, line, 1, 0)
            if len(frames) >= MAX_DEPTH:
                raise refuse(line, f"nesting deeper than {MAX_DEPTH} levels")
            frames.append(_Frame(event.anchor, n0, t0, isinstance(event, MappingStartEvent)))
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            frame = frames.pop()
            if frame.anchor:
                anchors[frame.anchor] = (nodes - frame.nodes, text_bytes - frame.text)
        elif isinstance(event, AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise refuse(line, f"more than {MAX_ALIASES} aliases (YAML bomb?)")
            if any(frame.anchor == event.anchor for frame in frames):
                raise refuse(line, f"alias *{event.anchor} refers to a value that contains "
                                   "it (recursive)")
            n, t = anchors.get(event.anchor or "", (1, 0))
            enter(event, line, n, t)
    budget.nodes -= nodes
    budget.text -= text_bytes


class _Converter:
    """ruamel nodes (round-trip or plain) -> `Located`, keys as strings, lines of keys."""

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, node: Any, line: int | None, path: KeyPath, depth: int = 0) -> Located:
        if depth > MAX_DEPTH:  # a recursive structure the prescan did not see
            raise YamlRefused(self.name, line, f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            out: dict[str, Located] = {}
            for key, value in node.items():
                kline = _key_line(node, key, line)
                if key is None or not isinstance(key, str | int | float | bool):
                    raise YamlRefused(self.name, kline, "mapping keys must be strings", path)
                skey = str(key).lower() if isinstance(key, bool) else str(key)
                if skey in out:
                    raise YamlRefused(self.name, kline, f"key {skey!r} is written twice (as "
                                      "different YAML types that read as the same text)",
                                      (*path, skey))
                out[skey] = self.convert(value, kline, (*path, skey), depth + 1)
            return Located(out, self.name, line)
        if isinstance(node, list):
            items = []
            for i, value in enumerate(node):
                iline = line
                if isinstance(node, CommentedSeq):
                    try:
                        iline = int(node.lc.item(i)[0]) + 1
                    except (KeyError, TypeError, AttributeError, IndexError):
                        iline = line
                items.append(self.convert(value, iline, (*path, i), depth + 1))
            return Located(items, self.name, line)
        if node is None or isinstance(node, bool | int | float):
            return Located(node, self.name, line)
        return Located(str(node), self.name, line)  # strings, timestamps, tagged scalars


def _key_line(node: Any, key: Any, default: int | None) -> int | None:
    if not isinstance(node, CommentedMap):
        return default
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, TypeError, AttributeError):
        pass
    for source in getattr(node, merge_attrib, None) or ():  # `<<` merge keys
        if isinstance(source, tuple):
            source = source[-1]
        if isinstance(source, CommentedMap) and key in source:
            return _key_line(source, key, default)
    return default


def to_plain(node: Located | None) -> Any:
    """Plain data (dicts, lists, scalars) of a `Located` tree."""
    if node is None:
        return None
    if isinstance(node.value, dict):
        return {k: to_plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [to_plain(v) for v in node.value]
    return node.value


def lines_of(node: Located, path: KeyPath = ()) -> dict[KeyPath, int]:
    """The line of every key path in a `Located` tree (entries without a line left out)."""
    out: dict[KeyPath, int] = {}
    stack: list[tuple[KeyPath, Located]] = [(path, node)]
    while stack:
        here, item = stack.pop()
        if item.line is not None:
            out.setdefault(here, item.line)
        if isinstance(item.value, dict):
            stack.extend(((*here, k), v) for k, v in item.value.items())
        elif isinstance(item.value, list):
            stack.extend(((*here, i), v) for i, v in enumerate(item.value))
    return out
