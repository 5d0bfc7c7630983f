"""Interrupting ``crp-jax train``: SIGINT always stops the run after the current step, a
checkpoint of that step is written (whatever ``--ckpt-interval`` says), the command exits 130
and prints a resume command that works; a bad ``--out`` is found before training.

The subprocess tests train a 64 px model (``TrainConfig`` with ``image_size=64``, put in
place by a small wrapper script) so that each process compiles one small training step.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import crp_jax.cli.train as train_module
from crp_jax.cli.train import train_main
from crp_jax.training import TrainConfig, TrainingInterrupted, latest_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]

# `crp-jax train` with a 64 px model: the same command-line code, a model that compiles fast.
WRAPPER = """
import dataclasses, sys
import crp_jax.cli.train as t

@dataclasses.dataclass(frozen=True)
class Tiny(t.TrainConfig):
    image_size: int = 64
    warmup_steps: int = 0

t.TrainConfig = Tiny
from crp_jax.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""

TINY = TrainConfig(
    image_size=64, width=0.125, batch_size=2, steps=6, warmup_steps=0, ckpt_interval=250, progress=False, log_interval=1
)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_to_end(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


@pytest.mark.slow  # two training processes (about 50 s on a shared 2-core machine)
def test_sigint_after_a_step_line_stops_saves_exits_130_and_the_advice_resumes(tmp_path):
    wrapper = tmp_path / "tiny_train.py"
    wrapper.write_text(WRAPPER)
    ckpt_dir, out, steps = tmp_path / "ckpt", tmp_path / "w.msgpack", 60
    argv = [sys.executable, str(wrapper), "--steps", str(steps), "--batch-size", "1", "--log-interval", "1"]
    argv += ["--no-progress", "--out", str(out), "--ckpt-dir", str(ckpt_dir)]  # default --ckpt-interval (250)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        deadline = time.time() + 300
        first = ""
        for line in p.stdout:  # the first "step" line: training is under way
            if line.startswith("step"):
                first = line
                p.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline, "no step line in time"
        out_text, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert first.split()[:2] == ["step", "1"], (first, err)
    assert p.returncode == 130, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert not out.exists()  # interrupted: no final weights
    last = err.strip().splitlines()[-1]
    assert "interrupted after step" in last and "resume with: " in last, err
    stopped = int(last.split("interrupted after step ")[1].split(";")[0])
    assert 1 <= stopped < steps  # it stopped, and did not train on to the end
    ckpt = latest_checkpoint(ckpt_dir)
    assert ckpt is not None and ckpt.name == f"ckpt_{stopped:08d}.msgpack", sorted(os.listdir(ckpt_dir))
    assert str(ckpt) in last

    # the advice, as printed, continues from that step and finishes
    command = shlex.split(last.split("resume with: ")[1])
    assert command[:2] == ["crp-jax", "train"] and "--resume" in command
    r = _run_to_end([sys.executable, str(wrapper), *command[2:]])
    assert r.returncode == 0, r.stderr
    step_lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("step")]
    assert int(step_lines[0][1]) == stopped + 1 and int(step_lines[-1][1]) == steps
    assert out.exists() and out.with_suffix(".json").exists()


def test_a_sigint_during_train_stops_after_that_step_with_a_checkpoint(tmp_path):
    cfg = TrainConfig(**{**TINY.to_dict(), "ckpt_dir": str(tmp_path)})

    def log(msg: str) -> None:  # SIGINT to ourselves while step 2's line is printed
        if msg.startswith("step      2"):
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, log=log)
    assert info.value.step == 2  # step 3 was never started
    assert info.value.checkpoint == tmp_path / "ckpt_00000002.msgpack" and info.value.checkpoint.exists()
    assert signal.getsignal(signal.SIGINT) is before  # train's handler is gone again
    # resuming reproduces the uninterrupted run exactly
    _, resumed, _ = train(cfg, resume=True)
    _, full, _ = train(TrainConfig(**{**TINY.to_dict(), "ckpt_dir": str(tmp_path / "full")}))
    for a, b in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _leaves(variables):
    import jax

    return jax.tree_util.tree_leaves(variables)


def test_an_unwritable_out_is_refused_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(train_module, "train", no_training)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    (tmp_path / "taken.msgpack").mkdir()
    # a folder that cannot be made (its parent is a file); weights whose path is a folder
    for out in (blocker / "w.msgpack", tmp_path / "taken"):
        rc = train_main(["--steps", "5", "--out", str(out), "--ckpt-dir", str(tmp_path / "ck")])
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "--out" in lines[0] and str(out) in lines[0], err
