"""Helpers for the configuration interop tests: an amqpd subprocess started with a config
file, and a throwaway CA with server and client certificates (``openssl`` command line).

Not a test module; imported by ``test_config_*.py``, ``test_tls.py``, ``test_permissions.py``
and ``test_topology.py``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0


def _pump(stream: IO[str], sink: queue.Queue[str | None], keep: list[str]) -> None:
    for line in iter(stream.readline, ""):
        keep.append(line)
        sink.put(line)
    sink.put(None)


class ConfigBroker:
    """``python -m amqpd --port 0 --config FILE --data-dir DIR`` as a subprocess.

    ``port`` (and ``tls_port`` when a TLS listener is configured) come from the
    ``amqpd listening on HOST:PORT`` lines; stderr (the log) is kept for assertions.
    """

    def __init__(
        self,
        directory: Path,
        config: str,
        *extra: str,
        env: dict[str, str] | None = None,
        tls: bool = False,
        log_level: str = "info",
    ) -> None:
        self.directory = directory
        self.config_path = directory / "amqpd.yaml"
        self.config_path.write_text(config, encoding="utf-8")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AMQPD_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--port", "0", "--config", str(self.config_path),
             "--data-dir", str(directory / "data"), "--log-level", log_level, *extra],
            cwd=REPO_ROOT,
            env={**clean, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        threading.Thread(target=_pump, args=(self.process.stdout, self.stdout,
                                             self.stdout_lines), daemon=True).start()
        threading.Thread(target=_pump, args=(self.process.stderr, self.stderr,
                                             self.stderr_lines), daemon=True).start()
        self.host, self.port = self._listening("")
        self.tls_port = self._listening(" (tls)")[1] if tls else None

    def _listening(self, suffix: str) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self.stdout.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"amqpd did not start: {self.log()}")
            if line.startswith("amqpd listening on ") and line.rstrip().endswith(suffix) \
                    and (suffix or not line.rstrip().endswith(")")):
                address = line.removeprefix("amqpd listening on ").strip()
                address = address.removesuffix(suffix).strip()
                host, _, port = address.rpartition(":")
                return host, int(port)

    def log(self) -> str:
        """Everything the broker wrote on stderr so far."""
        return "".join(self.stderr_lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The first new stderr line containing ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stderr.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                break
            if text in line:
                return line
        pytest.fail(f"no log line with {text!r} within {timeout}s; log:\n{self.log()}")

    def sighup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def reload(self, expect: str, timeout: float = 10.0) -> str:
        """SIGHUP until the log shows ``expect`` (a SIGHUP that arrives before the broker
        watches for signals is ignored, so one may be lost right after start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sighup()
            step = time.monotonic() + 1.0
            while time.monotonic() < step:
                try:
                    line = self.stderr.get(timeout=0.05)
                except queue.Empty:
                    continue
                if line is None:
                    pytest.fail(f"amqpd exited; log:\n{self.log()}")
                if expect in line:
                    return line
        pytest.fail(f"no log line with {expect!r} within {timeout}s; log:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def start_failure(directory: Path, config: str, *extra: str) -> tuple[int, str]:
    """Run amqpd with a config that must not start; (exit code, stderr)."""
    path = directory / "broken.yaml"
    path.write_text(config, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMQPD_")}
    result = subprocess.run(
        [sys.executable, "-m", "amqpd", "--port", "0", "--config", str(path), "--data-dir",
         str(directory / "data"), "--log-level", "warning", *extra],
        cwd=REPO_ROOT, env=clean, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL, check=False,
    )
    return result.returncode, result.stderr


@dataclass(frozen=True)
class Certificates:
    """PEM files of a test CA, a server certificate (localhost) and a client certificate."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory: Path, client_cn: str = "cert-user") -> Certificates:
    """A throwaway CA plus server and client certificates (EC P-256, valid 2 days)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=amqpd test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, cn, usage, san in (
        ("server", "localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        ("client", client_cn, "clientAuth", ""),
    ):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
            f"authorityKeyIdentifier=keyid\n{san}"
        )
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                 f"/CN={cn}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
                 "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)
    return Certificates(directory, directory / "ca.pem", directory / "server.pem",
                        directory / "server.key", directory / "client.pem",
                        directory / "client.key", client_cn)
