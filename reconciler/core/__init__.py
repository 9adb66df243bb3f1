"""The pure core: the spec model and its validation, labels and fingerprints, the observed
model, the planner, plan rendering, health verdicts and the rollback policy.

Everything here is a function of plain data: no files, no network, no clock, no processes,
no asyncio, no Docker, no Prometheus, no logging. The shell (`reconciler.loading`,
`reconciler.dockerd`, `reconciler.execute`, `reconciler.reconcile`, ...) reads and acts;
the core decides. An import-linter contract and `tests/unit/test_core_purity.py` hold the
boundary.
"""
