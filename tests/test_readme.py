"""The README's 30-second pika example runs as printed (against a broker on a free port)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .broker_process import REPO_ROOT, BrokerProcess


def test_thirty_second_example(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## 30-second example.*?```python\n(.*?)```", readme, re.S)
    assert match, "README has no 30-second example"
    code = match.group(1)
    assert 'pika.ConnectionParameters("localhost")' in code
    broker = BrokerProcess(tmp_path)
    try:
        code = code.replace('pika.ConnectionParameters("localhost")',
                            f'pika.ConnectionParameters("localhost", {broker.port})')
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert "received b'Hello World!'" in result.stdout
    finally:
        assert broker.stop() == 0
