"""RabbitMQ's permission semantics: regex search, '' = nothing, amq.default, exact texts."""

from __future__ import annotations

import pytest

from amqpd.access.auth import User
from amqpd.access.permissions import (
    FULL,
    AccessRefusedError,
    Permission,
    authorize,
    check_vhost_access,
    is_authorized,
)
from amqpd.protocol.errors import ChannelError, ConnectionLevelError


def user(vhost: str = "/", configure: str = ".*", write: str = ".*", read: str = ".*") -> User:
    person = User("u", "", vhosts=set())
    person.set_permission(vhost, Permission(configure, write, read))
    return person


@pytest.mark.parametrize(("pattern", "name", "allowed"), [
    (".*", "anything", True),
    (".*", "amq.gen-abc", True),
    ("", "q", False),  # '' matches nothing (RabbitMQ turns it into ^$)
    ("", "amq.gen-abc", False),
    ("^$", "q", False),
    ("^orders$", "orders", True),
    ("^orders$", "orders-eu", False),
    ("orders", "orders-eu", True),  # a search, like Erlang's re:run: anchor to match whole
    ("orders", "eu-orders", True),
    ("^orders", "eu-orders", False),
    ("^(amq\\.gen.*|amq\\.default)$", "amq.gen-XYZ", True),
    ("^(amq\\.gen.*|amq\\.default)$", "mine", False),
    ("^alice-", "alice-tasks", True),
    ("^alice-", "bob-tasks", False),
])
def test_pattern_semantics(pattern: str, name: str, allowed: bool) -> None:
    person = user(configure=pattern)
    assert is_authorized(person, "/", "configure", "queue", name) is allowed


def test_each_permission_uses_its_own_pattern() -> None:
    person = user(configure="^c$", write="^w$", read="^r$")
    authorize(person, "/", "configure", "queue", "c")
    authorize(person, "/", "write", "exchange", "w")
    authorize(person, "/", "read", "queue", "r")
    with pytest.raises(AccessRefusedError):
        authorize(person, "/", "write", "exchange", "c")


def test_refusal_text_is_rabbitmqs() -> None:
    person = user(configure="", write="", read="")
    with pytest.raises(AccessRefusedError) as info:
        authorize(person, "/", "configure", "queue", "q")
    error = info.value
    assert isinstance(error, ChannelError)  # closes the channel, not the connection
    assert error.reply_code == 403
    assert error.reply_text == (
        "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
    )


def test_default_exchange_is_checked_as_amq_default() -> None:
    person = user(write="^amq\\.default$")
    authorize(person, "/", "write", "exchange", "")
    with pytest.raises(AccessRefusedError) as info:
        authorize(user(write="^x$"), "/", "write", "exchange", "")
    assert info.value.detail == (
        "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
    )


def test_queue_named_amq_default_is_not_the_default_exchange() -> None:
    person = user(read="^amq\\.default$")
    with pytest.raises(AccessRefusedError):
        authorize(person, "/", "read", "queue", "")


def test_no_permissions_in_the_vhost() -> None:
    person = user(vhost="/")
    with pytest.raises(AccessRefusedError) as info:
        authorize(person, "other", "read", "queue", "q")
    assert "in vhost 'other'" in info.value.detail
    with pytest.raises(ConnectionLevelError) as opened:
        check_vhost_access(person, "other")
    assert opened.value.reply_code == 530
    assert opened.value.detail == "access to vhost 'other' refused for user 'u'"
    check_vhost_access(person, "/")


def test_empty_patterns_still_open_the_vhost() -> None:
    person = user(configure="", write="", read="")
    check_vhost_access(person, "/")  # RabbitMQ: any permission entry lets a user in
    assert "/" in person.vhosts


def test_user_vhosts_keeps_working() -> None:
    legacy = User("guest", "", vhosts={"/"})
    assert legacy.vhosts == {"/"}
    assert legacy.permissions["/"] is FULL
    authorize(legacy, "/", "configure", "queue", "anything")
    legacy.clear_permission("/")
    assert legacy.vhosts == set()
    with pytest.raises(ConnectionLevelError):
        check_vhost_access(legacy, "/")


def test_patterns_are_compiled_once() -> None:
    permission = Permission("^a", "^b", "^c")
    compiled = dict(permission._compiled)
    for _ in range(3):
        permission.allows("configure", "abc")
    assert permission._compiled == compiled
    assert permission._compiled["configure"] is compiled["configure"]
    assert permission.allows("configure", "abc") and not permission.allows("write", "abc")


def test_answer_cache_is_bounded() -> None:
    permission = Permission(".*", ".*", ".*")
    for index in range(5000):
        assert permission.allows("read", f"q{index}")
    assert len(permission._answers) <= 1024
