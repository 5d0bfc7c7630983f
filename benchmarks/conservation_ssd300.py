"""Conservation of relevance on SSD300-VGG16 (random weights, zero biases), one target in
each of the six sources: lrp_ab (one-hot) input relevance should sum to 1, CRP's contrast
and alpha1beta1 localization targets to 0 (relative to sum |R|).

    python benchmarks/conservation_ssd300.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, beside this script
from _common import build_model  # noqa: E402

import crp_jax as cj  # noqa: E402


def source_anchor(cfg, k):
    sizes, per = cfg.feature_sizes(), cfg.anchors_per_cell
    start = sum(f * f * a for f, a in zip(sizes[:k], per[:k]))
    f = sizes[k]
    return start + ((f // 2) * f + f // 2) * per[k]


def main():
    _, model, variables, meta = build_model("ssd300")
    cfg = model.config
    img = np.random.default_rng(0).integers(0, 256, (300, 300, 3)).astype(np.uint8)
    x = cj.preprocess(img, meta)
    anchors = [source_anchor(cfg, k) for k in range(6)]
    rows = []
    for method, make in [
        ("lrp_ab", lambda a: cj.ClassTarget(0, a, 7)),
        ("crp", lambda a: cj.ClassTarget(0, a, 7)),
        ("crp", lambda a: cj.LocTarget(0, a, "cx", 1)),
    ]:
        t0 = time.time()
        R = cj.explain(model, variables, x, [make(a) for a in anchors], method=method, meta=meta)
        for k, r in enumerate(R):
            rows.append((method, type(make(0)).__name__, k, float(r.sum()), float(np.abs(r).sum())))
        print(f"# {method} {type(make(0)).__name__}: {time.time() - t0:.1f} s", flush=True)
    print("| method | target | source | sum R | sum abs R | initial | relative error |")
    print("|---|---|---|---|---|---|---|")
    for method, kind, k, s, a in rows:
        init = 1.0 if method == "lrp_ab" else 0.0
        rel = abs(s - init) / (abs(init) if init else a)
        print(f"| {method} | {kind} | {k} | {s:.6g} | {a:.4g} | {init:g} | {rel:.2e} |")


if __name__ == "__main__":
    main()
