"""The training loop (:func:`train`): data, the jitted step, checkpoints and interrupts.

Everything a training run does is a function of its :class:`TrainConfig`:

- data: step ``k`` trains on scenes ``k * B .. (k + 1) * B - 1`` of the data set
  ``cfg.seed`` (:func:`crp_jax.data.make_batch`), and augmentation, when switched on, draws
  from ``fold_in(PRNGKey(cfg.seed), k)``. So the batch of step ``k`` depends only on
  ``(seed, k)``, and ``resume`` from a checkpoint reproduces an uninterrupted run exactly.
- parameters: :func:`crp_jax.ssd.build.init_variables` (drawn with numpy from ``cfg.seed``).
- targets and loss: SSD's matching and multibox loss (:mod:`crp_jax.ssd.loss`).
- optimiser: :mod:`crp_jax.training.optimizer`; checkpoints: :mod:`crp_jax.training.checkpoints`.

Interrupts: while :func:`train` runs, SIGINT (Ctrl-C) only sets a flag that the loop reads
between two steps; the run then writes a checkpoint of the last finished step (whatever
``ckpt_interval`` says) and raises :class:`TrainingInterrupted`. Why not the default
``KeyboardInterrupt``: Python raises it wherever the main thread happens to be, and inside
JAX's garbage-collection callback it is printed as "Exception ignored" and lost, so training
went on; and an interrupt between two interval checkpoints lost the steps since the last
one. A second Ctrl-C stops at once (no checkpoint).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crp_jax.data.splits import VALIDATION_SEED
from crp_jax.errors import CheckpointError, ConfigError, CRPError
from crp_jax.interrupts import SigintFlag
from crp_jax.progress import Progress
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import xyxy_to_cxcywh
from crp_jax.ssd.build import Detector, build_detector, init_variables
from crp_jax.ssd.loss import assign_targets_batch, multibox_loss
from crp_jax.ssd.meta import Meta
from crp_jax.training.augment import augment
from crp_jax.training.checkpoints import (
    CKPT_PREFIX,
    CKPT_SUFFIX,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from crp_jax.training.config import TrainConfig, _result_config
from crp_jax.training.optimizer import make_optimizer, make_schedule, tree_norm

__all__ = [
    "batch_for_step",
    "init_state",
    "make_train_step",
    "train",
    "TrainingInterrupted",
    "SigintFlag",
    "to_variables",
]


def batch_for_step(cfg: TrainConfig, step: int, meta: Meta | None = None) -> dict[str, np.ndarray]:
    """The host batch of step ``step``: scenes ``step * B ..`` of data set ``cfg.seed``,
    preprocessed to the model input, boxes in model-input pixels. A pure function of
    ``(cfg.seed, cfg.batch_size, step)`` and the model's input size."""
    from crp_jax.data import make_batch
    from crp_jax.ssd.detect import preprocess

    meta = meta or cfg.meta()
    B = cfg.batch_size
    spec = cfg.scene_spec()
    raw = make_batch(cfg.seed, range(step * B, (step + 1) * B), spec)
    x = np.asarray(preprocess(raw["images"], meta))
    scale = np.float32(meta.image_size) / np.float32(spec.image_size)
    return {
        "x": x,
        "boxes": raw["boxes"] * scale,
        "labels": raw["labels"],
        "valid": raw["valid"],
    }


def init_state(cfg: TrainConfig, model: Detector | None = None, tx=None) -> dict:
    """``{"params", "opt_state", "step"}`` at step 0 (parameters from
    :func:`crp_jax.ssd.build.init_variables` with ``cfg.seed``)."""
    model = model or build_detector(cfg.model_config())
    tx = tx or make_optimizer(cfg)
    params = init_variables(model, seed=cfg.seed)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(cfg: TrainConfig, model: Detector, tx) -> Callable:
    """The jitted ``(state, batch) -> (state, metrics)``; ``batch`` as :func:`batch_for_step`."""
    config = model.config
    anchors_xyxy = jnp.asarray(default_boxes_xyxy(config))  # input pixels
    anchors_cxcywh = xyxy_to_cxcywh(anchors_xyxy)
    base_key = jax.random.PRNGKey(cfg.seed)

    def loss_fn(params, x, cls_t, loc_t):
        cls_logits, loc = model.apply({"params": params}, x)
        return multibox_loss(cls_logits, loc, cls_t, loc_t, neg_pos_ratio=cfg.neg_pos_ratio)

    def step_fn(state, batch):
        step = state["step"]
        x = augment(batch["x"], jax.random.fold_in(base_key, step), cfg)
        cls_t, loc_t = assign_targets_batch(
            batch["boxes"],
            batch["labels"],
            batch["valid"],
            anchors_xyxy,
            anchors_cxcywh,
            iou_threshold=cfg.match_threshold,
        )
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x, cls_t, loc_t)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(aux, loss=loss, grad_norm=tree_norm(grads))
        return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics

    return jax.jit(step_fn, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _compiled(cfg: TrainConfig):
    """``(model, tx, schedule, step_fn)`` per result-relevant config, so that several runs in
    one process (tests, resume) share one compilation."""
    model = build_detector(cfg.model_config())
    tx = make_optimizer(cfg)
    return model, tx, make_schedule(cfg), make_train_step(cfg, model, tx)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT stopped :func:`train` between two steps. ``step``: the last finished step;
    ``checkpoint``: the checkpoint of that step (None when the run has no ``ckpt_dir``)."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"training interrupted after step {step}")
        self.step = step
        self.checkpoint = checkpoint


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    until: int | None = None,
    history: list | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Detector, dict, Meta]:
    """Train from scratch (or from the newest checkpoint in ``cfg.ckpt_dir`` with
    ``resume``) and return ``(model, variables, meta)``; variables are numpy arrays.

    ``until`` stops after that many steps (a checkpoint is written there when ``ckpt_dir``
    is set), as an interrupted run would; the returned variables are those of that step.
    SIGINT stops the run after the current step, writes a checkpoint of it (with
    ``ckpt_dir``) and raises :class:`TrainingInterrupted` (see the module doc).
    ``history``, when given, receives one dict per logged step (step; loss, cls_loss,
    loc_loss as means over the steps since the previous log line; step_loss, the last
    step's loss; lr; seconds) and one per validation (step, val_map).
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"train needs a TrainConfig, got {type(cfg).__name__}")
    if resume and cfg.ckpt_dir is None:
        raise ConfigError("resume needs a checkpoint directory (ckpt_dir)")
    if until is not None and (not isinstance(until, int) or until < 1):
        raise ConfigError(f"until must be an integer >= 1, got {until!r}")
    # From here on SIGINT only sets a flag (see the module doc); the loop reads it first thing.
    sigint = SigintFlag().__enter__()  # left in the loop's finally, or below on an error
    try:
        meta = cfg.meta()
        model, tx, schedule, step_fn = _compiled(_result_config(cfg))
        state = init_state(cfg, model, tx)
        start = 0
        if resume:
            path = latest_checkpoint(cfg.ckpt_dir)
            if path is None:
                raise CheckpointError(f"--resume: no checkpoint ({CKPT_PREFIX}*{CKPT_SUFFIX}) in {cfg.ckpt_dir}")
            state = load_checkpoint(path, state, cfg)
            start = int(state["step"])
            if start > cfg.steps:
                raise CheckpointError(f"{path}: checkpoint is at step {start}, beyond steps={cfg.steps}")
    except BaseException:
        sigint.__exit__()
        raise
    stop = cfg.steps if until is None else min(cfg.steps, until)

    bar = Progress(cfg.steps, "train", cfg.progress, initial=start, unit="step", min_interval=2.0)
    if log is not None:
        emit = log
    elif cfg.progress:
        emit = bar.write
    else:

        def emit(msg: str) -> None:
            print(msg, flush=True)

    pool = ThreadPoolExecutor(max_workers=1)
    pending = {}

    def fetch(k):
        if k < cfg.steps and k not in pending:
            pending[k] = pool.submit(batch_for_step, cfg, k, meta)

    t0 = time.time()
    window: list = []
    saved = start if resume else None  # the step of the newest checkpoint on disk

    def interrupted(done: int) -> TrainingInterrupted:
        path = None
        if cfg.ckpt_dir is not None:
            path = checkpoint_path(cfg.ckpt_dir, done) if saved == done else save_checkpoint(cfg.ckpt_dir, state, cfg)
        return TrainingInterrupted(done, path)

    try:
        for k in (start, start + 1):
            if k < stop:
                fetch(k)
        for k in range(start, stop):
            if sigint.is_set():
                raise interrupted(k)
            batch = pending.pop(k).result()
            if k + 1 < stop:
                fetch(k + 1)
            if k + 2 < stop:
                fetch(k + 2)
            state, metrics = step_fn(state, batch)
            window.append(metrics)  # device arrays: reading them waits, so only at log time
            done = k + 1
            if done % cfg.log_interval == 0 or done == stop or done == start + 1:
                got = jax.device_get(window)
                window = []
                m = {key: float(np.mean([w[key] for w in got])) for key in ("loss", "cls_loss", "loc_loss")}
                if not all(math.isfinite(v) for v in m.values()):
                    raise CRPError(f"training diverged by step {done}: loss {m['loss']} (lower --lr?)")
                last = dict(
                    step=done,
                    loss=m["loss"],
                    cls_loss=m["cls_loss"],
                    loc_loss=m["loc_loss"],
                    step_loss=float(got[-1]["loss"]),
                    lr=float(schedule(k)),
                    seconds=round(time.time() - t0, 1),
                )
                if history is not None:
                    history.append(last)
                emit(
                    f"step {done:6d}  loss {m['loss']:.4f}  cls {m['cls_loss']:.4f}  loc {m['loc_loss']:.4f}  "
                    f"(mean of {len(got)} steps)  lr {last['lr']:.2e}  {last['seconds']:.0f}s"
                )
                bar.update(0, f"loss {m['loss']:.3f}")
            bar.update(1)
            if cfg.ckpt_dir is not None and (done % cfg.ckpt_interval == 0 or done == stop):
                save_checkpoint(cfg.ckpt_dir, state, cfg)
                saved = done
            if cfg.eval_interval and done % cfg.eval_interval == 0 and done != cfg.steps:
                from crp_jax.eval import evaluate

                res = evaluate(model, to_variables(state), meta, seed=VALIDATION_SEED, n=cfg.eval_scenes)
                if history is not None:
                    history.append({"step": done, "val_map": res["map"]})
                emit(f"step {done:6d}  validation mAP@0.5 {res['map']:.4f} on {cfg.eval_scenes} scenes")
        if sigint.is_set():  # during the last step: the run is complete, but stop as asked
            raise interrupted(stop)
    finally:
        sigint.__exit__()
        for f in pending.values():
            f.cancel()
        pool.shutdown(wait=True)
        bar.close()
    return model, to_variables(state), meta


def to_variables(state) -> dict:
    """The model variables ``{"params": ...}`` of a training state, as float32 numpy arrays."""
    params = jax.device_get(state["params"])
    return {"params": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)}
