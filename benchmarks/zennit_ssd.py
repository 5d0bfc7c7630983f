"""The torch + zennit side of ``benchmarks/speed.py``.

Builds the same SSD as :class:`crp_jax.ssd.model.SSD` in PyTorch, from the same
:class:`~crp_jax.ssd.config.SSDConfig` and with the same weights (copied from the JAX
variables: flax HWIO kernels become torch OIHW weights), and times zennit's equivalent of
crp-jax's composite for class targets the fastest way a zennit user can: one forward per
image, then one ``torch.autograd.grad(..., retain_graph=True)`` per target.

The network is hand-built rather than torchvision's ``ssd300_vgg16`` because torchvision
normalises conv4_3 inside a function; here the L2Norm is a module of its own
(:class:`L2Norm`) so that zennit can give it a pass-through rule (docs/design.md §6). Module names
are the JAX module names (``conv1_1`` ... ``cls_0`` ... ``loc_0`` ...), registered in
forward order, so that zennit's ``SpecialFirstLayerMapComposite`` finds ``conv1_1`` as the
first layer. Every ReLU is an ``nn.ReLU`` module of its own (zennit's ``Activation`` type,
``Pass`` rule in ``layer_map_base``).

Composite (the class-target path of crp-jax's "crp" preset):
  conv1_1: ``ZBox(low, high, zero_params="bias")`` with the preprocessing's pixel bounds
  (``meta.pixel_bounds``); every other conv: ``ZPlus(zero_params="bias")``; L2Norm: ``Pass()``;
  ReLU: ``Pass()``; max-pool: gradient. ``zero_params="bias"`` makes zennit's rules exactly
  crp-jax's (bias left out of the denominators); zennit's default keeps ``max(b, 0)`` in them,
  which differs on trained weights (not on ``init_variables``' zero biases) and costs the same.

Torch, torchvision and zennit are imported only inside the functions here, so that
``speed.py`` runs without them (``--no-zennit`` or zennit not installed: skipped cleanly).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from _common import torch_class_grads, torch_setup


def available() -> tuple[bool, str]:
    """(True, version) if torch and zennit import, else (False, why)."""
    try:
        import torch  # noqa: F401
        import zennit  # noqa: F401
    except Exception as e:  # ImportError, or torchvision failing inside zennit's import
        return False, f"{type(e).__name__}: {e}"
    try:
        from importlib.metadata import version

        return True, f"zennit {version('zennit')}, torch {version('torch')}"
    except Exception:
        return True, "zennit (version unknown)"


def build_torch_ssd(config, variables):
    """``torch.nn.Module`` equivalent of ``SSD(config)`` carrying ``variables``' weights.

    ``forward(x NCHW) -> (cls_logits [B, A, K], loc [B, A, 4])`` in the same anchor order.
    """
    import torch
    from torch import nn

    class L2Norm(nn.Module):
        """``scale * x / max(||x||_2, eps)`` over channels, as ``crp_jax.ssd.model.L2Norm``."""

        def __init__(self, channels: int, eps: float = 1e-12):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.eps = eps

        def forward(self, x):
            norm = x.pow(2).sum(1, keepdim=True).clamp_min(self.eps**2).sqrt()
            return x / norm * self.weight.view(1, -1, 1, 1)

    class TorchSSD(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            ch = cfg.channels
            self.layers = nn.ModuleDict()  # forward order: conv1_1 is the first module
            self.plan: list[tuple[str, Any]] = []
            cin, stage, idx = 3, 1, 0

            def conv(name, cout, k, stride=1, pad=0, dil=1):
                nonlocal cin
                self.layers[name] = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil)
                self.layers[name + "_relu"] = nn.ReLU()
                self.plan.append(("conv", name))
                cin = cout

            for v in cfg.vgg:
                if v in ("M", "C"):
                    name = f"pool{stage}"
                    self.layers[name] = nn.MaxPool2d(2, 2, ceil_mode=(v == "C"))
                    self.plan.append(("pool", name))
                    stage, idx = stage + 1, 0
                else:
                    idx += 1
                    conv(f"conv{stage}_{idx}", ch(v), 3, pad=1)
            self.layers["l2norm"] = L2Norm(cin)
            self.plan.append(("source_l2", "l2norm"))
            self.layers[f"pool{stage}"] = nn.MaxPool2d(2, 2)
            self.plan.append(("pool", f"pool{stage}"))
            stage += 1
            for i, v in enumerate(cfg.conv5):
                conv(f"conv{stage}_{i + 1}", ch(v), 3, pad=1)
            self.layers["pool5"] = nn.MaxPool2d(3, 1, 1)
            self.plan.append(("pool", "pool5"))
            d = cfg.fc_dilation
            conv("conv6", ch(cfg.fc[0]), 3, pad=d, dil=d)
            conv("conv7", ch(cfg.fc[1]), 1)
            self.plan.append(("source", None))
            for j, (mid, out, stride, pad) in enumerate(cfg.extras):
                n = 8 + j
                conv(f"conv{n}_1", ch(mid), 1)
                conv(f"conv{n}_2", ch(out), 3, stride=stride, pad=pad)
                self.plan.append(("source", None))
            src_ch = [ch(cfg.vgg[-1]), ch(cfg.fc[1])] + [ch(e[1]) for e in cfg.extras]
            K = cfg.num_classes
            for k, (c, a) in enumerate(zip(src_ch, cfg.anchors_per_cell)):
                self.layers[f"cls_{k}"] = nn.Conv2d(c, a * K, 3, padding=1)
                self.layers[f"loc_{k}"] = nn.Conv2d(c, a * 4, 3, padding=1)

        def forward(self, x):
            srcs = []
            for kind, name in self.plan:
                if kind == "conv":
                    x = self.layers[name + "_relu"](self.layers[name](x))
                elif kind == "pool":
                    x = self.layers[name](x)
                elif kind == "source_l2":
                    srcs.append(self.layers[name](x))
                else:
                    srcs.append(x)
            K = self.cfg.num_classes
            cls, loc = [], []
            for k, s in enumerate(srcs):
                B = s.shape[0]
                cls.append(self.layers[f"cls_{k}"](s).permute(0, 2, 3, 1).reshape(B, -1, K))
                loc.append(self.layers[f"loc_{k}"](s).permute(0, 2, 3, 1).reshape(B, -1, 4))
            return torch.cat(cls, 1), torch.cat(loc, 1)

    net = TorchSSD(config).eval()
    params = variables["params"]
    with torch.no_grad():
        for name, mod in net.layers.items():
            if isinstance(mod, nn.Conv2d):
                k = np.array(params[name]["kernel"], np.float32)  # HWIO (a writable copy)
                mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))))
                mod.bias.copy_(torch.from_numpy(np.array(params[name]["bias"], np.float32)))
            elif isinstance(mod, L2Norm):
                mod.weight.copy_(torch.from_numpy(np.array(params[name]["scale"], np.float32)))
    for p in net.parameters():
        p.requires_grad_(False)
    net.L2NormType = L2Norm
    return net


class ZennitRunner:
    """zennit (and plain torch autograd) on one SSD, ready to time.

    Two copies of the network: one with zennit's composite registered for the lifetime of
    the runner, one plain (torch autograd input gradient, the torch floor). ``run`` computes
    the relevance of every target: per image one forward, then one
    ``torch.autograd.grad(cls_logits, x, grad_outputs=initial_relevance, retain_graph=True)``
    per target (``retain_graph`` released on the image's last target).
    """

    modes = ("zennit", "torch_grad")

    def __init__(self, config, variables, meta, x_nhwc, threads: int | None = None, device: str | None = None):
        from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
        from zennit.rules import Pass, ZBox, ZPlus
        from zennit.types import Convolution

        torch, self.threads, self.device, self.x = torch_setup(x_nhwc, threads, device)
        self.torch = torch
        self.config = config
        self.plain = build_torch_ssd(config, variables).to(self.device)
        self.net = build_torch_ssd(config, variables).to(self.device)
        low, high = meta.pixel_bounds
        shape = (1, 3, config.image_size, config.image_size)
        lo = torch.tensor(low, dtype=torch.float32, device=self.device).view(1, 3, 1, 1).expand(shape).contiguous()
        hi = torch.tensor(high, dtype=torch.float32, device=self.device).view(1, 3, 1, 1).expand(shape).contiguous()
        self.composite = SpecialFirstLayerMapComposite(
            # zero_params="bias": crp-jax's rules leave the bias out of w+ / z^B (docs/design.md §2);
            # zennit's defaults keep a clamped bias in the denominators. Same cost either way.
            layer_map=layer_map_base() + [(self.net.L2NormType, Pass()), (Convolution, ZPlus(zero_params="bias"))],
            first_map=[(Convolution, ZBox(lo, hi, zero_params="bias"))],
        )
        self.composite.register(self.net)

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def forward(self, b: int = 0):
        """Plain forward of image ``b`` (no grad): ``(cls [1, A, K], loc [1, A, 4])`` numpy."""
        with self.torch.no_grad():
            out = self.plain(self.x[b : b + 1])
            self.sync()
        return out[0].cpu().numpy(), out[1].cpu().numpy()

    def run(self, images, anchors, cls_coef, mode: str = "zennit", keep: int = 0):
        """Relevance (zennit) or input gradient (mode "torch_grad") of every target.

        Returns the first ``keep`` results as NHWC numpy (for parity checks)."""
        model = self.net if mode == "zennit" else self.plain
        return torch_class_grads(self.torch, model, self.x, images, anchors, cls_coef, keep)

    def close(self):
        self.composite.remove()
