"""The state dir is always absolute: paths under it are bind-mounted into containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.persistence import State


def test_relative_state_dir_becomes_absolute(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = State(Path(".demo-state"))
    assert state.root == tmp_path / ".demo-state"
    assert state.root.is_absolute()
