"""``crp-jax train``: train the embedded default SSD (:func:`crp_jax.training.train`) and save
its weights; checkpoints go to a folder per set of settings, and an interrupted run prints
the command that resumes it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from crp_jax.cli.app import PROG, UsageError, run_parsed
from crp_jax.errors import ConfigError, one_line
from crp_jax.training import TRAIN_PRESETS, TrainConfig, TrainingInterrupted, default_ckpt_dir, latest_checkpoint, train

__all__ = ["build_train_parser", "run_train", "train_main"]


def build_train_parser(prog: str = f"{PROG} train") -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the small SSD on the generated glyph data set (E/F, O/Q, P/R) and save "
        "flax msgpack weights + a JSON sidecar.",
    )
    p.add_argument(
        "--model",
        default="default",
        choices=sorted(TRAIN_PRESETS),
        help="which shipped model's settings to train: default (the small VGG SSD) or ssdlite "
        "(SSDlite-MobileNetV3, width 0.35, 256 px); the options below override them",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"training steps (default: the preset's; {d.steps} for default)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"scenes per step (default {d.batch_size})")
    p.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate (default: the preset's; {d.lr:g} for default)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"data set and initialisation seed (default {d.seed})")
    p.add_argument(
        "--out",
        default="trained.msgpack",
        help="weights path to write (NAME.msgpack + NAME.json; default trained.msgpack)",
    )
    p.add_argument(
        "--ckpt-dir", default=None, help="checkpoint directory (default: ~/.cache/crp-jax/train/<hash of the settings>)"
    )
    p.add_argument(
        "--ckpt-interval",
        type=int,
        default=d.ckpt_interval,
        help=f"steps between checkpoints (default {d.ckpt_interval})",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --ckpt-dir")
    p.add_argument(
        "--eval-interval", type=int, default=d.eval_interval, help="steps between validation mAPs (0 = never)"
    )
    p.add_argument(
        "--log-interval", type=int, default=d.log_interval, help=f"steps between loss lines (default {d.log_interval})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain log lines only)")
    return p


def _check_writable(out: Path) -> None:
    """Raise ``OSError`` unless the weights ``out`` (``.msgpack`` added when there is no
    suffix) and its ``.json`` sidecar can be written: their folder exists or can be made, a
    file can be created in it, and neither is a folder or a read-only file. Run before
    training, so that a bad ``--out`` does not cost a training run."""
    wpath = out if out.suffix else out.with_suffix(".msgpack")
    folder = wpath.parent
    existing = next((d for d in (folder, *folder.parents) if d.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(20, "is a file, not a folder", str(existing))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):  # save_weights writes NAME.msgpack.tmp there
        pass
    for f in (wpath, wpath.with_suffix(".json")):
        if f.is_dir():
            raise IsADirectoryError(21, "is a folder", str(f))
        if f.exists() and not os.access(f, os.W_OK):
            raise PermissionError(13, "not writable", str(f))


def _resume_command(prog: str, parser: argparse.ArgumentParser, args, ckpt_dir: str) -> str:
    """The command that continues this run: its options (those not at their default) plus
    ``--resume --ckpt-dir DIR``."""
    argv = []
    for flag, dest in (
        ("--steps", "steps"),
        ("--batch-size", "batch_size"),
        ("--lr", "lr"),
        ("--seed", "seed"),
        ("--out", "out"),
        ("--ckpt-interval", "ckpt_interval"),
        ("--eval-interval", "eval_interval"),
        ("--log-interval", "log_interval"),
    ):
        value = getattr(args, dest)
        if value != parser.get_default(dest):
            argv += [flag, str(value)]
    if args.no_progress:
        argv.append("--no-progress")
    return f"{prog} {shlex.join(argv + ['--resume', '--ckpt-dir', str(ckpt_dir)])}"


def run_train(args) -> int:
    """``crp-jax train`` after parsing: a usage error (also an ``--out`` that cannot be
    written, found before training) is exit 2, an interruption exit 130 after writing a
    checkpoint (the message says how to resume)."""
    prog = args.prog
    out = Path(args.out)
    if out.suffix not in ("", ".msgpack"):
        raise UsageError(f"--out must name a .msgpack file, got {args.out}", show_usage=False)
    try:
        overrides = {k: getattr(args, k) for k in ("steps", "lr") if getattr(args, k) is not None}
        cfg = TrainConfig.preset(
            args.model,
            seed=args.seed,
            batch_size=args.batch_size,
            **overrides,
            ckpt_interval=args.ckpt_interval,
            eval_interval=args.eval_interval,
            log_interval=args.log_interval,
            progress=not args.no_progress,
        )
        ckpt_dir = args.ckpt_dir or str(default_ckpt_dir(cfg))
        cfg = dataclasses.replace(cfg, ckpt_dir=ckpt_dir)
    except ConfigError as e:
        raise UsageError(str(e), show_usage=False) from None
    try:
        _check_writable(out)
    except OSError as e:
        reason = e.strerror or one_line(e)
        where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) != args.out else ""
        raise UsageError(
            f"--out {args.out}: cannot write the weights there: {reason}{where}", show_usage=False
        ) from None
    parser = build_train_parser(prog)
    try:
        t0 = time.time()
        print(f"checkpoints: {ckpt_dir}", flush=True)
        history: list = []
        model, variables, meta = train(cfg, resume=args.resume, history=history)
        from crp_jax.ssd.io import save_weights

        path = save_weights(out, variables, meta)
        losses = [h for h in history if "loss" in h]
        final = f", final loss {losses[-1]['loss']:.4f} (mean of the last logged steps)" if losses else ""
        print(f"saved {path} and {path.with_suffix('.json')} ({cfg.steps} steps in {time.time() - t0:.0f}s{final})")
        return 0
    except TrainingInterrupted as e:
        if e.checkpoint is None:  # pragma: no cover - run_train always sets ckpt_dir
            print(f"{prog}: interrupted after step {e.step}; nothing saved", file=sys.stderr)
        else:
            resume = _resume_command(prog, parser, args, ckpt_dir)
            print(
                f"{prog}: interrupted after step {e.step}; saved {e.checkpoint}; resume with: {resume}", file=sys.stderr
            )
        return 130
    except KeyboardInterrupt:  # outside the training loop (start-up, a second Ctrl-C, saving)
        ckpt = latest_checkpoint(ckpt_dir)
        if ckpt is None:
            print(f"{prog}: interrupted; no checkpoint in {ckpt_dir}", file=sys.stderr)
        else:
            resume = _resume_command(prog, parser, args, ckpt_dir)
            print(f"{prog}: interrupted; newest checkpoint {ckpt}; resume with: {resume}", file=sys.stderr)
        return 130


def train_main(argv=None, prog: str = f"{PROG} train") -> int:
    """``crp-jax train``: 0 on success, 2 on a usage error, 1 on a runtime error (one line),
    130 when interrupted."""
    return run_parsed(prog, build_train_parser(prog), run_train, argv)
