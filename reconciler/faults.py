"""Named crash points for fault-injection tests: the process kills itself (SIGKILL) there.

`crash_point(name)` is a no-op unless the environment variable `RECONCILER_CRASH_AT` names
it: `<name>` (first hit), `<name>@<n>` (n-th hit), optionally prefixed with a phase,
`revert:<name>[@<n>]`, to count only hits while the controller converges back to last-good
(`phase()` is set by the controller). Points sit before and after each side effect of the
executor and of the state writes, so a test can prove that every state a crash leaves behind
is one the next pass finishes. This module decides nothing and imports nothing of ours; with
the variable unset it costs one dict lookup per call.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

ENV = "RECONCILER_CRASH_AT"
PHASES = ("forward", "revert")

#: Every crash point, in the order a cold start and a rollout meet them. `<x>:before` runs
#: just before the side effect is requested, `<x>:after` just after it completed.
SIDE_EFFECTS = (
    "network-create", "volume-create", "container-create", "container-start",
    "container-stop", "container-remove", "edge-write", "edge-reload",
    "state-key", "state-quarantine", "state-last-good", "state-history",
)
POINTS = tuple(f"{effect}:{when}" for effect in SIDE_EFFECTS for when in ("before", "after"))

_hits: dict[tuple[str, str], int] = {}
_phase = ["forward"]


def phase() -> str:
    return _phase[0]


@contextlib.contextmanager
def in_phase(name: str) -> Iterator[None]:
    """Count crash-point hits under `name` (e.g. "revert") while the block runs."""
    previous, _phase[0] = _phase[0], name
    try:
        yield
    finally:
        _phase[0] = previous


def parse(value: str) -> tuple[str | None, str, int]:
    """`[phase:]name[@n]` -> (phase or None, name, n). Raises ValueError when malformed."""
    where: str | None = None
    head, _, nth = value.strip().partition("@")
    first, sep, rest = head.partition(":")
    if sep and first in PHASES:
        where, head = first, rest
    if head not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {head!r}")
    n = int(nth) if nth else 1
    if n < 1:
        raise ValueError(f"{ENV}: the hit count must be >= 1")
    return where, head, n


def crash_point(name: str) -> None:
    armed = os.environ.get(ENV)
    if not armed:
        return
    where, target, n = parse(armed)
    if target != name or (where is not None and where != _phase[0]):
        return
    key = (where or "", name)
    _hits[key] = _hits.get(key, 0) + 1
    if _hits[key] == n:
        os.kill(os.getpid(), signal.SIGKILL)
