"""How ``crop="auto"``'s policy (``cropped.auto_crops``: a window of at most ``CROP_MAX_AREA``
of the image, or ``CROP_MAX_AREA_MANY`` with ``CROP_MANY_TARGETS`` targets in the call) compares
with the area threshold alone (0.5, the policy before the target count), a plain 0.75 threshold
and cropping every windowed group (``crop="always"``), per target against the batched
plain-gradient floor (as ``dataset_shape.py``), for shapes ``IMAGESxTARGETS``; runners
interleaved, median of 5:

    python benchmarks/crop_policy.py shipped 48x1 16x3 1x48

The policy's constants are module constants read when ``explain`` picks its groups, so a
runner sets them around its call and puts them back.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import build_model, make_images  # noqa: E402
from dataset_shape import floor_fn, meta_shape  # noqa: E402

import crp_jax as cj  # noqa: E402
import crp_jax.relevance.cropped as cropped  # noqa: E402


def with_policy(fn, **constants):
    def run():
        old = {k: getattr(cropped, k) for k in constants}
        for k, v in constants.items():
            setattr(cropped, k, v)
        try:
            return fn()
        finally:
            for k, v in old.items():
                setattr(cropped, k, v)

    return run


def main() -> None:
    label, model, variables, meta = build_model(sys.argv[1])
    print(label)
    for n, per in [tuple(map(int, s.split("x"))) for s in sys.argv[2:]]:
        shape = meta_shape(model, meta)
        A, K = cj.relevance.output_sizes(model, variables, np.zeros((1, *shape), np.float32))
        x = np.asarray(make_images(n, shape[0], meta, seed=0))
        anchors = np.random.default_rng(0).integers(0, A, (n, per))
        targets = [cj.ClassTarget(b, int(anchors[b, s]), 1) for b in range(n) for s in range(per)]
        floor = floor_fn(model, A)
        coef = np.zeros((per, n, K), np.float32)
        coef[..., 1] = 1
        slot_anchors = anchors.T.astype(np.int32)

        def explain(crop="auto"):
            return cj.explain(model, variables, x, targets, method="crp", meta=meta, crop=crop)

        runs = {
            "auto": explain,
            f"area {cropped.CROP_MAX_AREA} alone": with_policy(explain, CROP_MANY_TARGETS=10**9),
            "0.75": with_policy(explain, CROP_MAX_AREA=0.75),
            "always": lambda: explain("always"),
            "floor": lambda: floor(variables, x, slot_anchors, coef).block_until_ready(),
        }
        for run in runs.values():  # compile
            run()
        times = {k: [] for k in runs}
        for _ in range(5):
            for k, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios = ", ".join(f"{k} {v / med['floor']:.2f}" for k, v in med.items())
        print(
            f"{n} x {per}: over the floor: {ratios}; floor {1e3 * med['floor'] / (n * per):.2f} ms/target", flush=True
        )


if __name__ == "__main__":
    main()
