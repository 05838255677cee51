# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv/ here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean browser

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

# The page test (tests/test_serve.py) drives Debian's chromium through chromium-driver with selenium. As
# root, install them when missing (about a minute); elsewhere that test fails saying how to install them.
browser:
	@if [ "$$(id -u)" = 0 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (apt) for the page test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; \
	fi

# Two workers, one file each at a time (module fixtures are built once): the suite's long tests are training
# runs in subprocesses, whose start-up (importing torch) would otherwise leave the second core idle.
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
