# make run   - install what is missing, mount the default image in the foreground (Ctrl-C unmounts)
# make test  - install what is missing, lint, type-check and run the whole test suite
VENV ?= .venv
MOUNTPOINT ?= /run/zswapfs
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native-built
NATIVE_SRC := $(wildcard zswapfs/engine/csrc/*.c zswapfs/engine/csrc/*.h zswapfs/lab/csrc/*.c)
# the compiled engine is what ships: in this repository's set-up a build failure stops the
# make (setup.py marks the extension optional only for users' pip installs)
export ZSWAPFS_REQUIRE_NATIVE := 1

.PHONY: setup run test lint bench bench-quick bench-docs sanitize clean

$(STAMP): pyproject.toml setup.py scripts/install-deps.sh
	./scripts/install-deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# rebuilt in place whenever a C source changes
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(VENV)/bin/python setup.py -q build_ext --inplace
	$(VENV)/bin/python -c 'import zswapfs.engine._native'
	touch $(NATIVE_STAMP)

setup: $(NATIVE_STAMP)

run: setup
	mkdir -p $(MOUNTPOINT)
	$(VENV)/bin/zswapfs mount $(MOUNTPOINT) --foreground

lint: setup
	$(VENV)/bin/ruff check zswapfs tests bench
	$(VENV)/bin/ruff format --check zswapfs tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

# not set-up commands: the benchmark suite (bench/, docs/benchmarks.md). `bench` runs every
# benchmark full size into docs/results/ (tens of minutes); `bench-quick` each once and small into
# bench/out/ (a few minutes; the test suite runs it too); `bench-docs` rebuilds the tables of
# docs/*.md from docs/results/. Two builds: `python -m bench compare OLD/bench/out NEW/bench/out`
bench: setup
	$(VENV)/bin/python -m bench run

bench-quick: setup
	$(VENV)/bin/python -m bench run --quick

bench-docs: setup
	$(VENV)/bin/python -m bench docs

# not a set-up command (CI runs it after the tests): the compiled engine built with
# AddressSanitizer and UBSan, and with ZS_DEBUG (every "lock held" rule asserted), into
# build-sanitize/ (a copy of the package beside it); the differential test, the store tests on
# both engines and the failure paths run against that build with PYTHONMALLOC=malloc, so ASan
# sees the Python objects the engine hands out and frees too. libasan is preloaded because the
# Python host is not instrumented; leaks are not checked (the interpreter keeps memory to exit).
# Hypothesis machines run a quarter of their examples there, and tests of the Python engine alone
# are left out (nothing compiled runs in them)
SAN := build-sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -DZS_DEBUG
SAN_TESTS := tests/test_engine_diff.py tests/test_store.py tests/test_fs.py tests/test_frontends.py \
	tests/test_takeover.py
TSAN := build-tsan
TSAN_FLAGS := -fsanitize=thread -g -O1 -DZS_DEBUG
sanitize: setup
	rm -rf $(SAN) && mkdir -p $(SAN)/src
	cp -r zswapfs tests pyproject.toml $(SAN)/src/ && find $(SAN)/src -name '*.so' -delete
	CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" $(VENV)/bin/python setup.py -q build_ext \
		--force --build-temp $(SAN)/tmp --build-lib $(SAN)/src
	cd $(SAN)/src && LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(CURDIR)/$(VENV)/bin/python -c 'import zswapfs.engine._native as n; print("sanitized build:", n.__file__); assert "/$(SAN)/" in n.__file__' && \
		LD_PRELOAD=$$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc ZSWAPFS_NATIVE_FROM=/$(SAN)/ \
		ZSWAPFS_EXAMPLES=0.25 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(CURDIR)/$(VENV)/bin/python -m pytest -q -p no:cacheprovider -k "not python" $(SAN_TESTS)
	# the same with ThreadSanitizer, on the tests that run the engine on several threads
	# (requests beside maintenance, the page workers, the native frontend's workers in the
	# daemons test_frontends mounts, which inherit the preload): any data race fails the run
	rm -rf $(TSAN) && mkdir -p $(TSAN)/src
	cp -r zswapfs tests pyproject.toml $(TSAN)/src/ && find $(TSAN)/src -name '*.so' -delete
	CFLAGS="$(TSAN_FLAGS)" LDFLAGS="$(TSAN_FLAGS)" $(VENV)/bin/python setup.py -q build_ext \
		--force --build-temp $(TSAN)/tmp --build-lib $(TSAN)/src
	cd $(TSAN)/src && LD_PRELOAD=$$(gcc -print-file-name=libtsan.so) ZSWAPFS_NATIVE_FROM=/$(TSAN)/ \
		TSAN_OPTIONS=halt_on_error=1:exitcode=66 \
		$(CURDIR)/$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_engine_diff.py \
		tests/test_frontends.py -k "page_workers or two_threads or batches_in_c or rewritten_while or frontends or alike or discard"

clean:
	rm -rf $(VENV) *.egg-info build $(SAN) $(TSAN)
