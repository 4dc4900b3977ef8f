from pathlib import Path

import pytest

from textguard import ConfigError, Settings


def test_precedence_defaults_file_environment_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tg.toml"
    config.write_text('[textguard]\nquote_chars = 60\nmosaic_chars = 150\nfail_mode = "closed"\n', encoding="utf-8")
    monkeypatch.setenv("TEXTGUARD_MOSAIC_CHARS", "120")
    settings = Settings.load(config_file=config, block_chars=700)
    assert (settings.quote_chars, settings.mosaic_chars, settings.block_chars) == (60, 120, 700)
    assert settings.fail_mode == "closed" and settings.block_ratio == 0.5


def test_environment_names_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "other.toml"
    config.write_text('index = "books"\nhome = "~/tg"\n', encoding="utf-8")
    monkeypatch.setenv("TEXTGUARD_CONFIG", str(config))
    settings = Settings.load()
    assert settings.index == "books" and settings.home == Path("~/tg").expanduser()


@pytest.mark.parametrize(("values", "message"), [
    ({"quote_chars": "many"}, "quote_chars"),
    ({"fail_mode": "sideways"}, "fail_mode"),
    ({"threshold": 1.5}, "threshold"),
    ({"no_such_setting": 1}, "unknown setting"),
])
def test_invalid_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(**values)


def test_broken_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("quote_chars = = 3", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(config_file=config)
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(config_file=tmp_path / "absent.toml")
