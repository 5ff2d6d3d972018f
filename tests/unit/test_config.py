"""Settings: TOML + environment, and one clear line per mistake (exit code 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import check_required, load_settings
from bridge.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "b24-bridge.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_loads_and_documents_every_section() -> None:
    settings = load_settings(EXAMPLE)
    text = EXAMPLE.read_text()
    for section, field in type(settings).model_fields.items():
        assert f"[{section}]" in text, f"example config lacks [{section}]"
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"\n{key} =" in text or f"\n# {key} =" in text or f"[{section}.{key}]" in text, \
                f"example config does not document {section}.{key}"
    assert settings.http.events_path == "/bitrix24/events"
    assert settings.ami.port == 5038


def test_environment_overrides_file_with_nested_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[ami]\nhost = "10.0.0.5"\nport = 5038\n')
    monkeypatch.setenv("B24BRIDGE_AMI__HOST", "pbx.local")
    monkeypatch.setenv("B24BRIDGE_AMI__SECRET", "s3cret-value")
    settings = load_settings(path)
    assert settings.ami.host == "pbx.local"
    assert settings.ami.secret.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)


def test_typo_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[ami]\nhots = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "ami.hots" in str(info.value)
    assert "unknown setting" in str(info.value)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[ami]\nport = 'five'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "ami.port" in str(info.value)


def test_wrong_type_of_secret_does_not_echo_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\napplication_token = 12345678\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "12345678" not in str(info.value)
    assert "http.application_token" in str(info.value)


def test_missing_secret_reported_by_check_required(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[ami]\nhost = 'x'\n"))
    problems = check_required(settings)
    assert any(p.startswith("ami.secret") for p in problems)
    assert any(p.startswith("bitrix24.webhook_url") for p in problems)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="directory"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[ami\n"))


def test_backoff_bounds_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reconnect_min"):
        load_settings(write(tmp_path, "[ami]\nreconnect_min = 10.0\nreconnect_max = 2.0\n"))


@pytest.mark.parametrize(
    "text",
    ["[ami]\nhots = 'x'\n", "[ami]\nport = 'five'\n", "[log]\nformat = 'xml'\n", "[nonsense]\na = 1\n"],
)
def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    code = main(["check", "--offline", "--config", str(write(tmp_path, text))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("b24-bridge: configuration error:")


def test_cli_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("b24-bridge ")
