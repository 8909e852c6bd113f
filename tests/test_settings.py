"""Every HEX_PROXY_* setting is declared once, in the core's table (``_core.SETTINGS``): the
reader, the core and the README's table agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scrapy.settings import Settings

from scrapy_hexproxy import _core
from scrapy_hexproxy._settings import HexProxyConfigError, read_settings

README = Path(__file__).resolve().parent.parent / "README.md"
GATEWAY = {
    "HEX_PROXY_GATEWAY": "http://127.0.0.1:7777",
    "HEX_PROXY_USER": "USER",
    "HEX_PROXY_PASS": "s3cr3t-PASS",
}


def _readme_table() -> dict[str, str]:
    """The README's Settings table: each setting's name -> its default cell."""
    section = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `HEX_PROXY_") or len(cells) < 3:
            continue
        for name in re.findall(r"`(HEX_PROXY_\w+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def _shown(setting: _core.Setting) -> str:
    """How the README writes the setting's default (words may follow: "`0` (off)",
    "required with the gateway")."""
    default = setting.default
    if default is None:
        return "required" if setting.required else "unset"
    if isinstance(default, bool):
        return f"`{default}`"
    if isinstance(default, tuple):
        # A whole hundred of statuses is "every Nxx".
        hundreds = sorted({code // 100 for code in default})
        every = [h for h in hundreds if all(h * 100 + n in default for n in range(100))]
        single = [code for code in default if code // 100 not in every]
        shown = f"`{' '.join(map(str, single))}`"
        return shown + "".join(f" and every {h}xx" for h in every)
    if isinstance(default, str):
        return f'`"{default}"`'
    number = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
    return number if setting.fallback is None else f"`{setting.fallback}` ({number})"


def test_the_readme_table_lists_every_declared_setting_and_nothing_else():
    assert sorted(_readme_table()) == sorted(setting.name for setting in _core.SETTINGS)


@pytest.mark.parametrize("setting", _core.SETTINGS, ids=lambda setting: setting.name)
def test_the_readme_table_shows_the_declared_default(setting):
    cell = _readme_table()[setting.name]
    shown = _shown(setting)
    assert cell == shown or cell.startswith((f"{shown} ", f"{shown},")), (
        f"README {cell!r}, declared {shown!r}"
    )


def test_the_declared_defaults_are_what_the_reader_gives_the_core():
    read = read_settings(Settings(GATEWAY))
    declared = {s.key: s.default for s in _core.SETTINGS if s.key is not None}
    given = {"user": "USER", "password": "s3cr3t-PASS"}
    expected = {key: list(v) if isinstance(v, tuple) else v for key, v in declared.items()}
    assert read.core_kwargs == {**expected, **given}
    # And what the Python-only settings come to.
    assert read.logstats_interval == _default("HEX_PROXY_LOGSTATS_INTERVAL")
    assert read.retry_priority_adjust == _default("HEX_PROXY_RETRY_PRIORITY_ADJUST")
    assert read.bind_cookiejar is _default("HEX_PROXY_BIND_COOKIEJAR")
    assert read.user_agents is None and read.ban_policy is None


def test_the_core_takes_every_declared_keyword_and_defaults_each_one_left_out():
    core = _core.Core(user="USER", password="s3cr3t-PASS")
    assert core.pool_size == _default("HEX_PROXY_SESSION_POOL_SIZE")
    assert core.max_retries == _default("HEX_PROXY_MAX_RETRIES")
    assert core.ban_scope == _default("HEX_PROXY_BAN_SCOPE")
    assert not core.paced
    declared = {s.key: s.default for s in _core.SETTINGS if s.key is not None}
    _core.Core(**{**declared, "user": "USER", "password": "s3cr3t-PASS"})
    with pytest.raises(TypeError, match="pool_sise"):
        _core.Core(pool_sise=3, user="USER", password="s3cr3t-PASS")


def test_bounds_are_the_cores_and_named_in_its_message():
    pool_size = next(s for s in _core.SETTINGS if s.name == "HEX_PROXY_SESSION_POOL_SIZE")
    assert (pool_size.minimum, pool_size.maximum) == (1, 10_000_000)
    with pytest.raises(HexProxyConfigError) as info:
        read_settings(Settings({**GATEWAY, "HEX_PROXY_LOGSTATS_INTERVAL": -1}))
    assert str(info.value).startswith("HEX_PROXY_LOGSTATS_INTERVAL must be a finite number")


def test_scrapys_setting_stands_in_for_an_unset_retry_priority_adjust():
    read = read_settings(Settings({**GATEWAY, "RETRY_PRIORITY_ADJUST": 3}))
    assert read.retry_priority_adjust == 3
    with pytest.raises(HexProxyConfigError, match=r"^RETRY_PRIORITY_ADJUST must be a whole"):
        read_settings(Settings({**GATEWAY, "RETRY_PRIORITY_ADJUST": "x"}))


def _default(name: str) -> object:
    return next(s.default for s in _core.SETTINGS if s.name == name)
