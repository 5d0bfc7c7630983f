"""Checks of user-supplied arrays shared by the detector and the engine (both import this
module; it imports neither). Each raises :class:`crp_jax.errors.InputError` naming the bad
value, before anything reaches XLA as a shape error."""

from __future__ import annotations

import jax.numpy as jnp

from crp_jax.errors import InputError


def check_image_batch(x, image_size: int | None = None, channels: int | None = 3) -> None:
    """Static checks of a model input: ``[B, H, W, C]`` floating, B >= 1; ``C == channels``
    unless ``channels`` is None, and ``H == W == image_size`` when that is given."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(f"images must be an array [B, H, W, 3], got {type(x).__name__}")
    if len(shape) != 4:
        raise InputError(f"images must have rank 4 [B, H, W, 3] (NHWC), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise InputError(f"empty batch: images have shape {tuple(shape)}")
    if channels is not None and shape[-1] != channels:
        raise InputError(f"images must have {channels} channels last (NHWC), got shape {tuple(shape)}")
    if image_size is not None and (shape[1] != image_size or shape[2] != image_size):
        raise InputError(
            f"images must be {image_size}x{image_size} for this model, got shape {tuple(shape)}; "
            "use crp_jax.preprocess to resize"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(f"images must be floating point (preprocessed), got dtype {dtype}; use crp_jax.preprocess")
