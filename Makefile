# Everything a newcomer or CI needs: `make demo`, `make test`. Installs into local venvs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MATURIN := $(VENV)/bin/maturin
# 2 cores here: keep builds to two jobs.
export CARGO_BUILD_JOBS ?= 2
TEST_DEPS := "pytest>=8" "pytest-twisted>=1.14" "pytest-timeout>=2.3" "redis==8.2.0"
# The other download handlers the tests run through the gateway (tests/test_handlers.py),
# only beside the main .venv's Scrapy: scrapy-impersonate needs Scrapy >= 2.13.4, and one
# leg is enough for them (they skip, saying so, where they are not installed). The browser is
# Debian's chromium (.ci/run installs it), not one `playwright install` would download.
HANDLER_DEPS := "scrapy-impersonate==1.10.1" "curl-cffi==0.17.0" "scrapy-playwright==0.0.48" \
	"playwright==1.65.2"
# scrapy-redis, for the shared pool's tests with several `scrapy crawl` processes on one queue
# (tests/test_shared_processes.py), beside the main .venv's Scrapy only, as the handlers.
SHARED_DEPS := "scrapy-redis==0.9.1"
# mypy-zope: Twisted declares its interfaces with zope.interface, which mypy reads only with it.
LINT_DEPS := "ruff==0.17.6" "mypy==2.4.1" "mypy-zope==1.0.17"
WHEEL_DIR := target/wheels
ZIG := "ziglang==0.17.1"
# maturin finds zig as `python -m ziglang` of the python on PATH: .venv's.
WHEEL_BUILD := PATH="$(abspath $(VENV))/bin:$$PATH" CARGO_TARGET_DIR=target/manylinux \
	$(MATURIN) build -q --zig --compatibility manylinux2014 --strip
# `make wheel-check`'s venv: nothing but the wheel and what pip installs with it.
CHECK_VENV := target/wheel-check-venv
# `make test` builds with the cargo profile `ci` (Cargo.toml: release without fat LTO), into
# target/ci; the shipped wheels, `make demo` and `make bench` with release.
TEST_PROFILE := ci
TEST_WHEEL_DIR := target/wheels-$(TEST_PROFILE)
# `maturin develop` has pip install the package's dependencies: -q spares us pip's
# 'Requirement already satisfied' for each of them.
DEVELOP := VIRTUAL_ENV=$(abspath $(VENV)) PIP_QUIET=1 $(MATURIN) develop -q

# Scrapy releases tested besides .venv's 2.19.0, each in its own .venv-scrapyX.Y: the oldest
# supported (the whole suite, both reactors) and the latest patch of every minor in between
# (the hook and crawl tests, asyncio reactor).
OLDEST := 2.11.2
MINORS := 2.12.0 2.13.4 2.14.2 2.15.2 2.16.0 2.17.0 2.18.0
# Pinned beside a release, found by installing each: 2.11 and 2.12 import w3lib.url._safe_chars
# (gone from w3lib 2.2) and twisted.internet._sslverify._setAcceptableProtocols (gone from
# Twisted 24.11), and their own requirements do not cap either. 2.13 on need no pin.
PINS_2.11 := "w3lib<2.2" "twisted<24.11"
PINS_2.12 := $(PINS_2.11)
venv_of = .venv-scrapy$(basename $(1))
pip_into = $(PY) -m pip --python $(1)/bin/python install -q
VENV_OLD := $(call venv_of,$(OLDEST))
MINOR_VENVS := $(foreach v,$(MINORS),$(call venv_of,$(v)))
# `make demo`'s venvs (see below): maturin alone, and what the demo runs.
BUILD_VENV := .venv-build
BUILD_PIP := PIP_DISABLE_PIP_VERSION_CHECK=1 $(BUILD_VENV)/bin/python -m pip
DEMO_VENV := .venv-demo
DEMO_DEPS := "scrapy==2.19.0"
DEMO_SHARED_DEPS := "redis==8.2.0"
DEMO_WHEEL_DIR := target/wheels-demo
DEMO_BUILD_LOG := target/demo-build.log

.PHONY: all build-dev build-test wheel wheel-test wheel-check test test-rust test-python \
	test-python-old test-python-minors lint format demo demo-shared bench clean

all: build-dev

# Remade when this file changes, so a pin added here reaches an existing .venv.
$(VENV)/.ok: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "scrapy==2.19.0" $(TEST_DEPS) $(HANDLER_DEPS) $(SHARED_DEPS) \
		"maturin>=1.7,<2" $(LINT_DEPS)
	touch $@

# .venv-scrapy2.11/.ok ...: the stem is the minor; the release is the one listed for it.
# These venvs have no pip of their own: .venv's installs into them (pip --python), which
# spares each venv ensurepip and a pip upgrade; --no-compile, as the tests import a fraction.
.venv-scrapy%/.ok: $(VENV)/.ok
	$(PYTHON) -m venv --without-pip $(@D)
	$(call pip_into,$(@D)) --no-compile "scrapy==$(filter $*.%,$(OLDEST) $(MINORS))" \
		$(PINS_$*) $(TEST_DEPS)
	touch $@

## build-dev: build the Rust core (release) and install the package into .venv (editable
## Python side)
build-dev: $(VENV)/.ok
	$(DEVELOP) --release
	$(PY) -c "import scrapy_hexproxy; print('scrapy_hexproxy', scrapy_hexproxy.__version__, 'built')"

## build-test: the same with the `ci` profile, for the tests
build-test: $(VENV)/.ok
	$(DEVELOP) --profile $(TEST_PROFILE)

## wheel: two abi3 wheels: cp310-abi3 for CPython >= 3.10 (hooks called with METH_FASTCALL),
## and cp39-abi3 for 3.9 (pip ranks cp310-abi3 first wherever both fit); manylinux2014, stripped
wheel: $(VENV)/.zig
	rm -rf $(WHEEL_DIR)
	$(WHEEL_BUILD) --release -o $(WHEEL_DIR)
	$(WHEEL_BUILD) --release --features py39 -o $(WHEEL_DIR)

## wheel-test: the same two wheels with the `ci` profile, into target/wheels-ci (the Scrapy
## 2.11 ... 2.18 tests install them)
wheel-test: $(VENV)/.zig
	rm -rf $(TEST_WHEEL_DIR)
	$(WHEEL_BUILD) --profile $(TEST_PROFILE) -o $(TEST_WHEEL_DIR)
	$(WHEEL_BUILD) --profile $(TEST_PROFILE) --features py39 -o $(TEST_WHEEL_DIR)

## wheel-check: both test wheels' tags, glibc symbols (none above 2.17), stripping and
## metadata; then the cp310-abi3 one installed by pip into a new, empty venv, with what it
## pulls in, crawls through the loopback gateway
wheel-check: wheel-test
	rm -rf $(CHECK_VENV)
	$(PYTHON) -m venv --without-pip $(CHECK_VENV)
	$(call pip_into,$(CHECK_VENV)) $(TEST_WHEEL_DIR)/*-cp310-abi3-*.whl
	cd $(CHECK_VENV) && bin/python $(abspath tests/check_wheel.py) $(abspath $(TEST_WHEEL_DIR))/*.whl

# Wheels for glibc 2.17 and later (manylinux2014: Debian 8, Ubuntu 14.04, RHEL 7 and later):
# linked by zig (PyPI's ziglang, which maturin runs) against glibc 2.17's symbols, and
# stripped. In a cargo target dir of their own: with zig as the linker cargo rebuilds every
# crate, and would each time these builds alternated with `make build-test`'s.
$(VENV)/.zig: $(VENV)/.ok
	$(PY) -m pip install -q $(ZIG)
	touch $@

## lint: rustfmt, clippy, ruff; mypy --strict on the package, and stubtest of _core.pyi
## against the built module (hence a build first)
lint: build-test
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	cargo clippy -q --all-targets --features python -- -D warnings
	cargo clippy -q --lib --features py39 -- -D warnings
	$(VENV)/bin/ruff check python tests examples benches
	$(VENV)/bin/ruff format --check python tests examples benches
	$(PY) -m mypy
	$(PY) -m mypy.stubtest --mypy-config-file pyproject.toml scrapy_hexproxy._core

format: $(VENV)/.ok
	cargo fmt
	$(VENV)/bin/ruff format python tests examples benches
	$(VENV)/bin/ruff check --fix python tests examples benches

test-rust:
	cargo test -q

## test-python: the suite on Scrapy 2.19.0, under the asyncio reactor and a plain Twisted one;
## then the hook and crawl tests with every fallback of the wall forced (_scrapy.py)
test-python: build-test
	$(PY) -m pytest -q --reactor=asyncio
	$(PY) -m pytest -q --reactor=default
	SCRAPY_HEXPROXY_PUBLIC_API=1 $(PY) -m pytest -q --reactor=asyncio tests/test_hooks.py \
		tests/test_crawl.py

## test-python-old: the same suite on Scrapy 2.11.2, the oldest supported, with the cp39-abi3
## wheel (abi3: this CPython runs it too), so that the suite covers both builds
test-python-old: wheel-test $(VENV_OLD)/.ok
	$(call pip_into,$(VENV_OLD)) --force-reinstall --no-deps $(TEST_WHEEL_DIR)/*-cp39-abi3-*.whl
	$(VENV_OLD)/bin/python -m pytest -q --reactor=asyncio
	$(VENV_OLD)/bin/python -m pytest -q --reactor=default

define test_minor
	@echo "Scrapy $(1): hook and crawl tests"
	$(call pip_into,$(call venv_of,$(1))) --force-reinstall --no-deps \
		$(TEST_WHEEL_DIR)/*-cp310-abi3-*.whl
	$(call venv_of,$(1))/bin/python -m pytest -q --reactor=asyncio tests/test_hooks.py \
		tests/test_crawl.py

endef

## test-python-minors: the hook and crawl tests on each Scrapy minor between 2.11 and 2.19
## (latest patch), asyncio reactor, with the cp310-abi3 wheel
test-python-minors: wheel-test $(addsuffix /.ok,$(MINOR_VENVS))
	$(foreach v,$(MINORS),$(call test_minor,$(v)))

## test: lint, Rust tests, the Python suite on Scrapy 2.19.0 and 2.11.2 under both reactors,
## the hook and crawl tests on 2.12 ... 2.18, and the wheel installed into an empty venv
test: lint test-rust test-python test-python-old test-python-minors wheel-check

# The release wheel, built quietly and installed into the demo's venv.
define demo_wheel
	@echo "Building the release wheel (a few minutes the first time; output in $(DEMO_BUILD_LOG))"
	@rm -rf $(DEMO_WHEEL_DIR) && mkdir -p target
	@$(BUILD_VENV)/bin/maturin build --release -o $(DEMO_WHEEL_DIR) >$(DEMO_BUILD_LOG) 2>&1 \
		|| { cat $(DEMO_BUILD_LOG); exit 1; }
	@$(BUILD_PIP) --python $(DEMO_VENV)/bin/python install -q --force-reinstall --no-deps \
		$(DEMO_WHEEL_DIR)/*.whl
endef

## demo: a real crawl through the bundled loopback gateway, some sessions banned, some dropping
demo: $(DEMO_VENV)/.ok
	$(demo_wheel)
	@$(DEMO_VENV)/bin/python examples/demo.py

## demo-shared: two processes through the gateway, 3 of 20 sessions banned, each with its own
## pool and then sharing one on a local redis-server (Debian's redis-server): the ban cost
demo-shared: $(DEMO_VENV)/.redis
	@command -v redis-server >/dev/null || { echo "make demo-shared needs redis-server \
		(apt-get install redis-server)"; exit 1; }
	$(demo_wheel)
	@$(DEMO_VENV)/bin/python examples/demo_shared.py

$(DEMO_VENV)/.redis: $(DEMO_VENV)/.ok
	@echo "Installing redis (the Python client) into $(DEMO_VENV)"
	@$(BUILD_PIP) --python $(DEMO_VENV)/bin/python install -q $(DEMO_SHARED_DEPS)
	@touch $@

# `make demo` runs in a venv of its own that holds only what the demo runs: Scrapy and the
# package (a release wheel). The wheel is built with the maturin of .venv-build, a venv of
# maturin alone, whose pip installs into the demo's venv (pip --python), so the demo's venv has
# no pip, pytest, ruff or maturin of its own, and `make demo` prints no pip line.
$(BUILD_VENV)/.ok: Makefile
	@echo "Installing maturin into $(BUILD_VENV)"
	@$(PYTHON) -m venv $(BUILD_VENV)
	@$(BUILD_PIP) install -q --upgrade pip
	@$(BUILD_PIP) install -q "maturin>=1.7,<2"
	@touch $@

$(DEMO_VENV)/.ok: $(BUILD_VENV)/.ok
	@echo "Installing Scrapy into $(DEMO_VENV)"
	@rm -rf $(DEMO_VENV)
	@$(PYTHON) -m venv --without-pip $(DEMO_VENV)
	@$(BUILD_PIP) --python $(DEMO_VENV)/bin/python install -q $(DEMO_DEPS)
	@touch $@

## bench: core (criterion), hook cycle, memory and build, end-to-end crawl; prints one table
bench: build-dev
	$(PY) benches/run.py

clean:
	rm -rf $(VENV) .venv-scrapy* $(BUILD_VENV) $(DEMO_VENV) target
