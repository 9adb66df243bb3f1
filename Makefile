# One command for the demo, one for every test (see README.md). Both set the host up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STATE ?= .demo-state

.PHONY: setup demo demo-down test lint unit integration bench rehearsal

setup:
	bash deploy/setup.sh

## Bring the demo stack (deploy/demo) up under the reconciler and leave it running.
demo: setup
	$(VENV)/bin/reconciler --dry-run --spec deploy/demo --state-dir $(DEMO_STATE) || [ $$? -eq 2 ]
	$(VENV)/bin/reconciler apply --spec deploy/demo --state-dir $(DEMO_STATE)
	$(VENV)/bin/reconciler status --spec deploy/demo --state-dir $(DEMO_STATE)
	@echo "demo edge: curl http://127.0.0.1:8088/v1/hello"

## Remove the demo's containers (named volumes are kept).
demo-down:
	docker ps -aq --filter label=reconciler.project=demo | xargs -r docker rm -f

lint:
	$(VENV)/bin/ruff check reconciler tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Every test: lint, types, layering, unit, component, integration and e2e (real dockerd).
test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -q

unit:
	$(PY) -m pytest tests/unit tests/component -q

bench:
	$(PY) -m tests.bench --quick

## Apply specs/ on this machine with stand-in images under the production names, check every
## URL through the edge and the monitoring against a real Prometheus, remove everything.
rehearsal: setup
	$(PY) -m tests.rehearsal
