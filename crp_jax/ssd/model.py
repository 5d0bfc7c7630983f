"""SSD as a pure ``flax.linen`` module.

Layer names make every CRP layer type addressable by module path (docs/design.md §2):

- ``conv1_1``: the input conv (z^B rule in CRP),
- ``conv1_2`` ... ``conv5_3``, ``conv6``, ``conv7``, ``conv8_1`` ...: feature convs,
- ``l2norm``: the L2Norm on the first source (pass-through rule),
- ``cls_0`` ... / ``loc_0`` ...: the classification / localization head conv of each source.

Max-pooling and ReLU are plain functions: relevance passes them as the gradient does
(max-pooling's derivative routes through winner masks kept from the forward pass, see
``pool.py``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from crp_jax.checks import check_image_batch
from crp_jax.errors import ConfigError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.heads import multibox
from crp_jax.ssd.pool import max_pool

_conv_init = nn.initializers.xavier_uniform()


def _conv(features: int, kernel: int, name: str, stride: int = 1, padding: int = 0, dilation: int = 1) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        kernel_init=_conv_init,
        name=name,
    )


class L2Norm(nn.Module):
    """Per-position channel L2 normalisation with a learnable per-channel scale.

    ``[B, H, W, C] -> [B, H, W, C]``: ``scale * x / max(||x||_2, eps)``, as torchvision's
    ``scale_weight * F.normalize(x)``. Its own module so that rules can address it.
    """

    # Layer kind for relevance composites: relevance passes a per-position rescaling
    # unchanged (a plain string, so the detector needs nothing from the engine).
    relevance_kind: ClassVar[str] = "rescale"

    features: int
    scale_init: float = 20.0
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (self.features,))
        # sqrt of the clamped square keeps the gradient finite at an all-zero position.
        norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), self.eps**2))
        return x / norm * scale


class SSD(nn.Module):
    """Single-shot detector: ``[B, S, S, 3]`` float32 NHWC -> raw outputs.

    Returns ``(cls_logits [B, A, K], loc [B, A, 4])``: class logits (no softmax) and box
    offsets (cx, cy, w, h) against the default boxes, anchors ordered as torchvision
    (sources in order, then row, column, box).
    """

    config: SSDConfig

    def sources(self, x: jax.Array) -> list[jax.Array]:
        cfg = self.config
        ch = cfg.channels
        stage, idx = 1, 0
        for v in cfg.vgg:
            if v in ("M", "C"):
                x = max_pool(x, 2, 2, ceil_mode=(v == "C"))
                stage, idx = stage + 1, 0
            else:
                idx += 1
                x = nn.relu(_conv(ch(v), 3, f"conv{stage}_{idx}", padding=1)(x))
        srcs = [L2Norm(x.shape[-1], scale_init=cfg.l2norm_init, name="l2norm")(x)]
        x = max_pool(x, 2, 2)  # pool4
        stage += 1
        for i, v in enumerate(cfg.conv5):
            x = nn.relu(_conv(ch(v), 3, f"conv{stage}_{i + 1}", padding=1)(x))
        x = max_pool(x, 3, 1, padding=1)  # pool5
        d = cfg.fc_dilation
        x = nn.relu(_conv(ch(cfg.fc[0]), 3, "conv6", padding=d, dilation=d)(x))
        x = nn.relu(_conv(ch(cfg.fc[1]), 1, "conv7")(x))
        srcs.append(x)
        for j, (mid, out, stride, pad) in enumerate(cfg.extras):
            n = 8 + j
            x = nn.relu(_conv(ch(mid), 1, f"conv{n}_1")(x))
            x = nn.relu(_conv(ch(out), 3, f"conv{n}_2", stride=stride, padding=pad)(x))
            srcs.append(x)
        return srcs

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if cfg.backbone != "vgg16":
            raise ConfigError(
                f"SSD builds the VGG16 backbone; a {cfg.backbone!r} config needs crp_jax.ssd.ssdlite.SSDLite"
            )
        check_image_batch(x, cfg.image_size)
        return multibox(
            self.sources(x),
            cfg.anchors_per_cell,
            cfg.num_classes,
            lambda src, name, n: _conv(n, 3, name, padding=1)(src),
        )


def init_vgg_variables(model: SSD, seed: int = 0) -> dict:
    """Initialise ``model``'s variables on the host with numpy, fast on any machine.

    Same scheme as the module's initialisers (Xavier-uniform kernels, zero biases, L2Norm
    scale ``config.l2norm_init``) but without compiling JAX's random-number graph, which
    on XLA CPU takes far longer than the network itself. Returns ``{"params": ...}``.
    """
    import numpy as np

    S = model.config.image_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = path[-1].key
        if name == "kernel":
            kh, kw, cin, cout = s.shape
            limit = math.sqrt(6.0 / (kh * kw * (cin + cout)))
            return jnp.asarray(rng.uniform(-limit, limit, s.shape).astype(np.float32))
        if name == "scale":
            return jnp.full(s.shape, model.config.l2norm_init, jnp.float32)
        return jnp.zeros(s.shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)
