"""Canonizer: fold eval-mode BatchNorm into the preceding convolution.

``fold_batchnorm(model, variables) -> (model', variables')`` rewrites an
:class:`~crp_jax.ssd.ssdlite.SSDLite` with BatchNorm into the same network without it: for a
conv ``z = x * w`` (no bias) followed by ``BN(z) = gamma (z - mu) / sqrt(var + eps) + beta``,
with ``s = gamma / sqrt(var + eps)`` per output channel,

    w'[..., c] = s_c w[..., c],        b'_c = beta_c - s_c mu_c   (+ s_c b_c if the conv had a bias)

so that ``x * w' + b' == BN(x * w)`` exactly in real arithmetic (float64 here, then float32).
Rules then see one linear layer, as zennit's ``SequentialMergeBatchNorm`` arranges. A
negative ``gamma`` flips the signs of that channel's weights, which w+ sees: that is why
the fold must happen *before* rules are applied, not be approximated by rules on BN.

It lives on the detector side because it rewrites the detector's own modules
(``SSDLite(batchnorm=True)`` -> ``SSDLite(batchnorm=False)``, whose ``ConvBN`` blocks then
build a conv with bias and no BN); the engine never needs to know BN exists.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.ssdlite import BN_EPS, SSDLite


def fold_batchnorm(model: SSDLite, variables: Mapping, eps: float = BN_EPS) -> tuple[SSDLite, dict]:
    """Fold every ``<path>/bn`` into ``<path>/conv``.

    Args:
      model: an ``SSDLite`` with ``batchnorm=True``.
      variables: its ``{"params": ..., "batch_stats": ...}``.
      eps: BN's epsilon (torchvision's SSDlite: 1e-3, the model's own).

    Returns:
      ``(SSDLite(config, batchnorm=False), {"params": ...})``: outputs equal to the
      original's (float32 rounding aside).
    """
    if not isinstance(model, SSDLite):
        raise ConfigError(f"fold_batchnorm folds an SSDLite's BatchNorm; got a {type(model).__name__}")
    if not model.batchnorm:
        raise ConfigError("this SSDLite has no BatchNorm left to fold (batchnorm=False)")
    if not isinstance(variables, Mapping) or "params" not in variables or "batch_stats" not in variables:
        raise CheckpointError("fold_batchnorm needs variables with 'params' and 'batch_stats' (an SSDLite with BN)")
    params = traverse_util.flatten_dict(_plain(variables["params"]), sep="/")
    stats = traverse_util.flatten_dict(_plain(variables["batch_stats"]), sep="/")
    out = {}
    folded = set()
    for key, value in params.items():
        if "/bn/" in f"/{key}" or key.startswith("bn/"):
            continue
        out[key] = np.asarray(value, np.float32)
    for key in params:
        if not key.endswith("bn/scale"):
            continue
        base = key[: -len("bn/scale")]  # "<path>/" (or "" at the root)
        try:
            gamma = np.asarray(params[base + "bn/scale"], np.float64)
            beta = np.asarray(params[base + "bn/bias"], np.float64)
            mu = np.asarray(stats[base + "bn/mean"], np.float64)
            var = np.asarray(stats[base + "bn/var"], np.float64)
            w = np.asarray(params[base + "conv/kernel"], np.float64)
        except KeyError as e:
            raise CheckpointError(f"cannot fold {base}bn: {e.args[0]} is missing") from None
        s = gamma / np.sqrt(var + eps)
        b = np.asarray(params.get(base + "conv/bias", np.zeros_like(s)), np.float64)
        out[base + "conv/kernel"] = (w * s).astype(np.float32)  # HWIO: the last axis is the output channel
        out[base + "conv/bias"] = (beta + s * (b - mu)).astype(np.float32)
        folded.add(base)
    left = sorted(k for k in stats if not any(k.startswith(b + "bn/") for b in folded))
    if left:
        raise CheckpointError(f"batch statistics without a BatchNorm to fold: {left[:5]}")
    return model.clone(batchnorm=False), {"params": traverse_util.unflatten_dict(out, sep="/")}


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def calibrate_batchnorm(model: SSDLite, variables: Mapping, x) -> dict:
    """Batch statistics measured on ``x``: every BatchNorm's ``mean``/``var`` become those of
    its input over ``x [B, H, W, 3]`` (preprocessed images), layer by layer, each layer
    normalised with its own new statistics (as a train-mode pass with momentum 1 would).

    What a trained network has and random weights lack: activations of order 1 all the way
    down, so that random models behave like trained ones where that matters (relevance
    bounds, conservation, overflow). Returns ``{"params": ..., "batch_stats": ...}`` with
    the same ``params``.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    if not isinstance(model, SSDLite) or not model.batchnorm:
        raise ConfigError("calibrate_batchnorm needs an SSDLite with BatchNorm (batchnorm=True)")
    stats: dict[str, np.ndarray] = {}

    def measure(next_fun, args, kwargs, context):
        module = context.module
        if not isinstance(module, nn.BatchNorm) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        h = args[0]
        mean, var = jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))
        path = "/".join(module.path)
        stats[path + "/mean"], stats[path + "/var"] = np.asarray(mean), np.asarray(var)
        p = module.variables["params"]
        return (h - mean) / jnp.sqrt(var + module.epsilon) * p["scale"] + p["bias"]

    with nn.intercept_methods(measure):
        model.apply(variables, jnp.asarray(x, jnp.float32))
    return {
        "params": variables["params"],
        "batch_stats": traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in stats.items()}, sep="/"),
    }
