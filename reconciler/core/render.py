"""Render a plan as Terraform-style text or as JSON. Pure; never prints a secret.

Values from env files appear only as `(sensitive)`; plain `environment` values whose key
looks secret were already masked when the desired state was built.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.core.labels import UNKNOWN
from reconciler.core.plans import Action, FieldChange, Plan, Step
from reconciler.core.printable import clean
from reconciler.core.specs import UpdateOrder

SYMBOLS = {
    Action.CREATE_NETWORK: "+",
    Action.CREATE_VOLUME: "+",
    Action.CREATE: "+",
    Action.START: "~",
    Action.REMOVE: "-",
    Action.RECREATE: "-/+",
    Action.BACKUP: "*",
    Action.RELOAD: "~",
    Action.SCALE: "~",
}
COLORS = {"+": "32", "-": "31", "-/+": "33", "+/-": "33", "~": "36"}
JOB_NOTE = "job (forward-only: a revert does not undo it)"
LEGEND = ("  + create    -/+ replace (stop-first)    +/- replace (start-first)    "
          "~ start    - remove")


def symbol(step: Step) -> str:
    """The plan symbol of a step: `+`, `-/+`, `+/-`, `~` or `-`."""
    if step.action is Action.REPLACE:
        return "+/-" if step.order is UpdateOrder.START_FIRST else "-/+"
    return SYMBOLS[step.action]


def _value(field: str, value: Any) -> str:
    if field.startswith("env_file"):
        if value is None:
            return "(none)"
        return "(unknown: not readable here)" if value == UNKNOWN else "(sensitive)"
    if field.startswith("mounted_files"):
        return "(absent)" if value is None else "(content)"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def _change_line(change: FieldChange) -> str:
    if change.old is None and not change.field.startswith(("env_file", "mounted_files")):
        return f"{change.field}: {_value(change.field, change.new)}"
    if change.field.startswith("env_file") and change.old is not None and change.new is not None:
        return f"{change.field}: {_value(change.field, change.new)} changed" + (
            " (unknown: not readable here)" if change.new == UNKNOWN else "")
    if change.field.startswith("mounted_files"):
        state = "added" if change.old is None else "removed" if change.new is None else "changed"
        return f"{change.field}: content {state}"
    old, new = _value(change.field, change.old), _value(change.field, change.new)
    return f"{change.field}: {old} -> {new}"


def _step_line(step: Step) -> str:
    who = step.service + (f"[{step.replica}]" if step.replica is not None else "")
    parts = [f"{symbol(step)} {who}"]
    if step.action is Action.REPLACE and step.order:
        parts.append(f"({step.order})")
    if step.action is Action.RELOAD:
        parts.append("reload")
    if step.action is Action.REMOVE and step.old:
        parts.append(step.old[0].name)
    elif step.new_name and step.action is not Action.START:
        parts.append(step.new_name)
    if step.action is Action.REPLACE and step.old:
        parts.append("replaces " + ", ".join(o.name for o in step.old))
    if step.target:
        parts.append(step.target.name)
    if step.job and step.action is not Action.REMOVE:
        parts.append(JOB_NOTE)
    if step.after:
        parts.append("after " + ", ".join(f"{w.service} {w.until}" for w in step.after))
    return "  ".join(parts) + f"    # {step.reason}"


def _waves(steps: list[Step]) -> list[list[str]]:
    """The services of one tier grouped by how many `after` edges deep they are: wave 1
    starts at once, wave n once what it waits for in earlier waves got that far."""
    after = {s.service: {w.service for w in s.after} for s in steps}
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            deps = [d for d in after.get(name, ()) if d in after and d not in seen]
            depth[name] = 1 + max((level(d, seen | {name}) for d in deps), default=0)
        return depth[name]

    waves: dict[int, list[str]] = {}
    for name in after:
        waves.setdefault(level(name), []).append(name)
    return [waves[k] for k in sorted(waves)]


def _paint(text: str, sym: str, color: bool) -> str:
    if not color or sym not in COLORS:
        return text
    return f"\x1b[{COLORS[sym]}m{text}\x1b[0m"


def text(plan: Plan, *, color: bool = False, revision: str | None = None) -> str:
    """The plan as text. Names and values from the spec are shown with control characters
    escaped (a tier named with a terminal escape sequence cannot repaint the terminal)."""
    painted: dict[int, str] = {}  # line index -> symbol whose color paints it

    def paint(line: str, sym: str) -> str:
        painted[len(lines)] = sym
        return line

    lines = [f'Plan for project "{plan.project}"'
             + (f" at revision {revision[:12]}" if revision else "")]
    if not plan.engine_available:
        lines.append("(no Docker engine reachable: planned against an empty host)")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if plan.empty:
        lines.append("")
        lines.append("No changes. The host matches the spec.")
        return "\n".join(clean(line) for line in lines) + "\n"
    lines += ["", LEGEND]
    if plan.builds:
        lines += ["", "Builds (first, before anything stops; skipped when the image exists; "
                      "a failed build stops the rollout)"]
        for need in plan.builds:
            built = need.context
            extra = f" (also tagged {', '.join(built.tags)})" if built.tags else ""
            target = f" target {built.target}" if built.target else ""
            lines.append(f"  * {need.id}{extra}    # context {built.context}, dockerfile "
                         f"{built.dockerfile_name}{target}")
    backups = plan.backups()
    if backups:
        lines += ["", "Backups (taken first; a failed backup stops the rollout before anything)"]
        for step in backups:
            source = f" from {step.target.name}" if step.target else ""
            note = " (best effort: a failure does not stop the revert)" if step.best_effort else ""
            lines.append(f"  * backup {step.service}{source}    # {step.reason}{note}")
    objects = plan.objects()
    if objects:
        lines += ["", "Networks and volumes"]
        for step in objects:
            kind = "network" if step.action is Action.CREATE_NETWORK else "volume"
            lines.append(paint(f"  + {kind} {step.object_name}", "+"))
    for n, tier in enumerate(plan.tiers, start=1):
        steps = plan.in_tier(tier)
        lines += ["", f"Tier {n}/{len(plan.tiers)}: {tier}"]
        if not steps:
            lines.append("  (no changes)")
            continue
        waves = _waves(steps)
        if len(waves) > 1:
            lines.append("  order: " + "  ".join(f"{i}) {', '.join(w)}"
                                                 for i, w in enumerate(waves, start=1)))
        for step in steps:
            lines.append(paint("  " + _step_line(step), symbol(step)))
            for change in step.changes:
                lines.append("        " + _change_line(change))
    orphans = plan.orphans()
    if orphans:
        lines += ["", "Removed from the spec (after every tier passed)"]
        for step in orphans:
            lines.append(paint("  " + _step_line(step), "-"))
    lines += _edge_lines(plan)
    c = plan.counts()
    reloads = f", {c['reload']} to reload" if c.get("reload") else ""
    lines += ["", f"Plan: {c['create']} to create, {c['replace']} to replace, "
                  f"{c['start']} to start, {c['remove']} to remove{reloads}"
                  + (f", {c['scale']} to scale." if c.get("scale") else ".")]
    return "\n".join(_paint(clean(line), painted.get(i, ""), color)
                     for i, line in enumerate(lines)) + "\n"


def edge_update(plan: Plan) -> str | None:
    """How the plan updates the edge itself, in words (None: the edge is not touched)."""
    if any(s.action is Action.RELOAD for s in plan.steps):
        return (f"edge {plan.edge}: mounted config reloaded gracefully (`nginx -t` first; a "
                "failing config is never loaded; the container is kept)")
    steps = [s for s in plan.steps if plan.edge and s.service == plan.edge
             and s.action in (Action.REPLACE, Action.RECREATE, Action.CREATE) and s.old]
    if not steps:
        return None
    if all(s.action is Action.REPLACE and s.order is UpdateOrder.START_FIRST for s in steps):
        return (f"edge {plan.edge}: replaced start-first (the new edge serves before the old "
                "one stops gracefully)")
    return (f"edge {plan.edge}: replaced stop-first (it publishes a fixed host port): the old "
            "edge finishes in-flight requests (graceful stop), new connections are refused "
            "until the new one listens (the new container is created beforehand)")


def _edge_lines(plan: Plan) -> list[str]:
    edge = edge_update(plan)
    if not plan.upstreams and edge is None:
        return []
    lines = ["", "Edge upstreams (nginx reloaded gracefully; servers join once healthy, "
                 "leave before they stop)"]
    for u in plan.upstreams:
        lines.append(f"  upstream {u.upstream}: " + ", ".join(
            [f"+{a}" for a in u.added] + [f"-{r}" for r in u.removed]))
    if edge is not None:
        lines.append(f"  {edge}")
    return lines


def step_dict(step: Step) -> dict[str, Any]:
    """One step as JSON-ready data (`--json`)."""
    return {
        "id": step.id,
        "action": step.action.value,
        "reason": step.reason.value,
        "tier": step.tier or None,
        "service": step.service or None,
        "replica": step.replica,
        "order": step.order.value if step.order else None,
        **({"job": "forward-only: a revert does not undo it"} if step.job else {}),
        **({"best_effort": True} if step.best_effort else {}),
        **({"after": [{"service": w.service, "until": w.until.value} for w in step.after]}
           if step.after else {}),
        "new_name": step.new_name,
        "old": [{"id": o.id, "name": o.name, "state": o.state.value} for o in step.old],
        "adopt": step.adopt.name if step.adopt else None,
        "target": step.target.name if step.target else None,
        "object": step.object_name or None,
        "changes": [{"field": c.field, "old": _json_value(c.field, c.old),
                     "new": _json_value(c.field, c.new)} for c in step.changes],
    }


def _json_value(field: str, value: Any) -> Any:
    if field.startswith(("env_file", "mounted_files")):
        return None if value is None else _value(field, value)
    return value


def as_json(plan: Plan, *, revision: str | None = None) -> str:
    """The plan as JSON (`reconciler --dry-run --json`)."""
    data = {
        "project": plan.project,
        "revision": revision,
        "engine_available": plan.engine_available,
        "in_sync": plan.empty,
        "tiers": list(plan.tiers),
        "images": [{"ref": i.ref, "pull_policy": i.policy.value} for i in plan.images],
        "builds": [{"id": b.id, "service": b.service, "ref": b.ref,
                    "tags": list(b.context.tags), "context": b.context.context,
                    "dockerfile": b.context.dockerfile_name, "target": b.context.target,
                    "args": dict(b.context.args)} for b in plan.builds],
        "summary": plan.counts(),
        "notes": list(plan.notes),
        "steps": [step_dict(s) for s in plan.steps],
        "edge": {"service": plan.edge, "update": edge_update(plan),
                 "upstreams": [{"upstream": u.upstream, "added": list(u.added),
                                "removed": list(u.removed)} for u in plan.upstreams]},
    }
    return json.dumps(data, indent=2, sort_keys=False) + "\n"
