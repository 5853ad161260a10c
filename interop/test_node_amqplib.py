"""Node's amqplib (callback API) against the broker: ``node interop/node/SCRIPT URL``.

``make test`` installs Node.js (Debian's nodejs and npm, when missing) and amqplib
(``npm ci`` in interop/node/); without them these tests are skipped, saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Names

NODE_DIR = Path(__file__).resolve().parent / "node"

pytestmark = pytest.mark.timeout(60)


def run_node(script: str, *args: str) -> dict[str, object]:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (make test installs it: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        pytest.skip("amqplib is not installed (make test runs npm ci in interop/node)")
    done = subprocess.run([node, script, *args], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=40, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no report from {script} (exit {done.returncode}): {done.stderr}"
    result: dict[str, object] = json.loads(lines[-1])
    assert done.returncode == (0 if result.get("ok") else 1), done
    return result


def test_close_after_a_full_write_buffer_completes(amqp_url: str, names: Names) -> None:
    # while (ch.sendToQueue(q, buf)) n++; conn.close(cb): the callback must run. amqplib
    # sends connection.close ahead of publishes it queued earlier (one buffer per channel);
    # a broker that resets the socket after close-ok made it fail with ECONNRESET/EPIPE.
    queue = names.queue()
    result = run_node("close_after_burst.js", amqp_url, queue)
    assert result["ok"], result
    assert isinstance(result["published"], int) and result["published"] > 100
