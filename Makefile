# make run   - install what is missing, mount the default image in the foreground (Ctrl-C unmounts)
# make test  - install what is missing, lint, type-check and run the whole test suite
VENV ?= .venv
MOUNTPOINT ?= /run/zswapfs
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml scripts/install-deps.sh
	./scripts/install-deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	mkdir -p $(MOUNTPOINT)
	$(VENV)/bin/zswapfs mount $(MOUNTPOINT) --foreground

lint: setup
	$(VENV)/bin/ruff check zswapfs tests bench
	$(VENV)/bin/ruff format --check zswapfs tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

# not a set-up command: compare every pool and codec on a captured real corpus, beside zram
bench: setup
	$(VENV)/bin/zswapfs bench --out bench/results

clean:
	rm -rf $(VENV) *.egg-info
