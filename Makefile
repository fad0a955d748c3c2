# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# shoal's bytecode, written ahead (only what changed): where PYTHONDONTWRITEBYTECODE is set an
# editable install never writes it, and every shoal process started (hundreds in the suite)
# would compile its modules again first, 0.1-0.15 s each.
BYTECODE := $(BIN)/python -m compileall -q src

.PHONY: demo test lint typecheck unit bench clean

# setup.py builds the native launcher (src/shoal/worker/_launcher.c) where a C compiler is found.
$(BIN)/shoal: pyproject.toml setup.py src/shoal/worker/_launcher.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/shoal
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/shoal
	$(BYTECODE)
	rm -rf build/demo && mkdir -p build/demo && cp demo/jobs.txt build/demo/
	cd build/demo && ../../$(BIN)/shoal run jobs.txt -j 4
	@echo
	@echo "Run it again and nothing reruns: cd build/demo && ../../$(BIN)/shoal run jobs.txt"

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy

# The suite mostly waits (for daemons, timeouts, other processes): two pytest workers halve
# it. Each test file stays on one worker, so a file's module fixtures (an sshd, a Slurm) are
# made once; every system resource a fixture makes has a unique name, port or subnet.
TEST_WORKERS ?= 2

test: lint typecheck
	$(BYTECODE)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

unit: $(VENV)/.test-deps
	$(BIN)/pytest -q tests/unit

bench: $(BIN)/shoal
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/throughput.py --write-docs

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
