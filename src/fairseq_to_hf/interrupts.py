"""Signals that end a run: turned into one KeyboardInterrupt, and held off while OUT is cleaned up or published.

Ctrl-C, `kill`, a closed terminal (SIGHUP) and Ctrl-\\ (SIGQUIT) all mean "stop": each becomes a
KeyboardInterrupt in the main thread, so the staged output is removed on the way out. A second signal
(an impatient second Ctrl-C) must not cut that cleanup short, and no signal may stop the final rename
half-way; both run inside `deferred()`, which acts on a signal only once its block is done.

This module imports only `signal` and `contextlib`: the command line installs it before anything else,
and a signal that arrives while the rest is still being imported waits for `main` to act on it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _State:
    deferring = 0  # nesting depth of deferred() blocks (1 from install(defer=True) until start())
    pending = False  # a signal arrived while deferring
    raised = False  # the run is already on its way out
    starting = False  # install(defer=True) was called and start() not yet


def install(*, defer: bool = False) -> None:
    """Routes the handled signals through `_on_signal` (main thread only, as Python requires).

    `defer`: hold signals until `start()`, for the moments before the caller can handle KeyboardInterrupt.
    """
    if defer and not _State.starting:
        _State.starting = True
        _State.deferring += 1
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _on_signal)


def start() -> None:
    """Ends the deferral of `install(defer=True)`; a signal that came meanwhile is raised now."""
    if _State.starting:
        _State.starting = False
        _end_deferral(reraise=True)


def interrupted() -> bool:
    """A signal has been raised as KeyboardInterrupt: whatever fails after it is a consequence of it
    (an import cut short, say, which fails again later with another error)."""
    return _State.raised


def ignore_from_now() -> None:
    """For a run that is ending because of a signal: further ones must not kill the exiting interpreter
    (Python gives the signals it handled their default action back as it shuts down, but keeps SIG_IGN)."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _on_signal(signum: int, frame: object) -> None:
    if _State.raised:
        return  # already stopping: let the cleanup finish
    if _State.deferring:
        _State.pending = True
        return
    _State.raised = True
    raise KeyboardInterrupt


def _end_deferral(*, reraise: bool) -> bool:
    _State.deferring -= 1
    if _State.deferring or not _State.pending:
        return False
    _State.pending = False
    if reraise:
        _State.raised = True
        raise KeyboardInterrupt
    return True


class Deferral:
    interrupted = False  # a signal arrived inside the block and was not raised


@contextmanager
def deferred(*, reraise: bool = True) -> Iterator[Deferral]:
    """Signals that arrive inside the block are acted on when it ends.

    With `reraise`, a signal that arrived raises KeyboardInterrupt after the block; otherwise the caller
    reads `interrupted` (the block finished the work, e.g. published OUT, so there is nothing to undo).
    """
    deferral = Deferral()
    _State.deferring += 1
    try:
        yield deferral
    finally:
        deferral.interrupted = _end_deferral(reraise=reraise)
