"""Deterministic crash points for fault-injection tests (``scripts/fault_test.py``).

The trainer calls ``maybe_fail(point, counter)`` at a few places. When the environment variable
``POOLFT_FAULT_AT`` names that point and counter, the process kills itself with ``SIGKILL``: no
``finally`` blocks, no ``atexit``, no flushing of Python buffers -- the same as a power cut or the
OOM killer. Unset (always, outside tests), ``maybe_fail`` only reads one environment variable.

``POOLFT_FAULT_AT`` holds one or more ``point:counter`` pairs separated by commas::

    POOLFT_FAULT_AT=step:7          inside optimiser step 7 (after backward, before the update)
    POOLFT_FAULT_AT=eval:6          during the evaluation at step 6 (before its results are recorded)
    POOLFT_FAULT_AT=checkpoint:9    while the step-9 checkpoint is half written (no manifest yet)

The points are ``step``, ``eval`` and ``checkpoint``; counter is the global step in each case.
With several processes every process that reaches the point dies, unless ``POOLFT_FAULT_RANK``
names the one that should (its ``RANK``, as torchrun and ``accelerate launch`` set it).
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "POOLFT_FAULT_AT"
RANK_VARIABLE = "POOLFT_FAULT_RANK"
POINTS = ("step", "eval", "checkpoint")


def parse_fault_spec(text: str) -> set[tuple[str, int]]:
    """``"step:3,eval:6"`` -> ``{("step", 3), ("eval", 6)}``; a malformed pair is a ``ValueError``."""
    faults = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        point, _, counter = item.partition(":")
        if point not in POINTS or not counter.strip().isdigit():
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}={text!r}: cannot read {item!r}; "
                f"write point:N with point one of {', '.join(POINTS)}"
            )
        faults.add((point, int(counter)))
    return faults


def maybe_fail(point: str, counter: int) -> None:
    """SIGKILL this process if ``POOLFT_FAULT_AT`` asks for ``point`` at ``counter``."""
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec or (point, counter) not in parse_fault_spec(spec):
        return
    rank = os.environ.get(RANK_VARIABLE)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    # one line on stderr so a test can tell an injected crash from a real one
    os.write(2, f"poolft: fault injection: SIGKILL at {point}:{counter}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
