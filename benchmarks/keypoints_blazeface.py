"""Do BlazeFace's keypoint explanations point at the keypoint? (issue 23 item 5)

On ``skimage.data.astronaut()`` and five transformed copies (horizontal flip, a wide and a
tall crop, a zoom in and a zoom out), each letterboxed to the short-range model's 128 px input
as ``cj.preprocess_with_sizes`` does, the face that ``cj.detect`` finds is explained for each
of its twelve keypoint regressors pushed +1 ("what moves the right eye right", ... "the left
ear down": ``LocTarget(0, anchor, "<keypoint>_x|y", +1)``), with CRP, LRP-ab and gradient x
input.

(a) Keypoint deletion (``metrics.box_deletion`` on the keypoint as a zero-size box): the most
relevant pixels of the map are set to 0 (the input value of a mid-grey pixel, the
preprocessing's mean) in ten steps up to 10 % of the input, and the keypoint that the model
then predicts at the same anchor is decoded. ``shift`` = how far it moved *against* the asked
direction (px at the 128 px input): removing what pushes the eye right should move it left.
Reference: the same number of pixels removed in a random order.

(b) Keypoint pointing game (``metrics.pointing_game``): does the map's largest value lie
within 15 px at 224 px, scaled to the input (8.6 px at 128 px), of the predicted keypoint?
Reference: a map of uniform noise.

Every cell: mean over images x keypoint regressors [95 % percentile bootstrap interval]
(``metrics.bootstrap_ci``, 1000 resamples). Run: ``python benchmarks/keypoints_blazeface.py``
(``--figure PNG`` also draws the maps of the photo itself).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import cj
from PIL import Image

from crp_jax import metrics
from crp_jax.blazeface.postprocess import decode
from crp_jax.relevance.composite import method_title

METHODS = ("crp", "lrp_ab", "gradient_x_input")
STEPS, MAX_FRACTION = 10, 0.1  # 1 % .. 10 % of the input's pixels removed
REPORT_FRACTIONS = (0.01, 0.02, 0.05, 0.1)


def transformed_images(photo: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The photo and five copies (uint8 ``[H, W, 3]``): flipped, cropped wide and tall (both
    letterboxed to a square, one with bands above and below, one beside), zoomed in (a square
    crop around the face) and zoomed out (the photo at 3/4 size in the middle of a black
    square)."""
    h, w = photo.shape[:2]
    small = np.asarray(Image.fromarray(photo).resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR))
    out = np.zeros_like(photo)
    oy, ox = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    return [
        ("photo", photo),
        ("flipped", photo[:, ::-1].copy()),
        ("crop 440x320", photo[20:340, 40:480].copy()),
        ("crop 260x512", photo[:, 100:360].copy()),
        ("zoom in (320x320 crop)", photo[0:320, 64:384].copy()),
        ("zoom out (3/4 in black)", out),
    ]


def keypoint_fn(model, variables, meta, anchor: int):
    """``[N, S, S, 3] -> [N, K, 2]``: every keypoint predicted at ``anchor``, in model-input
    pixels (x right, y down), decoded as MediaPipe does."""
    import jax

    S = meta.image_size
    loc_at = jax.jit(lambda v, x: model.apply(v, x)[1][:, anchor])
    anchors = meta.anchors[anchor : anchor + 1]

    def run(x: np.ndarray) -> np.ndarray:
        loc = np.asarray(loc_at(variables, x))  # [N, 16]
        return np.stack([decode(r[None], anchors, S)[1][0] for r in loc]) * S

    return run


def point_box_fn(kp_fn, k: int):
    """The keypoint ``k`` as a zero-size box ``[N, 4]`` (x, y, x, y), for ``box_deletion``."""

    def run(x: np.ndarray) -> np.ndarray:
        p = kp_fn(x)[:, k]
        return np.concatenate([p, p], axis=-1)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figure", default=None, metavar="PNG", help="also draw the photo's maps for three keypoints")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    from skimage import data

    t0 = time.perf_counter()
    model, variables, meta = cj.load_pretrained("blazeface")
    names = [n for n in meta.regressor_names if n not in ("cx", "cy", "w", "h")]
    kp_names = list(meta.keypoint_names)
    tol = metrics.pointing_tolerance(meta.image_size)
    shifts = {m: {f: [] for f in REPORT_FRACTIONS} for m in (*METHODS, "random")}
    aopc = {m: [] for m in (*METHODS, "random")}
    hits = {m: [] for m in (*METHODS, "random")}
    rows_seen = []
    rng = np.random.default_rng(0)
    photo_maps = None
    for label, img in transformed_images(data.astronaut()):
        x, sizes = cj.preprocess_with_sizes([img], meta)
        det = cj.detect(model, variables, x, meta=meta, image_sizes=sizes)[0]
        if len(det) == 0:
            print(f"{label}: no face detected; left out")
            continue
        a = int(det.anchors[0])
        rows_seen.append(f"{label} ({img.shape[1]}x{img.shape[0]}, score {float(det.scores[0]):.3f})")
        targets = [cj.LocTarget(0, a, n, 1) for n in names]
        maps = {m: cj.heatmap(cj.explain(model, variables, x, targets, method=m, meta=meta)) for m in METHODS}
        kp_fn = keypoint_fn(model, variables, meta, a)
        x0 = np.asarray(x)[0]
        kp0 = kp_fn(np.asarray(x))[0]  # [K, 2] model-input pixels
        if photo_maps is None:
            photo_maps = (x, maps, kp0)
        for t, name in enumerate(names):
            k = kp_names.index(name.rsplit("_", 1)[0])
            coord = "cx" if name.endswith("_x") else "cy"
            box_fn = point_box_fn(kp_fn, k)
            p = kp0[k]
            for m in (*METHODS, "random"):
                h = maps["crp"][t] if m == "random" else maps[m][t]
                order = "random" if m == "random" else "most_relevant_first"
                with np.errstate(invalid="ignore"):  # the IoU of zero-size boxes (not used) is 0/0
                    r = metrics.box_deletion(
                        box_fn,
                        x0,
                        h,
                        coord,
                        1,
                        STEPS,
                        MAX_FRACTION,
                        order,
                        baseline=0.0,
                        rng=int(rng.integers(1 << 31)),
                    )
                for f in REPORT_FRACTIONS:
                    shifts[m][f].append(float(r["shift"][int(np.argmin(np.abs(r["fractions"] - f)))]))
                aopc[m].append(float(r["aopc_shift"]))
                hm = rng.uniform(size=h.shape) if m == "random" else h
                hits[m].append(float(metrics.pointing_game(hm, (p[0], p[1], p[0], p[1]), tol)))
    seconds = time.perf_counter() - t0

    def cell(values) -> str:
        mean, lo, hi = metrics.bootstrap_ci(np.asarray(values), n_boot=args.n_boot)
        return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"

    n = len(aopc["crp"])
    print(f"images: {len(rows_seen)}: " + "; ".join(rows_seen))
    print(f"targets: {n} (images x {len(names)} keypoint regressors, each pushed +1)\n")
    title = " | ".join(f"shift at {int(f * 100)} % removed (px)" for f in REPORT_FRACTIONS)
    print(f"| method | {title} | mean shift 1-10 % (px) | pointing game ({tol:.1f} px) |")
    print("|---|" + "---|" * (len(REPORT_FRACTIONS) + 2))
    for m in (*METHODS, "random"):
        title = "random pixels / noise map" if m == "random" else method_title(m)
        cols = " | ".join(cell(shifts[m][f]) for f in REPORT_FRACTIONS)
        print(f"| {title} | {cols} | {cell(aopc[m])} | {cell(hits[m])} |")
    print(
        f"\nshift: px at the {meta.image_size} px input the keypoint moved against the asked direction "
        f"(positive = the removed pixels did push it that way); {seconds:.0f} s"
    )
    if args.figure and photo_maps is not None:
        draw_figure(args.figure, meta, photo_maps, names)
        print(f"wrote {args.figure}")


def draw_figure(path: str, meta, photo_maps, names) -> None:
    """Rows: CRP, LRP-ab, gradient x input; columns: three keypoint regressors of the photo's
    face (model-input maps magnified 3x), the predicted keypoint marked."""
    x, maps, kp0 = photo_maps
    pixels = np.asarray(np.clip((np.asarray(x)[0] + 1) * 127.5, 0, 255), np.uint8)
    show = ["right_eye_x", "nose_tip_y", "mouth_x"]
    kp_names = list(meta.keypoint_names)
    cells, titles = [], []
    for m in METHODS:
        for name in show:
            t = names.index(name)
            px, py = kp0[kp_names.index(name.rsplit("_", 1)[0])]
            marker = (px - 2, py - 2, px + 2, py + 2)
            cells.append(cj.viz.overlay(pixels, maps[m][t], box=marker, scale=3))
            titles.append(f"{method_title(m)}: {name} +")
    cj.viz.grid(cells, titles, ncols=len(show)).save(path)


if __name__ == "__main__":
    main()
