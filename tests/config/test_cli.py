"""The operator commands: check-config, config show, ping, export-topology, hash-password."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from amqpd.access.auth import check_password
from amqpd.cli import main
from amqpd.config.logs import JsonFormatter, configure_logging

from ..broker_process import BrokerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "topology.example.yaml"


@pytest.fixture(autouse=True)
def _no_amqpd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AMQPD_"):
            monkeypatch.delenv(name)


def test_check_config_ok(write: Callable[[str, str], Path],
                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(f"topology_file: {EXAMPLE}\n", "amqpd.yaml")
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: configuration OK\n"


def test_check_config_reports_the_location(write: Callable[[str, str], Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write("limits:\n  heartbeat: lots\n", "amqpd.yaml")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:2:14: limits.heartbeat: got the string 'lots', expected an integer from 0 "
        "to 65535\n"
    )


def test_check_config_plans_the_topology(write: Callable[[str, str], Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write("topology:\n  vhosts:\n    /:\n      exchanges:\n        e: {type: x-nope}\n",
                 "amqpd.yaml")
    assert main(["--config", str(path), "check-config"]) == 1
    assert capsys.readouterr().err.startswith(
        f"{path}:5:9: exchange 'e' in vhost '/': unknown exchange type 'x-nope'"
    )


def test_check_config_loads_tls_files(write: Callable[[str, str], Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write("listeners:\n  tls: {port: 5671, certfile: /no/cert.pem, keyfile: /no/k}\n",
                 "amqpd.yaml")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:2:15: listeners.tls.certfile: no such file: /no/cert.pem\n"
    )


def test_run_stops_on_a_bad_config(write: Callable[[str, str], Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write("listeners:\n  amqp:\n    port: 99999\n", "amqpd.yaml")
    assert main(["--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:3:11: listeners.amqp.port: got 99999, which is out of range, expected an "
        "integer from 0 to 65535\n"
    )


def test_config_show(write: Callable[[str, str], Path],
                     capsys: pytest.CaptureFixture[str]) -> None:
    path = write("auth:\n  default_pass: topsecret\n", "amqpd.yaml")
    assert main(["--config", str(path), "--port", "1234", "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out
    assert "    port: 1234  # command line --port" in out
    assert yaml.safe_load(out)["auth"]["default_pass"] == "***"


def test_hash_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-password", "s3cret"]) == 0
    assert check_password("s3cret", capsys.readouterr().out.strip())


def test_export_topology(write: Callable[[str, str], Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(f"topology_file: {EXAMPLE}\n", "amqpd.yaml")
    out = tmp_path / "exported.yaml"
    assert main(["--config", str(path), "--data-dir", str(tmp_path / "d"), "export-topology",
                 "-o", str(out)]) == 0
    document = yaml.safe_load(out.read_text())
    assert document["vhosts"]["/"]["exchanges"]["tickets"]["type"] == "x-rules"
    assert [u["name"] for u in document["users"]] == ["reporter"]
    # and the export is a valid topology file
    assert main(["--topology", str(out), "check-config", str(path)]) == 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("ping"))
    yield process
    process.stop()


def test_ping(broker: BrokerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "--port", str(broker.port)]) == 0
    assert capsys.readouterr().out.startswith(f"127.0.0.1:{broker.port}: amqpd ")


def test_ping_wrong_password(broker: BrokerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "--port", str(broker.port), "--password", "nope"]) == 1
    assert "403 ACCESS_REFUSED" in capsys.readouterr().err


def test_ping_defaults_come_from_the_environment(
    broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMQPD_PORT", str(broker.port))
    monkeypatch.setenv("AMQPD_HOST", "0.0.0.0")  # pinged on the loopback address
    assert main(["ping"]) == 0
    monkeypatch.setenv("AMQPD_DEFAULT_VHOST", "nope")
    assert main(["ping"]) == 1
    assert "530 NOT_ALLOWED" in capsys.readouterr().err


def test_ping_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["ping", "--port", str(port), "--timeout", "1"]) == 1
    assert f"amqpd ping: 127.0.0.1:{port}:" in capsys.readouterr().err


def test_ping_something_that_is_not_amqp(capsys: pytest.CaptureFixture[str]) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(8)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    assert main(["ping", "--port", str(port), "--timeout", "2"]) == 1
    thread.join()
    server.close()
    assert "amqpd ping" in capsys.readouterr().err


def test_json_log_lines() -> None:
    record = logging.LogRecord("amqpd.x", logging.WARNING, __file__, 1, "hello %s", ("you",),
                               None)
    record.peer = "1.2.3.4"
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "warning" and document["message"] == "hello you"
    assert document["logger"] == "amqpd.x" and document["peer"] == "1.2.3.4"
    assert document["time"].endswith("Z")


def test_configure_logging_is_idempotent() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("warning", "json", sys.stderr)
        configure_logging("info", "plain", sys.stderr)
        ours = [h for h in root.handlers if getattr(h, "_amqpd", False)]
        assert len(ours) == 1
        assert root.level == logging.INFO
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
