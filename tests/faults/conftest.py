"""Fixtures of the fault-injection suite: after every test, the secret canary must not appear in
anything the reconciler printed, logged, planned, recorded or labelled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import kit


@pytest.fixture(autouse=True)
def no_canary_leak() -> Iterator[None]:
    kit.OUTPUTS.clear()
    yield
    leaks = kit.canary_leaks()
    checked = len(kit.OUTPUTS)
    kit.OUTPUTS.clear()
    assert not leaks, "the secret canary leaked:\n" + "\n".join(leaks[:10])
    print(f"canary: checked {checked} outputs, no leak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests of this suite (the 15-minute soak) run only when asked for: `-m slow` or
    RECONCILER_SLOW=1; CI runs their short variants."""
    import os

    if os.environ.get("RECONCILER_SLOW") == "1" or "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or RECONCILER_SLOW=1")
    for item in items:
        if "slow" in item.keywords and "tests/faults/" in str(item.path):
            item.add_marker(skip)
