"""Run the built amqpd image the way a container engine would, and check it from outside.

Called by deploy/image_test.sh with a buildah working container made from the image. It reads
the image's own configuration (ENTRYPOINT, CMD, ENV, USER, VOLUME, EXPOSE, HEALTHCHECK,
STOPSIGNAL) and, with ``buildah run --isolation chroot`` (host network; no container engine
works on this machine):

1. checks the image metadata and that amqpd is the installed wheel, not a source tree;
2. starts ENTRYPOINT + CMD with a free port (AMQPD_PORT) and AMQPD_DEFAULT_USER/PASS, and a
   host folder as the /var/lib/amqpd volume;
3. runs the HEALTHCHECK command in the container: exit 0;
4. with pika: declares a durable queue, publishes two persistent messages with confirms and
   consumes one;
5. sends STOPSIGNAL to the broker process (as ``docker stop`` does) while a client is
   connected: the client gets 320 CONNECTION_FORCED and the broker exits 0; the
   HEALTHCHECK command now exits 1;
6. starts the image again on the same volume: the second message is still there;
7. with CLIENTS (a container of deploy/clients.Dockerfile's image): runs the compose
   example's producer.py and worker.py in it against the broker (3 tasks each way).

Usage: image_check.py IMAGE CONTAINER DATA_DIR [CLIENTS]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import pika
from pika.exceptions import AMQPConnectionError, ConnectionClosedByBroker

USER, PASSWORD = "image-test", "s3cret-image-test"
QUEUE = "image-test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
T0 = time.monotonic()


def log(message: str) -> None:
    sys.stdout.write(f"image_check [{time.monotonic() - T0:5.1f}s]: {message}\n")
    sys.stdout.flush()


def fail(message: str) -> NoReturn:
    raise SystemExit(f"image_check: FAILED: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_config(image: str) -> dict[str, Any]:
    out = subprocess.run(["buildah", "inspect", "--type", "image", image],
                         check=True, capture_output=True, text=True).stdout
    config = json.loads(out)["Docker"]["config"]
    assert isinstance(config, dict)
    return config


def buildah_run(container: str, env: dict[str, str], volume: str | None,
                command: list[str]) -> list[str]:
    args = ["buildah", "run", "--isolation", "chroot"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    if volume:
        args += ["--volume", volume]
    return [*args, container, "--", *command]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Container:
    """One ``buildah run`` of the image's ENTRYPOINT + CMD; the broker is its descendant."""

    def __init__(self, command: list[str], program: str) -> None:
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.listening.wait(START_TIMEOUT):
            self.kill()
            fail(f"no 'amqpd listening on' line in {START_TIMEOUT} s:\n{self.output}")
        # The process a container engine would signal: the entrypoint program itself.
        pids = [pid for pid in descendants(self.process.pid)
                if Path(f"/proc/{pid}/comm").read_text().strip() == program]
        if len(pids) != 1:
            self.kill()
            fail(f"expected one {program!r} process under buildah run, found {pids}")
        self.broker_pid = pids[0]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            sys.stdout.write(f"  | {line}")
            sys.stdout.flush()
            if line.startswith("amqpd listening on") and "(tls)" not in line:
                self.listening.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, signum: int) -> int:
        """Signal the broker as a container engine would and wait for the exit code."""
        self.signal(signum)
        return self.wait(signum)

    def signal(self, signum: int) -> None:
        os.kill(self.broker_pid, signum)

    def wait(self, signum: int) -> int:
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            fail(f"not stopped {STOP_TIMEOUT} s after {signal.Signals(signum).name}")

    def kill(self) -> None:
        if self.process.poll() is None:
            for pid in descendants(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()


def connect(port: int) -> pika.BlockingConnection:
    params = pika.ConnectionParameters("127.0.0.1", port,
                                       credentials=pika.PlainCredentials(USER, PASSWORD),
                                       connection_attempts=3, retry_delay=0.5)
    return pika.BlockingConnection(params)


def check_metadata(config: dict[str, Any]) -> None:
    problems = []
    if config.get("User") in (None, "", "0", "root", "0:0", "root:root"):
        problems.append(f"runs as root (USER {config.get('User')!r})")
    if "/var/lib/amqpd" not in (config.get("Volumes") or {}):
        problems.append("no VOLUME /var/lib/amqpd")
    ports = config.get("ExposedPorts") or {}
    problems += [f"port {p} not exposed" for p in ("5672/tcp", "5671/tcp") if p not in ports]
    if config.get("StopSignal") != "SIGTERM":
        problems.append(f"STOPSIGNAL is {config.get('StopSignal')!r}")
    health = (config.get("Healthcheck") or {}).get("Test") or []
    if "ping" not in health:
        problems.append(f"HEALTHCHECK does not run amqpd ping: {health}")
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    expected = {"AMQPD_CONFIG": "/etc/amqpd/amqpd.yaml", "AMQPD_HOST": "0.0.0.0",
                "AMQPD_DATA_DIR": "/var/lib/amqpd"}
    problems += [f"ENV {k}={env.get(k)!r}, expected {v!r}"
                 for k, v in expected.items() if env.get(k) != v]
    if problems:
        fail("; ".join(problems))
    log(f"metadata OK: USER {config['User']}, ENTRYPOINT {config.get('Entrypoint')}, "
        f"CMD {config.get('Cmd')}, HEALTHCHECK {health}")


PROBE = """
import hashlib, importlib.metadata, json, os, pathlib, sys
import amqpd, exchanges
files = {}
for package in (amqpd, exchanges):
    root = pathlib.Path(package.__file__).parent
    for path in sorted(root.rglob("*.py")):
        name = f"{package.__name__}/{path.relative_to(root)}"
        files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps({
    "file": amqpd.__file__, "version": importlib.metadata.version("amqpd"),
    "src": os.path.exists("/src"), "config": os.path.isfile("/etc/amqpd/amqpd.yaml"),
    "pip": os.path.exists(os.path.join(sys.prefix, "bin", "pip")), "files": files,
}))
"""


def check_installed(container: str) -> None:
    """amqpd is an installed wheel, of the source tree as it is now (not a stale layer)."""
    out = subprocess.run(buildah_run(container, {}, None, ["python3", "-c", PROBE]),
                         check=True, capture_output=True, text=True).stdout
    found = json.loads(out)
    if "/site-packages/amqpd/" not in found["file"]:
        fail(f"amqpd imported from {found['file']}, not an installed wheel")
    if found["src"] or not found["config"] or found["pip"]:
        fail(f"/src exists: {found['src']}, /etc/amqpd/amqpd.yaml: {found['config']}, "
             f"pip in the venv: {found['pip']}")
    repo = Path(__file__).resolve().parent.parent
    differ = [name for name, digest in found["files"].items()
              if not (repo / name).is_file()
              or hashlib.sha256((repo / name).read_bytes()).hexdigest() != digest]
    if differ:
        fail(f"the image's amqpd differs from the source tree in {differ[:5]} "
             f"({len(differ)} files): a stale cached layer, or edited during the test")
    log(f"installed wheel amqpd {found['version']} at {found['file']}, its "
        f"{len(found['files'])} modules identical to the source tree; config in /etc/amqpd; "
        "no /src, no pip")


def check_clients(clients: str, port: int) -> None:
    url = {"AMQP_URL": f"amqp://{USER}:{PASSWORD}@127.0.0.1:{port}/%2F"}
    for script, done in (("producer.py --count 3 --interval 0", "done, 3 sent"),
                         ("worker.py --count 3 --work 0", "done, 3 handled")):
        result = subprocess.run(buildah_run(clients, url, None, ["python3", *script.split()]),
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or done not in result.stdout:
            fail(f"{script} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    log("compose example: producer.py sent 3 tasks, worker.py handled 3 (clients image)")


def main(image: str, container: str, data_dir: str, clients: str | None = None) -> None:
    config = image_config(image)
    check_metadata(config)
    check_installed(container)

    port = free_port()
    env = {"AMQPD_PORT": str(port), "AMQPD_DEFAULT_USER": USER, "AMQPD_DEFAULT_PASS": PASSWORD}
    volume = f"{data_dir}:/var/lib/amqpd"
    entrypoint = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    program = os.path.basename(entrypoint[0])[:15]
    health = list(config["Healthcheck"]["Test"])
    if health[0] == "CMD-SHELL":
        health = ["/bin/sh", "-c", *health[1:]]
    elif health[0] == "CMD":
        health = health[1:]
    stop_signal = signal.Signals[str(config["StopSignal"])]

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(buildah_run(container, env, None, health),
                              capture_output=True, text=True, timeout=30)

    started = time.monotonic()
    broker = Container(buildah_run(container, env, volume, entrypoint), program)
    try:
        log(f"started {entrypoint} on port {port} in {time.monotonic() - started:.1f} s "
            f"(broker pid {broker.broker_pid})")
        result = healthcheck()
        if result.returncode != 0:
            fail(f"HEALTHCHECK exited {result.returncode}: {result.stdout}{result.stderr}")
        log(f"HEALTHCHECK {health} -> 0: {result.stdout.strip()}")

        with connect(port) as connection:
            channel = connection.channel()
            channel.queue_declare(QUEUE, durable=True)
            channel.confirm_delivery()
            for body in (b"first", b"second"):
                channel.basic_publish("", QUEUE, body,
                                      pika.BasicProperties(delivery_mode=2), mandatory=True)
            method, _, body = channel.basic_get(QUEUE)
            if method is None or body != b"first":
                fail(f"basic.get returned {method} {body!r}")
            channel.basic_ack(method.delivery_tag)
        log(f"pika as {USER}: published 2 persistent messages with confirms, consumed 'first'")

        client = connect(port)
        client.channel()
        reply = None
        stopping = time.monotonic()
        broker.signal(stop_signal)
        try:  # the client reads the broker's connection.close and answers close-ok
            while time.monotonic() < stopping + STOP_TIMEOUT and client.is_open:
                client.process_data_events(time_limit=0.1)
        except ConnectionClosedByBroker as exc:
            reply = (exc.reply_code, exc.reply_text)
        code = broker.wait(stop_signal)
        drain = time.monotonic() - stopping
        if code != 0:
            fail(f"broker exited {code} after {stop_signal.name}:\n{broker.output}")
        if reply is None or reply[0] != 320:
            fail(f"connected client got {reply}, expected 320 CONNECTION_FORCED")
        log(f"{stop_signal.name} -> client got {reply[0]} {reply[1]}, broker exited 0 "
            f"after {drain:.1f} s")
        result = healthcheck()
        if result.returncode != 1:
            fail(f"HEALTHCHECK exited {result.returncode} with the broker stopped, expected 1")
        log(f"HEALTHCHECK with the broker stopped -> 1: {result.stderr.splitlines()[0]}")
    finally:
        broker.kill()

    broker = Container(buildah_run(container, env, volume, entrypoint), program)
    try:
        bodies = []
        with connect(port) as connection:
            channel = connection.channel()
            while (got := channel.basic_get(QUEUE, auto_ack=True))[0] is not None:
                bodies.append(got[2])
        if b"second" not in bodies:
            fail(f"after restart on the same volume the queue held {bodies}, not 'second'")
        log("restarted on the same /var/lib/amqpd volume: 'second' was recovered")
        if b"first" in bodies:
            # At-least-once allows it, but it should not happen after a clean stop: an ack
            # made just before SIGTERM was not committed (amqpd's shutdown, not the image).
            log("WARNING: 'first', acked before the SIGTERM, was delivered again")
        if clients:
            check_clients(clients, port)
        code = broker.stop(stop_signal)
        if code != 0:
            fail(f"broker exited {code} after {stop_signal.name}")
    except AMQPConnectionError as exc:
        fail(f"cannot connect after restart: {exc!r}")
    finally:
        broker.kill()
    log("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
