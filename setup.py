"""The optional mypyc build of amqpd's hot path (all metadata lives in pyproject.toml).

AMQPD_MYPYC selects it when a wheel or an in-place build is made:

    AMQPD_MYPYC=0 (or unset)  pure Python: the default for `pip install .` and `pip install -e .`
    AMQPD_MYPYC=auto          compile if mypyc (the mypy package) and a C compiler with
                              Python.h are there, else say why on stderr and stay pure Python
    AMQPD_MYPYC=1             compile, and fail the build if that is not possible (CI, images)

The same sources run either way: a compiled module is an extension module next to its .py
file, which Python imports first. `make compile` builds them in place for `make run`;
`make clean-compiled` removes them. Only modules that are mypy --strict clean and whose
classes are never monkeypatched or given attributes at run time belong in HOT_PATH (mypyc
native classes have a fixed layout); tests/test_compiled.py checks that the list compiles
to what it says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# publish -> route -> enqueue -> deliver -> ack (README, "Development"), plus the classes
# that subclass them (a compiled class cannot have an interpreted subclass unless it allows it).
HOT_PATH = [
    "amqpd/protocol/codec.py",
    "amqpd/protocol/constants.py",
    "amqpd/protocol/framing.py",
    "amqpd/broker/consumer.py",
    "amqpd/broker/journal.py",
    "amqpd/broker/message.py",
    "amqpd/broker/persistence.py",  # PersistentJournal subclasses journal.Journal
    "amqpd/broker/priority.py",
    "amqpd/broker/priority_queue.py",
    "amqpd/broker/queue.py",
    "amqpd/broker/routing.py",
    "amqpd/session/channel.py",
    "amqpd/session/connection.py",
    "amqpd/session/consumer.py",
    "amqpd/session/declarations.py",
    "amqpd/session/output.py",  # Connection subclasses output.ConnectionOutput
    "amqpd/session/trace.py",
    "amqpd/session/transactions.py",
    "amqpd/streams/chunks.py",  # encoding each stream append, decoding each chunk read
    "amqpd/streams/content.py",  # decoding and splicing each stream delivery
    "amqpd/streams/log.py",  # every stream append and read; compiled, bench_streams'
    # reads by 1 consumer went from 106k to 147k msgs/s, by 10 from 111k to 168k
    "amqpd/streams/queue.py",  # StreamQueue subclasses broker.queue.Queue
    "exchanges/base.py",
    "exchanges/consistent_hash.py",
    "exchanges/direct.py",
    "exchanges/fanout.py",
    "exchanges/headers.py",
    "exchanges/properties.py",
    "exchanges/rules.py",
    "exchanges/table.py",
    "exchanges/topic.py",
    "exchanges/topic_trie.py",
    "exchanges/values.py",
    "exchanges/words.py",
    # Not exchanges/rulelang/__init__.py: a compiled package __init__ in a separate group
    # cannot import its interpreted submodule errors.py (RuleError stays interpreted).
    "exchanges/rulelang/guards.py",
    "exchanges/rulelang/lexer.py",
    "exchanges/rulelang/parser.py",
    "exchanges/rulelang/predicates.py",
    "exchanges/rulelang/syntax.py",
]

MODE = os.environ.get("AMQPD_MYPYC", "0").strip().lower()


def say(text: str) -> None:
    sys.stderr.write(f"amqpd setup.py: {text}\n")


class OptionalBuildExt(build_ext):
    """With AMQPD_MYPYC=auto a failed compilation (no compiler, no Python.h) leaves no
    half-built group behind: every module of it stays pure Python."""

    def run(self) -> None:
        built = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, PlatformError, OSError ...
            if MODE != "auto":
                raise
            for path in built:
                path.unlink(missing_ok=True)
            reason = str(exc) if len(str(exc)) < 120 else str(exc)[:57] + " ... " + str(exc)[-57:]
            say(f"could not compile the hot path ({type(exc).__name__}: {reason}); amqpd runs "
                "as pure Python (Debian: apt-get install gcc python3-dev, then make compile)")
            return
        # build_ext skips a module whose generated C did not change (an edited comment): stamp
        # them all, so that "older than its .py" means stale (tests/test_compiled.py).
        for path in built:
            if path.exists():
                path.touch()


def ext_modules() -> list[object]:
    if MODE in ("", "0", "no", "false"):
        return []
    if MODE not in ("1", "auto"):
        raise SystemExit(f"AMQPD_MYPYC must be 0, auto or 1, not {MODE!r}")
    try:
        from mypyc.build import mypycify
    except ImportError:
        if MODE == "1":
            raise SystemExit("AMQPD_MYPYC=1 needs mypyc: pip install 'mypy>=1.10'") from None
        say("mypyc (the mypy package) is not installed; amqpd stays pure Python")
        return []
    os.chdir(ROOT)  # mypycify takes paths relative to the project
    try:
        # Two groups, each with its shared library inside its own package (amqpd/_native__mypyc,
        # exchanges/_native__mypyc), so that an editable install, which maps only the packages,
        # finds them and `exchanges` needs nothing of amqpd. Calls within and across the groups
        # are native.
        groups: list[tuple[list[str], str | None]] = [
            ([p for p in HOT_PATH if p.startswith(top + "/")], f"{top}._native")
            for top in ("amqpd", "exchanges")
        ]
        return list(mypycify(HOT_PATH, opt_level="3", debug_level="1", separate=groups))
    except BaseException as exc:  # a type error in the sources exits mypycify
        if MODE == "1":
            raise
        say(f"mypyc refused the hot path ({exc}); amqpd stays pure Python")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
