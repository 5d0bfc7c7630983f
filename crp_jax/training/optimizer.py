"""The optimiser of a training run: optax AdamW with linear warm-up then cosine decay,
after a global-norm gradient clip."""

from __future__ import annotations

import warnings

import optax

from crp_jax.training.config import TrainConfig

__all__ = ["make_schedule", "make_optimizer", "tree_norm"]


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 over ``cfg.warmup_steps`` (at most ``steps - 1``) to ``cfg.lr``,
    then cosine decay to ``cfg.lr * cfg.final_lr_frac`` at ``cfg.steps``."""
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


def tree_norm(tree):
    """Global L2 norm of a pytree (the logged ``grad_norm``)."""
    # optax.global_norm, exactly as the shipped weights were trained with (a different norm
    # function could change XLA's fusion and with it the last bits of the weights); its
    # deprecation warning in newer optax is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.global_norm(tree)
