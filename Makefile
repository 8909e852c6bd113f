# Everything a newcomer or CI needs: `make demo`, `make test`. Installs into local venvs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MATURIN := $(VENV)/bin/maturin
# 2 cores here: keep builds to two jobs.
export CARGO_BUILD_JOBS ?= 2
TEST_DEPS := "pytest>=8" "pytest-twisted>=1.14" "pytest-timeout>=2.3"
# The other download handlers the tests run through the gateway (tests/test_handlers.py),
# only beside the main .venv's Scrapy: scrapy-impersonate needs Scrapy >= 2.13.4, and one
# leg is enough for them (they skip, saying so, where they are not installed). The browser is
# Debian's chromium (.ci/run installs it), not one `playwright install` would download.
HANDLER_DEPS := "scrapy-impersonate==1.10.1" "curl-cffi==0.17.0" "scrapy-playwright==0.0.48" \
	"playwright==1.65.2"
# mypy-zope: Twisted declares its interfaces with zope.interface, which mypy reads only with it.
LINT_DEPS := "ruff==0.17.6" "mypy==2.4.1" "mypy-zope==1.0.17"
WHEEL_DIR := target/wheels
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

.PHONY: all build-dev build-test wheel wheel-test test test-rust test-python test-python-old \
	test-python-minors lint format demo bench clean

all: build-dev

# Remade when this file changes, so a pin added here reaches an existing .venv.
$(VENV)/.ok: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "scrapy==2.19.0" $(TEST_DEPS) $(HANDLER_DEPS) "maturin>=1.7,<2" \
		$(LINT_DEPS)
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
## and cp39-abi3 for 3.9 (pip ranks cp310-abi3 first wherever both fit)
wheel: $(VENV)/.ok
	rm -rf $(WHEEL_DIR)
	$(MATURIN) build --release -q -o $(WHEEL_DIR)
	$(MATURIN) build --release -q --features py39 -o $(WHEEL_DIR)

## wheel-test: the same two wheels with the `ci` profile, into target/wheels-ci. After
## build-test, the cp310-abi3 one reuses its build (same profile and features).
wheel-test: $(VENV)/.ok
	rm -rf $(TEST_WHEEL_DIR)
	$(MATURIN) build --profile $(TEST_PROFILE) -q -o $(TEST_WHEEL_DIR)
	$(MATURIN) build --profile $(TEST_PROFILE) -q --features py39 -o $(TEST_WHEEL_DIR)

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
## and the hook and crawl tests on 2.12 ... 2.18
test: lint test-rust test-python test-python-old test-python-minors

## demo: a real crawl through the bundled loopback gateway, some sessions banned, some dropping
demo: build-dev
	$(PY) examples/demo.py

## bench: core (criterion), hook cycle, memory and build, end-to-end crawl; prints one table
bench: build-dev
	$(PY) benches/run.py

clean:
	rm -rf $(VENV) .venv-scrapy* target
