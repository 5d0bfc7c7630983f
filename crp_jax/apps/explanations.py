"""Explaining the detections of one image: read and detect it, build one target per
detection from a request (:class:`Ask`), run every method asked for and describe each
heatmap in words ("CRP: E not F").

Each ``explain`` call holds one target per detection, so its compiled shapes repeat from
image to image (XLA compiles dominate a command's run time).
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Ask",
    "DetectedImage",
    "class_name",
    "describe",
    "detect_image",
    "detect_pixels",
    "first_detected_scene",
    "grid_heatmaps",
    "heatmaps",
    "keypoint_maps",
    "keypoint_regressors",
    "on_image",
    "partner",
    "target_for",
]


@dataclass(frozen=True)
class Ask:
    """What is asked of every detection: target kind, sign, contrast spec."""

    target: str  # cls or a regressor name: cx | cy | w | h | a keypoint's (nose_tip_x)
    sign: int
    contrast: object  # None | "others" | "foreground" | tuple of class indices


@dataclass
class DetectedImage:
    """An image with its detections: ``pixels`` uint8 ``[h, w, 3]`` (reduced to the reading
    bound when the file is larger), model input ``x`` ``[1, S, S, 3]``, ``det`` the
    :class:`crp_jax.ssd.detect.Detections` with boxes in original pixels, ``size`` the
    original ``(H, W)`` (None: ``pixels``' own size)."""

    path: str
    stem: str
    pixels: np.ndarray
    x: object
    det: object
    size: tuple | None = None

    @property
    def full_size(self) -> tuple[int, int]:
        return tuple(self.size) if self.size is not None else tuple(self.pixels.shape[:2])

    def on_pixels(self, boxes):
        """Boxes ``[..., 4]`` in original pixels -> in ``pixels``' pixels (for drawing)."""
        H, W = self.full_size
        h, w = self.pixels.shape[:2]
        if (h, w) == (H, W):
            return boxes
        return np.asarray(boxes, np.float32) * np.array([w / W, h / H, w / W, h / H], np.float32)


def detect_pixels(
    model, variables, meta, pixels: np.ndarray, size=None, *, score_threshold: float, max_detections: int
):
    """Detect in one image ``pixels`` uint8 ``[h, w, 3]`` at the model's input size:
    ``(x [1, S, S, 3], Detections)``, boxes in pixels of ``size`` ``(H, W)`` (default: of
    ``pixels``)."""
    from crp_jax.ssd.detect import detect, preprocess_with_sizes

    x, sizes = preprocess_with_sizes([pixels], meta)
    det = detect(
        model,
        variables,
        x,
        meta,
        score_threshold=score_threshold,
        max_detections=max_detections,
        image_sizes=sizes if size is None else [size],
    )[0]
    return x, det


def detect_image(
    model, variables, meta, path: str, stem: str, *, score_threshold: float, max_detections: int, max_side: int
) -> DetectedImage:
    """Read ``path`` (longest side reduced to at most ``max_side`` while reading, see
    :func:`crp_jax.viz.load_image_bounded`) and detect at the model's input size; boxes in
    the original image's pixels."""
    from crp_jax import viz

    pixels, size = viz.load_image_bounded(path, max_side)
    x, det = detect_pixels(
        model, variables, meta, pixels, size, score_threshold=score_threshold, max_detections=max_detections
    )
    return DetectedImage(path, stem, pixels, x, det, size)


def class_name(meta, k: int) -> str:
    """Name of class ``k`` in ``meta`` (its number when out of range)."""
    names = meta.class_names
    return names[k] if 0 <= k < len(names) else str(k)


def partner(meta, k: int) -> int | None:
    """Index of the confusable partner of class ``k`` in ``meta`` (E/F, O/Q, P/R), or None."""
    from crp_jax.data import PARTNER

    other = PARTNER.get(class_name(meta, k))
    if other is None or other not in meta.class_names:
        return None
    return meta.class_names.index(other)


def target_for(ask: Ask, anchor: int, cls: int, contrast="default"):
    """The target of one detection (class ``cls`` at ``anchor``), or None when the contrast
    set leaves nothing to contrast with."""
    from crp_jax.relevance.targets import ClassTarget, LocTarget

    if ask.target != "cls":
        return LocTarget(0, int(anchor), ask.target, ask.sign)
    c = ask.contrast if contrast == "default" else contrast
    if isinstance(c, tuple):
        c = tuple(k for k in c if k != cls)
        if not c:
            return None
    return ClassTarget(0, int(anchor), int(cls), c)


def describe(meta, target, method: str) -> str:
    """Short human description: 'CRP: E not F' / 'LRP-ab: cx +'."""
    from crp_jax.relevance.composite import get_composite, method_title
    from crp_jax.relevance.targets import ClassTarget

    m = method_title(method)
    if not isinstance(target, ClassTarget):
        return f"{m}: {target.coord} {'+' if target.sign > 0 else '-'}"
    name = class_name(meta, target.cls)
    c = target.contrast if target.contrast is not None else get_composite(method, meta).contrast
    if c == "none":
        return f"{m}: {name}"
    if isinstance(c, str):
        return f"{m}: {name} not {c}"
    return f"{m}: {name} not {'/'.join(class_name(meta, k) for k in c)}"


def heatmaps(model, variables, meta, x, targets, method: str, size=None) -> list:
    """``T`` signed heatmaps ``[S, S]`` (channels summed) for ``targets`` of one image ``x``
    ``[1, S, S, 3]``. With the original image's ``size`` ``(H, W)`` and a meta that
    letterboxes (BlazeFace: ``meta.heatmap_to_original``), each heatmap is cut to the part
    that covers the image, so that drawing it over the image lines up."""
    from crp_jax.relevance import explain, heatmap

    if not targets:
        return []
    R = explain(model, variables, x, list(targets), method=method, meta=meta)
    return [on_image(meta, h, size) for h in heatmap(R)]


def on_image(meta, h, size=None):
    """The part of a heatmap ``[S, S, ...]`` at the model input that covers the original image
    of ``size`` ``(H, W)``: the letterbox bands cut off for a meta that letterboxes
    (BlazeFace: ``meta.heatmap_to_original``), ``h`` itself otherwise (an SSD's input is the
    whole image resized) or without a size. Resized to ``(H, W)``, it lines up with the image."""
    cut = getattr(meta, "heatmap_to_original", None)
    if size is None or cut is None:
        return h
    return cut(h, tuple(size))


def keypoint_regressors(meta) -> list[str]:
    """The keypoint regressors of a detector with keypoints (``meta.keypoint_names`` and
    ``meta.regressor_names``; BlazeFace: ``right_eye_x`` ... ``left_ear_y``): every regressor
    after the box's four. Empty for a detector without keypoints (an SSD)."""
    from crp_jax.relevance.targets import COORDS

    if not getattr(meta, "keypoint_names", ()):
        return []
    return [n for n in getattr(meta, "regressor_names", COORDS) if n not in COORDS]


def keypoint_maps(model, variables, meta, im: DetectedImage, method: str, sign: int = 1) -> dict:
    """Keypoint maps of every detection of a detector with keypoints (``meta.keypoint_names``
    and ``meta.regressor_names``, e.g. BlazeFace): ``{det: [(name, target, heatmap), ...]}``,
    one :class:`crp_jax.LocTarget` per keypoint regressor (``right_eye_x``, ...,
    ``left_ear_y``) pushed in direction ``sign``; one ``explain`` call per detection.
    Empty for a detector without keypoints."""
    from crp_jax.relevance.targets import LocTarget

    names = keypoint_regressors(meta)
    if not names:
        return {}
    out = {}
    for i in range(len(im.det)):
        a = int(im.det.anchors[i])
        targets = [LocTarget(0, a, n, sign) for n in names]
        hs = heatmaps(model, variables, meta, im.x, targets, method, im.full_size)
        out[i] = list(zip(names, targets, hs))
    return out


#: How many methods' ``explain`` calls run at once while their programs are new (:func:`per_method`).
METHOD_THREADS = 2

_RUN_BEFORE: set = set()  # methods per_method has run in this process


def per_method(fn, methods) -> dict:
    """``{method: fn(method)}`` for each distinct method; the first time a method is asked for
    in this process, ``METHOD_THREADS`` at a time.

    Each method is its own programs (its rules make a different forward and backward), traced
    and compiled on its first call. XLA compiles and runs outside Python's lock, so two new
    methods at once overlap one's tracing with the other's compiling (a one-scene
    ``crp-jax explain`` grid, 2 cores: 20.5 -> 17.1 s cold; benchmarks/RESULTS.md). Once every
    method has run, their calls only run programs, which already use every core: in threads
    they contend (``report --scenes 200``: 134 s and 1.08 GiB peak with threads for every
    image, 114 s and 0.60 GiB in order), so they run in order on the calling thread. Results do not depend on it: each call is the same
    computation as alone."""
    methods = list(dict.fromkeys(methods))
    if len(methods) < 2 or _RUN_BEFORE.issuperset(methods):
        return {m: fn(m) for m in methods}
    pool = ThreadPoolExecutor(max_workers=METHOD_THREADS)
    try:
        futures = {m: pool.submit(fn, m) for m in methods}
        wait(futures.values(), return_when=FIRST_EXCEPTION)
        failed = [f for f in futures.values() if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            pool.shutdown(wait=False, cancel_futures=True)
            raise failed[0].exception()
        out = {m: f.result() for m, f in futures.items()}
    finally:  # after an error or Ctrl-C, methods not started yet do not start
        pool.shutdown(wait=True, cancel_futures=True)
    _RUN_BEFORE.update(methods)
    return out


def grid_heatmaps(model, variables, meta, im: DetectedImage, ask: Ask, method: str, compare: str):
    """All heatmaps of one image. Returns ``(dets, main, columns)``: ``dets`` the detection
    numbers explained (a detection whose contrast set is empty is left out), ``main`` the
    overlays' ``{det: (target, heatmap)}`` for ``method``, ``columns`` the grid's comparison
    columns as ``(title, method, {det: (target, heatmap)})``: every method of
    :data:`crp_jax.relevance.composite.PRESETS` for ``compare="methods"``, the detected
    class against the other classes for ``"classes"``, none for ``"none"``."""
    from crp_jax.relevance.composite import PRESETS, method_title

    d = im.det
    base = {}
    for i in range(len(d)):
        t = target_for(ask, d.anchors[i], int(d.labels[i]))
        if t is not None:
            base[i] = t
    dets = sorted(base)

    def run(m: str, targets: dict) -> dict:
        hs = heatmaps(model, variables, meta, im.x, [targets[i] for i in sorted(targets)], m, im.full_size)
        return {i: (targets[i], h) for i, h in zip(sorted(targets), hs)}

    maps = per_method(lambda m: run(m, base), (method, *PRESETS) if compare == "methods" else (method,))
    columns = [(method_title(m), m, maps[m]) for m in PRESETS] if compare == "methods" else []
    if compare == "classes":
        # column p: the p-th class of each detection's list: its own class first, then the
        # explicit contrast classes, or all other foreground classes.
        per_det = {}
        for i in dets:
            own = int(d.labels[i])
            if isinstance(ask.contrast, tuple):
                others = [k for k in ask.contrast if k != own]
                per_det[i] = [(own, tuple(others))] + [(k, tuple(j for j in [own] + others if j != k)) for k in others]
            else:
                fg = [k for k in range(1, meta.num_classes) if k != own]
                per_det[i] = [(k, "default") for k in [own] + fg]
        ncols = max((len(v) for v in per_det.values()), default=0)
        for p in range(ncols):
            targets = {}
            for i, cl in per_det.items():
                if p < len(cl):
                    k, c = cl[p]
                    t = target_for(ask, d.anchors[i], k, c)
                    if t is not None:
                        targets[i] = t
            title = "detected class" if p == 0 else f"class #{p + 1}"
            columns.append((title, method, maps[method] if p == 0 else run(method, targets)))
    return dets, maps[method], columns


def first_detected_scene(
    model, variables, meta, seed: int, first: int, scan: int, *, score_threshold: float, max_detections: int
) -> DetectedImage | None:
    """The first of the generated scenes ``first .. first + scan`` of data set ``seed`` in
    which the model detects something above ``score_threshold``, or None."""
    from crp_jax.data import generate_scene

    for index in range(first, first + scan + 1):
        scene = generate_scene(seed, index)
        x, det = detect_pixels(
            model, variables, meta, scene.image, score_threshold=score_threshold, max_detections=max_detections
        )
        if len(det):
            return DetectedImage(f"scene {index} of data set {seed}", "scene", scene.image, x, det)
    return None
