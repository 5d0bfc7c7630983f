"""Peak memory of ``explain_windows`` against the dense output, shipped model.

Each measurement runs in a fresh process (``resource.getrusage`` ``ru_maxrss`` of that
child: its peak resident set, JAX and the compiled programs included), one per output
form, with the same ``T`` class targets (anchor ``t mod A``, class 1 + ``t mod (K - 1)``) on
one generated held-out scene. Windows exist to save memory: their peak must stay below the
dense output's.

Usage: ``python benchmarks/windows_memory.py [--targets 10000] [--weights default]``;
prints one line per output form and the ratio. Figures in ``benchmarks/RESULTS.md``
("Windows memory").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
import numpy as np
import crp_jax as cj
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED

T, output, weights = int(sys.argv[1]), sys.argv[2], sys.argv[3]
model, variables, meta = cj.load_pretrained(None if weights == "default" else weights)
x = cj.preprocess([generate_scene(HELDOUT_SEED, 0).image], meta)
A, K = model.apply(variables, x)[0].shape[1:]
targets = [cj.ClassTarget(0, t % A, 1 + t % (K - 1)) for t in range(T)]
run = cj.explain_windows if output == "windows" else cj.explain
R = run(model, variables, x, targets, method="crp", meta=meta)
held = R.nbytes
dense_bytes = T * int(np.prod(x.shape[1:])) * 4
scale = 1 if sys.platform == "darwin" else 1024
print(json.dumps({"output": output, "T": T, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                  "result_bytes": int(held), "dense_bytes": dense_bytes}))
"""


def measure(T: int, output: str, weights: str = "default") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(T), output, weights], capture_output=True, text=True, env=env, check=False
    )
    if r.returncode:
        raise RuntimeError(f"child failed ({output}, T={T}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=10000)
    p.add_argument("--weights", default="default")
    args = p.parse_args(argv)
    got = {o: measure(args.targets, o, args.weights) for o in ("dense", "windows")}
    gib = 1 << 30
    for o, f in got.items():
        print(
            f"{o:8s} T={f['T']}: peak RSS {f['peak_rss'] / gib:.2f} GiB, result {f['result_bytes'] / gib:.2f} GiB "
            f"(dense form {f['dense_bytes'] / gib:.2f} GiB)"
        )
    print(f"windows / dense peak: {got['windows']['peak_rss'] / got['dense']['peak_rss']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
