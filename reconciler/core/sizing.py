"""Does a spec fit the host's memory? The sum of the memory limits of every enabled replica,
plus the surge of a start-first rollout (new containers run next to the old ones until they
are healthy), compared with the host's memory. A job (`kind: job`) is not resident: it runs
inside its tier's rollout, so its limit counts in that tier's surge, not in the sum.

Pure: the caller passes the host's memory in (the CLI reads /proc/meminfo); no I/O, no Docker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.core.specs import Finding, Spec, UpdateOrder, active_services, resolved_order

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class MemoryFit:
    """Memory a spec needs on one host: its limits, the worst start-first surge, the host."""

    limits: int  # bytes: memory limit x replicas, summed over the enabled services
    # bytes: the largest start-first surge of one tier (its services roll in parallel), with
    # the tier's jobs
    surge: int
    surge_tier: str | None
    surge_services: tuple[str, ...]
    unlimited: tuple[str, ...]  # enabled services without a memory limit (not counted)
    host: int  # bytes

    @property
    def peak(self) -> int:
        """Bytes in use at the worst moment of a rollout: every limit plus the surge."""
        return self.limits + self.surge

    @property
    def fits(self) -> bool:
        """The peak fits into the host's memory."""
        return self.peak <= self.host


def memory_fit(spec: Spec, *, host_memory: int, profiles: Iterable[str] = ()) -> MemoryFit:
    """Limits of the enabled services and the worst start-first surge: within a tier every
    service rolls at the same time, each starting `min(parallelism, replicas)` new replicas
    before it stops old ones; stop-first services never run two generations."""
    services = active_services(spec, profiles)
    limits = 0
    unlimited = []
    surges: dict[str, list[tuple[str, int]]] = {}
    for name, svc in sorted(services.items()):
        memory = svc.resources.memory
        if not memory:
            unlimited.append(name)
            continue
        if svc.job:  # runs during its tier's rollout, next to what that tier starts
            surges.setdefault(svc.tier or "", []).append((name, memory))
            continue
        limits += memory * svc.replicas
        if resolved_order(spec, svc) is UpdateOrder.START_FIRST and svc.replicas > 0:
            extra = memory * min(svc.update.parallelism, svc.replicas)
            surges.setdefault(svc.tier or "", []).append((name, extra))
    surge, tier, names = 0, None, tuple[str, ...]()
    for tier_name, items in sorted(surges.items()):
        total = sum(extra for _, extra in items)
        if total > surge:
            surge, tier, names = total, tier_name, tuple(n for n, _ in items)
    return MemoryFit(limits=limits, surge=surge, surge_tier=tier, surge_services=names,
                     unlimited=tuple(unlimited), host=host_memory)


def gib(value: int) -> str:
    """Bytes as GiB with one decimal, as the warnings show them."""
    return f"{value / GIB:.1f} GiB"


def memory_findings(fit: MemoryFit) -> list[Finding]:
    """Warnings (never errors): the peak does not fit, or services have no limit."""
    out = []
    if not fit.fits:
        where = (f" (tier {fit.surge_tier}: {', '.join(fit.surge_services)})"
                 if fit.surge_tier else "")
        out.append(Finding(("services",), (
            f"memory limits {gib(fit.limits)} + start-first surge {gib(fit.surge)}{where} = "
            f"{gib(fit.peak)} exceed the host's memory {gib(fit.host)}: lower limits, use "
            "stop-first or a larger host (README: Sizing)"), warning=True))
    if fit.unlimited:
        out.append(Finding(("services",), (
            f"no memory limit (not counted in the sizing check): {', '.join(fit.unlimited)}"),
            warning=True))
    return out
