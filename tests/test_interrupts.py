"""Ctrl-C at safe points (crp_jax/interrupts.py): the CLI's per-image loop stops between two
images, and a process that ignores SIGINT keeps ignoring it."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from crp_jax.cli.common import each_image
from crp_jax.interrupts import SigintFlag


def _args():
    return SimpleNamespace(prog="crp-jax test", no_progress=True, progress=False)


def test_sigint_during_an_image_stops_before_the_next_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    done = []

    def work(path, stem, bar):
        done.append(path)
        if path == "b":
            os.kill(os.getpid(), signal.SIGINT)  # arrives while this image is being worked on

    with pytest.raises(KeyboardInterrupt):
        each_image(["a", "b", "c", "d"], _args(), "test", work)
    assert done == ["a", "b"]  # "b" finished, "c" never started
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_during_the_last_image_still_interrupts():
    def work(path, stem, bar):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        each_image(["only"], _args(), "test", work)


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SigintFlag() as flag:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not flag.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
