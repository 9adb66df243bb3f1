"""Shared fixtures: `host` (a unique project on the real dockerd, cleaned up after) and
`swarm_lab` (a two-node swarm on this machine, tests/swarmkit.py)."""

from __future__ import annotations

import pytest

from tests.dockerkit import host
from tests.swarmkit import swarm_lab

__all__ = ["host", "swarm_lab"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep `--dist loadgroup` working: pytest-xdist 3.8 marks a test's `xdist_group` by
    appending `@group` to the legacy `item._nodeid`, which pytest 9.2 no longer reads (its node
    ids are structured: pytest-xdist issue 1386), so every group was silently spread over the
    workers. On an xdist worker, carry xdist's suffixed id over to the structured one."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        legacy = item.__dict__.get("_nodeid")
        if isinstance(legacy, str) and legacy != item.nodeid and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId  # pytest >= 9.2 only (hasattr above)

            item._id = NodeId.parse(legacy)
