"""TLS for the amqps listener: the server SSLContext and the client certificate's name.

Standard library :mod:`ssl` only; TLS 1.2 is the minimum. With ``verify_peer`` the listener
asks clients for a certificate signed by ``cafile`` (``fail_if_no_peer_cert`` makes it
mandatory) and SASL EXTERNAL logs them in as the certificate's common name (RabbitMQ's
``rabbitmq_auth_mechanism_ssl`` with ``ssl_cert_login_from = common_name``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, Protocol


class TLSOptions(Protocol):
    """The TLS settings of the amqps listener (``amqpd.config.settings.Settings`` has them)."""

    @property
    def tls_certfile(self) -> str | None: ...
    @property
    def tls_keyfile(self) -> str | None: ...
    @property
    def tls_cafile(self) -> str | None: ...
    @property
    def tls_verify_peer(self) -> bool: ...
    @property
    def tls_fail_if_no_peer_cert(self) -> bool: ...
    @property
    def tls_enabled(self) -> bool: ...


class TLSConfigError(ValueError):
    """The TLS settings cannot make a working context (missing or unreadable files)."""


def server_context(settings: TLSOptions) -> ssl.SSLContext:
    """The SSLContext of the amqps listener.

    Raises:
        TLSConfigError: naming the setting and the file that could not be used.
    """
    if not settings.tls_certfile or not settings.tls_keyfile:
        raise TLSConfigError(
            "listeners.tls: certfile and keyfile are both needed for a TLS listener"
        )
    for name in ("certfile", "keyfile", "cafile"):
        value = getattr(settings, f"tls_{name}")
        if value and not os.path.isfile(value):
            raise TLSConfigError(f"listeners.tls.{name}: no such file: {value}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"listeners.tls.certfile/keyfile: cannot load {settings.tls_certfile} with "
            f"{settings.tls_keyfile}: {exc}"
        ) from exc
    if settings.tls_verify_peer:
        try:
            if settings.tls_cafile:
                context.load_verify_locations(cafile=settings.tls_cafile)
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(
                f"listeners.tls.cafile: cannot load {settings.tls_cafile}: {exc}"
            ) from exc
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def common_name(certificate: Mapping[str, Any] | None) -> str | None:
    """The CN of a certificate as returned by :meth:`ssl.SSLSocket.getpeercert`."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The CN of the client's *verified* certificate, or None.

    ``getpeercert()`` returns a non-empty dict only when the certificate was verified (the
    context's verify_mode is not CERT_NONE), so a None here means EXTERNAL is not possible.
    """
    if ssl_object is None:
        return None
    try:
        return common_name(ssl_object.getpeercert())
    except (ValueError, ssl.SSLError):
        return None


def external_allowed(settings: TLSOptions) -> bool:
    """True when the TLS listener verifies client certificates (EXTERNAL may be offered)."""
    return settings.tls_enabled and settings.tls_verify_peer
