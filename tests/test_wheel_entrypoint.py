"""The container image's command, run from a freshly built and installed wheel.

The fast stand-in for ``make image-test`` (which builds and runs the real image with buildah):
builds the wheel from the files the Docker build context has, installs it with its
dependencies into a new venv (no system site-packages, no source tree on sys.path), and runs
exactly the Dockerfile's ENTRYPOINT + CMD with the Dockerfile's ENV, the container paths
mapped to temporary ones. Then the HEALTHCHECK command, pika, and SIGTERM -> 320 + exit 0.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker

REPO_ROOT = Path(__file__).resolve().parent.parent
#: What the Docker build context holds (.dockerignore is an allow-list of these).
BUILD_CONTEXT = ("pyproject.toml", "setup.py", "README.md", "amqpd", "exchanges")
USER, PASSWORD = "wheel-test", "wheel-test-secret"

pytestmark = pytest.mark.timeout(600)


def dockerfile_runtime() -> dict[str, object]:
    """ENV, ENTRYPOINT, CMD and HEALTHCHECK of the Dockerfile's last stage."""
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    env: dict[str, str] = {}
    runtime: dict[str, object] = {"env": env}
    for keyword, rest in instructions[last_from:]:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
        elif keyword in ("ENTRYPOINT", "CMD"):
            runtime[keyword.lower()] = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            command = rest[rest.index("CMD ") + 4:]
            runtime["healthcheck"] = json.loads(command)
    return runtime


def run(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                            env=clean_env(), timeout=300)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMQPD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".venv" not in p)
    return {**env, **extra}


def test_image_entrypoint_from_the_installed_wheel(tmp_path: Path) -> None:
    runtime = dockerfile_runtime()
    image_env = runtime["env"]
    assert isinstance(image_env, dict)
    assert image_env["AMQPD_CONFIG"] == "/etc/amqpd/amqpd.yaml"
    assert image_env["AMQPD_DATA_DIR"] == "/var/lib/amqpd"
    assert image_env["AMQPD_HOST"] == "0.0.0.0"

    started = time.monotonic()
    context = tmp_path / "context"
    context.mkdir()
    for name in BUILD_CONTEXT:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(source, context / name)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels,
        ".", cwd=context)
    (wheel,) = wheels.glob("amqpd-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[fast]",
        cwd=tmp_path)
    install_seconds = time.monotonic() - started
    print(f"wheel built and installed with its dependencies in {install_seconds:.1f} s")

    probe = subprocess.run([venv / "bin" / "python", "-c", "import amqpd; print(amqpd.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, env=clean_env(),
                           check=True)
    assert f"{venv}/lib/" in probe.stdout and "/site-packages/amqpd/" in probe.stdout

    # The container's paths and listener, mapped to this machine (loopback only).
    data_dir = tmp_path / "var-lib-amqpd"
    data_dir.mkdir()
    env = clean_env(**{k: v for k, v in image_env.items() if k.startswith("AMQPD_")})
    env.update(AMQPD_CONFIG=str(REPO_ROOT / "config" / Path(image_env["AMQPD_CONFIG"]).name),
               AMQPD_DATA_DIR=str(data_dir), AMQPD_HOST="127.0.0.1", AMQPD_PORT="0",
               AMQPD_DEFAULT_USER=USER, AMQPD_DEFAULT_PASS=PASSWORD, PYTHONUNBUFFERED="1")
    entrypoint = runtime["entrypoint"]
    command = runtime.get("cmd", [])
    assert isinstance(entrypoint, list) and isinstance(command, list)
    argv = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:], *command]
    log = tmp_path / "amqpd.log"
    with log.open("w") as stderr:
        broker = subprocess.Popen(argv, cwd=data_dir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        assert line.startswith("amqpd listening on 127.0.0.1:"), (line, log.read_text())
        port = int(line.rsplit(":", 1)[1])

        healthcheck = runtime["healthcheck"]
        assert isinstance(healthcheck, list) and healthcheck[:2] == ["amqpd", "ping"]
        health = subprocess.run([str(venv / "bin" / healthcheck[0]), *healthcheck[1:]],
                                cwd=data_dir, env={**env, "AMQPD_PORT": str(port)},
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr

        params = pika.ConnectionParameters(
            "127.0.0.1", port, credentials=pika.PlainCredentials(USER, PASSWORD))
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            channel.queue_declare("wheel-test", durable=True)
            channel.confirm_delivery()
            channel.basic_publish("", "wheel-test", b"hello",
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)
            method, _, body = channel.basic_get("wheel-test", auto_ack=True)
            assert method is not None and body == b"hello"

        client = pika.BlockingConnection(params)
        client.channel()
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(15) == 0, log.read_text()
        with pytest.raises(ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                client.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320  # CONNECTION_FORCED

        health = subprocess.run([str(venv / "bin" / healthcheck[0]), *healthcheck[1:]],
                                cwd=data_dir, env={**env, "AMQPD_PORT": str(port)},
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 1
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list: each COPY source of the build context is on it."""
    allowed = {line[1:].strip("/") for line in
               (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")}
    copied = set()
    for line in (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied.update(w.strip("/").removeprefix("./") for w in words[1:-1])
    assert copied and copied <= allowed, copied - allowed
    assert set(BUILD_CONTEXT) <= copied
