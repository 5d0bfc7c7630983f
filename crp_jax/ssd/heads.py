"""The multibox head layout both detectors share: per source, a class head and a box head,
reshaped to anchors and concatenated in torchvision's order (sources in order, then row,
column, box).

The head modules themselves differ (SSD300: one 3x3 conv; SSDlite: a depthwise 3x3 + BN +
ReLU6 and a 1x1 conv), so the detector passes a function that builds one head in its own
``nn.compact`` scope; the module names (``cls_<k>``, ``loc_<k>``) and therefore the variable
trees stay those of the detector itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

#: ``head(source [B, H, W, C], name, features) -> [B, H, W, features]``, called inside the
#: detector's compact ``__call__`` (so its modules are the detector's children).
HeadFn = Callable[[jax.Array, str, int], jax.Array]


def multibox(
    sources: Sequence[jax.Array], anchors_per_cell: Sequence[int], num_classes: int, head: HeadFn
) -> tuple[jax.Array, jax.Array]:
    """``sources [B, H_k, W_k, C_k]`` -> ``(cls [B, A, K], loc [B, A, 4])``, ``A = sum_k
    H_k W_k a_k``. Source k's heads are ``head(src, "cls_k", a_k K)`` and ``head(src,
    "loc_k", a_k 4)``; their NHWC channel ``a * K + c`` is box ``a``'s class ``c``."""
    cls_out, loc_out = [], []
    for k, (src, a) in enumerate(zip(sources, anchors_per_cell)):
        B = src.shape[0]
        c = head(src, f"cls_{k}", a * num_classes)
        l = head(src, f"loc_{k}", a * 4)
        # NHWC channel index a*K + k  ->  anchor order (row, col, box), as torchvision.
        cls_out.append(c.reshape(B, -1, num_classes))
        loc_out.append(l.reshape(B, -1, 4))
    return jnp.concatenate(cls_out, axis=1), jnp.concatenate(loc_out, axis=1)
