"""Shared fixtures: `host` (a unique project on the real dockerd, cleaned up after)."""

from tests.dockerkit import host

__all__ = ["host"]
