"""Conservation and boundedness of relevance on a BatchNorm-folded SSDlite with zero biases
(random weights, a share of gammas negative), one central anchor in each of the six sources:

- LRP-ab one-hot (should sum to 1, with sum |R| <= 1) with the rules exactly as written
  (``Composite(sign_aware=False)``: the classic ``WPlus()`` on every conv and the value split
  ``Proportional(by_sign=False)`` at residual adds), and with the ``lrp_ab`` preset (w+ in the
  sign-aware form the graph's sign facts call for, sign-aware adds);
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
        (Kind("add"), rules.Proportional(by_sign=False)),
    )
    literal = Composite(
        rules=((INPUT_LAYER, rules.ZBox(lo, hi)), *kinds, (nn.Conv, rules.WPlus())), contrast="none", sign_aware=False
    )
    print(f"folded SSDlite, {S} px, width {cfg.width}, zero biases; one central anchor per source (0..5)")
    print("| run | rules | initial | sum R per source | sum abs R per source | max error |")
    print("|---|---|---|---|---|---|")
    for name, comp in (("as written (sign_aware=False)", literal), ("lrp_ab preset (sign-aware)", "lrp_ab")):
        t = time.time()
        try:
            R = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 2) for a in anchors], method=comp, meta=meta)
        except cj.NumericsError as e:
            print(f"| lrp_ab one-hot | {name} | 1 | NumericsError: {str(e)[:120]} | | |")
            continue
        s = R.reshape(len(anchors), -1).sum(1).astype(np.float64)
        a = np.abs(R).reshape(len(anchors), -1).sum(1).astype(np.float64)
        print(
            f"| lrp_ab one-hot | {name} | 1 | {' '.join(f'{v:.6g}' for v in s)} | {' '.join(f'{v:.6g}' for v in a)} "
            f"| {np.max(np.abs(s - 1)):.2e} ({time.time() - t:.0f} s) |"
        )
    R = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 2, "others") for a in anchors], method="crp", meta=meta)
    s = R.reshape(len(anchors), -1).sum(1).astype(np.float64)
    a = np.abs(R).reshape(len(anchors), -1).sum(1)
    print(
        f"| crp preset, contrast 'others' | sign-aware | 0 | {' '.join(f'{v:.3g}' for v in s)} | "
        f"{' '.join(f'{v:.3g}' for v in a)} | {np.max(np.abs(s) / a):.2e} (of sum abs R) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
