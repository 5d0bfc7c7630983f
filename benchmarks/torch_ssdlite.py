"""The torch side of ``benchmarks/speed.py`` for SSDlite320: plain autograd input gradients.

torchvision's own ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
num_classes=91)`` in eval mode (its own random init; BatchNorm in eval mode, not folded;
the same architecture as crp-jax's ``SSDConfig.ssdlite320_mobilenet_v3_large(91)``, with
the same anchor order, crp_jax/ssd/convert_ssdlite.py), timed the fastest way a torch user
gets a per-target input gradient: raw outputs ``model.head(list(model.backbone(x).values()))``
(torchvision's resize/normalise transform skipped: ``x`` is crp-jax's preprocessed image,
which is the same normalisation), one forward per image, then one
``torch.autograd.grad(cls_logits, x, grad_outputs=ct, retain_graph=True)`` per target, with
``ct`` crp's initial relevance at the target's anchor, as ``zennit_ssd`` does for SSD300.

No zennit here: zennit has no canonizer for SSDlite (hardswish, squeeze-excitation,
residual adds, BatchNorm after every conv), so the comparison is with torch's gradient,
the floor any torch-side explanation would have to beat. Torch and torchvision are
imported only inside the functions, so that ``speed.py`` runs without them.
"""

from __future__ import annotations

from _common import torch_class_grads, torch_setup

NUM_CLASSES = 91


def available() -> tuple[bool, str]:
    """(True, versions) if torch and torchvision import, else (False, why)."""
    try:
        import torch
        import torchvision
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"
    return True, f"torch {torch.__version__}, torchvision {torchvision.__version__}"


class TorchSSDliteRunner:
    """torchvision's SSDlite320 ready to time; the interface of ``zennit_ssd.ZennitRunner``
    (``forward``, ``run``, ``close``, ``threads``, ``device``) with the one mode
    "torch_grad"."""

    modes = ("torch_grad",)

    def __init__(self, x_nhwc, threads: int | None = None, device: str | None = None, seed: int = 0):
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        torch, self.threads, self.device, self.x = torch_setup(x_nhwc, threads, device)
        self.torch = torch
        torch.manual_seed(seed)
        det = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
        for p in det.parameters():
            p.requires_grad_(False)
        self.det = det.to(self.device)

    def raw(self, x):
        """``(cls_logits [B, A, K], bbox_regression [B, A, 4])`` of torchvision's head."""
        out = self.det.head(list(self.det.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]

    def forward(self, b: int = 0):
        """Raw outputs of image ``b`` (no grad) as numpy."""
        with self.torch.no_grad():
            cls, loc = self.raw(self.x[b : b + 1])
        return cls.cpu().numpy(), loc.cpu().numpy()

    def run(self, images, anchors, cls_coef, mode: str = "torch_grad", keep: int = 0):
        """Input gradient of every target (crp's initial relevance as the cotangent)."""
        if mode not in self.modes:
            raise ValueError(f"TorchSSDliteRunner runs {self.modes}, not {mode!r}")
        return torch_class_grads(self.torch, self.raw, self.x, images, anchors, cls_coef, keep)

    def close(self):
        pass
