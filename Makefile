# Two entry points for a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
NPM_DIR := tools/cql
NPM_STAMP := $(NPM_DIR)/node_modules/.installed

.PHONY: demo test check lint typecheck pytest resources cql bench clean

# Running needs only the package and its run-time dependencies; the test toolchain (pytest, ruff,
# mypy, pyspark, ...) is installed on top for `make test`.
$(RUN_STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPM_STAMP): $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

## demo: screen the demo patients shipped with the project (no server needed)
demo: $(RUN_STAMP)
	$(BIN)/fhir-trial screen-population --demo

## test: lint, type-check and run the whole test suite (installs Python and npm packages, and
## Debian's chromium for the browser test, itself)
test: $(STAMP) $(NPM_STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	$(BIN)/ruff check fhir_trial tests benchmarks
	$(BIN)/ruff format --check fhir_trial tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

check: test

resources: $(STAMP)
	$(BIN)/fhir-trial build-resources

cql: $(STAMP) $(NPM_STAMP)
	$(BIN)/fhir-trial cql build

bench: $(STAMP) $(NPM_STAMP)
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_cds.py
	$(BIN)/python benchmarks/bench_vs_cql.py

clean:
	rm -rf $(VENV) $(NPM_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
