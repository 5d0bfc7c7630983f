"""``python -m crp_jax.data``: time the generator or write a preview sheet.

    python -m crp_jax.data bench [--n 500] [--size 128] [--seed 0]
    python -m crp_jax.data preview out.png [--n 16] [--size 128] [--seed 0]

The preview shows each scene beside an overlay: boxes in green, visible ink darkened,
discriminative parts in magenta.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from crp_jax.data.scenes import SceneSpec, generate_scene


def _bench(args: argparse.Namespace) -> None:
    spec = SceneSpec(image_size=args.size)
    for i in range(args.warmup):  # fills the glyph cache (font sizes are reused)
        generate_scene(args.seed, 10**9 + i, spec)
    t, c = time.perf_counter(), time.process_time()
    n_obj = sum(generate_scene(args.seed, i, spec).num_objects for i in range(args.n))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"{args.n} scenes {args.size}x{args.size} ({n_obj} objects): "
        f"{args.n / wall:.1f} scenes/s wall, {1e3 * cpu / args.n:.2f} ms CPU per scene "
        f"(after {args.warmup} warm-up scenes)"
    )


def _preview(args: argparse.Namespace) -> None:
    from PIL import Image

    spec = SceneSpec(image_size=args.size)
    tiles = []
    for i in range(args.n):
        sc = generate_scene(args.seed, i, spec)
        ov = sc.image.copy()
        for box, m, p in zip(sc.boxes.astype(int), sc.masks, sc.part_masks):
            ov[m] //= 2
            ov[p] = (255, 0, 255)
            x0, y0, x1, y1 = box
            for sl in (np.s_[y0, x0:x1], np.s_[y1 - 1, x0:x1], np.s_[y0:y1, x0], np.s_[y0:y1, x1 - 1]):
                ov[sl] = (0, 255, 0)
        tiles.append(np.concatenate([sc.image, ov], 1))
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r : r + cols], 1) for r in range(0, len(tiles), cols)]
    Image.fromarray(np.concatenate(rows, 0)).save(args.out)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m crp_jax.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="scenes per second on one core")
    b.add_argument("--n", type=int, default=500)
    b.add_argument("--warmup", type=int, default=200)
    p = sub.add_parser("preview", help="write a PNG sheet of scenes with boxes and parts")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=16)
    for s in (b, p):
        s.add_argument("--size", type=int, default=128)
        s.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    {"bench": _bench, "preview": _preview}[args.cmd](args)


if __name__ == "__main__":
    main()
