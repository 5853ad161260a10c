"""The optional mypyc build (setup.py): its module list, stale builds, and which path runs.

A compiled module is an extension file next to its .py and Python imports it first, so an
edited .py with an older build beside it would silently run the old code: that fails here.
CI runs the suite twice, pure and compiled; the compiled leg sets AMQPD_EXPECT_COMPILED=1 so
that a build that quietly fell back to pure Python cannot pass for a compiled one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hot_path() -> list[str]:
    """HOT_PATH from setup.py, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HOT_PATH" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(v) for v in value]
    raise AssertionError("setup.py has no HOT_PATH")


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def built_files(path: str) -> list[Path]:
    """The extension files built from ``path`` (``__init__.py`` -> ``__init__.*.so``)."""
    stem = (ROOT / path).with_suffix("")
    return [built for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (built := stem.with_suffix(suffix)).exists()]


def test_hot_path_modules_exist() -> None:
    for path in hot_path():
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("path", hot_path())
def test_no_stale_build(path: str) -> None:
    for built in built_files(path):
        assert built.stat().st_mtime >= (ROOT / path).stat().st_mtime, (
            f"{built.name} is older than {path}: run `make compile` (or `make clean-compiled`)"
        )


@pytest.mark.skipif(os.environ.get("AMQPD_EXPECT_COMPILED") != "1",
                    reason="set AMQPD_EXPECT_COMPILED=1 in the compiled CI leg")
@pytest.mark.parametrize("path", hot_path())
def test_every_hot_path_module_is_compiled(path: str) -> None:
    module = importlib.import_module(module_name(path))
    assert module.__file__ is not None
    assert not module.__file__.endswith(".py"), f"{module.__name__} runs as pure Python"
