"""Configuration: documented defaults, and a wrong value stops start-up naming the variable."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from chatcore.app import refuse_public_dev_secret
from longtail.settings import ENV_VARS, ConfigError, Settings


def test_defaults_are_the_dev_setup():
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///longtail.sqlite3"
    assert settings.chatcore_port == 8700 and settings.port == 8080


def test_every_setting_has_an_environment_variable():
    assert set(ENV_VARS) == {f.name for f in fields(Settings)}


def test_reads_and_normalises_the_environment():
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@db:5432/chat",
            "PORT": "9000",
            "LONGTAIL_ALLOWED_ORIGINS": "https://a.example/, https://b.example",
            "LONGTAIL_POLL_TIMEOUT": "10",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/chat"
    assert settings.port == 9000 and settings.poll_timeout == 10.0
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("REDIS_URL", "http://x"),
        ("DATABASE_URL", "mysql://x"),
        ("CHATCORE_URL", "localhost:8700"),
        ("LONGTAIL_POLL_TIMEOUT", "-1"),
        ("LONGTAIL_HEARTBEAT", "0"),
        ("LONGTAIL_MAILBOX_SIZE", "1.5"),
        ("LONGTAIL_LOG_LEVEL", "LOUD"),
        ("LONGTAIL_UNSUBSCRIBE_GRACE", "-2"),
    ],
)
def test_a_bad_value_names_its_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_poll_timeout_cannot_exceed_its_maximum():
    with pytest.raises(ConfigError, match="LONGTAIL_POLL_TIMEOUT"):
        Settings.from_env({"LONGTAIL_POLL_TIMEOUT": "60", "LONGTAIL_POLL_TIMEOUT_MAX": "30"})


def test_dev_secret_is_refused_off_loopback():
    refuse_public_dev_secret(Settings(chatcore_host="127.0.0.1"))
    refuse_public_dev_secret(Settings(chatcore_host="0.0.0.0", secret="a real secret"))
    with pytest.raises(ConfigError, match="LONGTAIL_SECRET"):
        refuse_public_dev_secret(Settings(chatcore_host="0.0.0.0"))


def test_cli_stops_with_a_one_line_message():
    result = subprocess.run(
        [sys.executable, "-m", "longtail.cli", "gateway"],
        env={"PORT": "nope", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    expected = "longtail: configuration error: PORT='nope': must be a TCP port (0-65535)"
    assert result.stderr.strip() == expected


def test_every_variable_is_documented_with_its_default():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    defaults = Settings()
    for name, var in ENV_VARS.items():
        assert f"`{var}`" in doc, f"{var} is missing from docs/configuration.md"
        value = getattr(defaults, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            row = next(line for line in doc.splitlines() if f"`{var}`" in line)
            assert shown in row, f"{var}'s default {shown} is not in its row"
