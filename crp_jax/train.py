"""Train the embedded default SSD on the generated glyph data set (DESIGN §4).

Everything a training run does is a function of its :class:`TrainConfig`:

- data: step ``k`` trains on scenes ``k * B .. (k + 1) * B - 1`` of the data set
  ``cfg.seed`` (:func:`crp_jax.data.make_batch`), and augmentation, when switched on, draws
  from ``fold_in(PRNGKey(cfg.seed), k)``. So the batch of step ``k`` depends only on
  ``(seed, k)``, and ``--resume`` from a checkpoint reproduces an uninterrupted run exactly.
- parameters: :func:`init_params` (the module's initialisers, drawn with numpy from ``cfg.seed``).
- targets (SSD): every default box is matched to the ground-truth box it overlaps most
  when that IoU is >= 0.5, and every ground truth additionally claims its best default box;
  matched boxes are encoded with variances (0.1, 0.2) by :func:`crp_jax.ssd.boxes.encode`.
  Matching runs in ``jax.numpy`` inside the jitted step (:func:`assign_targets`).
- loss (SSD's multibox loss): softmax cross-entropy on the positives and on the hardest
  negatives (3 per positive, per image), smooth-L1 (beta 1) on the positives' offsets, both
  summed and divided by the number of positives in the batch (:func:`multibox_loss`).
- optimiser: optax AdamW with linear warm-up then cosine decay, global-norm gradient clip.

Held-out data: the scenes used to report quality (:data:`crp_jax.evaluate.HELDOUT_SEED`)
and the small validation set watched during training (:data:`crp_jax.evaluate.VALIDATION_SEED`)
are other data-set seeds; :class:`TrainConfig` refuses to train on either.

Checkpoints are flax msgpack files (``ckpt_00001000.msgpack``: params, optimiser state,
step and the config as JSON), written atomically; nothing is pickled.

Interrupts: while :func:`train` runs, SIGINT (Ctrl-C) only sets a flag that the loop reads
between two steps; the run then writes a checkpoint of the last finished step (whatever
``ckpt_interval`` says) and raises :class:`TrainingInterrupted`. Why not the default
``KeyboardInterrupt``: Python raises it wherever the main thread happens to be, and inside
JAX's garbage-collection callback it is printed as "Exception ignored" and lost, so training
went on; and an interrupt between two interval checkpoints lost the steps since the last
one. A second Ctrl-C stops at once (no checkpoint).

Command line (wired into ``crp-jax train``)::

    python -m crp_jax.train --out weights/default.msgpack   # the shipped default (weights/TRAINING.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from crp_jax.errors import CheckpointError, ConfigError, CRPError, one_line
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import box_iou, encode, xyxy_to_cxcywh
from crp_jax.ssd.config import SSDConfig, reject_unknown_fields
from crp_jax.ssd.meta import Meta
from crp_jax.ssd.model import SSD

__all__ = [
    "TrainConfig",
    "assign_targets",
    "assign_targets_batch",
    "multibox_loss",
    "smooth_l1",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "batch_for_step",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "default_ckpt_dir",
    "train",
    "train_main",
    "TrainingInterrupted",
]

VARIANCES = (0.1, 0.2)
CKPT_PREFIX = "ckpt_"
CKPT_SUFFIX = ".msgpack"

# Fields of TrainConfig that do not change the trained weights (a resumed run may differ here).
_BOOKKEEPING_FIELDS = frozenset(
    {"ckpt_dir", "ckpt_interval", "keep_checkpoints", "eval_interval", "eval_scenes", "progress", "log_interval"}
)


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (frozen, JSON-serialisable).

    Optimisation: ``steps`` of ``batch_size`` scenes; AdamW with peak learning rate ``lr``,
    linear warm-up over ``warmup_steps``, cosine decay to ``lr * final_lr_frac``; decoupled
    ``weight_decay``; gradients clipped to global norm ``grad_clip`` (0 = off).

    Model: ``SSDConfig.small(num_classes=7, image_size, width, num_sources, fc_dilation,
    scales, aspect_ratios)`` (None = the preset's default); preprocessing ``(v - mean) / std``
    on [0, 1] pixels, the same value for all three channels.

    Targets / loss: IoU ``match_threshold`` for positives, ``neg_pos_ratio`` hard negatives
    per positive.

    Augmentation (off by default: the generator never repeats a scene, so there is nothing
    to over-fit): ``augment_photometric`` jitters brightness, contrast and per-channel gain;
    ``augment_invert`` inverts the colours of half of the images. Horizontal flips are not
    offered: a mirrored E is not an E.

    Bookkeeping (does not change the result): ``ckpt_dir`` (None = no checkpoints),
    ``ckpt_interval`` steps between checkpoints, ``keep_checkpoints`` newest kept,
    ``eval_interval`` steps between validation mAPs on ``eval_scenes`` scenes (0 = never),
    ``log_interval`` steps between printed loss lines, ``progress`` (a progress bar).
    """

    seed: int = 0
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 200
    final_lr_frac: float = 0.02
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    # model
    image_size: int = 128
    width: float = 0.125
    num_sources: int = 4
    fc_dilation: int = 2
    scales: tuple[float, ...] | None = None
    aspect_ratios: tuple[tuple[float, ...], ...] | None = None
    mean: float = 0.5
    std: float = 0.25
    # targets and loss
    match_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    # augmentation
    augment_photometric: bool = False
    augment_invert: bool = False
    # bookkeeping
    ckpt_dir: str | None = None
    ckpt_interval: int = 250
    keep_checkpoints: int = 2
    eval_interval: int = 0
    eval_scenes: int = 50
    log_interval: int = 100
    progress: bool = True

    def __post_init__(self):
        for name in ("scales", "aspect_ratios"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _to_tuple(v))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        need(is_int(self.seed) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        from crp_jax.evaluate import HELDOUT_SEED, VALIDATION_SEED

        need(
            self.seed not in (HELDOUT_SEED, VALIDATION_SEED),
            f"seed {self.seed} is reserved for held-out evaluation (test {HELDOUT_SEED}, "
            f"validation {VALIDATION_SEED}); train on another data set",
        )
        need(is_int(self.steps) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}")
        need(
            is_int(self.batch_size) and self.batch_size >= 1,
            f"batch size must be an integer >= 1, got {self.batch_size!r}",
        )
        need(math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr!r}")
        need(
            is_int(self.warmup_steps) and self.warmup_steps >= 0,
            f"warmup_steps must be >= 0, got {self.warmup_steps!r}",
        )
        need(0.0 <= self.final_lr_frac <= 1.0, f"final_lr_frac must be in [0, 1], got {self.final_lr_frac!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        need(self.std > 0, f"std must be > 0, got {self.std!r}")
        need(0.0 < self.match_threshold <= 1.0, f"match_threshold must be in (0, 1], got {self.match_threshold!r}")
        need(self.neg_pos_ratio >= 0, f"neg_pos_ratio must be >= 0, got {self.neg_pos_ratio!r}")
        need(
            is_int(self.ckpt_interval) and self.ckpt_interval >= 1,
            f"ckpt_interval must be >= 1, got {self.ckpt_interval!r}",
        )
        need(
            is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}",
        )
        need(
            is_int(self.eval_interval) and self.eval_interval >= 0,
            f"eval_interval must be >= 0, got {self.eval_interval!r}",
        )
        need(is_int(self.eval_scenes) and self.eval_scenes >= 1, f"eval_scenes must be >= 1, got {self.eval_scenes!r}")
        need(
            is_int(self.log_interval) and self.log_interval >= 1,
            f"log_interval must be >= 1, got {self.log_interval!r}",
        )
        self.model_config()  # architecture errors surface here, not in the middle of a run

    # ---- derived objects ---------------------------------------------------------------
    def model_config(self) -> SSDConfig:
        from crp_jax.data import NUM_CLASSES

        return SSDConfig.small(
            num_classes=NUM_CLASSES,
            image_size=self.image_size,
            width=self.width,
            num_sources=self.num_sources,
            aspect_ratios=self.aspect_ratios,
            fc_dilation=self.fc_dilation,
            scales=self.scales,
        )

    def meta(self) -> Meta:
        from crp_jax.data import CLASS_NAMES

        return Meta(
            config=self.model_config(),
            class_names=CLASS_NAMES,
            mean=(self.mean,) * 3,
            std=(self.std,) * 3,
            source="crp-jax",
        )

    def scene_spec(self):
        """The data set: the generator's default scenes (128 px; resized to the model)."""
        from crp_jax.data import SceneSpec

        return SceneSpec()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The fields that determine the trained weights (bookkeeping left out)."""
        return {k: v for k, v in self.to_dict().items() if k not in _BOOKKEEPING_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        reject_unknown_fields(cls, d)
        return cls(**d)


def _to_tuple(v):
    if isinstance(v, (list, tuple)):
        return tuple(_to_tuple(x) for x in v)
    return v


# ---------------------------------------------------------------------------------------
# targets and loss
# ---------------------------------------------------------------------------------------
def assign_targets(
    gt_boxes,
    gt_labels,
    gt_valid,
    anchors_xyxy,
    anchors_cxcywh=None,
    *,
    iou_threshold: float = 0.5,
    variances=VARIANCES,
):
    """SSD's matching for one image (``jax.numpy``; jit- and vmap-able).

    Args:
      gt_boxes: ``[M, 4]`` ground-truth boxes, xyxy (padded rows are ignored).
      gt_labels: ``[M]`` int class of each box (1..K-1).
      gt_valid: ``[M]`` bool, False for padding.
      anchors_xyxy: ``[A, 4]`` default boxes, xyxy, same units as ``gt_boxes``.
      anchors_cxcywh: the same default boxes as (cx, cy, w, h) (derived when None).
      iou_threshold: a default box is positive when its best IoU with a ground truth is at
        least this.
      variances: box-coding variances (centre, size).

    Returns:
      ``(labels [A] int32, loc_targets [A, 4] float32)``: 0 (background) or the class of
      the matched ground truth, and the encoded offsets of the matched box (0 for
      background). Each valid ground truth also claims the default box it overlaps most,
      whatever the IoU (so none is left unmatched).
    """
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_labels = jnp.asarray(gt_labels, jnp.int32)
    gt_valid = jnp.asarray(gt_valid, bool)
    anchors_xyxy = jnp.asarray(anchors_xyxy, jnp.float32)
    if anchors_cxcywh is None:
        anchors_cxcywh = xyxy_to_cxcywh(anchors_xyxy)
    anchors_cxcywh = jnp.asarray(anchors_cxcywh, jnp.float32)
    M = gt_boxes.shape[0]
    A = anchors_xyxy.shape[0]

    iou = box_iou(gt_boxes, anchors_xyxy)  # [M, A]
    iou = jnp.where(gt_valid[:, None] & jnp.isfinite(iou), iou, -1.0)
    best_gt = jnp.argmax(iou, axis=0)  # [A]
    best_gt_iou = jnp.max(iou, axis=0)
    best_anchor = jnp.argmax(iou, axis=1)  # [M]
    # every valid ground truth claims its best default box (padding scatters out of range)
    target = jnp.where(gt_valid, best_anchor, A)
    best_gt = best_gt.at[target].set(jnp.arange(M), mode="drop")
    best_gt_iou = best_gt_iou.at[target].set(2.0, mode="drop")

    pos = best_gt_iou >= iou_threshold
    labels = jnp.where(pos, gt_labels[best_gt], 0).astype(jnp.int32)
    matched = gt_boxes[best_gt]
    # background rows may hold padding (zero-size) boxes: encode them against a harmless box
    matched = jnp.where(pos[:, None], matched, jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32))
    loc = encode(matched, anchors_cxcywh, variances)
    loc = jnp.where(pos[:, None], loc, 0.0)
    return labels, jax.lax.stop_gradient(loc.astype(jnp.float32))


def assign_targets_batch(
    gt_boxes, gt_labels, gt_valid, anchors_xyxy, anchors_cxcywh=None, *, iou_threshold=0.5, variances=VARIANCES
):
    """:func:`assign_targets` over a batch: ``[B, M, 4]``, ``[B, M]``, ``[B, M]`` ->
    ``([B, A], [B, A, 4])``."""
    anchors_xyxy = jnp.asarray(anchors_xyxy, jnp.float32)
    if anchors_cxcywh is None:
        anchors_cxcywh = xyxy_to_cxcywh(anchors_xyxy)

    def one(b, l, v):
        return assign_targets(b, l, v, anchors_xyxy, anchors_cxcywh, iou_threshold=iou_threshold, variances=variances)

    return jax.vmap(one)(jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_labels), jnp.asarray(gt_valid))


def smooth_l1(d, beta: float = 1.0):
    """Elementwise smooth-L1 (Huber with slope 1): ``0.5 d^2 / beta`` below ``beta``, else
    ``|d| - 0.5 beta``."""
    a = jnp.abs(d)
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def multibox_loss(cls_logits, loc, cls_targets, loc_targets, *, neg_pos_ratio: float = 3.0):
    """SSD's multibox loss with hard-negative mining.

    Args:
      cls_logits: ``[B, A, K]`` raw class logits.
      loc: ``[B, A, 4]`` predicted offsets.
      cls_targets: ``[B, A]`` int, 0 = background.
      loc_targets: ``[B, A, 4]`` encoded offsets (used where ``cls_targets > 0``).
      neg_pos_ratio: hard negatives kept per positive, per image.

    Per image, the ``floor(neg_pos_ratio * positives)`` background boxes with the largest
    cross-entropy (ties: lower anchor index first) are the hard negatives. Returns
    ``(loss, aux)`` with ``loss = (CE over positives and hard negatives + smooth-L1 over the
    positives' 4 offsets) / max(1, positives in the batch)`` and ``aux`` the two parts and
    the number of positives.
    """
    cls_logits = jnp.asarray(cls_logits, jnp.float32)
    loc = jnp.asarray(loc, jnp.float32)
    cls_targets = jnp.asarray(cls_targets, jnp.int32)
    A = cls_logits.shape[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(cls_logits, cls_targets)  # [B, A]
    pos = cls_targets > 0
    num_pos = jnp.sum(pos, axis=1)  # [B]
    neg_loss = jax.lax.stop_gradient(jnp.where(pos, -jnp.inf, ce))
    order = jnp.argsort(-neg_loss, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos).astype(jnp.int32), A - num_pos)
    neg = (rank < num_neg[:, None]) & ~pos
    n = jnp.maximum(jnp.sum(num_pos), 1).astype(jnp.float32)
    cls_loss = jnp.sum(jnp.where(pos | neg, ce, 0.0)) / n
    loc_l = jnp.sum(smooth_l1(loc - loc_targets), axis=-1)
    loc_loss = jnp.sum(jnp.where(pos, loc_l, 0.0)) / n
    return cls_loss + loc_loss, {"cls_loss": cls_loss, "loc_loss": loc_loss, "num_pos": jnp.sum(num_pos)}


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
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


def _augment(x, key, cfg: TrainConfig):
    """Photometric augmentation in [0, 1] pixel space (deterministic given ``key``)."""
    if not (cfg.augment_photometric or cfg.augment_invert):
        return x
    B = x.shape[0]
    v = x * cfg.std + cfg.mean
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if cfg.augment_photometric:
        bright = jax.random.uniform(k1, (B, 1, 1, 1), minval=-0.12, maxval=0.12)
        contrast = jax.random.uniform(k2, (B, 1, 1, 1), minval=0.7, maxval=1.3)
        gain = jax.random.uniform(k3, (B, 1, 1, 3), minval=0.85, maxval=1.15)
        m = jnp.mean(v, axis=(1, 2, 3), keepdims=True)
        v = jnp.clip((v - m) * contrast + m + bright, 0.0, 1.0)
        v = jnp.clip(v * gain, 0.0, 1.0)
    if cfg.augment_invert:
        flip = jax.random.bernoulli(k4, 0.5, (B, 1, 1, 1))
        v = jnp.where(flip, 1.0 - v, v)
    return (v - cfg.mean) / cfg.std


# ---------------------------------------------------------------------------------------
# optimiser, state, step
# ---------------------------------------------------------------------------------------
def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup > 0 else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.final_lr_frac,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW on the warm-up + cosine schedule, after a global-norm clip."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(make_schedule(cfg), weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def init_params(config: SSDConfig, seed: int) -> dict:
    """Initial parameters of ``SSD(config)``, drawn with numpy: the same initialisers as the
    module (Xavier-uniform conv kernels, zero biases, L2Norm scale ``config.l2norm_init``),
    the tree from ``jax.eval_shape(model.init)``.

    Why not ``model.init``: XLA needs about two minutes on a 2-core CPU to compile the
    threefry draws of ~60 kernels, longer than the whole forward/backward step takes to
    compile. numpy's PCG64 stream ``default_rng([seed, i])`` per leaf (leaves in sorted path
    order) compiles nothing and gives the same numbers on every platform.
    """
    from crp_jax.ssd.io import flatten_variables, unflatten_variables

    model = SSD(config)
    size = config.image_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    flat = flatten_variables(shapes["params"])
    out = {}
    for i, (path, leaf) in enumerate(sorted(flat.items())):
        shape = tuple(leaf.shape)
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":  # flax xavier_uniform: fan_avg over (..., in, out), receptive field = rest
            rf = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = math.sqrt(6.0 / (shape[-2] * rf + shape[-1] * rf))
            rng = np.random.default_rng([int(seed), i])
            out[path] = rng.uniform(-limit, limit, shape).astype(np.float32)
        elif name == "bias":
            out[path] = np.zeros(shape, np.float32)
        elif name == "scale":  # L2Norm
            out[path] = np.full(shape, config.l2norm_init, np.float32)
        else:  # pragma: no cover - a new parameter type in the model needs a rule here
            raise ConfigError(f"init_params: no initialiser for parameter {path}")
    return jax.tree_util.tree_map(jnp.asarray, unflatten_variables(out))


def init_state(cfg: TrainConfig, model: SSD | None = None, tx=None) -> dict:
    """``{"params", "opt_state", "step"}`` at step 0 (parameters from :func:`init_params`
    with ``cfg.seed``)."""
    model = model or SSD(cfg.model_config())
    tx = tx or make_optimizer(cfg)
    params = init_params(model.config, cfg.seed)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def _tree_norm(tree):
    # optax.global_norm, exactly as the shipped weights were trained with (a different norm
    # function could change XLA's fusion and with it the last bits of the weights); its
    # deprecation warning in newer optax is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.global_norm(tree)


def make_train_step(cfg: TrainConfig, model: SSD, tx) -> Callable:
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
        x = _augment(batch["x"], jax.random.fold_in(base_key, step), cfg)
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
        metrics = dict(aux, loss=loss, grad_norm=_tree_norm(grads))
        return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics

    return jax.jit(step_fn, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _compiled(cfg: TrainConfig):
    """``(model, tx, schedule, step_fn)`` per result-relevant config, so that several runs in
    one process (tests, resume) share one compilation."""
    model = SSD(cfg.model_config())
    tx = make_optimizer(cfg)
    return model, tx, make_schedule(cfg), make_train_step(cfg, model, tx)


def _result_config(cfg: TrainConfig) -> TrainConfig:
    d = TrainConfig()
    return dataclasses.replace(cfg, **{k: getattr(d, k) for k in _BOOKKEEPING_FIELDS})


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------
def _ckpt_path(ckpt_dir, step: int) -> Path:
    return Path(ckpt_dir) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def default_ckpt_dir(cfg: TrainConfig) -> Path:
    """``$XDG_CACHE_HOME/crp-jax/train/<hash>`` (``~/.cache`` when unset): one folder per
    set of result-relevant settings, so the same command finds its checkpoints again with
    ``--resume`` and runs with other settings never share a folder."""
    import hashlib

    key = json.dumps(cfg.result_dict(), sort_keys=True).encode()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crp-jax" / "train" / hashlib.sha256(key).hexdigest()[:16]


def list_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        name = p.name
        if name.startswith(CKPT_PREFIX) and name.endswith(CKPT_SUFFIX):
            digits = name[len(CKPT_PREFIX) : -len(CKPT_SUFFIX)]
            if digits.isdigit():
                out.append((int(digits), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(ckpt_dir, state: dict, cfg: TrainConfig, keep: int | None = None) -> Path:
    """Write ``state`` (params, optimiser state, step) and the config to
    ``ckpt_dir/ckpt_<step>.msgpack`` (flax msgpack, atomic rename); keep the newest ``keep``."""
    step = int(jax.device_get(state["step"]))
    path = _ckpt_path(ckpt_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "crp-jax-train-checkpoint-1",
        "step": np.asarray(step, np.int64),
        "train_config": json.dumps(cfg.to_dict()),
        "params": serialization.to_state_dict(jax.device_get(state["params"])),
        "opt_state": serialization.to_state_dict(jax.device_get(state["opt_state"])),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(record))
    os.replace(tmp, path)
    keep = cfg.keep_checkpoints if keep is None else keep
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def load_checkpoint(path, template: dict, cfg: TrainConfig | None = None) -> dict:
    """Restore a state written by :func:`save_checkpoint` into the structure of
    ``template`` (from :func:`init_state`). With ``cfg``, refuse a checkpoint of a run whose
    result-relevant settings differ."""
    path = Path(path)
    try:
        record = serialization.msgpack_restore(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from None
    except Exception as e:  # msgpack raises many types on garbage
        raise CheckpointError(f"{path}: not a crp-jax training checkpoint ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != "crp-jax-train-checkpoint-1":
        raise CheckpointError(f"{path}: not a crp-jax training checkpoint")
    if cfg is not None:
        try:
            saved = TrainConfig.from_dict(json.loads(record["train_config"]))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable training config in checkpoint: {e}") from None
        a, b = saved.result_dict(), cfg.result_dict()
        diff = sorted(k for k in a if a[k] != b.get(k))
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a[k]!r} vs now {b[k]!r}" for k in diff)
            raise CheckpointError(
                f"{path}: checkpoint was made with other settings ({detail}); resume with the same settings or another --ckpt-dir"
            )
    try:
        params = serialization.from_state_dict(template["params"], record["params"])
        opt_state = serialization.from_state_dict(template["opt_state"], record["opt_state"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint does not fit this model/optimiser: {e}") from None
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = jax.tree_util.tree_map(jnp.asarray, opt_state)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(int(record["step"]), jnp.int32)}


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
class _Progress:
    """tqdm when installed, else a plain printed bar."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.total, self.n = total, initial
        self.bar = None
        self.t0 = time.time()
        self.last_print = 0.0
        self.postfix = ""
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0
            )
        except ImportError:
            self.bar = None

    def update(self, n: int, postfix: str = "") -> None:
        self.n += n
        self.postfix = postfix or self.postfix
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.time()
        if now - self.last_print >= 5.0 or self.n >= self.total:
            self.last_print = now
            frac = self.n / max(self.total, 1)
            filled = int(30 * frac)
            print(
                f"\rtrain [{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total} {self.postfix}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            if self.enabled:
                print(file=sys.stderr)
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT stopped :func:`train` between two steps. ``step``: the last finished step;
    ``checkpoint``: the checkpoint of that step (None when the run has no ``ckpt_dir``)."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"training interrupted after step {step}")
        self.step = step
        self.checkpoint = checkpoint


class _SigintFlag:
    """While active (main thread only), SIGINT sets ``is_set()`` instead of raising; the
    first one also restores the previous handler, so a second Ctrl-C stops at once."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        self._active = False

    def is_set(self) -> bool:
        return self._event.is_set()

    def _handler(self, signum, frame) -> None:
        self._event.set()
        signal.signal(signal.SIGINT, self._previous)
        # os.write: safe inside a signal handler (print could re-enter a busy stdout buffer)
        os.write(2, b"\ninterrupt: stopping after the current step (Ctrl-C again to stop at once)\n")

    def __enter__(self) -> _SigintFlag:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            self._previous = signal.default_int_handler if previous is None else previous
            signal.signal(signal.SIGINT, self._handler)
            self._active = True
        return self

    def __exit__(self, *exc) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    until: int | None = None,
    history: list | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[SSD, dict, Meta]:
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
    sigint = _SigintFlag().__enter__()  # left in the loop's finally, or below on an error
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

    bar = _Progress(cfg.steps, start, cfg.progress)
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
            path = _ckpt_path(cfg.ckpt_dir, done) if saved == done else save_checkpoint(cfg.ckpt_dir, state, cfg)
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
                from crp_jax.evaluate import VALIDATION_SEED, evaluate

                res = evaluate(model, _to_variables(state), meta, seed=VALIDATION_SEED, n=cfg.eval_scenes)
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
    return model, _to_variables(state), meta


def _to_variables(state) -> dict:
    params = jax.device_get(state["params"])
    return {"params": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)}


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------
def build_parser(prog: str = "crp-jax train") -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the small SSD on the generated glyph data set (E/F, O/Q, P/R) and save "
        "flax msgpack weights + a JSON sidecar.",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"scenes per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
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


def train_main(argv=None, prog: str = "crp-jax train") -> int:
    """``crp-jax train``: 0 on success, 2 on a usage error (also an ``--out`` that cannot
    be written, found before training), 1 on a runtime error (one line), 130 when
    interrupted (after writing a checkpoint; the message says how to resume)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage message
        return 0 if e.code in (0, None) else 2
    out = Path(args.out)
    if out.suffix not in ("", ".msgpack"):
        print(f"{prog}: error: --out must name a .msgpack file, got {args.out}", file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig(
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            ckpt_interval=args.ckpt_interval,
            eval_interval=args.eval_interval,
            log_interval=args.log_interval,
            progress=not args.no_progress,
        )
        ckpt_dir = args.ckpt_dir or str(default_ckpt_dir(cfg))
        cfg = dataclasses.replace(cfg, ckpt_dir=ckpt_dir)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        _check_writable(out)
    except OSError as e:
        reason = e.strerror or one_line(e)
        where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) != args.out else ""
        print(f"{prog}: error: --out {args.out}: cannot write the weights there: {reason}{where}", file=sys.stderr)
        return 2
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
        if e.checkpoint is None:  # pragma: no cover - train_main always sets ckpt_dir
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
    except Exception as e:  # the package's errors and anything else (e.g. XLA's): one line
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
