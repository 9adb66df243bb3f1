"""Translations of a loaded spec into other orchestrators' formats (pure: no I/O)."""
