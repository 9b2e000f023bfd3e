"""Configuration: one settings model, one-line errors, seeds-compatible aliases."""

from __future__ import annotations

import subprocess
import sys

import pytest

from thatdam_bus.config import load_settings
from thatdam_bus.errors import ConfigError


def test_defaults_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_PREFIX", "tdb")
    monkeypatch.setenv("ROLE", "worker")
    monkeypatch.setenv("THATDAM_SERVICES", "membership, capture")
    settings = load_settings()
    assert settings.prefix == "tdb"
    assert settings.role == "worker"
    assert settings.services == ("membership", "capture")
    assert settings.heartbeat_interval == 1.0


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("THATDAM_AMQP_URL", "not a url", "invalid THATDAM_AMQP_URL"),
        ("THATDAM_HEARTBEAT_INTERVAL", "-1", "invalid THATDAM_HEARTBEAT_INTERVAL"),
        ("THATDAM_PREFIX", "has.dot", "invalid THATDAM_PREFIX"),
        ("THATDAM_ROLE", "emperor", "invalid THATDAM_ROLE"),
    ],
)
def test_invalid_values_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                            needle: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cli_reports_bad_config_without_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "thatdam_bus.cli.main", "up"],
        env={"THATDAM_AMQP_URL": "::nope::", "THATDAM_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("thatdam: invalid THATDAM_AMQP_URL")
    assert "Traceback" not in result.stderr
