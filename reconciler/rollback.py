"""Which spec to converge to. Pure: fingerprints in, a choice out.

Never chooses a quarantined candidate, and never reverts to a spec identical to the one that
just failed (that would retry the bad rollout under another name).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum


class Target(StrEnum):
    CANDIDATE = "candidate"
    LAST_GOOD = "last-good"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Choice:
    target: Target
    reason: str


def choose(candidate: str, *, last_good: str | None, quarantined: Collection[str]) -> Choice:
    """The desired state for a pass: the candidate unless it is quarantined."""
    if candidate not in quarantined:
        return Choice(Target.CANDIDATE, "candidate spec")
    if last_good is not None and last_good != candidate:
        return Choice(Target.LAST_GOOD, f"candidate {candidate} is quarantined: holding last-good")
    return Choice(Target.NOTHING, f"candidate {candidate} is quarantined and there is no other "
                                  "good spec: leaving the host as it is")


def revert_to(failed: str, *, last_good: str | None) -> str | None:
    """After `failed` failed: the fingerprint to go back to, or None (nothing to go back to)."""
    if last_good is None or last_good == failed:
        return None
    return last_good
