"""Shared fixtures: `host` (a unique project on the real dockerd, cleaned up after) and
`swarm_lab` (a two-node swarm on this machine, tests/swarmkit.py)."""

from tests.dockerkit import host
from tests.swarmkit import swarm_lab

__all__ = ["host", "swarm_lab"]
