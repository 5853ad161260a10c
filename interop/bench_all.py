"""`make bench`: amqpd and a private Debian RabbitMQ side by side, every scenario.

Starts amqpd (fresh data directory, free port) and a throwaway RabbitMQ (installed with
apt-get when missing), runs ``bench.py --url AMQPD --compare RABBITMQ --all`` with both
broker PIDs so memory is read from /proc, then stops both. Extra arguments go to bench.py
(e.g. ``--rounds 5 --backlog 1000000``). The table is appended to interop/results/.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rabbitmq
from bench_restart import start_amqpd

HERE = Path(__file__).resolve().parent


def rabbitmq_pid(instance: rabbitmq.Instance) -> int:
    """The beam.smp process of the node (its pid file is written once it runs)."""
    return int(Path(instance.pid_file).read_text().strip())


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-amqpd-"))
    amqpd, amqpd_url = start_amqpd(data_dir)
    instance = rabbitmq.start()
    try:
        command = [
            sys.executable, str(HERE / "bench.py"),
            "--url", amqpd_url, "--broker-pid", str(amqpd.pid),
            "--compare", instance.url, "--compare-pid", str(rabbitmq_pid(instance)),
            "--all", *sys.argv[1:],
        ]
        return subprocess.call(command)
    finally:
        rabbitmq.stop(instance)
        amqpd.send_signal(signal.SIGTERM)
        amqpd.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
