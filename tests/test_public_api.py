"""The package's public names: real attributes that help(), dir() and type checkers see, and
an import that installs no Twisted reactor."""

from __future__ import annotations

import pydoc
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import scrapy_hexproxy

#: mypy on a snippet: (exit status, report).
TypeCheck = Callable[[str], tuple[int, str]]

PUBLIC_CLASSES = ("BanPolicy", "HexProxyConfigError", "HexProxyMiddleware", "SmartRetryMiddleware")


@pytest.fixture(scope="module")
def type_check(tmp_path_factory: pytest.TempPathFactory) -> TypeCheck:
    """Run ``mypy --strict`` on a snippet; returns (exit status, report). One cache for the
    module's runs, so only the first pays for reading Scrapy's and Twisted's types."""
    api = pytest.importorskip("mypy.api")  # in the lint deps of .venv, not in the old venv
    root = tmp_path_factory.mktemp("mypy")
    config = root / "mypy.ini"
    # Its own config, so the project's (or a user's) does not change what is checked.
    config.write_text("[mypy]\nstrict = True\n")

    def run(source: str) -> tuple[int, str]:
        snippet = root / "snippet.py"
        snippet.write_text(textwrap.dedent(source))
        out, err, status = api.run(
            ["--config-file", str(config), "--cache-dir", str(root / "cache"), str(snippet)]
        )
        return status, out + err

    return run


def test_public_names_type_check(type_check: TypeCheck) -> None:
    status, report = type_check(
        """
        from scrapy_hexproxy import (
            BanPolicy,
            HexProxyConfigError,
            HexProxyMiddleware,
            SmartRetryMiddleware,
            __version__,
        )

        version: str = __version__
        bases: tuple[type, ...] = (HexProxyMiddleware, SmartRetryMiddleware, HexProxyConfigError)
        policy: type[BanPolicy] = BanPolicy
        """
    )
    assert status == 0, report


def test_misspelled_public_name_fails_type_checking(
    type_check: TypeCheck,
) -> None:
    status, report = type_check("from scrapy_hexproxy import HexProxyMiddlware\n")
    assert status == 1, report
    assert 'Module "scrapy_hexproxy" has no attribute "HexProxyMiddlware"' in report, report


def test_public_names_are_real_attributes() -> None:
    assert "__getattr__" not in vars(scrapy_hexproxy)  # nothing hides a name from help()
    assert set(scrapy_hexproxy.__all__) == {*PUBLIC_CLASSES, "__version__"}
    listed = dir(scrapy_hexproxy)
    for name in scrapy_hexproxy.__all__:
        assert name in listed
        assert name in vars(scrapy_hexproxy)


def test_help_shows_the_public_classes() -> None:
    text = pydoc.render_doc(scrapy_hexproxy, renderer=pydoc.plaintext)
    for name in PUBLIC_CLASSES:
        assert f"class {name}(" in text
    assert "__getattr__" not in text


def _fresh_interpreter(code: str) -> None:
    # A fresh interpreter: this one has pytest-twisted's reactor installed already.
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert done.returncode == 0, done.stderr


def test_importing_the_package_installs_no_reactor() -> None:
    _fresh_interpreter(
        "import sys, scrapy_hexproxy\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor was installed'\n"
    )


def test_loading_the_pytest_plugin_imports_neither_the_package_nor_scrapy() -> None:
    # The installed entry point, loaded as pytest loads it, in every project that has us.
    _fresh_interpreter(
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "[plugin] = [e for e in entry_points(group='pytest11') if e.name == 'hexproxy']\n"
        "module = plugin.load()\n"
        "assert {'hexproxy_gateway', 'hexproxy_settings'} <= set(vars(module))\n"
        "loaded = {'scrapy', 'scrapy_hexproxy', 'twisted'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
