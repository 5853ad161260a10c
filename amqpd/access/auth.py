"""Users, password hashes and the SASL mechanisms PLAIN, AMQPLAIN and EXTERNAL.

Password hashes use RabbitMQ's ``rabbit_password_hashing_sha256`` format -- base64 of a
4-byte salt followed by SHA-256(salt + password) -- so hashes exported from RabbitMQ
definitions can be used as they are. Hashes made by RabbitMQ with its SHA-512 and (legacy)
MD5 modules are recognised by their length and checked too.

EXTERNAL (RabbitMQ's ``rabbitmq_auth_mechanism_ssl``) logs a client in as the common name of
its verified TLS certificate, without a password; it is offered only on a TLS listener that
verifies client certificates (see :func:`mechanisms_for`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field

from pamqp import decode

from amqpd.access.permissions import FULL, Permission

#: RabbitMQ's hashing modules by the length of salt (4 bytes) + digest.
HASH_ALGORITHMS = {
    4 + 32: "rabbit_password_hashing_sha256",
    4 + 64: "rabbit_password_hashing_sha512",
    4 + 16: "rabbit_password_hashing_md5",
}
_DIGESTS = {4 + 32: "sha256", 4 + 64: "sha512", 4 + 16: "md5"}


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Hash a password in RabbitMQ's salted SHA-256 format."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def _decode_hash(password_hash: str) -> bytes | None:
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return None
    return raw if len(raw) in _DIGESTS else None


def hash_algorithm(password_hash: str) -> str | None:
    """RabbitMQ's name of the hashing module that made a hash, or None if not a hash."""
    raw = _decode_hash(password_hash)
    return None if raw is None else HASH_ALGORITHMS[len(raw)]


def check_password(password: str, password_hash: str) -> bool:
    """Constant-time check of a password against a RabbitMQ-format salted hash."""
    raw = _decode_hash(password_hash)
    if raw is None:
        return False
    expected = hashlib.new(_DIGESTS[len(raw)], raw[:4] + password.encode("utf-8")).digest()
    return hmac.compare_digest(expected, raw[4:])


@dataclass(slots=True)
class User:
    """A broker user.

    ``permissions`` maps a vhost to the user's compiled configure/write/read patterns there
    (see :mod:`amqpd.access.permissions`); ``vhosts`` is the set of vhosts it may open (those with
    a permission entry). A vhost given only in ``vhosts`` gets full permissions (``.*``).
    An empty ``password_hash`` means no password login (EXTERNAL only).
    """

    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)
    vhosts: set[str] = field(default_factory=lambda: {"/"})
    loopback_only: bool = False
    permissions: dict[str, Permission] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for vhost in self.vhosts:
            self.permissions.setdefault(vhost, FULL)
        self.vhosts = set(self.permissions)

    def set_permission(self, vhost: str, permission: Permission) -> None:
        """Grant (or replace) the user's permissions in a vhost."""
        self.permissions[vhost] = permission
        self.vhosts.add(vhost)

    def clear_permission(self, vhost: str) -> None:
        """Remove the user's permissions in a vhost (it can no longer open it)."""
        self.permissions.pop(vhost, None)
        self.vhosts.discard(vhost)


class AuthError(Exception):
    """Authentication failed; the text says why (sent with 403 ACCESS_REFUSED)."""


def parse_plain(response: bytes) -> tuple[str, str]:
    """SASL PLAIN: ``[authzid] NUL authcid NUL passwd``."""
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise AuthError("malformed PLAIN response")
    return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")


def parse_amqplain(response: bytes) -> tuple[str, str]:
    """AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD."""
    try:
        _, table = decode.field_table(len(response).to_bytes(4, "big") + response)
    except Exception as exc:  # pamqp raises several kinds on garbage
        raise AuthError("malformed AMQPLAIN response") from exc
    login, password = table.get("LOGIN"), table.get("PASSWORD")
    if not isinstance(login, str | bytes) or not isinstance(password, str | bytes):
        raise AuthError("AMQPLAIN response lacks LOGIN or PASSWORD")
    as_text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
               for v in (login, password)]
    return as_text[0], as_text[1]


MECHANISMS = {"PLAIN": parse_plain, "AMQPLAIN": parse_amqplain}


def mechanisms_for(external: bool) -> str:
    """The ``mechanisms`` field of connection.start.

    ``external`` is true on a TLS connection whose client presented a certificate that the
    listener verified (:func:`amqpd.access.tls.peer_common_name` returned a name).
    """
    return "PLAIN AMQPLAIN EXTERNAL" if external else "PLAIN AMQPLAIN"


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class UserStore:
    """The users the broker knows."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def add(self, user: User) -> None:
        """Add or replace a user."""
        self.users[user.name] = user

    def remove(self, name: str) -> User | None:
        """Forget a user; its open connections lose every permission."""
        user = self.users.pop(name, None)
        if user is not None:
            for vhost in list(user.permissions):
                user.clear_permission(vhost)
        return user

    def get(self, name: str) -> User | None:
        """The user of that name, or None."""
        return self.users.get(name)

    def authenticate(
        self,
        mechanism: str,
        response: bytes,
        peer_host: str | None,
        peer_cn: str | None = None,
    ) -> User:
        """Check a start-ok response.

        ``peer_cn`` is the common name of the client's verified TLS certificate; only when
        it is given is EXTERNAL accepted, and the user is the one of that name.

        Raises:
            AuthError: with a text a person can act on (it is sent with 403).
        """
        if mechanism == "EXTERNAL":
            if peer_cn is None:
                raise AuthError(
                    "unsupported authentication mechanism 'EXTERNAL' (it needs a TLS "
                    "connection with a verified client certificate)"
                )
            username = peer_cn
            user = self.users.get(username)
            if user is None:
                raise AuthError(
                    "Login was refused using authentication mechanism EXTERNAL. "
                    "For details see the broker logfile."
                )
        else:
            parse = MECHANISMS.get(mechanism)
            if parse is None:
                raise AuthError(f"unsupported authentication mechanism '{mechanism}'")
            username, password = parse(response)
            user = self.users.get(username)
            if user is None or not check_password(password, user.password_hash):
                raise AuthError(
                    f"Login was refused using authentication mechanism {mechanism}. "
                    "For details see the broker logfile."
                )
        if user.loopback_only and not is_loopback(peer_host):
            raise AuthError(f"user '{username}' can only connect via localhost")
        return user
