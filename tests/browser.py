"""A real Chromium for the dashboard tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3
and write answers to descriptor 4, each message JSON ended by a NUL byte; so one browser
process serves every page of a test with the standard library only (no websocket client,
no Selenium and no chromedriver matching the browser's version).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser's path (Debian's ``chromium``, installed by ``make test``), or None."""
    override = os.environ.get("AMQPD_CHROMIUM")
    if override:
        return override
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def headless_args(executable: str) -> list[str]:
    """The command line every test run uses (root in CI needs --no-sandbox; no GPU)."""
    return [executable, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
            "--mute-audio", "--window-size=1400,900"]


_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execvp(sys.argv[3], sys.argv[3:])"
)


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium with one page; :meth:`close` ends it."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900) -> None:
        self.width, self.height = width, height
        self.profile = tempfile.TemporaryDirectory(prefix="amqpd-chromium-")
        # The browser's own messages, quoted when it stops answering.
        self._log = open(Path(self.profile.name) / "stderr.log", "w+b")  # noqa: SIM115
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # Above 9, so that moving them onto 3 and 4 cannot overwrite one with the other.
        commands_read = _above_nine(commands_read)
        answers_write = _above_nine(answers_write)

        # A small Python moves the pipe ends to the descriptors the protocol uses, then
        # becomes the browser (subprocess would close 3 and 4 after a preexec_fn set them,
        # and sh only redirects descriptors below 10).
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(commands_read), str(answers_write),
             *headless_args(executable), "--remote-debugging-pipe",
             f"--user-data-dir={self.profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            pass_fds=(commands_read, answers_write),
        )
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> Any:
        """Send one command (to the page once attached) and wait for its answer."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") != self._next_id:
                continue  # an event, or an answer to nothing we wait for
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            return answer.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise TimeoutError(f"no answer from Chromium: {self._stderr()}")
            ready, _, _ = select.select([self._answers], [], [], remaining)
            if ready:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the protocol pipe: {self._stderr()}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def _stderr(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").splitlines()
        return "\n".join(line for line in lines if "dbus" not in line)[-2000:]

    def basic_auth(self, user: str, password: str) -> None:
        """Send Basic credentials with every request of the page (fetch() included)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.call("Network.enable")
        self.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate (a new fragment of the same page is a same-document navigation)."""
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll until ``expression`` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def html(self) -> str:
        """The rendered DOM."""
        return str(self.evaluate("document.documentElement.outerHTML"))

    def screenshot(self, path: Path, max_height: int = 2400) -> Path:
        """A PNG of the whole page (up to ``max_height`` CSS pixels tall)."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = min(max_height, max(self.height, int(size["height"])))
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": self.width, "height": height,
                               "scale": 1})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser (closing its pipe asks it to quit) and remove its profile."""
        os.close(self._commands)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._answers)
        self._log.close()
        self.profile.cleanup()
