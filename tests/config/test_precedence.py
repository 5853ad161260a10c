"""Precedence (command line > environment > file > default), env/flag errors, config show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from amqpd.access.auth import hash_password
from amqpd.cli import _parser, cli_overrides
from amqpd.config.loader import load_settings, show
from amqpd.config.nodes import ConfigError
from amqpd.config.settings import Settings

FILE = """
listeners:
  amqp: {port: 6000}
limits:
  heartbeat: 10
  frame_max: 8192
data_dir: /from/file
"""


def test_each_layer_wins_over_the_one_below(write: Callable[[str, str], Path]) -> None:
    path = write(FILE, "amqpd.yaml")
    settings = load_settings(
        path,
        env={"AMQPD_PORT": "7000", "AMQPD_HEARTBEAT": "20"},
        cli={"--port": "8000"},
    )
    assert settings.port == 8000  # cli > env > file
    assert settings.heartbeat == 20  # env > file
    assert settings.frame_max == 8192  # file > default
    assert settings.channel_max == 2047  # default
    assert settings.data_dir == "/from/file"
    assert settings.sources["listeners.amqp.port"] == "command line --port"
    assert settings.sources["limits.heartbeat"] == "environment variable AMQPD_HEARTBEAT"
    assert settings.sources["limits.frame_max"] == f"{path}:5:14"
    assert settings.sources["limits.channel_max"] == "default"


def test_set_flag_reaches_any_setting(write: Callable[[str, str], Path]) -> None:
    settings = load_settings(
        write(FILE, "amqpd.yaml"),
        env={"AMQPD_FRAME_MAX": "16384"},
        cli={"--set limits.frame_max": "65536", "--set queue_defaults.message_ttl": "5s",
             "--set heartbeat": "0"},
    )
    assert settings.frame_max == 65536
    assert settings.queue_defaults.message_ttl == 5000
    assert settings.heartbeat == 0  # attribute names work too


def test_command_line_parsing_builds_the_overrides() -> None:
    args = _parser().parse_args(
        ["--port", "0", "--data-dir", "d", "--set", "limits.heartbeat=5", "--topology", "t.y",
         "config", "show"]
    )
    assert cli_overrides(args) == {
        "--port": "0", "--data-dir": "d", "--topology": "t.y",
        "--set limits.heartbeat": "5",
    }


def test_set_without_equals_is_an_error() -> None:
    args = _parser().parse_args(["--set", "limits.heartbeat"])
    with pytest.raises(ConfigError, match=r"^command line --set limits.heartbeat: no '='"):
        cli_overrides(args)


def test_environment_like_the_official_rabbitmq_image() -> None:
    settings = load_settings(None, env={
        "AMQPD_DEFAULT_USER": "admin", "AMQPD_DEFAULT_PASS": "12345",
        "AMQPD_DEFAULT_VHOST": "prod", "AMQPD_DATA_DIR": "/var/lib/amqpd",
        "AMQPD_LOOPBACK_USERS": "", "AMQPD_VHOSTS": "a, b",
        "AMQPD_MEMORY_HIGH_WATERMARK": "512MiB",
    })
    assert (settings.default_user, settings.default_pass, settings.default_vhost) == (
        "admin", "12345", "prod")  # strings stay strings ("12345", not 12345)
    assert settings.data_dir == "/var/lib/amqpd"
    assert settings.loopback_users == []
    assert settings.vhosts == ["a", "b"]
    assert settings.memory_high_watermark_bytes == 512 * 1024 * 1024


def test_structured_values_from_the_environment() -> None:
    password_hash = hash_password("pw")
    settings = load_settings(None, env={
        "AMQPD_USERS": f"[{{name: bob, password_hash: '{password_hash}', tags: [ops]}}]",
        "AMQPD_VHOSTS": "[dev]",
        "AMQPD_PERMISSIONS": "[{user: bob, vhost: dev, configure: '', write: '.*', "
                             "read: '.*'}]",
        "AMQPD_TLS_PORT": "",
    })
    assert [(u.name, u.tags) for u in settings.users] == [("bob", ["ops"])]
    assert settings.permissions[0].vhost == "dev"
    assert settings.tls_port is None


@pytest.mark.parametrize(("env", "message"), [
    ({"AMQPD_PORT": "abc"}, "environment variable AMQPD_PORT: got the string 'abc', expected "
                            "an integer from 0 to 65535"),
    ({"AMQPD_PORT": "99999"}, "environment variable AMQPD_PORT: got 99999, which is out of "
                              "range, expected an integer from 0 to 65535"),
    ({"AMQPD_LOG_LEVEL": "loud"}, "environment variable AMQPD_LOG_LEVEL: got the string "
                                  "'loud', expected one of debug, info, warning, error, "
                                  "critical"),
    ({"AMQPD_HOST": ""}, "environment variable AMQPD_HOST: got an empty string, expected a "
                         "non-empty string"),
    ({"AMQPD_USERS": "[{name: x}]"}, "environment variable AMQPD_USERS: [0]: missing "
                                     "'password_hash', expected a value for it"),
    ({"AMQPD_FRAME_MAX": "[1"}, "environment variable AMQPD_FRAME_MAX: not valid YAML: "
                                "expected ',' or ']', but got '<stream end>'"),
])
def test_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env=env)
    assert str(info.value) == message


@pytest.mark.parametrize(("cli", "message"), [
    ({"--port": "x"}, "command line --port: got the string 'x', expected an integer from 0 "
                      "to 65535"),
    ({"--set limits.heartbeat": "-1"}, "command line --set limits.heartbeat: got -1, which "
                                       "is out of range, expected an integer from 0 to 65535"),
])
def test_command_line_errors_name_the_flag(cli: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, cli=cli)
    assert str(info.value) == message


def test_unknown_set_lists_the_settings() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, cli={"--set nope": "1"})
    assert str(info.value).startswith(
        "command line --set nope: unknown setting 'nope', expected one of: "
        "listeners.amqp.host, listeners.amqp.port, "
    )


def test_config_file_from_the_environment(write: Callable[[str, str], Path]) -> None:
    path = write(FILE, "elsewhere.yaml")
    settings = load_settings(None, env={"AMQPD_CONFIG": str(path)})
    assert settings.port == 6000 and settings.config_file == str(path)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_show_masks_secrets_and_names_sources(write: Callable[[str, str], Path]) -> None:
    password_hash = hash_password("secret")
    path = write(
        f"""
        auth:
          default_pass: hunter2
        users:
          - {{name: bob, password_hash: "{password_hash}", tags: [ops]}}
        topology:
          users:
            - {{name: eve, password_hash: "{password_hash}"}}
        """,
        "amqpd.yaml",
    )
    text = show(load_settings(path, env={"AMQPD_PORT": "5999"}, cli={"--log-level": "debug"}))
    assert "hunter2" not in text and password_hash not in text
    assert f"  default_pass: '***'  # {path}:2:17" in text
    assert "    port: 5999  # environment variable AMQPD_PORT" in text
    assert "  level: debug  # command line --log-level" in text
    assert "  frame_max: 131072  # default" in text
    assert "password_hash: '***'" in text
    assert "# precedence: command line > environment (AMQPD_*) > configuration file > " \
           "default" in text
    # what `config show` prints is itself a valid configuration (modulo the masks)
    import yaml

    assert isinstance(yaml.safe_load(text), dict)


def test_settings_keep_their_attribute_names() -> None:
    settings = Settings()
    for name in ("host", "port", "data_dir", "log_level", "channel_max", "frame_max",
                 "heartbeat", "max_connections", "max_message_size", "default_user",
                 "default_pass", "default_vhost", "loopback_users", "output_high_watermark",
                 "output_low_watermark", "close_timeout"):
        assert hasattr(settings, name)
    assert Settings(max_message_size=10).max_message_size == 10
