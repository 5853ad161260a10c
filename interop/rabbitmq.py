"""Start and stop a private, throwaway RabbitMQ to run the interop suite against.

Uses Debian's ``rabbitmq-server`` package; when it is missing and we are root,
``apt-get install -y rabbitmq-server`` is run first.
Each instance gets its own node name (``interop-XXXX@localhost``), AMQP port,
Erlang distribution port and data/log directories in a temporary directory, so
it never disturbs another RabbitMQ on the machine.  The consistent-hash exchange,
management (HTTP API on a free port) and Prometheus (on a free port) plugins are enabled
and ``guest`` may log in from anywhere (``loopback_users = none``). ``start`` and ``run``
also give the management API's URL and the Prometheus one: ``run`` sets
``AMQP_MANAGEMENT_URL`` and ``AMQP_PROMETHEUS_URL`` for the command, ``start`` prints them on
a second and a third line.

Command line::

    python interop/rabbitmq.py start [--port N] [--state FILE]   # prints the AMQP URL
    python interop/rabbitmq.py stop  [--state FILE]

    URL=$(python interop/rabbitmq.py start)
    AMQP_URL=$URL .venv/bin/python -m pytest interop
    python interop/rabbitmq.py stop

From Python::

    with private_rabbitmq() as url:
        ...

When run as root, Debian's wrapper switches to the ``rabbitmq`` user, so the
temporary directory is chowned to that user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
DEFAULT_STATE = Path(tempfile.gettempdir()) / "interop-rabbitmq.json"
SERVER_CANDIDATES = ("/usr/sbin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL_CANDIDATES = ("/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl")


@dataclass
class Instance:
    nodename: str
    port: int
    dist_port: int
    base_dir: str
    pid: int  # of the launcher process (the wrapper / su), its own process group
    management_port: int = 0
    prometheus_port: int = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}/api/"

    @property
    def prometheus_url(self) -> str:
        """The rabbitmq_prometheus listener, e.g. for AMQP_PROMETHEUS_URL."""
        return f"http://127.0.0.1:{self.prometheus_port}/metrics"

    @property
    def pid_file(self) -> str:
        return str(Path(self.base_dir) / "rabbitmq.pid")

    def env(self) -> dict[str, str]:
        base = Path(self.base_dir)
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=self.pid_file,
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),  # RabbitMQ appends .conf
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            HOME=str(base),
        )
        return env


def _lookup(candidates: tuple[str, ...], name: str) -> str | None:
    for path in candidates:
        if os.path.exists(path):
            return path
    return shutil.which(name)


def _install() -> None:
    """``apt-get install -y rabbitmq-server`` (root only), with an update on failure."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"]
    out = sys.stderr
    if subprocess.run(cmd, env=env, stdout=out, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, stdout=out, check=False)
        subprocess.run(cmd, env=env, stdout=out, check=False)


def _find(candidates: tuple[str, ...], name: str) -> str:
    found = _lookup(candidates, name)
    if found is None:
        _install()
        found = _lookup(candidates, name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found; install it with: apt-get install -y rabbitmq-server")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    """An AMQP port and a distribution port, both free (below 55000: RabbitMQ's
    tools derive further ports from the distribution port)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        dist = rng.randrange(40000, 50000)
        if _port_free(port) and _port_free(dist):
            return port, dist
    raise RuntimeError("no free ports found")


def _amqp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(PROTOCOL_HEADER)
            s.settimeout(5)
            data = s.recv(7)
            return len(data) == 7 and data[0] == 1  # a method frame: connection.start
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_dir(base: Path, management_port: int, prometheus_port: int) -> None:
    (base / "mnesia").mkdir(parents=True, exist_ok=True)
    (base / "log").mkdir(exist_ok=True)
    (base / "rabbitmq.conf").write_text(
        "loopback_users = none\n"
        f"management.tcp.port = {management_port}\n"
        "management.tcp.ip = 127.0.0.1\n"
        f"prometheus.tcp.port = {prometheus_port}\n"
        "prometheus.tcp.ip = 127.0.0.1\n"
        # Stats every second instead of 5, so tests see message_stats sooner.
        "collect_statistics_interval = 1000\n"
    )
    (base / "advanced.config").write_text("[].\n")
    (base / "enabled_plugins").write_text(
        "[rabbitmq_consistent_hash_exchange,rabbitmq_management,rabbitmq_prometheus].\n")
    # Sourced by the server script after `su rabbitmq`, which resets the soft open-files
    # limit to 1024 (RabbitMQ then refuses connections past ~900): raise it to the hard
    # limit, as Debian's /etc/default/rabbitmq-server suggests for many connections.
    (base / "rabbitmq-env.conf").write_text('ulimit -n "$(ulimit -Hn)" 2>/dev/null || true\n')
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("rabbitmq")
        except KeyError:
            return
        for path in [base, *base.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)


def start(port: int | None = None, timeout: float = 90.0) -> Instance:
    """Boot a private RabbitMQ node and wait until it accepts AMQP connections."""
    amqp_port, dist_port = _pick_ports()
    if port is not None:
        amqp_port = port
    base = Path(tempfile.mkdtemp(prefix="interop-rabbitmq-"))
    base.chmod(0o755)
    management_port, prometheus_port = _free_port(), _free_port()
    # Install first: the package creates the `rabbitmq` user that the directory is chowned to.
    _find(SERVER_CANDIDATES, "rabbitmq-server")
    _prepare_dir(base, management_port, prometheus_port)
    inst = Instance(
        nodename=f"interop-{uuid.uuid4().hex[:8]}@localhost",
        port=amqp_port,
        dist_port=dist_port,
        base_dir=str(base),
        pid=0,
        management_port=management_port,
        prometheus_port=prometheus_port,
    )
    boot(inst, timeout)
    return inst


def boot(inst: Instance, timeout: float = 90.0) -> None:
    """Start the node of ``inst`` (again: its data directory is kept) and wait for AMQP."""
    server = _find(SERVER_CANDIDATES, "rabbitmq-server")
    base = Path(inst.base_dir)
    out = open(base / "server.out", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [server],
        env=inst.env(),
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    inst.pid = proc.pid
    deadline = time.monotonic() + timeout
    while not _amqp_ready(inst.port) or (
            inst.management_port and not _port_in_use(inst.management_port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (f"exited with {proc.returncode}" if proc.returncode is not None
                      else f"not ready within {timeout}s")
            tail = (base / "server.out").read_text(errors="replace")[-4000:]
            _kill(inst)
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(f"private RabbitMQ {reason}; output:\n{tail}")
        time.sleep(0.05)


def _kill(inst: Instance) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(inst.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(inst.pid_file).read_text().strip())
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # reap it if it is our own child that already exited
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def stop(inst: Instance, timeout: float = 60.0, keep_data: bool = False) -> None:
    """``rabbitmqctl -n NODE stop PIDFILE`` (waits for the node to exit), then clean up
    (``keep_data``: leave the data directory for :func:`boot`)."""
    ctl = _find(CTL_CANDIDATES, "rabbitmqctl")
    try:
        subprocess.run(
            [ctl, "-n", inst.nodename, "stop", inst.pid_file],
            env=inst.env(), cwd=inst.base_dir, timeout=timeout,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
        deadline = time.monotonic() + 15
        while _alive(inst.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if _alive(inst.pid) or _port_in_use(inst.port):
            _kill(inst)
        if not keep_data:
            shutil.rmtree(inst.base_dir, ignore_errors=True)


def _port_in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def private_rabbitmq(port: int | None = None) -> Iterator[str]:
    """``with private_rabbitmq() as url:`` a fresh RabbitMQ for the block."""
    inst = start(port=port)
    try:
        yield inst.url
    finally:
        stop(inst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "run"],
                        help="run: start one, run the command after -- with AMQP_URL set, stop")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"where start records the instance for stop (default {DEFAULT_STATE})")
    parser.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    parser.add_argument("argv", nargs=argparse.REMAINDER,
                        help="with run: -- COMMAND [ARGS...]")
    args = parser.parse_args(argv)

    if args.command == "run":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("run needs a command after --")
        inst = start()
        try:
            print(f"RabbitMQ at {inst.url}, management {inst.management_url}", file=sys.stderr)
            return subprocess.call(command, env=dict(
                os.environ, AMQP_URL=inst.url, AMQP_MANAGEMENT_URL=inst.management_url,
                AMQP_PROMETHEUS_URL=inst.prometheus_url))
        finally:
            stop(inst)

    if args.command == "start":
        if args.state.exists():
            print(f"{args.state} exists: an instance is running? stop it first", file=sys.stderr)
            return 1
        inst = start(port=args.port)
        args.state.write_text(json.dumps(asdict(inst)))
        print(inst.url)
        print(inst.management_url)
        print(inst.prometheus_url)
        return 0

    if not args.state.exists():
        print(f"no state file {args.state}: nothing to stop", file=sys.stderr)
        return 1
    inst = Instance(**json.loads(args.state.read_text()))
    stop(inst)
    args.state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
