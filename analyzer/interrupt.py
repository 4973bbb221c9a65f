# Stopping a run from SIGINT or SIGTERM, cleanly.
#
# A stop signal should end the reading, not the run: what was read is still
# dissected, finalised and written (marked partial), and the exit status says
# which signal it was (128 + its number: 130 SIGINT, 143 SIGTERM).  Raising
# KeyboardInterrupt from the handler anywhere would do that only if it
# landed in the read loop; landing in the finalisation it would lose
# everything.  So the handler raises only while an engine's read loop runs
# (`reading()`), and elsewhere just records the request, which the engine
# checks when its loop ends.  A second signal while finishing does raise
# (the person insists): the run is then abandoned and nothing is written.
#
# Parallel workers install the handler with `escalate=False`: their parent
# forwards its stop to them, and a Ctrl-C at the terminal reaches the whole
# process group as well, so a worker may see two signals for one stop.
from __future__ import annotations

import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_reading = False
_escalate = True
_count = 0
requested = 0  # the first stop signal received (0: none)


def _handle(signum, frame) -> None:
    global _count, requested
    _count += 1
    requested = requested or signum
    if _reading or (_escalate and _count > 1):
        raise KeyboardInterrupt


def install(*, escalate: bool = True) -> None:
    """Route SIGINT and SIGTERM through the handler above (main thread only)."""
    global _escalate, _count, requested
    _escalate, _count, requested = escalate, 0, 0
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handle)


def uninstall() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


@contextlib.contextmanager
def reading():
    """The span in which a stop signal ends the read loop (as KeyboardInterrupt)."""
    global _reading
    if requested:  # the stop came before the loop began
        raise KeyboardInterrupt
    _reading = True
    try:
        yield
    finally:
        _reading = False


def stop_requested() -> bool:
    return bool(requested)


def exit_signal() -> int:
    """The signal that stopped the run (SIGINT when it was a plain KeyboardInterrupt)."""
    return int(requested or signal.SIGINT)
