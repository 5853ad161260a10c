"""SIGHUP: re-read the configuration (and topology) and apply what can change live.

All or nothing: the new files are read and validated, and the new topology is planned
against the live broker; any error or conflict is logged and the broker stays exactly as it
was. Otherwise users, permissions, vhosts, exchanges, queues and bindings are added or
changed, users and permissions no longer configured are removed, and the settings that can
change live (limits, queue defaults, logging, loopback users) take effect for new
connections and queues. Listeners, TLS files, the data directory and the default user are
read at start only: a change to them is logged as needing a restart. Exchanges and queues
that the topology no longer lists are left in place (they may hold messages) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amqpd.config import schema
from amqpd.config.loader import load_settings, value_of
from amqpd.config.logs import configure_logging
from amqpd.config.nodes import ConfigError
from amqpd.topology.apply import apply, desired_state, plan

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker

LOGGER = logging.getLogger(__name__)

#: Settings read only when the broker starts.
RESTART_ONLY = frozenset({
    "host", "port", "data_dir", "tls_host", "tls_port", "tls_certfile", "tls_keyfile",
    "tls_cafile", "tls_verify_peer", "tls_fail_if_no_peer_cert", "default_user",
    "default_pass", "default_vhost",
})
#: Applied through the topology rather than assigned.
STRUCTURED = frozenset({"users", "vhosts", "permissions", "topology", "topology_file"})


@dataclass(slots=True)
class ReloadResult:
    """What a reload did."""

    ok: bool
    error: str | None = None
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)


def reload(
    broker: Broker,
    settings_path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ReloadResult:
    """Re-read the configuration and apply the changes; never raises (errors are logged).

    ``settings_path`` defaults to the file the broker was started with; the command-line
    overrides it was started with still win over the file.
    """
    current = broker.settings
    path = settings_path if settings_path is not None else current.config_file
    try:
        new = load_settings(path, env=env, cli=current.cli_overrides)
        desired = desired_state(new)
        planned = plan(broker, desired, remove_unlisted=True)
    except ConfigError as exc:
        LOGGER.error("reload failed, nothing changed:\n%s", exc)
        return ReloadResult(False, str(exc))
    except Exception as exc:  # a reload must never take the broker down
        LOGGER.exception("reload failed, nothing changed")
        return ReloadResult(False, f"{type(exc).__name__}: {exc}")
    result = ReloadResult(True, left_alone=list(planned.left_alone))
    try:
        if not planned.is_empty():
            apply(broker, planned, desired)
    except ConfigError as exc:
        LOGGER.error("reload failed, nothing changed:\n%s", exc)
        return ReloadResult(False, str(exc))
    result.applied.extend(planned.describe())
    for option in schema.OPTIONS:
        old_value = value_of(current, option.attr)
        new_value = value_of(new, option.attr)
        if option.attr in STRUCTURED:
            continue
        if old_value == new_value:
            continue
        shown_old, shown_new = option.kind.show(old_value), option.kind.show(new_value)
        if option.attr in RESTART_ONLY:
            result.needs_restart.append(
                f"{option.path} changed ({shown_old} -> {shown_new}) but is read at start "
                f"only; still {shown_old} until a restart"
            )
            continue
        _assign(current, option.attr, new_value)
        current.sources[option.path] = new.sources.get(option.path, "default")
        result.applied.append(f"{option.path}: {shown_old} -> {shown_new}")
    for attr in STRUCTURED:
        setattr(current, attr, getattr(new, attr))
    broker.memory_limit = current.memory_high_watermark_bytes
    current.config_file = new.config_file
    if any(line.startswith("logging.") for line in result.applied):
        configure_logging(current.log_level, current.log_format)
    for line in result.applied:
        LOGGER.info("reload: %s", line)
    for line in result.needs_restart + result.left_alone:
        LOGGER.warning("reload: %s", line)
    LOGGER.info("configuration reloaded (%d changes)", len(result.applied))
    return result


def _assign(settings: Any, attr: str, value: Any) -> None:
    *parents, leaf = attr.split(".")
    target = settings
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, leaf, value)
