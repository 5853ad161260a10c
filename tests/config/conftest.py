"""Helpers for the configuration unit tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from amqpd.config.loader import load_settings
from amqpd.config.nodes import ConfigError
from amqpd.config.settings import Settings


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented text to a file in tmp_path; returns its path."""

    def _write(text: str, name: str = "amqpd.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def load(write: Callable[[str, str], Path]) -> Callable[..., Settings]:
    """Load settings from YAML text with an empty environment."""

    def _load(text: str, env: dict[str, str] | None = None,
              cli: dict[str, str] | None = None) -> Settings:
        return load_settings(write(text, "amqpd.yaml"), env=env or {}, cli=cli)

    return _load


@pytest.fixture
def error(load: Callable[..., Settings], tmp_path: Path) -> Callable[..., str]:
    """The ConfigError message of a configuration, with the tmp path as 'F'."""

    def _error(text: str, env: dict[str, str] | None = None,
               cli: dict[str, str] | None = None) -> str:
        with pytest.raises(ConfigError) as info:
            load(text, env, cli)
        return str(info.value).replace(str(tmp_path / "amqpd.yaml"), "F")

    return _error
