"""Conservation of relevance on a BatchNorm-folded SSDlite with zero biases (random weights and
BN statistics, a share of gammas negative), one central anchor in each of the six sources, and
what the rule on the "signed" convs (those whose inputs or outputs can be negative) does to it:

- LRP-ab one-hot (should sum to 1) with that rule being the classic ``WPlus()``, the
  positive-contribution ``WPlus(contributions=True)`` and ``SignedWPlus()`` (the presets');
- the ``crp`` preset's class contrast (should sum to 0, relative to sum |R|).

    python benchmarks/conservation_ssdlite.py            # reduced: 96 px, width 0.35
    python benchmarks/conservation_ssdlite.py --full     # ssdlite320, width 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

try:  # run from a checkout without installing
    import crp_jax as cj
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import crp_jax as cj
import flax.linen as nn
from flax import traverse_util

from crp_jax.relevance import INPUT_LAYER, Composite, Kind, rules
from crp_jax.ssd import Meta, SSDConfig
from crp_jax.ssd.anchors import central_anchor
from crp_jax.ssd.meta import default_class_names
from crp_jax.ssd.ssdlite import SSDLite, random_variables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="ssdlite320 at width 1.0 instead of 96 px, width 0.35")
    args = ap.parse_args(argv)
    cfg = SSDConfig.ssdlite320_mobilenet_v3_large(4)
    if not args.full:
        cfg = dataclasses.replace(cfg, image_size=96, width=0.35)
    model, variables = cj.fold_batchnorm(SSDLite(cfg), random_variables(SSDLite(cfg), seed=3))
    flat = traverse_util.flatten_dict(variables, sep="/")
    variables = traverse_util.unflatten_dict(
        {k: (np.zeros_like(v) if k.endswith("bias") else v) for k, v in flat.items()}, sep="/"
    )
    meta = Meta(cfg, default_class_names(cfg.num_classes), (0.5,) * 3, (0.5,) * 3)
    S = cfg.image_size
    x = cj.preprocess(np.random.default_rng(0).integers(0, 256, (S, S, 3)).astype(np.uint8), meta)
    anchors = [central_anchor(cfg, k) for k in range(cfg.num_sources)]
    lo, hi = meta.pixel_bounds
    kinds = (
        (Kind("activation"), rules.PassThrough()),
        (Kind("gate"), rules.PassThrough()),
        (Kind("add"), rules.Proportional()),
    )
    print(f"folded SSDlite, {S} px, width {cfg.width}, zero biases; one central anchor per source (0..5)")
    print("| run | signed convs' rule | initial | sum R per source | max rel. error |")
    print("|---|---|---|---|---|")
    for name, signed in (
        ("WPlus()", rules.WPlus()),
        ("WPlus(contributions=True)", rules.WPlus(contributions=True)),
        ("SignedWPlus()", rules.SignedWPlus()),
    ):
        comp = Composite(
            rules=((INPUT_LAYER, rules.ZBox(lo, hi)), (Kind("signed"), signed), *kinds, (nn.Conv, rules.WPlus())),
            contrast="none",
        )
        t = time.time()
        R = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 2) for a in anchors], method=comp, meta=meta)
        s = R.reshape(len(anchors), -1).sum(1).astype(np.float64)
        print(
            f"| lrp_ab one-hot | {name} | 1 | {' '.join(f'{v:.6g}' for v in s)} | {np.max(np.abs(s - 1)):.2e} "
            f"({time.time() - t:.0f} s) |"
        )
    R = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 2, "others") for a in anchors], method="crp", meta=meta)
    s = R.reshape(len(anchors), -1).sum(1).astype(np.float64)
    a = np.abs(R).reshape(len(anchors), -1).sum(1)
    print(
        f"| crp preset, contrast 'others' | SignedWPlus() | 0 | {' '.join(f'{v:.3g}' for v in s)} | "
        f"{np.max(np.abs(s) / a):.2e} (of sum abs R) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
