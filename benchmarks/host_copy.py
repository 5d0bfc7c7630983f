"""How to get explain's relevance to the host fastest on an accelerator (SSD300, random
weights, one image, crp, chunk 8): explain's per-chunk copies (default), the relevance left
on the device (``to_host=False``), and ``to_host=False`` followed by one bulk copy.

    python benchmarks/host_copy.py [--targets 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, beside this script
import jax  # noqa: E402
from _common import build_model  # noqa: E402

import crp_jax as cj  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true", help="the shipped model instead of SSD300 (smoke test)")
    args = p.parse_args(argv)
    _, model, variables, meta = build_model("shipped" if args.small else "ssd300")
    cfg = model.config
    S = cfg.image_size
    x = np.random.default_rng(0).normal(size=(1, S, S, 3)).astype(np.float32)
    rng = np.random.default_rng(1)
    A = cfg.num_anchors()
    targets = [
        cj.ClassTarget(0, int(a), int(k))
        for a, k in zip(rng.integers(0, A, args.targets), rng.integers(1, cfg.num_classes, args.targets))
    ]
    ways = {
        "per-chunk copies (default)": lambda: cj.explain(model, variables, x, targets, "crp", meta),
        "to_host=False": lambda: cj.explain(
            model, variables, x, targets, "crp", meta, to_host=False
        ).block_until_ready(),
        "to_host=False + one np.asarray": lambda: np.asarray(
            cj.explain(model, variables, x, targets, "crp", meta, to_host=False)
        ),
    }
    for f in ways.values():
        f()
    ts = {k: [] for k in ways}
    for _ in range(args.repeats):
        for k, f in ways.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    print(f"{jax.devices()[0].device_kind}, T={args.targets}, {args.targets * S * S * 12 / 2**20:.0f} MiB of relevance")
    for k, v in ts.items():
        print(
            f"{k:>32}: {1e3 * statistics.median(v) / args.targets:.3f} ms/target  (repeats {[round(t, 3) for t in v]})"
        )


if __name__ == "__main__":
    main()
