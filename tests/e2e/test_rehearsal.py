"""The production stack (specs/) rehearsed on this machine: `make rehearsal` as a test, so
`make test` (and CI) runs it. See tests/rehearsal.py for what it applies and checks."""

from __future__ import annotations

import pytest

from tests import rehearsal
from tests.dockerkit import require_engine

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("rehearsal")]


def test_rehearsal_of_the_production_stack(capsys: pytest.CaptureFixture[str]) -> None:
    require_engine()
    code = rehearsal.main([])
    out = capsys.readouterr()
    assert code == 0, out.out[-6000:] + out.err[-3000:]
    assert "FAIL" not in out.out
