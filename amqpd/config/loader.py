"""Build :class:`~amqpd.config.settings.Settings` from defaults, a YAML file, ``AMQPD_*`` variables
and the command line -- in that order, each overriding the one before.

Configuration file: ``--config FILE``, else ``$AMQPD_CONFIG``, else ``config/amqpd.yaml`` in
the working directory when it exists, else built-in defaults only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import Node

from amqpd.config import schema
from amqpd.config.model import Topology
from amqpd.config.nodes import (
    ConfigError,
    Origin,
    compose_file,
    compose_text,
    is_null,
    join,
    mapping,
    scalar_node,
    unknown_key,
)
from amqpd.config.parse import load_topology, merge
from amqpd.config.settings import Settings

DEFAULT_CONFIG = Path("config") / "amqpd.yaml"
CONFIG_ENV = "AMQPD_CONFIG"
DEFAULT_SOURCE = "default"

Found = dict[str, tuple[Any, str]]


def config_path(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """Which configuration file to read (None = defaults only)."""
    if explicit is not None:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _walk(node: Node, group: dict[str, Any], origin: Origin, path: str, found: Found) -> None:
    for key, key_node, value_node in mapping(node, origin, path, "a mapping of settings"):
        child = group.get(key)
        here = join(path, key)
        if child is None:
            moved = schema.BY_ATTR.get(key)
            suggestion = moved.path if moved is not None and moved.path != here else None
            raise unknown_key(key, key_node, group, origin, path, suggestion=suggestion)
        if isinstance(child, schema.Option):
            found[child.path] = (child.kind.parse(value_node, origin, here),
                                 origin.at(value_node))
        elif not is_null(value_node):
            _walk(value_node, child, origin, here, found)


def read_file(path: Path) -> Found:
    """Validated values of a configuration file, by option path, with their positions."""
    node, origin = compose_file(path)
    found: Found = {}
    if node is not None:
        _walk(node, schema.tree(), origin, "", found)
    return found


def parse_text(option: schema.Option, text: str, origin: Origin) -> Any:
    """The value of an option given as text (environment variable, command-line flag)."""
    kind = option.kind
    if text.strip() == "" and kind.nullable:
        return None
    if kind.text_is_string:
        return kind.parse(scalar_node(text), origin, "")
    if isinstance(kind, schema.StrList):
        values = kind.from_text(text)
        if values is not None:
            return values
    node = compose_text(text, origin)
    if node is None:
        raise origin.error(None, f"got an empty value, expected {kind.expected}")
    return kind.parse(node, origin, "")


def read_env(env: Mapping[str, str]) -> Found:
    """Values from ``AMQPD_*`` variables; errors name the variable."""
    found: Found = {}
    for option in schema.OPTIONS:
        text = env.get(option.env)
        if text is not None:
            origin = Origin(f"environment variable {option.env}", is_file=False)
            found[option.path] = (parse_text(option, text, origin), origin.label)
    return found


def cli_option(label: str) -> schema.Option:
    """The option behind ``--port`` or ``--set limits.frame_max``."""
    option = schema.BY_FLAG.get(label)
    if option is None and label.startswith("--set "):
        option = schema.find(label[len("--set "):])
    if option is None:
        name = label.removeprefix("--set ")
        raise ConfigError(
            f"command line {label}: unknown setting {name!r}, expected one of: "
            + ", ".join(o.path for o in schema.OPTIONS)
        )
    return option


def read_cli(overrides: Mapping[str, str]) -> Found:
    """Values from the command line: ``{"--port": "5673", "--set limits.frame_max": "8192"}``."""
    found: Found = {}
    for label, text in overrides.items():
        option = cli_option(label)
        origin = Origin(f"command line {label}", is_file=False)
        found[option.path] = (parse_text(option, text, origin), origin.label)
    return found


def _assign(settings: Settings, attr: str, value: Any) -> None:
    target: Any = settings
    *parents, leaf = attr.split(".")
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, leaf, value)


def value_of(settings: Settings, attr: str) -> Any:
    """Read a (possibly nested, dotted) settings attribute."""
    target: Any = settings
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from defaults < file < environment < command line, validated.

    Raises:
        ConfigError: ``WHERE: what is wrong, expected ...`` where WHERE is
            ``FILE:LINE:COLUMN``, ``environment variable AMQPD_X`` or ``command line --x``.
    """
    env = os.environ if env is None else env
    cli = dict(cli or {})
    path = config_path(config, env)
    layers: list[Found] = []
    if path is not None:
        layers.append(read_file(path))
    layers.append(read_env(env))
    layers.append(read_cli(cli))
    settings = Settings()
    settings.config_file = str(path) if path is not None else None
    settings.cli_overrides = cli
    for option in schema.OPTIONS:
        settings.sources[option.path] = DEFAULT_SOURCE
    for layer in layers:
        for option_path, (value, source) in layer.items():
            option = schema.BY_PATH[option_path]
            _assign(settings, option.attr, value)
            settings.sources[option_path] = source
    _load_topology(settings)
    check(settings)
    return settings


def _load_topology(settings: Settings) -> None:
    if settings.topology_file:
        from_file = load_topology(settings.topology_file)
        settings.topology = merge(settings.topology or Topology(), from_file)


def _where(settings: Settings, option_path: str) -> str:
    source = settings.sources.get(option_path, DEFAULT_SOURCE)
    return f"{option_path} (default)" if source == DEFAULT_SOURCE else source


def check(settings: Settings) -> None:
    """Rules that involve more than one setting."""
    if settings.tls_port is not None:
        for name in ("certfile", "keyfile"):
            if not getattr(settings, f"tls_{name}"):
                raise ConfigError(
                    f"{_where(settings, 'listeners.tls.port')}: listeners.tls: a TLS listener "
                    f"has no {name}, expected listeners.tls.{name} (PEM file)"
                )
        tls_host = settings.tls_host or settings.host
        if settings.tls_port == settings.port != 0 and tls_host == settings.host:
            raise ConfigError(
                f"{_where(settings, 'listeners.tls.port')}: listeners.tls.port: "
                f"{settings.tls_port} is also listeners.amqp.port, expected another port"
            )
    if settings.tls_fail_if_no_peer_cert and not settings.tls_verify_peer:
        raise ConfigError(
            f"{_where(settings, 'listeners.tls.fail_if_no_peer_cert')}: "
            "listeners.tls.fail_if_no_peer_cert: true without verify_peer, expected "
            "verify_peer: true as well"
        )
    if settings.output_low_watermark > settings.output_high_watermark:
        raise ConfigError(
            f"{_where(settings, 'limits.output_low_watermark')}: limits.output_low_watermark: "
            f"{settings.output_low_watermark} is above output_high_watermark "
            f"({settings.output_high_watermark}), expected a value at most that"
        )
    topology = settings.topology or Topology()
    users = {user.name: user for user in settings.users}
    for user in topology.users.values():
        other = users.get(user.name)
        if other is not None and other.key() != user.key():
            raise ConfigError(
                f"{user.where}: user '{user.name}' is defined differently at {other.where}, "
                "expected one definition"
            )
    user_names = set(users) | set(topology.users)
    if settings.default_user:
        user_names.add(settings.default_user)
    vhosts = {settings.default_vhost, *settings.vhosts, *topology.vhosts}
    for permission in [*settings.permissions, *topology.permissions]:
        what = f"{permission.where}: permissions of user '{permission.user}' in vhost " \
               f"'{permission.vhost}'"
        if permission.user not in user_names:
            raise ConfigError(
                f"{what}: no user '{permission.user}' is defined, expected one of the users: "
                f"{', '.join(sorted(user_names))}"
            )
        if permission.vhost not in vhosts:
            raise ConfigError(
                f"{what}: no vhost '{permission.vhost}' is defined, expected one of the "
                f"vhosts: {', '.join(sorted(vhosts))} (or add it to vhosts)"
            )
    config_perms = {(p.user, p.vhost): p for p in settings.permissions}
    for permission in topology.permissions:
        same = config_perms.get((permission.user, permission.vhost))
        if same is not None and same.key() != permission.key():
            raise ConfigError(
                f"{permission.where}: permissions of user '{permission.user}' in vhost "
                f"'{permission.vhost}' differ from those at {same.where}, expected one "
                "definition"
            )


# -- `amqpd config show` -------------------------------------------------------------------


def _dump(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def show(settings: Settings) -> str:
    """The effective configuration as YAML, each value commented with where it came from.

    Secrets (default_pass, password hashes) are printed as ``***``.
    """
    lines = [
        "# amqpd effective configuration",
        "# precedence: command line > environment (AMQPD_*) > configuration file > default",
        f"# configuration file: {settings.config_file or '(none: built-in defaults)'}",
    ]

    def emit(group: dict[str, Any], indent: str) -> None:
        for key, child in group.items():
            if isinstance(child, schema.Option):
                value = child.kind.show(value_of(settings, child.attr))
                source = settings.sources.get(child.path, DEFAULT_SOURCE)
                comment = f"  # {source}"
                nested = isinstance(value, dict) or (
                    isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
                )
                if nested and value:
                    lines.append(f"{indent}{key}:{comment}")
                    block = yaml.safe_dump(value, default_flow_style=False, sort_keys=False,
                                           width=10_000)
                    lines.extend(f"{indent}  {line}" for line in block.rstrip().splitlines())
                else:
                    lines.append(f"{indent}{key}: {_dump(value)}{comment}")
            else:
                lines.append(f"{indent}{key}:")
                emit(child, indent + "  ")

    emit(schema.tree(), "")
    lines.append(f"# memory_high_watermark in bytes: {settings.memory_high_watermark_bytes}")
    return "\n".join(lines) + "\n"
