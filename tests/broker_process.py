"""Start a real amqpd as a subprocess on a free port, for tests that need the whole server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess:
    """``python -m amqpd --port 0`` with its address parsed from the listening line."""

    def __init__(
        self, data_dir: Path, *extra: str, module: str = "amqpd",
        env: dict[str, str] | None = None,
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--data-dir", str(data_dir),
             "--log-level", "warning", "--management-port", "0", "--prometheus-port", "0",
             *extra],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise RuntimeError(f"amqpd did not start: {line!r} {self.process.stderr.read()}")
        address = line.rsplit(" ", 1)[1].strip()
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def wait_for(self, predicate: object, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(predicate) and predicate():
                return True
            time.sleep(0.05)
        return False
