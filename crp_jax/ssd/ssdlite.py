"""SSDlite320-MobileNetV3-Large as a pure ``flax.linen`` module (torchvision's layout).

What SSDlite has that SSD300 has not, and how it is made addressable by relevance rules
without the model being edited to be explained (docs/ssdlite.md):

- every non-linearity other than ReLU is a module declaring ``relevance_kind =
  "activation"`` (:class:`Hardswish`, :class:`ReLU6`, :class:`Hardsigmoid`); ReLU stays a
  function (its gradient is already the LRP rule);
- the residual addition of an inverted residual block is :class:`Add` ("add");
- the squeeze-excitation product ``x * g`` is :class:`Gate` ("gate"), with the gate ``g``
  computed from ``x`` by the small :class:`SqueezeExcite` container;
- convolutions are plain ``nn.Conv``: which of them read negative inputs (hardswish, a
  linear bottleneck) or pass relevance to negative outputs is read from the graph by the
  engine (crp_jax/relevance/signs.py), not declared here;
- BatchNorm follows every conv (:class:`ConvBN`); ``SSDLite(config, batchnorm=False)`` is
  the same network with BN folded into the convs' biases (``crp_jax.ssd.fold``), which is
  the form rules should see.

Module paths (``/``-joined, as composites' globs see them)::

    stem/conv                      the input conv (3x3/2, hardswish)
    block_{i}/{expand,dw,project}/conv, block_{i}/se/{fc1,fc2}, block_{i}/add
    last/conv                      1x1 to 6 x 80 channels (source 1)
    extra_{j}/{pw1,dw,pw2}/conv    torchvision's SSDlite extra blocks (ReLU6)
    dw_cls_{k}/conv, dw_loc_{k}/conv   the heads' depthwise 3x3 + BN + ReLU6
    cls_{k}, loc_{k}               the heads' last 1x1 convs (bias), as SSD300's ``cls_*`` / ``loc_*``

Nothing here imports the relevance engine: the kinds are plain strings.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from crp_jax.errors import ConfigError
from crp_jax.grouped_conv import conv_general_dilated
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.heads import multibox
from crp_jax.ssd.model import check_image_batch

BN_EPS = 1e-3  # torchvision's ssdlite: BatchNorm2d(eps=0.001, momentum=0.03)

# torchvision's MobileNetV3-Large bottlenecks, reduced tail (C4 and C5 halved):
# (kernel, expanded, out, squeeze-excite, hardswish, stride)
MOBILENET_V3_LARGE_BLOCKS = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),  # C1
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),  # C2
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),  # C3
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 80, True, True, 2),  # C4: source 0 is its expansion's output
    (5, 480, 80, True, True, 1),
    (5, 480, 80, True, True, 1),
)
C4_BLOCK = 12
STEM_CHANNELS = 16


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: nearest multiple of ``divisor``, >= 0.9 v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# ---- layer modules (each declares its kind for relevance composites) -------------------


class Hardswish(nn.Module):
    """``x * relu6(x + 3) / 6``, elementwise: ``[..., C] -> [..., C]``."""

    relevance_kind: ClassVar[str] = "activation"

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


class ReLU6(nn.Module):
    """``min(max(x, 0), 6)``, elementwise."""

    relevance_kind: ClassVar[str] = "activation"

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(x, 0.0, 6.0)


class Hardsigmoid(nn.Module):
    """``relu6(x + 3) / 6``, elementwise (squeeze-excitation's gate activation)."""

    relevance_kind: ClassVar[str] = "activation"

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


class Add(nn.Module):
    """Residual addition of same-shaped arrays ``[B, H, W, C]``."""

    relevance_kind: ClassVar[str] = "add"

    def __call__(self, *xs: jax.Array) -> jax.Array:
        return functools.reduce(jnp.add, xs)


class Gate(nn.Module):
    """Squeeze-excitation's product ``x [B, H, W, C] * g [B, 1, 1, C]``; rules hold ``g``
    constant and give relevance to ``x`` (the first argument)."""

    relevance_kind: ClassVar[str] = "gate"

    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        return x * g


_ACTIVATIONS = {"hardswish": Hardswish, "relu6": ReLU6}


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (inference statistics) + activation, as torchvision's
    ``Conv2dNormActivation``; ``[B, H, W, Cin] -> [B, H', W', features]``.

    ``batchnorm=False``: the folded form, a conv with bias and no BN (``crp_jax.ssd.fold``).
    ``act``: "relu" (a function), "hardswish"/"relu6" (modules named ``act``) or None.
    """

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    act: str | None = None
    batchnorm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = (self.kernel - 1) // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            feature_group_count=x.shape[-1] if self.depthwise else 1,
            # XLA CPU is slow on depthwise convs; this computes the same tap by tap
            conv_general_dilated=conv_general_dilated if self.depthwise else None,
            use_bias=not self.batchnorm,
            kernel_init=nn.initializers.normal(0.03),
            name="conv",
        )(x)
        if self.batchnorm:
            x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        if self.act == "relu":
            return nn.relu(x)
        if self.act is not None:
            return _ACTIVATIONS[self.act](name="act")(x)
        return x


class SqueezeExcite(nn.Module):
    """``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))``, as torchvision's
    ``SqueezeExcitation(scale_activation=Hardsigmoid)``; ``[B, H, W, C] -> [B, H, W, C]``."""

    squeeze: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(self.squeeze, (1, 1), name="fc1")(s))
        g = Hardsigmoid(name="gate_act")(nn.Conv(c, (1, 1), name="fc2")(s))
        return Gate(name="gate")(x, g)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project (linear)
    [+ input]. ``[B, H, W, Cin] -> ([B, H', W', out], expansion [B, H, W, expanded])``;
    the expansion (the input when there is none) is what SSDlite taps as its first source.
    Every block input can be negative (a linear bottleneck, or the stem's hardswish).
    """

    kernel: int
    expanded: int
    out: int
    use_se: bool
    hardswish: bool
    stride: int
    batchnorm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        act = "hardswish" if self.hardswish else "relu"
        cin = x.shape[-1]
        h = x
        if self.expanded != cin:
            h = ConvBN(self.expanded, 1, act=act, batchnorm=self.batchnorm, name="expand")(x)
        expansion = h
        h = ConvBN(
            self.expanded,
            self.kernel,
            self.stride,
            depthwise=True,
            act=act,
            batchnorm=self.batchnorm,
            name="dw",
        )(h)
        if self.use_se:
            h = SqueezeExcite(make_divisible(self.expanded // 4), name="se")(h)
        h = ConvBN(self.out, 1, batchnorm=self.batchnorm, name="project")(h)
        if self.stride == 1 and cin == self.out:
            h = Add(name="add")(h, x)
        return h, expansion


class ExtraBlock(nn.Module):
    """torchvision's SSDlite extra block: 1x1 to ``out // 2``, depthwise 3x3 with ``stride``
    (padding 1), 1x1 to ``out``, each + BN + ReLU6."""

    out: int
    stride: int
    batchnorm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bn, mid = self.batchnorm, self.out // 2
        x = ConvBN(mid, 1, act="relu6", batchnorm=bn, name="pw1")(x)
        x = ConvBN(mid, 3, self.stride, depthwise=True, act="relu6", batchnorm=bn, name="dw")(x)
        return ConvBN(self.out, 1, act="relu6", batchnorm=bn, name="pw2")(x)


class SSDLite(nn.Module):
    """SSDlite with a MobileNetV3-Large backbone: ``[B, S, S, 3]`` float32 NHWC -> raw outputs.

    Returns ``(cls_logits [B, A, K], loc [B, A, 4])`` (no softmax), anchors ordered as
    torchvision (sources in order, then row, column, box). ``config.backbone`` must be
    "mobilenet_v3_large" (``SSDConfig.ssdlite320_mobilenet_v3_large``).
    """

    config: SSDConfig
    batchnorm: bool = True

    def sources(self, x: jax.Array) -> list[jax.Array]:
        cfg = self.config
        bn = self.batchnorm
        ch = functools.partial(_backbone_channels, width=cfg.width)
        x = ConvBN(ch(STEM_CHANNELS), 3, 2, act="hardswish", batchnorm=bn, name="stem")(x)
        srcs = []
        for i, (k, exp, out, se, hs, stride) in enumerate(MOBILENET_V3_LARGE_BLOCKS):
            x, expansion = InvertedResidual(k, ch(exp), ch(out), se, hs, stride, batchnorm=bn, name=f"block_{i}")(x)
            if i == C4_BLOCK:
                srcs.append(expansion)
        x = ConvBN(6 * x.shape[-1], 1, act="hardswish", batchnorm=bn, name="last")(x)
        srcs.append(x)
        for j, (_mid, out, stride, _pad) in enumerate(cfg.extras):
            c = max(16, int(out * cfg.width))  # torchvision's get_depth (min_depth 16)
            x = ExtraBlock(c, stride, batchnorm=bn, name=f"extra_{j}")(x)
            srcs.append(x)
        return srcs

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if cfg.backbone != "mobilenet_v3_large":
            raise ConfigError(f"SSDLite needs a mobilenet_v3_large config, got backbone {cfg.backbone!r}")
        check_image_batch(x, cfg.image_size)
        bn = self.batchnorm

        def head(src, name, n):
            # depthwise 3x3 + BN + ReLU6, then the 1x1 conv (with bias) that CRP's rules address
            h = ConvBN(src.shape[-1], 3, depthwise=True, act="relu6", batchnorm=bn, name=f"dw_{name}")(src)
            return nn.Conv(n, (1, 1), kernel_init=nn.initializers.normal(0.03), name=name)(h)

        return multibox(self.sources(x), cfg.anchors_per_cell, cfg.num_classes, head)


def _backbone_channels(c: int, width: float) -> int:
    return make_divisible(c * width)


def init_folded_variables(model: SSDLite, seed: int = 0) -> dict:
    """Initial variables for training a folded SSDlite (``batchnorm=False``) from scratch,
    drawn with numpy from ``seed`` (one ``default_rng(seed)`` stream over the leaves in tree
    order). Returns ``{"params": ...}``.

    Without BatchNorm the scheme must keep activations of order 1 by itself: kernels are
    normal with variance ``gain / fan_in``, ``fan_in = kh * kw * cin_per_group`` (depthwise
    kernels have fan-in ``kh * kw``, not ``kh * kw * C`` as Xavier's formula would take) and
    ``gain = 1 / E[act(z)^2]`` for ``z ~ N(0, 1)``: 2 before ReLU/ReLU6 (He), 3 before
    hardswish (``E[hardswish(z)^2] = 1/3``), 1 before nothing (heads, project convs; 4 for a
    project conv after squeeze-excitation, whose gates start at 1/2). The project conv of
    every residual block and the SE's last conv start at zero, so each residual block starts
    as the identity and each gate at hardsigmoid(0) = 1/2 (the "zero-init the last layer of
    the branch" practice, Goyal et al. 2017); biases are zero.
    """
    if model.batchnorm:
        raise ConfigError("init_folded_variables initialises the folded SSDlite (batchnorm=False)")
    S = model.config.image_size
    width = model.config.width
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, S, S, 3), np.float32))
    gains = {"stem": 3.0, "last": 3.0}  # hardswish after both
    for i, (_k, _exp, out, se, hs, stride) in enumerate(MOBILENET_V3_LARGE_BLOCKS):
        act_gain = 3.0 if hs else 2.0
        residual = stride == 1 and _block_input(i, width) == _backbone_channels(out, width)
        gains[f"block_{i}/expand"] = gains[f"block_{i}/dw"] = act_gain
        gains[f"block_{i}/project"] = 0.0 if residual else (4.0 if se else 1.0)
    rng = np.random.default_rng(seed)
    out = {}
    for key, s in traverse_util.flatten_dict(shapes, sep="/").items():
        parts = key.split("/")
        if parts[-1] != "kernel" or parts[-2] == "fc2":
            out[key] = np.zeros(s.shape, np.float32)
            continue
        top = parts[1]
        if top.startswith(("cls_", "loc_")):
            gain = 1.0
        elif top.startswith("block_"):
            gain = gains.get(f"{top}/{parts[2]}", 2.0)  # se/fc1 reads a ReLU-free mean: 2 is fine
        else:
            gain = gains.get(top, 2.0)  # extras and the heads' depthwise convs: ReLU6
        kh, kw, cin, _cout = s.shape
        out[key] = (rng.normal(size=s.shape) * np.sqrt(gain / (kh * kw * cin))).astype(np.float32)
    return traverse_util.unflatten_dict(out, sep="/")


def _block_input(i: int, width: float) -> int:
    """Channels entering bottleneck ``i`` (the stem's for block 0)."""
    if i == 0:
        return _backbone_channels(STEM_CHANNELS, width)
    return _backbone_channels(MOBILENET_V3_LARGE_BLOCKS[i - 1][2], width)


def random_variables(model: SSDLite, seed: int = 0, negative_gamma: float = 0.3) -> dict:
    """Random variables for ``model`` (numpy, no JAX random graph), for tests and benchmarks
    of canonizers and rules: He-normal kernels, biases N(0, 0.1), and with BatchNorm random
    statistics (mean N(0, 0.3), var U(0.5, 2)) and gammas of magnitude U(0.5, 1.5), a share
    ``negative_gamma`` of them negative. Activations stay of order 1 through the network.
    Returns ``{"params": ..., "batch_stats": ...}`` (only ``params`` when folded)."""
    S = model.config.image_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, S, S, 3), np.float32))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    rng = np.random.default_rng(seed)
    out = {}
    for key, s in flat.items():
        if key.endswith("kernel"):
            kh, kw, cin, _cout = s.shape
            v = rng.normal(size=s.shape) * np.sqrt(2.0 / (kh * kw * cin))
        elif key.endswith("bn/scale"):
            sign = np.where(rng.uniform(size=s.shape) < negative_gamma, -1.0, 1.0)
            v = sign * rng.uniform(0.5, 1.5, size=s.shape)
        elif key.endswith("bn/mean"):
            v = rng.normal(scale=0.3, size=s.shape)
        elif key.endswith("bn/var"):
            v = rng.uniform(0.5, 2.0, size=s.shape)
        else:  # biases
            v = rng.normal(scale=0.1, size=s.shape)
        out[key] = np.asarray(v, np.float32)
    return traverse_util.unflatten_dict(out, sep="/")
