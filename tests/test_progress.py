"""The one progress bar (``crp_jax.progress.Progress``) as the training loop uses it:
resumed at a step, a postfix, result lines that do not break the bar; without tqdm."""

from __future__ import annotations

import sys

from crp_jax.progress import Progress


def test_a_resumed_bar_counts_on_from_its_initial_step_and_shows_the_postfix(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` -> ImportError
    bar = Progress(10, "train", True, initial=4, unit="step")
    bar.update(0, "loss 0.500")
    bar.update(1)
    bar.write("step      5  loss 0.5000")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "step      5  loss 0.5000\n"
    assert "4/10" in captured.err and "5/10 loss 0.500" in captured.err


def test_a_disabled_bar_prints_result_lines_only(capsys):
    bar = Progress(10, "train", False)
    bar.update(3, "loss 1.0")
    bar.write("a line")
    bar.write("a warning", err=True)
    bar.close()
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("a line\n", "a warning\n")
