"""Ctrl-C at safe points: :class:`SigintFlag`, and :func:`command_sigint` for a whole command.

Python's default SIGINT handling raises ``KeyboardInterrupt`` wherever the main thread
happens to be. Inside JAX's garbage-collection callbacks that exception is printed as
"Exception ignored" and lost, so a long loop of JAX work can run on after Ctrl-C. Loops
that must stop (training, the CLI's per-image loop) instead hold a :class:`SigintFlag`
and read it between two units of work.

A command line run holds :func:`command_sigint` from its first line: every SIGINT also
sets :data:`interrupted`, so one that JAX swallowed (while importing, loading or compiling,
the first seconds of every run) is still seen by the next safe point (the per-image loop,
the report's final move) and by the exit policy, which then exits 130 whatever happened.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["SigintFlag", "command_sigint", "interrupted"]

#: Set by every SIGINT while :func:`command_sigint` is active (cleared as it starts and ends).
interrupted = threading.Event()


class command_sigint:
    """Context manager for a command line run: clears :data:`interrupted`; then (main
    thread, SIGINT not ignored) every SIGINT sets it and raises ``KeyboardInterrupt``
    (Python's default, which JAX may swallow: hence the flag; the "Exception ignored ...
    KeyboardInterrupt" that Python prints for a swallowed one is not shown, the flag
    stands for it). The previous handler and ``sys.unraisablehook`` are restored on exit."""

    def __enter__(self) -> threading.Event:
        interrupted.clear()
        self._previous = None
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = signal.default_int_handler if previous is None else previous
                signal.signal(signal.SIGINT, _interrupt)
        return interrupted

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        sys.unraisablehook = self._hook
        interrupted.clear()  # read inside the block; a later run in this process starts afresh

    def _unraisable(self, unraisable) -> None:
        if not (unraisable.exc_type is KeyboardInterrupt and interrupted.is_set()):
            self._hook(unraisable)


def _interrupt(signum, frame) -> None:
    interrupted.set()
    raise KeyboardInterrupt


class SigintFlag:
    """While active (main thread only), SIGINT sets ``is_set()`` instead of raising; the
    first one also restores the previous handler, so a second Ctrl-C stops at once."""

    def __init__(self, unit: str = "step"):
        self._message = f"\ninterrupt: stopping after the current {unit} (Ctrl-C again to stop at once)\n".encode()
        self._event = threading.Event()
        self._previous = None
        self._active = False

    def is_set(self) -> bool:
        return self._event.is_set()

    def _handler(self, signum, frame) -> None:
        self._event.set()
        signal.signal(signal.SIGINT, self._previous)
        # os.write: safe inside a signal handler (print could re-enter a busy stdout buffer)
        os.write(2, self._message)

    def __enter__(self) -> SigintFlag:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            # a process started with SIGINT ignored (a shell's background job) keeps ignoring it
            if previous is not signal.SIG_IGN:
                self._previous = signal.default_int_handler if previous is None else previous
                signal.signal(signal.SIGINT, self._handler)
                self._active = True
        return self

    def __exit__(self, *exc) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False
