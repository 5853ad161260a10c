"""Fixtures for the interop suite.

The suite talks to a broker over the network only.  By default it starts the
broker under test (``python -m amqpd``) as a subprocess; with ``AMQP_URL`` set
it runs against that broker instead (e.g. a real RabbitMQ, the reference).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import pika
import pytest
from pamqp import commands
from pamqp import frame as pframe

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE


# --------------------------------------------------------------------------
# broker under test
# --------------------------------------------------------------------------


# Filled by the amqp_url fixture with the management URL of the amqpd it started.
_MANAGEMENT: dict[str, str] = {}


def _drain(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the broker under test (``AMQP_URL`` or a fresh ``amqpd``)."""
    env_url = os.environ.get("AMQP_URL")
    if env_url:
        yield env_url
        return

    data_dir = tmp_path_factory.mktemp("amqpd-data")
    stderr_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "amqpd",
            "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(data_dir),
            "--log-level", "warning",
            "--management-port", "0",
            "--prometheus-port", "0",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
    )

    def stderr_text() -> str:
        stderr_file.seek(0)
        return stderr_file.read()[-8000:]

    lines: queue.Queue[str | None] = queue.Queue()
    # Keeps draining stdout for the broker's whole life so the pipe never fills.
    threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    try:
        while url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"amqpd printed no 'amqpd listening on' line within "
                            f"{START_TIMEOUT}s; stderr:\n{stderr_text()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=5)
                pytest.fail(f"amqpd exited with {proc.returncode} before listening; "
                            f"stderr:\n{stderr_text()}")
            if line.startswith("amqpd listening on "):
                hostport = line.split("amqpd listening on ", 1)[1].strip()
                host, _, port = hostport.rpartition(":")
                url = f"amqp://guest:guest@{host}:{int(port)}/%2F"
        # The HTTP listeners announce themselves after the AMQP listener(s), in any order.
        while "url" not in _MANAGEMENT or "prometheus" not in _MANAGEMENT:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                break
            if line.startswith("amqpd management listening on "):
                hostport = line.split("amqpd management listening on ", 1)[1].strip()
                _MANAGEMENT["url"] = f"http://guest:guest@{hostport}/api/"
            elif line.startswith("amqpd prometheus listening on "):
                hostport = line.split("amqpd prometheus listening on ", 1)[1].strip()
                _MANAGEMENT["prometheus"] = f"http://{hostport}/metrics"
    except BaseException:
        proc.kill()
        proc.wait()
        stderr_file.close()
        raise

    yield url

    try:
        if proc.poll() is not None:
            pytest.fail(f"amqpd died during the run with {proc.returncode}; "
                        f"stderr:\n{stderr_text()}")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"amqpd did not exit within {STOP_TIMEOUT}s of SIGTERM; "
                        f"stderr:\n{stderr_text()}")
        assert proc.returncode == 0, (
            f"amqpd exited with {proc.returncode} after SIGTERM; stderr:\n{stderr_text()}")
    finally:
        stderr_file.close()


@pytest.fixture(scope="session")
def management_url(amqp_url: str) -> str:
    """Base URL of the broker's management API, credentials included
    (``http://guest:guest@127.0.0.1:15672/api/``): ``AMQP_MANAGEMENT_URL``, or the
    amqpd the ``amqp_url`` fixture started. Skips when AMQP_URL names another broker and
    no management URL is given."""
    env_url = os.environ.get("AMQP_MANAGEMENT_URL")
    if env_url:
        return env_url if env_url.endswith("/") else env_url + "/"
    if "url" not in _MANAGEMENT:
        pytest.skip("no management API: set AMQP_MANAGEMENT_URL with AMQP_URL")
    return _MANAGEMENT["url"]


@pytest.fixture(scope="session")
def prometheus_url(amqp_url: str) -> str:
    """``http://HOST:PORT/metrics`` of the broker under test: ``AMQP_PROMETHEUS_URL``, or the
    amqpd the ``amqp_url`` fixture started (skips for another broker without one)."""
    env_url = os.environ.get("AMQP_PROMETHEUS_URL")
    if env_url:
        return env_url.rstrip("/")
    if "prometheus" not in _MANAGEMENT:
        pytest.skip("no Prometheus endpoint: set AMQP_PROMETHEUS_URL with AMQP_URL")
    return _MANAGEMENT["prometheus"]


@pytest.fixture(scope="session")
def broker_addr(amqp_url: str) -> tuple[str, int]:
    """(host, port) of the broker under test."""
    parsed = urlparse(amqp_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 5672


@pytest.fixture(scope="session")
def vhost(amqp_url: str) -> str:
    path = urlparse(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


@pytest.fixture(scope="session")
def server_properties(broker_addr: tuple[str, int]) -> dict[str, Any]:
    """``connection.start`` server_properties, read with a raw handshake."""
    with RawAMQP(*broker_addr) as raw:
        start = raw.read_start()
    return dict(start.server_properties)


@pytest.fixture(scope="session")
def server_product(server_properties: dict[str, Any]) -> str:
    product = server_properties.get("product", "")
    return product.decode() if isinstance(product, bytes) else str(product)


@pytest.fixture(autouse=True)
def _skip_amqpd_only(request: pytest.FixtureRequest) -> None:
    """Skip ``amqpd_only`` tests when AMQP_URL points at some other broker."""
    if request.node.get_closest_marker("amqpd_only") is None:
        return
    if not os.environ.get("AMQP_URL"):
        return  # the built-in broker is amqpd by construction
    product = request.getfixturevalue("server_product")
    if product != "amqpd":
        pytest.skip(f"amqpd extension; server under test is {product!r}")


# --------------------------------------------------------------------------
# client helpers
# --------------------------------------------------------------------------


@pytest.fixture
def pika_params(amqp_url: str) -> pika.URLParameters:
    params = pika.URLParameters(amqp_url)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    return params


@pytest.fixture
def pika_conn(pika_params: pika.URLParameters) -> Iterator[pika.BlockingConnection]:
    """A ``pika.BlockingConnection`` closed at teardown."""
    conn = pika.BlockingConnection(pika_params)
    try:
        yield conn
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def channel(pika_conn: pika.BlockingConnection) -> Any:
    return pika_conn.channel()


@pytest.fixture
def pika_connect(pika_params: pika.URLParameters) -> Iterator[Callable[[], Any]]:
    """Factory for extra BlockingConnections, all closed at teardown."""
    opened: list[pika.BlockingConnection] = []

    def connect() -> pika.BlockingConnection:
        conn = pika.BlockingConnection(pika_params)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def aio_connect(amqp_url: str) -> Callable[..., Any]:
    """``await aio_connect(**kw)`` opens an aio-pika connection to the broker."""

    async def connect(**kwargs: Any) -> aio_pika.abc.AbstractConnection:
        kwargs.setdefault("timeout", 10)
        return await aio_pika.connect(amqp_url, **kwargs)

    return connect


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Names:
    """Unique queue/exchange names; whatever was handed out is deleted at teardown."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _name(self, kind: str) -> str:
        return f"interop.{self.prefix}.{kind}.{uuid.uuid4().hex[:12]}"

    def queue(self) -> str:
        name = self._name("q")
        self.queues.append(name)
        return name

    def exchange(self) -> str:
        name = self._name("x")
        self.exchanges.append(name)
        return name

    def cleanup(self, params: pika.URLParameters) -> None:
        if not (self.queues or self.exchanges):
            return
        try:
            conn = pika.BlockingConnection(params)
        except Exception:
            return
        try:
            for kind, names in (("q", self.queues), ("x", self.exchanges)):
                for name in names:
                    try:
                        ch = conn.channel()
                        if kind == "q":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except Exception:  # best-effort cleanup
                        if not conn.is_open:
                            return
        finally:
            if conn.is_open:
                conn.close()


@pytest.fixture
def names(request: pytest.FixtureRequest, pika_params: pika.URLParameters) -> Iterator[Names]:
    """Hands out unique names; deletes the queues/exchanges at teardown."""
    prefix = request.node.name.split("[")[0][:40]
    n = Names(prefix)
    yield n
    n.cleanup(pika_params)


# --------------------------------------------------------------------------
# raw protocol client
# --------------------------------------------------------------------------


class RawAMQP:
    """A minimal AMQP 0-9-1 client on a plain socket, built on pamqp.

    ``recv_frame`` returns ``(channel, frame)``, or ``None`` once the peer closed
    (orderly FIN or RST; ``self.reset`` tells which).
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.reset = False
        self.eof = False
        self.start: commands.Connection.Start | None = None
        self.tune: commands.Connection.Tune | None = None

    def __enter__(self) -> RawAMQP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending -----------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, frame: Any, channel: int = 0) -> None:
        self.send(pframe.marshal(frame, channel))

    @staticmethod
    def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
        return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])

    # -- receiving ---------------------------------------------------------
    def recv_bytes(self, timeout: float | None = None) -> bytes:
        """Whatever arrives next (b"" on EOF/RST); raises TimeoutError."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        self.sock.settimeout(timeout or self.timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            data = b""
        except TimeoutError:
            raise
        if not data:
            self.eof = True
        return data

    def recv_frame(self, timeout: float | None = None) -> tuple[int, Any] | None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 7:
                size = struct.unpack(">I", self.buf[3:7])[0]
                if len(self.buf) >= size + 8:
                    consumed, channel, frame = pframe.unmarshal(self.buf)
                    self.buf = self.buf[consumed:]
                    return channel, frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame from the server")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except ConnectionResetError:
                self.reset = True
                data = b""
            if not data:
                self.eof = True
                return None
            self.buf += data

    def expect(self, cls: type, channel: int | None = None, timeout: float | None = None) -> Any:
        got = self.recv_frame(timeout)
        assert got is not None, f"connection closed while waiting for {cls.__name__}"
        ch, frame = got
        assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r} on ch {ch}"
        if channel is not None:
            assert ch == channel
        return frame

    def until_close(self, timeout: float = 5.0) -> tuple[int, Any] | None:
        """Read frames until Connection.Close / Channel.Close (returned) or EOF (None)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if got is None:
                return None
            if isinstance(got[1], (commands.Connection.Close, commands.Channel.Close)):
                return got

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server closes the socket (discarding any frames)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.recv_frame(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if got is None:
                return True

    # -- handshake ---------------------------------------------------------
    def read_start(self) -> commands.Connection.Start:
        self.send(PROTOCOL_HEADER)
        self.start = self.expect(commands.Connection.Start, 0)
        return self.start

    def handshake(
        self,
        *,
        heartbeat: int = 0,
        frame_max: int | None = None,
        channel_max: int | None = None,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
    ) -> None:
        """Header, Start/StartOk, Tune/TuneOk, Open/OpenOk (defaults: accept server's tune)."""
        self.read_start()
        self.send_frame(commands.Connection.StartOk(
            client_properties={
                "product": "interop-raw",
                "capabilities": {
                    "authentication_failure_close": True,
                    "consumer_cancel_notify": True,
                    "basic.nack": True,
                    "publisher_confirms": True,
                },
            },
            mechanism="PLAIN",
            response=f"\0{user}\0{password}",
            locale="en_US",
        ))
        self.tune = self.expect(commands.Connection.Tune, 0)
        self.send_frame(commands.Connection.TuneOk(
            channel_max=self.tune.channel_max if channel_max is None else channel_max,
            frame_max=self.tune.frame_max if frame_max is None else frame_max,
            heartbeat=heartbeat,
        ))
        self.send_frame(commands.Connection.Open(virtual_host=vhost))
        self.expect(commands.Connection.OpenOk, 0)

    def open_channel(self, channel: int = 1) -> None:
        self.send_frame(commands.Channel.Open(), channel)
        self.expect(commands.Channel.OpenOk, channel)


@pytest.fixture
def raw(broker_addr: tuple[str, int], vhost: str) -> Iterator[Callable[..., RawAMQP]]:
    """Factory: ``raw()`` opens a socket; ``raw(handshake=True)`` also logs in."""
    opened: list[RawAMQP] = []

    def connect(*, handshake: bool = False, timeout: float = 10.0, **kw: Any) -> RawAMQP:
        client = RawAMQP(*broker_addr, timeout=timeout)
        opened.append(client)
        if handshake:
            kw.setdefault("vhost", vhost)
            client.handshake(**kw)
        return client

    yield connect
    for client in opened:
        client.close()
