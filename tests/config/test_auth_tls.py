"""Password hashes (RabbitMQ formats), SASL EXTERNAL, the TLS context and certificate CN."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
from pathlib import Path

import pytest

from amqpd.access.auth import (
    AuthError,
    User,
    UserStore,
    check_password,
    hash_algorithm,
    hash_password,
    mechanisms_for,
)
from amqpd.access.tls import (
    TLSConfigError,
    common_name,
    external_allowed,
    peer_common_name,
    server_context,
)
from amqpd.config.settings import Settings


def rabbit_hash(password: str, algorithm: str, salt: bytes = b"\x01\x02\x03\x04") -> str:
    digest = hashlib.new(algorithm, salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


@pytest.mark.parametrize(("algorithm", "name"), [
    ("sha256", "rabbit_password_hashing_sha256"),
    ("sha512", "rabbit_password_hashing_sha512"),
    ("md5", "rabbit_password_hashing_md5"),
])
def test_rabbitmq_hashes(algorithm: str, name: str) -> None:
    password_hash = rabbit_hash("s3cret", algorithm)
    assert hash_algorithm(password_hash) == name
    assert check_password("s3cret", password_hash)
    assert not check_password("wrong", password_hash)


def test_known_rabbitmq_hash() -> None:
    # The RabbitMQ docs' example: password "test12" with salt 908D C60A.
    assert check_password("test12", "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR")
    assert hash_password("x") != hash_password("x")  # salted


def test_not_a_hash() -> None:
    assert hash_algorithm("nothash") is None
    assert hash_algorithm("") is None
    assert not check_password("", "")


def store() -> UserStore:
    users = UserStore()
    users.add(User("cert-user", "", vhosts={"/"}))
    users.add(User("bob", hash_password("pw"), vhosts={"/"}))
    return users


def test_external_logs_in_as_the_certificate_cn() -> None:
    assert store().authenticate("EXTERNAL", b"", "10.0.0.1", peer_cn="cert-user").name == \
        "cert-user"


def test_external_needs_a_verified_certificate() -> None:
    with pytest.raises(AuthError, match="needs a TLS connection with a verified client"):
        store().authenticate("EXTERNAL", b"", "10.0.0.1")


def test_external_needs_a_known_user() -> None:
    with pytest.raises(AuthError, match="Login was refused using authentication mechanism "
                                        "EXTERNAL"):
        store().authenticate("EXTERNAL", b"", "10.0.0.1", peer_cn="stranger")


def test_passwordless_user_cannot_use_plain() -> None:
    with pytest.raises(AuthError):
        store().authenticate("PLAIN", b"\0cert-user\0", "10.0.0.1")
    assert store().authenticate("PLAIN", b"\0bob\0pw", "10.0.0.1").name == "bob"


def test_removed_user_loses_its_permissions() -> None:
    users = store()
    bob = users.users["bob"]
    users.remove("bob")
    assert bob.vhosts == set() and bob.permissions == {}
    with pytest.raises(AuthError):
        users.authenticate("PLAIN", b"\0bob\0pw", None)


def test_mechanisms() -> None:
    assert mechanisms_for(False) == "PLAIN AMQPLAIN"
    assert mechanisms_for(True) == "PLAIN AMQPLAIN EXTERNAL"


def test_common_name() -> None:
    certificate = {"subject": ((("countryName", "DE"),), (("commonName", "alice"),))}
    assert common_name(certificate) == "alice"
    assert common_name({}) is None
    assert common_name(None) is None
    assert peer_common_name(None) is None


def test_external_allowed_only_with_verify_peer() -> None:
    assert not external_allowed(Settings())
    assert not external_allowed(Settings(tls_port=5671))
    assert external_allowed(Settings(tls_port=5671, tls_verify_peer=True))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "1", "-subj",
         "/CN=localhost"],
        cwd=directory, check=True, capture_output=True,
    )
    return directory


def test_server_context(certs: Path) -> None:
    settings = Settings(tls_port=0, tls_certfile=str(certs / "server.pem"),
                        tls_keyfile=str(certs / "server.key"))
    context = server_context(settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    settings.tls_verify_peer = True
    settings.tls_cafile = str(certs / "server.pem")
    assert server_context(settings).verify_mode == ssl.CERT_OPTIONAL
    settings.tls_fail_if_no_peer_cert = True
    assert server_context(settings).verify_mode == ssl.CERT_REQUIRED


def test_server_context_errors(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="certfile and keyfile are both needed"):
        server_context(Settings(tls_port=0))
    missing = Settings(tls_port=0, tls_certfile=str(tmp_path / "nope.pem"),
                       tls_keyfile=str(certs / "server.key"))
    with pytest.raises(TLSConfigError, match="no such file"):
        server_context(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="cannot load"):
        server_context(Settings(tls_port=0, tls_certfile=str(garbage),
                                tls_keyfile=str(certs / "server.key")))
    with pytest.raises(TLSConfigError, match=r"listeners\.tls\.cafile: cannot load"):
        server_context(Settings(tls_port=0, tls_certfile=str(certs / "server.pem"),
                                tls_keyfile=str(certs / "server.key"), tls_verify_peer=True,
                                tls_cafile=str(garbage)))
