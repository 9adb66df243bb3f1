"""The depends_on graph: tiers per service, cycles and the edges proposed to break them.
Pure functions on plain mappings (no compose or YAML types)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.specs import find_cycles


def _depths(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Longest path from the roots (services without dependencies); graph must be acyclic."""
    memo: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in memo:
            return memo[node]
        deps = [d for d in graph.get(node, ()) if d in graph and d not in seen]
        value = 1 + max((depth(d, seen | {node}) for d in deps), default=-1)
        memo[node] = value
        return value

    for node in sorted(graph):
        depth(node, frozenset())
    return memo


@dataclass(frozen=True, slots=True)
class Placement:
    tiers: Mapping[str, str]
    moved: Mapping[str, tuple[str, str, str]]  # service -> (from tier, to tier, because of)


def place(
    graph: Mapping[str, Sequence[str]],
    *,
    tiers: Sequence[str],
    roles: Mapping[str, str],
    fixed: Mapping[str, str],
) -> Placement:
    """Tier per service on an acyclic graph.

    `roles`: service -> 'infrastructure'/'external' for well-known images (first/last tier);
    `fixed`: operator overrides (never moved). Others: services depending only on
    infrastructure (or nothing) go to the first middle tier, each further level of
    dependencies one tier later, capped at the last middle tier. Then every service that is
    not fixed moves up to the latest tier among its dependencies.
    """
    index = {t: i for i, t in enumerate(tiers)}
    last = len(tiers) - 1
    middle = list(range(1, last)) if len(tiers) >= 3 else [min(1, last)]
    level: dict[str, int] = {}  # -1: first tier; len(middle): last tier

    def lvl(node: str, stack: frozenset[str]) -> int:
        if node in level:
            return level[node]
        if node in fixed:
            i = index[fixed[node]]
            value = -1 if i == 0 else (len(middle) if i == last and len(tiers) >= 3
                                       else middle.index(i) if i in middle else 0)
        elif roles.get(node) == "infrastructure":
            value = -1
        elif roles.get(node) == "external":
            value = len(middle)
        else:
            deps = [d for d in graph.get(node, ()) if d in graph and d not in stack]
            value = max((lvl(d, stack | {node}) + 1 for d in deps), default=0)
            value = max(0, min(value, len(middle) - 1))
        level[node] = value
        return value

    result: dict[str, int] = {}
    for node in sorted(graph):
        v = lvl(node, frozenset())
        result[node] = 0 if v < 0 else (last if v >= len(middle) else middle[v])
    # a service is in the same or a later tier than its dependencies
    moved: dict[str, tuple[str, str, str]] = {}
    depth = _depths(graph)
    order = sorted(graph, key=lambda n: (depth.get(n, 0), n))
    for node in order:
        if node in fixed:
            continue
        for dep in graph.get(node, ()):
            if dep in result and result[dep] > result[node]:
                before = moved.get(node, (tiers[result[node]], "", ""))[0]
                result[node] = result[dep]
                moved[node] = (before, tiers[result[node]], dep)
    return Placement({n: tiers[i] for n, i in result.items()}, moved)


def break_cycles(
    graph: Mapping[str, Sequence[str]], roles: Mapping[str, str]
) -> tuple[list[list[str]], list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Every cycle (as reported by `find_cycles`, repeated until none is left) and the edges
    proposed for removal, each with a reason."""
    work = {n: list(d) for n, d in graph.items()}
    cycles_all: list[list[str]] = []
    drops: list[tuple[str, str]] = []
    reasons: dict[tuple[str, str], str] = {}
    for _ in range(len(graph) + 1):
        cycles = find_cycles(work)
        if not cycles:
            break
        in_cycle = {(c[i], c[i + 1]) for c in cycles for i in range(len(c) - 1)}
        acyclic = {n: [d for d in deps if (n, d) not in in_cycle] for n, deps in work.items()}
        depth = _depths(acyclic)
        dependents: dict[str, int] = {}
        for deps in work.values():
            for d in deps:
                dependents[d] = dependents.get(d, 0) + 1
        for cycle in cycles:
            cycles_all.append(cycle)
            edges = [(cycle[i], cycle[i + 1]) for i in range(len(cycle) - 1)]
            if any(e in drops for e in edges):
                continue
            best = min(edges, key=lambda e: _drop_rank(e, roles, depth, dependents))
            drops.append(best)
            reasons[best] = _drop_reason(best, roles, depth)
            work[best[0]] = [d for d in work[best[0]] if d != best[1]]
    return cycles_all, drops, reasons


def _drop_rank(edge: tuple[str, str], roles: Mapping[str, str], depth: Mapping[str, int],
               dependents: Mapping[str, int]) -> tuple[int, int, int, str, str]:
    a, b = edge
    if roles.get(a) == "infrastructure" and roles.get(b) != "infrastructure":
        kind = 0  # infrastructure depending on an application
    elif roles.get(b) == "external":
        kind = 1  # nothing depends on the edge proxy
    else:
        kind = 2
    # an edge to a service with deeper dependencies points upward; among equals, drop the one
    # to the service fewer others depend on (the less foundational one)
    return (kind, -(depth.get(b, 0) - depth.get(a, 0)), dependents.get(b, 0), a, b)


def _drop_reason(edge: tuple[str, str], roles: Mapping[str, str],
                 depth: Mapping[str, int]) -> str:
    a, b = edge
    if roles.get(a) == "infrastructure" and roles.get(b) != "infrastructure":
        return f"{a} is infrastructure and should not depend on an application"
    if roles.get(b) == "external":
        return f"{b} is the edge proxy: nothing should depend on it"
    if depth.get(b, 0) > depth.get(a, 0):
        return f"{b} has deeper dependencies of its own than {a}"
    return f"{b} is the less depended-upon service in the cycle"


#: Name parts that mark an API gateway (the entry point the edge proxy routes to).
GATEWAY_WORDS = ("gateway", "gw", "bff", "apigw", "api-gw")


@dataclass(frozen=True, slots=True)
class Hub:
    """The gateway hub: application services wait on it; the edge routes to it."""

    name: str
    dependents: tuple[str, ...]  # application services whose depends_on names the hub
    why: str


def find_hub(graph: Mapping[str, Sequence[str]], roles: Mapping[str, str]) -> Hub | None:
    """The gateway hub, if the graph has one: an application service (not a well-known
    infrastructure or edge image) that at least two application services depend on, and
    that the edge proxy depends on or whose name says gateway. Among several, the one with
    the most application dependents."""
    found: list[tuple[int, str, Hub]] = []
    for node in graph:
        if roles.get(node) is not None:
            continue
        dependents = tuple(sorted(a for a, deps in graph.items()
                                  if node in deps and roles.get(a) is None and a != node))
        if len(dependents) < 2:
            continue
        routed = sorted(a for a, deps in graph.items()
                        if node in deps and roles.get(a) == "external")
        words = [w for w in GATEWAY_WORDS if w in node.replace("_", "-").split("-")
                 or node.lower().endswith(w)]
        if not routed and not words:
            continue
        why = (f"the edge ({', '.join(routed)}) routes to it" if routed
               else "its name says it is the gateway")
        found.append((len(dependents), node, Hub(node, dependents, why)))
    if not found:
        return None
    return max(found, key=lambda f: (f[0], f[1]))[2]
