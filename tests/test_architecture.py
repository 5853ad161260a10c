"""The layout rules of the source tree (README, "Development"): layers import downward
only, no import cycles, the routing package stands alone, and modules stay small.

The import rules are import-linter contracts in pyproject.toml (``[tool.importlinter]``);
this test runs them so that ``make test`` fails on the first import that breaks a layer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 700


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    # Every contract named in pyproject.toml was checked (none silently dropped).
    for name in ("layers import downward only", "routing package imports nothing",
                 "never reach into sessions", "no import cycle"):
        assert name in result.stdout


def test_top_level_of_amqpd_is_small() -> None:
    modules = sorted(p.name for p in (ROOT / "amqpd").glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_no_module_is_too_long() -> None:
    too_long = {
        str(path.relative_to(ROOT)): length
        for package in ("amqpd", "exchanges")
        for path in (ROOT / package).rglob("*.py")
        if (length := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The contract really bites: a broker module that imports the session layer fails."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["amqpd"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "probe"\n'
        'type = "forbidden"\n'
        'source_modules = ["amqpd.session"]\n'
        'forbidden_modules = ["amqpd.broker"]\n',
        encoding="utf-8",
    )
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    # The session layer does use the broker layer, so this probe contract must break.
    assert result.returncode == 1, result.stdout
    assert "amqpd.session" in result.stdout and "BROKEN" in result.stdout
