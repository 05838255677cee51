# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv/ here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports --no-cache

# Two workers, one file each at a time (module fixtures are built once): the suite's long tests are training
# runs in subprocesses, whose start-up (importing torch) would otherwise leave the second core idle.
test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
