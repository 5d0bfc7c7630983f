"""Training augmentation (off by default: the generator never repeats a scene, so there is
nothing to over-fit). ``augment_photometric`` jitters brightness, contrast and per-channel
gain; ``augment_invert`` inverts the colours of half of the images. Horizontal flips are not
offered: a mirrored E is not an E. Runs in ``jax.numpy`` inside the jitted step, drawing
from ``fold_in(PRNGKey(cfg.seed), step)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crp_jax.training.config import TrainConfig

__all__ = ["augment"]


def augment(x, key, cfg: TrainConfig):
    """Photometric augmentation of a preprocessed batch ``x`` ``[B, S, S, 3]`` in [0, 1]
    pixel space (``cfg.mean`` / ``cfg.std`` undone, then redone); deterministic given
    ``key``. ``x`` itself when both augmentations are off."""
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
