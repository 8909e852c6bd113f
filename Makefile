# Everything a newcomer or CI needs: `make demo`, `make test`. Installs into local venvs.
PYTHON ?= python3
VENV := .venv
VENV_OLD := .venv-scrapy2.11
PY := $(VENV)/bin/python
PY_OLD := $(VENV_OLD)/bin/python
# 2 cores here: keep builds to two jobs.
export CARGO_BUILD_JOBS ?= 2
# Scrapy 2.11.2 installs today only with these pinned beside it (newer ones break its imports).
OLD_SCRAPY := "scrapy==2.11.2" "w3lib<2.2" "twisted<24.11"
TEST_DEPS := "pytest>=8" "pytest-twisted>=1.14" "pytest-timeout>=2.3"
# mypy-zope: Twisted declares its interfaces with zope.interface, which mypy reads only with it.
LINT_DEPS := "ruff==0.17.6" "mypy==2.4.1" "mypy-zope==1.0.17"
WHEEL_DIR := target/wheels

.PHONY: all build-dev wheel test test-rust test-python test-python-old lint format demo bench clean

all: build-dev

# Remade when this file changes, so a pin added here reaches an existing .venv.
$(VENV)/.ok: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "scrapy==2.19.0" $(TEST_DEPS) "maturin>=1.7,<2" $(LINT_DEPS)
	touch $@

$(VENV_OLD)/.ok:
	$(PYTHON) -m venv $(VENV_OLD)
	$(PY_OLD) -m pip install -q --upgrade pip
	$(PY_OLD) -m pip install -q $(OLD_SCRAPY) $(TEST_DEPS)
	touch $@

## build-dev: build the Rust core and install the package into .venv (editable Python side)
build-dev: $(VENV)/.ok
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q
	$(PY) -c "import scrapy_hexproxy; print('scrapy_hexproxy', scrapy_hexproxy.__version__, 'built')"

## wheel: two abi3 wheels: cp310-abi3 for CPython >= 3.10 (hooks called with METH_FASTCALL),
## and cp39-abi3 for 3.9 (pip ranks cp310-abi3 first wherever both fit)
wheel: $(VENV)/.ok
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release -q -o $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release -q --features py39 -o $(WHEEL_DIR)

## lint: rustfmt, clippy, ruff; mypy --strict on the package, and stubtest of _core.pyi
## against the built module (hence build-dev first)
lint: build-dev
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

## test-python: the suite on Scrapy 2.19.0, under the asyncio reactor and a plain Twisted one
test-python: build-dev
	$(PY) -m pytest -q --reactor=asyncio
	$(PY) -m pytest -q --reactor=default

## test-python-old: the same suite on Scrapy 2.11.2, the oldest supported, with the cp39-abi3
## wheel (abi3: this CPython runs it too), so that the suite covers both builds
test-python-old: wheel $(VENV_OLD)/.ok
	$(PY_OLD) -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/*-cp39-abi3-*.whl
	$(PY_OLD) -m pytest -q --reactor=asyncio
	$(PY_OLD) -m pytest -q --reactor=default

## test: lint, Rust tests, and the Python suite on both Scrapy versions and both reactors
test: lint test-rust test-python test-python-old

## demo: a real crawl through the bundled loopback gateway, some sessions banned, some dropping
demo: build-dev
	$(PY) examples/demo.py

## bench: core (criterion), hook cycle, memory and build, end-to-end crawl; prints one table
bench: build-dev
	$(PY) benches/run.py

clean:
	rm -rf $(VENV) $(VENV_OLD) target
