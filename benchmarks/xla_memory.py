"""XLA's own memory accounting for explain's compiled functions (SSD300, random weights).

For each method and chunk size: the per-image forward's output (the VJP residuals kept for
all of that image's targets) and the per-chunk backward's scratch (``temp``), from
``jax.jit(...).lower(...).compile().memory_analysis()``. Peak RSS of a whole run is measured
by ``speed.py``; this script says where the bytes go.

    python benchmarks/xla_memory.py [--chunks 8,32] [--methods crp,gradient]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, beside this script
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import build_model  # noqa: E402

from crp_jax.relevance import compiled_functions, get_composite  # noqa: E402

MiB = 2.0**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", default="8,32")
    p.add_argument("--methods", default="crp,gradient")
    args = p.parse_args(argv)
    _, model, variables, meta = build_model("ssd300")
    cfg = model.config
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 300, 300, 3)).astype(np.float32))
    print(f"SSD300, one image, jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print(f"{'method':>9} {'chunk':>5} {'residuals MiB':>14} {'backward temp MiB':>18} {'per target':>11}")
    for method in args.methods.split(","):
        comp = get_composite(method, meta)
        for chunk in (int(c) for c in args.chunks.split(",")):
            forward, backward = compiled_functions(model, comp, chunk, cfg.num_anchors())
            fm = forward.lower(variables, x).compile().memory_analysis()
            _, vjp_fn = forward(variables, x)
            a = np.zeros((1, chunk), np.int32)
            c = np.zeros((1, chunk, cfg.num_classes), np.float32)
            l = np.zeros((1, chunk, 4), np.float32)
            bm = backward.lower(vjp_fn, x, a, c, l).compile().memory_analysis()
            print(
                f"{method:>9} {chunk:>5} {fm.output_size_in_bytes / MiB:>14.1f} "
                f"{bm.temp_size_in_bytes / MiB:>18.1f} {bm.temp_size_in_bytes / MiB / chunk:>11.1f}"
            )


if __name__ == "__main__":
    main()
