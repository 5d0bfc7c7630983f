"""Data-set shape: many images with a few targets each, against the batched plain-gradient floor.

For each shape (images x targets per image, the same total), per target: ``cj.explain`` with
"crp" and with "gradient", and the floor that shape really has: one jitted ``jax.vjp`` over the
whole image batch, vmapped over the target slots (one-hot cotangent per image and slot), no
rules, nothing copied to the host. Ratios are measured in the same run, runners interleaved.

    python benchmarks/dataset_shape.py --model shipped --total 48 --repeats 3
    python benchmarks/dataset_shape.py --model ssd300 --total 16 --repeats 2

Prints a markdown table; ``--json FILE`` writes the numbers. ``benchmarks/speed.py`` runs this
as its "data-set shape" section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import build_model, make_images  # noqa: E402

import crp_jax as cj  # noqa: E402


def shapes_for(total: int) -> list[tuple[int, int]]:
    """``(images, targets per image)``: 1 x total, total/16... as the issue's table."""
    out = [(1, total)]
    for per in (3, 1):
        if total % per == 0 and total // per > 1:
            out.append((total // per, per))
    return out


def floor_fn(model, num_boxes: int):
    """Jitted ``(variables, x [N, ...], anchors [S, N], cls_coef [S, N, K]) -> grads [S, N, ...]``."""

    @jax.jit
    def floor(variables, x, anchors, coef):
        (cls, loc), vjp_fn = jax.vjp(lambda x: model.apply(variables, x), x)

        def one(a, c):  # a [N], c [N, K]
            onehot = (jnp.arange(num_boxes)[None, :] == a[:, None]).astype(c.dtype)[..., None]
            return vjp_fn((onehot * c[:, None, :], jnp.zeros_like(loc)))[0]

        return jax.vmap(one)(anchors, coef)

    return floor


def measure(model, variables, meta, n_images: int, per_image: int, repeats: int, seed: int = 0) -> dict:
    A, K = cj.relevance.output_sizes(model, variables, np.zeros((1, *meta_shape(model, meta)), np.float32))
    x = np.asarray(make_images(n_images, meta_shape(model, meta)[0], meta, seed=seed))
    rng = np.random.default_rng(seed)
    anchors = rng.integers(0, A, (n_images, per_image))
    targets = [cj.ClassTarget(b, int(anchors[b, s]), 1) for b in range(n_images) for s in range(per_image)]
    floor = floor_fn(model, A)
    coef = np.zeros((per_image, n_images, K), np.float32)
    coef[..., 1] = 1
    slot_anchors = anchors.T.astype(np.int32)  # [S, N]
    runners = {
        "crp": lambda: cj.explain(model, variables, x, targets, method="crp", meta=meta),
        "gradient": lambda: cj.explain(model, variables, x, targets, method="gradient", meta=meta),
        "floor": lambda: floor(variables, x, slot_anchors, coef).block_until_ready(),
    }
    for run in runners.values():  # compile
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    T = n_images * per_image
    ms = {k: 1e3 * statistics.median(v) / T for k, v in times.items()}
    return {
        "images": n_images,
        "per_image": per_image,
        "ms_per_target": ms,
        "crp_over_floor": ms["crp"] / ms["floor"],
        "gradient_over_floor": ms["gradient"] / ms["floor"],
    }


def meta_shape(model, meta) -> tuple[int, int, int]:
    size = model.config.image_size
    return (size, size, 3)


def table(label: str, rows: list[dict]) -> str:
    base = rows[0]["ms_per_target"]["crp"]
    lines = [
        f"{label}",
        "",
        "| shape | crp ms/target | gradient ms/target | floor ms/target | crp/floor | gradient/floor | crp vs 1 x T |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["ms_per_target"]
        lines.append(
            f"| {r['images']} x {r['per_image']} | {m['crp']:.1f} | {m['gradient']:.1f} | {m['floor']:.1f} | "
            f"{r['crp_over_floor']:.2f} | {r['gradient_over_floor']:.2f} | {m['crp'] / base:.2f} |"
        )
    return "\n".join(lines)


def run(model_name: str, total: int, repeats: int) -> tuple[str, list[dict]]:
    label, model, variables, meta = build_model(model_name)
    rows = [measure(model, variables, meta, n, per, repeats) for n, per in shapes_for(total)]
    return table(f"{label}, {total} targets per shape, median of {repeats}:", rows), rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shipped", help="shipped, ssd300, ... (benchmarks/_common.py)")
    p.add_argument("--total", type=int, default=48, help="targets per shape")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    text, rows = run(args.model, args.total, args.repeats)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
