"""The long frame-fuzzing run (``make fuzz``): mutated sessions into fresh in-process
connections until a number of frames has been fed, then a summary. Ends by itself.

    python -m tests.fuzz.run [--frames 1000000] [--seed N] [--max-seconds 3600]

Prints progress every few seconds, frames/s, the closes the broker answered with, and each
distinct finding once with what reproduces it: the session number, the mutations and the
read boundaries, for ``harness.run_case(mutate(session(n), ...), cuts)``. Exit status 1
when anything was found.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time

from . import mutations
from .harness import run_case


def _signature(problem: str) -> str:
    """The first line and the innermost amqpd frame of a traceback: one bug, one line."""
    lines = problem.splitlines()
    ours = [line.strip() for line in lines if "/amqpd/" in line or "/exchanges/" in line]
    return " | ".join(filter(None, (lines[0][:100], ours[-1] if ours else "", lines[-1][:120])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    print(f"fuzzing the sans-IO connection: {args.frames:,} frames, seed {seed}", flush=True)
    findings: dict[str, tuple[int, str]] = {}
    replies: collections.Counter[str] = collections.Counter()
    frames = cases = 0
    started = last_report = time.monotonic()
    sessions = len(mutations.SCENARIOS) * 3
    while frames < args.frames and time.monotonic() - started < args.max_seconds:
        number = rng.randrange(sessions)
        changes = mutations.random_mutations(rng, rng.randrange(1, 5))
        cuts = [rng.randrange(1 << 20) for _ in range(rng.randrange(4))]
        elements = mutations.session(number)
        for change in changes:
            elements = mutations.mutate(elements, change)
        outcome = run_case(elements, cuts)
        cases += 1
        frames += outcome.frames_in
        replies.update(f"connection.close {code}" for code in outcome.connection_closes)
        replies.update(f"channel.close {code}" for code in outcome.channel_closes)
        for problem in outcome.problems:
            signature = _signature(problem)
            if signature not in findings:
                findings[signature] = (1, f"session {number}, mutations {changes}, cuts {cuts}"
                                          f"\n{problem}")
                print(f"FINDING {signature}\n  reproduce: session {number}, mutations "
                      f"{changes}, cuts {cuts}", flush=True)
            else:
                count, detail = findings[signature]
                findings[signature] = (count + 1, detail)
        now = time.monotonic()
        if now - last_report >= 5:
            last_report = now
            print(f"  {frames:,} frames, {cases:,} cases, {frames / (now - started):,.0f} "
                  f"frames/s, {len(findings)} findings", flush=True)
    elapsed = time.monotonic() - started
    print(f"done: {frames:,} frames in {cases:,} cases, {elapsed:.0f} s, "
          f"{frames / elapsed:,.0f} frames/s, seed {seed}")
    print("broker answers: " + ", ".join(f"{name} x{count}"
                                         for name, count in sorted(replies.items())))
    print(f"findings: {len(findings)}")
    for signature, (count, detail) in findings.items():
        print(f"\n--- {count}x {signature}\n{detail}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
