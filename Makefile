# The two commands: `make demo` and `make test`. Each sets up everything it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck compiled pure unit unit-pure browser bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The hot modules compiled with mypyc when a C compiler exists (scripts/compile.py);
# `make pure` removes them, and the pure-Python modules run the same code.
compiled: $(STAMP)
	$(BIN)/python scripts/compile.py --if-needed

pure:
	$(PYTHON) scripts/compile.py --clean

demo: $(STAMP)
	@$(BIN)/python scripts/compile.py --if-needed || echo "compiling failed: the demo runs pure Python"
	$(BIN)/python -m examples.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

browser:
	@bash scripts/ensure-chromium.sh

unit: compiled browser
	$(BIN)/pytest

# The tests of the modules that are compiled, run again on their pure-Python source.
PURE_TESTS := tests/test_build.py tests/test_lines.py tests/test_integrity_chain.py \
	tests/test_asgi_middleware.py tests/test_bad_input.py tests/test_context_api.py \
	tests/test_event_schema.py tests/test_loop_build.py tests/test_wsgi_middleware.py \
	tests/test_pipeline.py tests/test_log_exporter.py tests/test_rules.py tests/test_jwt.py \
	tests/test_testing_helper.py tests/test_trace_context.py tests/test_delivery_process.py \
	tests/test_partition.py tests/test_spool.py tests/test_sanitize.py tests/test_parquet.py

unit-pure: $(STAMP)
	AUDIT_LOG_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_TESTS)

test: lint typecheck unit unit-pure

bench: compiled
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.archive
	$(BIN)/python -m benchmarks.otel

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
	$(PYTHON) scripts/compile.py --clean
