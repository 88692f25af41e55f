# Two entry points for a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
NPM_DIR := tools/cql
NPM_STAMP := $(NPM_DIR)/node_modules/.installed
# The modules installing compiles with mypyc (fhir_trial/compiled.py): an edit to one installs again,
# else the checkout would run them from source (fhir_trial.compiled says so) until the next install.
COMPILED_SOURCES := $(shell $(PYTHON) -c "import runpy; c = runpy.run_path('fhir_trial/compiled.py'); print(' '.join(map(c['source_file'], c['COMPILED_MODULES'])))")

PURE_PYTHON_TESTS := tests/test_eval_fast_paths.py tests/test_clinical_cases.py \
	tests/test_no_reference_cycles.py tests/test_properties.py tests/test_medications.py \
	tests/test_observations.py tests/test_fast_paths.py tests/test_record_components.py

.PHONY: demo test check lint typecheck pytest resources cql bench bench-full clean

# Running needs only the package and its run-time dependencies; the test toolchain (pytest, ruff,
# mypy, pyspark, ...) is installed on top for `make test`.
$(RUN_STAMP): setup.cfg setup.py pyproject.toml fhir_trial/compiled.py $(COMPILED_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Compiles the evaluator with mypyc where a C compiler is found (setup.py), else pure Python.
	$(BIN)/pip install --quiet -e .
	# An editable install writes no bytecode, and where PYTHONDONTWRITEBYTECODE is set nothing
	# writes it later: every command (and each population worker's fork server) would compile
	# the package again. Installing the wheel compiles it the same way.
	$(BIN)/python -m compileall -q fhir_trial >/dev/null
	touch $(RUN_STAMP)

# The dev extra's requirements, read from the installed package's metadata: `pip install -e
# '.[dev]'` would build (and compile) the package a second time.
$(STAMP): $(RUN_STAMP)
	$(BIN)/python -c "import importlib.metadata as m, subprocess, sys; \
	  reqs = [r.split(';')[0].strip() for r in m.requires('fhir-trial') or [] if 'extra == \"dev\"' in r]; \
	  subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet', *reqs])"
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
	# The evaluator's own tests once more as pure Python: what an install without a C compiler runs
	# (the whole suite ran the compiled build where there is one; tests/test_compiled_build.py
	# compares the two builds' reports).
	FHIR_TRIAL_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_PYTHON_TESTS)

check: test

resources: $(STAMP)
	$(BIN)/fhir-trial build-resources

cql: $(STAMP) $(NPM_STAMP)
	$(BIN)/fhir-trial cql build

## bench: run every benchmark in benchmarks/ (see benchmarks/README.md), the long ones shortened
## (about 15 minutes in all); every script runs even when one fails, and the target fails at the
## end if any printed FAIL. `make bench-full` runs each at its own documented default length.
BENCH_SHORT := \
	"benchmarks/bench_evaluate.py" \
	"benchmarks/bench_vs_cql.py" \
	"benchmarks/bench_cds.py" \
	"benchmarks/bench_cds_fetch.py" \
	"benchmarks/bench_population.py --patients 200" \
	"benchmarks/bench_durability.py --rounds 3" \
	"benchmarks/bench_load.py --seconds 60" \
	"benchmarks/fuzz_api.py --examples 100"
BENCH_FULL := \
	"benchmarks/bench_evaluate.py" \
	"benchmarks/bench_vs_cql.py" \
	"benchmarks/bench_cds.py" \
	"benchmarks/bench_cds_fetch.py" \
	"benchmarks/bench_population.py" \
	"benchmarks/bench_durability.py" \
	"benchmarks/bench_load.py" \
	"benchmarks/fuzz_api.py"

bench: $(STAMP) $(NPM_STAMP)
	@failed=""; for b in $(BENCH_SHORT); do echo "== $$b"; $(BIN)/python $$b || failed="$$failed\n  $$b"; done; \
	if [ -n "$$failed" ]; then printf "benchmarks that missed a target or failed:$$failed\n"; exit 1; fi

bench-full: $(STAMP) $(NPM_STAMP)
	@failed=""; for b in $(BENCH_FULL); do echo "== $$b"; $(BIN)/python $$b || failed="$$failed\n  $$b"; done; \
	if [ -n "$$failed" ]; then printf "benchmarks that missed a target or failed:$$failed\n"; exit 1; fi

clean:
	rm -rf $(VENV) $(NPM_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
	# the compiled evaluator (setup.py) and its build folder
	rm -rf build fhir_trial__mypyc*.so
	find fhir_trial -name "*.so" -delete
