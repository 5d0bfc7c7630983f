"""Explanation quality against the CRP paper's claims (docs/design.md §5), on held-out glyph scenes.

For ``--n`` held-out generated scenes (data-set seed ``crp_jax.data.splits.HELDOUT_SEED`` unless
``--seed`` says otherwise; training refuses that seed), the detector runs (score threshold
``--score-threshold``, default 0.5) and every detection is matched to a ground-truth object
of the same label with IoU >= 0.5 (VOC rule: the ground truth it overlaps most, if still
free; detections visited by descending score). Only matched detections are counted; each
brings its object mask and its discriminative-part mask (``crp_jax.data``).

Per method (``--methods``; heatmaps are channel sums of the input relevance at the model
input resolution) and per matched detection:

- **EPG**: energy pointing game, share of positive relevance inside the ground-truth box, for
  the class target (the method's default contrast: "others" for crp, one-hot otherwise).
- **class r**: Pearson correlation, over the whole image, between the heatmaps of the detected
  class and of its confusable partner (E/F, O/Q, P/R) at the same anchor, each with the
  method's default contrast. Lower = more class-discriminative.
- **part enrichment**: ``metrics.part_enrichment`` (share of positive relevance on the
  discriminative part / the part's share of object ∪ part) of the heatmap that answers "why
  the detected class and not its partner": crp with contrast ``(partner,)``; the other
  methods with their default one-hot target (they have no such question). Also split into
  the larger glyph of each pair (E, Q, R: the part is ink of the glyph) and the smaller one
  (F, O, P: the part is where the partner's extra stroke *would* be, outside the ink).
- **AOPC**: region perturbation (Samek et al. 2017) on the model input, ``--patch`` x
  ``--patch`` regions, ``--steps`` of them removed cumulatively, each replaced by uniform
  noise in the preprocessing's pixel bounds (one noise image per detection, shared by all
  orders and methods); score = the target's *logit margin* at the detection's anchor,
  ``logit[cls] - max_{k != cls} logit[k]`` (background included in the max). AOPC for
  most-relevant-first (MoRF, ranked by the row's class heatmap) and for a random order (one
  permutation per detection, the same for every method); ΔAOPC = MoRF − random per detection.
- **loc direction**: for ``LocTarget(cx, +1)`` (and cy), remove the top ``--fraction`` (10 %)
  positively relevant pixels (``metrics.remove_positive_evidence``, replaced by the image's
  per-channel mean), re-run the model, decode the box at the same anchor and check that the
  centre moved the other way (left / up); share of boxes. A control removes the same number
  of uniformly random pixels.
- **conservation**: sum of the class target's input relevance against its initial relevance
  (1 for a one-hot target, 0 for a contrast), ``metrics.conservation``.

Rows: each method with its default target, plus "crp (pair)" = crp with contrast
``(partner,)`` (its class r is Pearson of (det vs partner) against (partner vs det), which
is −1 by construction: both are one linear propagation of opposite initial relevance).

Figures (Pillow only): ``class_swap.png`` (for a detection of each confusable pair: rows
LRP-ab and CRP, columns detected class / partner class, same box) and ``relevance_flow.png``
(per-layer absolute and total relevance from the input to the source, LRP-ab one-hot vs
CRP contrasts, and the class-specific share of LRP's relevance per layer).

Every method's explain compiles once: targets are padded per image to a multiple of the
chunk size (``CHUNK``), so the vmapped backward always sees the same shapes. All perturbed
images go through one jitted ``apply`` in fixed batches of ``PROBE_BATCH``.

Usage::

    python benchmarks/quality.py                       # shipped weights, 40 scenes
    python benchmarks/quality.py --weights /tmp/ckpt_dir --n 10 --methods crp,lrp_ab

Runtime: the default run (40 scenes, 87 matched detections with the shipped weights, five
methods, about 11,400 perturbed images) takes about 6 minutes on the shared 2-core development
machine; most of each method's explain time is its one compilation.

``--weights`` takes a weights file (``NAME.msgpack`` + ``NAME.json``), a training checkpoint
(``ckpt_*.msgpack``) or a checkpoint directory (its newest checkpoint).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
try:  # run from a checkout without installing: python benchmarks/quality.py
    import crp_jax  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))

import jax
import jax.numpy as jnp
from PIL import Image, ImageDraw

import crp_jax as cj
from crp_jax import metrics as M
from crp_jax import viz
from crp_jax.charts import line_chart
from crp_jax.data import CLASS_NAMES, LARGER, SceneSpec, generate_scene, partner_label
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import CheckpointError, ConfigError, CRPError
from crp_jax.eval.voc import match_to_ground_truth
from crp_jax.relevance.composite import PRESETS
from crp_jax.relevance.targets import ClassTarget, LocTarget
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import box_iou, decode, xyxy_to_cxcywh

DEFAULT_METHODS = PRESETS
METHOD_LABELS = {
    "crp": "crp",
    "crp_pair": "crp (pair)",
    "lrp_ab": "lrp_ab",
    "lrp_eps": "lrp_eps",
    "gradient": "gradient",
    "gradient_x_input": "gradient_x_input",
}
CHUNK = 8  # targets per vmapped backward (explain's chunk_size)
PROBE_BATCH = 64  # images per jitted apply of the perturbation probe
DETECT_BATCH = 20  # scenes per detect call (the last batch is padded: one compile)
FLOW_METHODS = ("crp", "lrp_ab")  # explained with layers=True (per-layer relevance flow)


# ------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------


def load_model(weights: str | None):
    """``(model, variables, meta, description)`` from the shipped weights (None), a weights
    file, a training checkpoint ``ckpt_*.msgpack`` or a checkpoint directory."""
    from crp_jax.ssd.io import check_variables, load_pretrained, load_weights

    if weights is None:
        model, variables, meta = load_pretrained()
        from crp_jax.ssd.io import default_weights_dir

        path = default_weights_dir() / "default.msgpack"
        return model, variables, meta, _describe_file(path, "shipped weights")
    p = Path(weights)
    if p.is_dir():
        ckpts = sorted(p.glob("ckpt_*.msgpack"))
        if not ckpts:
            raise CheckpointError(f"{p}: no ckpt_*.msgpack in this directory")
        p = ckpts[-1]
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if p.with_suffix(".json").is_file():
        model, variables, meta = load_weights(p)
        return model, variables, meta, _describe_file(p, "weights file")
    from crp_jax.ssd.model import SSD
    from crp_jax.training.checkpoints import read_checkpoint

    try:
        rec = read_checkpoint(p)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (and no .json sidecar: not a weights file either)") from None
    model = SSD(rec.config.model_config())
    variables = check_variables(model, {"params": rec.params}, where=str(p))
    return (
        model,
        variables,
        rec.config.meta(),
        _describe_file(p, f"training checkpoint, step {rec.step} of {rec.config.steps}"),
    )


def _describe_file(path: Path, kind: str) -> str:
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        stamp = _dt.datetime.fromtimestamp(Path(path).stat().st_mtime, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"{_rel(path)} ({kind}; sha256 {digest}…, written {stamp})"
    except OSError:
        return f"{_rel(path)} ({kind})"


# ------------------------------------------------------------------------------------------
# scenes, detections, matching
# ------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One matched detection, everything at the model input resolution."""

    image: int  # index into the batch of images that have cases
    scene: int  # scene index in the held-out data set
    anchor: int
    label: int
    partner: int
    score: float
    det_box: np.ndarray  # xyxy input pixels
    gt_box: np.ndarray
    obj_mask: np.ndarray  # bool [S, S]
    part_mask: np.ndarray
    source: int = 0  # which source feature map holds the anchor
    values: dict = field(default_factory=dict)  # metric name -> per row -> float


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> ``size x size``: pixels at least half covered (area average)."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    im = Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BOX)
    return np.asarray(im) >= 0.5


def _source_of(config, anchor: int) -> int:
    counts = [f * f * a for f, a in zip(config.feature_sizes(), config.anchors_per_cell)]
    return int(np.searchsorted(np.cumsum(counts), anchor, side="right"))


def collect_cases(
    model,
    variables,
    meta,
    n: int,
    seed: int,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    detector: str = "model",
    spec: SceneSpec | None = None,
):
    """Generate scenes ``0 .. n-1`` of data set ``seed``, detect, match.

    ``detector="oracle"`` skips the detector: each ground-truth object is explained at the
    default box that overlaps it most, labelled with its true class (for untrained models and
    tests; never used for reported numbers).

    Returns ``(x [I, S, S, 3] model inputs of the images with cases, display images uint8
    [I, S, S, 3], cases, stats)``.
    """
    spec = spec or SceneSpec()
    cfg = model.config
    S = cfg.image_size
    if tuple(meta.class_names) != tuple(CLASS_NAMES):
        raise ConfigError(f"the weights' classes {meta.class_names} are not the glyph classes {CLASS_NAMES}")
    anchors_xyxy = default_boxes_xyxy(cfg)
    xs, shown, cases = [], [], []
    stats = {
        "scenes": n,
        "objects": 0,
        "detections": 0,
        "matched": 0,
        "unmatched": 0,
        "empty_part": 0,
        "per_class": {name: 0 for name in CLASS_NAMES[1:]},
    }
    for start in range(0, n, DETECT_BATCH):
        scenes = [generate_scene(int(seed), i, spec) for i in range(start, min(n, start + DETECT_BATCH))]
        imgs = np.stack([s.image for s in scenes])
        pad = DETECT_BATCH - len(scenes) if n > DETECT_BATCH else 0
        batch = np.concatenate([imgs, np.repeat(imgs[-1:], pad, 0)]) if pad else imgs
        x = np.asarray(cj.preprocess(batch, meta))
        if detector == "model":
            dets = cj.detect(model, variables, x, meta, score_threshold=score_threshold)[: len(scenes)]
        elif detector != "oracle":
            raise ConfigError(f"detector must be 'model' or 'oracle', got {detector!r}")
        for j, sc in enumerate(scenes):
            scale = S / sc.image.shape[0]
            gt_boxes = sc.boxes.astype(np.float64) * scale
            stats["objects"] += sc.num_objects
            found = []
            if detector == "oracle":
                # empty boxes give 0/0 in box_iou (torchvision's convention): no overlap
                iou = np.nan_to_num(np.asarray(box_iou(gt_boxes, anchors_xyxy.astype(np.float64)), np.float64))
                for g in range(sc.num_objects):
                    found.append((int(np.argmax(iou[g])), int(sc.labels[g]), 1.0, gt_boxes[g], g))
            else:
                d = dets[j]
                stats["detections"] += len(d)
                matched = match_to_ground_truth(
                    d.boxes, d.scores, gt_boxes, iou_threshold, det_labels=d.labels, gt_labels=sc.labels
                )
                stats["unmatched"] += int(np.sum(matched < 0))
                for k in np.argsort(-np.asarray(d.scores), kind="stable"):  # the old visiting order
                    g = int(matched[k])
                    if g >= 0:
                        found.append(
                            (int(d.anchors[k]), int(d.labels[k]), float(d.scores[k]), d.boxes[k].astype(np.float64), g)
                        )
            if not found:
                continue
            img_idx = len(xs)
            xs.append(x[j])
            shown.append(
                np.asarray(Image.fromarray(sc.image).resize((S, S), Image.Resampling.BILINEAR))
                if sc.image.shape[0] != S
                else sc.image
            )
            for anchor, label, score, box, g in found:
                part = _resize_mask(sc.part_masks[g], S)
                if not part.any():
                    stats["empty_part"] += 1
                cases.append(
                    Case(
                        image=img_idx,
                        scene=start + j,
                        anchor=anchor,
                        label=label,
                        partner=partner_label(label),
                        score=score,
                        det_box=np.asarray(box, np.float64),
                        gt_box=gt_boxes[g],
                        obj_mask=_resize_mask(sc.masks[g], S),
                        part_mask=part,
                        source=_source_of(cfg, anchor),
                    )
                )
                stats["matched"] += 1
                stats["per_class"][CLASS_NAMES[label]] += 1
    x_all = np.stack(xs) if xs else np.zeros((0, S, S, 3), np.float32)
    shown_all = np.stack(shown) if shown else np.zeros((0, S, S, 3), np.uint8)
    return x_all, shown_all, cases, stats


# ------------------------------------------------------------------------------------------
# batched model probe for perturbed images
# ------------------------------------------------------------------------------------------


class Probe:
    """Queue ``(image, anchor)`` pairs; run them through one jitted apply in fixed batches.

    Results (the anchor's K logits and 4 offsets) are kept, images are not: memory stays at
    one batch.
    """

    def __init__(self, model, variables, batch: int = PROBE_BATCH):
        self.variables = variables
        self.batch = batch
        self._imgs: list[np.ndarray] = []
        self._anchors: list[int] = []
        self._logits: list[np.ndarray] = []
        self._loc: list[np.ndarray] = []
        self.n = 0
        self.calls = 0

        def fn(variables, x, a):
            cls, loc = model.apply(variables, x)
            r = jnp.arange(x.shape[0])
            return cls[r, a], loc[r, a]

        self._fn = jax.jit(fn)

    def add(self, image: np.ndarray, anchor: int) -> int:
        self._imgs.append(np.asarray(image, np.float32))
        self._anchors.append(int(anchor))
        self.n += 1
        if len(self._imgs) == self.batch:
            self._run()
        return self.n - 1

    def _run(self) -> None:
        k = len(self._imgs)
        if k == 0:
            return
        pad = self.batch - k
        x = np.stack(self._imgs + [self._imgs[-1]] * pad)
        a = np.asarray(self._anchors + [self._anchors[-1]] * pad, np.int32)
        cls, loc = jax.device_get(self._fn(self.variables, x, a))
        self._logits.append(np.asarray(cls[:k], np.float64))
        self._loc.append(np.asarray(loc[:k], np.float64))
        self._imgs, self._anchors = [], []
        self.calls += 1

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        self._run()
        if not self._logits:
            return np.zeros((0, 0)), np.zeros((0, 4))
        return np.concatenate(self._logits), np.concatenate(self._loc)


def logit_margin(logits: np.ndarray, cls: int) -> np.ndarray:
    """``logit[cls] - max_{k != cls} logit[k]`` along the last axis."""
    others = np.delete(logits, cls, axis=-1)
    return logits[..., cls] - others.max(-1)


def _capture(region_kwargs: dict, image: np.ndarray, heat: np.ndarray, probe: Probe, anchor: int) -> list[int]:
    """Run ``metrics.region_perturbation`` with a score function that only queues the
    perturbed images in ``probe``; returns their probe indices (the curve is scored later)."""
    got: list[int] = []

    def score_fn(batch):
        for im in batch:
            got.append(probe.add(im, anchor))
        return np.zeros(len(batch))

    M.region_perturbation(score_fn, image, heat, batch_size=region_kwargs["steps"] + 1, **region_kwargs)
    return got


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------


def _rows(methods: Sequence[str]) -> list[str]:
    rows = []
    for m in methods:
        rows.append(m)
        if m == "crp":
            rows.append("crp_pair")
    return rows


def _targets_for(method: str, c: Case) -> list[tuple[str, object]]:
    """``(role, target)`` for one case under ``method`` (image index filled in)."""
    t = [
        ("cls", ClassTarget(c.image, c.anchor, c.label)),
        ("cls_partner", ClassTarget(c.image, c.anchor, c.partner)),
        ("cx", LocTarget(c.image, c.anchor, "cx", 1)),
        ("cy", LocTarget(c.image, c.anchor, "cy", 1)),
    ]
    if method == "crp":
        t += [
            ("pair", ClassTarget(c.image, c.anchor, c.label, (c.partner,))),
            ("pair_partner", ClassTarget(c.image, c.anchor, c.partner, (c.label,))),
        ]
    return t


def _explain_method(model, variables, meta, x, cases, method, layers):
    """Heatmaps ``{(case id, role): [S, S]}``, input relevance totals and (with ``layers``)
    per-layer flow ``{(case id, role): {layer: (total, abs)}}``, one explain call."""
    by_image: dict[int, list[int]] = {}
    for i, c in enumerate(cases):
        by_image.setdefault(c.image, []).append(i)
    targets, keys = [], []
    for _img, ids in by_image.items():
        start = len(targets)
        for i in ids:
            for role, tg in _targets_for(method, cases[i]):
                targets.append(tg)
                keys.append((i, role))
        n = len(targets) - start
        pad = (-n) % CHUNK
        targets += [targets[start]] * pad  # duplicates: same shapes for every image, one compile
        keys += [None] * pad
    out = cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK, layers=layers)
    R, flow = out if layers else (out, None)
    heat, sums, per_layer, cons = {}, {}, {}, {}
    for t, key in enumerate(keys):
        if key is None:
            continue
        heat[key] = R[t].sum(-1)
        sums[key] = (float(R[t].astype(np.float64).sum()), float(np.abs(R[t]).astype(np.float64).sum()))
        if key[1] in ("cls", "pair"):
            # initial relevance: 0 for a contrast (crp's default and the pair), 1 for one-hot
            initial = 0.0 if (method == "crp" or key[1] == "pair") else 1.0
            cons[key] = M.conservation(R[t], initial)
        if flow is not None:
            per_layer[key] = {name: (float(v[t, 0]), float(v[t, 1])) for name, v in flow.items()}
    return heat, sums, per_layer, cons


def run_quality(
    model,
    variables,
    meta,
    *,
    n: int = 40,
    seed: int = HELDOUT_SEED,
    methods: Sequence[str] = DEFAULT_METHODS,
    out_dir: str | os.PathLike | None = None,
    md_path: str | os.PathLike | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    patch: int = 8,
    steps: int = 16,
    fraction: float = 0.1,
    n_boot: int = 1000,
    detector: str = "model",
    weights_desc: str = "",
    command: str = "",
    log: Callable[[str], None] = print,
    sanity: bool = False,
    sanity_scenes: int = 20,
    box_steps: int = 8,
    box_fraction: float = 0.2,
    randomization_seed: int = 0,
) -> dict:
    """The whole benchmark; returns ``{"rows", "table", "stats", "figures", "seconds", ...}``
    and writes the markdown report / figures when ``md_path`` / ``out_dir`` are given.

    ``sanity``: also run the model-randomization cascade and the box-aware deletion test
    (with the localization-head variants) on the matched detections of the first
    ``sanity_scenes`` scenes (``box_steps`` deletion steps up to ``box_fraction`` of the
    pixels; fresh weights from ``cj.init_variables(model, randomization_seed)``)."""
    t0 = time.time()
    methods = list(methods)
    for m in methods:
        if m not in DEFAULT_METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {DEFAULT_METHODS}")
    timings: dict[str, float] = {}
    x, shown, cases, stats = collect_cases(
        model, variables, meta, n, seed, score_threshold=score_threshold, iou_threshold=iou_threshold, detector=detector
    )
    timings["scenes + detection"] = time.time() - t0
    log(
        f"{n} scenes, {stats['objects']} objects, {stats['detections']} detections, "
        f"{stats['matched']} matched ({detector}) in {timings['scenes + detection']:.1f}s"
    )
    rows = _rows(methods)
    values = {r: {} for r in rows}  # row -> metric -> list over cases
    S = model.config.image_size
    low, high = meta.pixel_bounds
    anchors_cxcywh = xyxy_to_cxcywh(default_boxes_xyxy(model.config)).astype(np.float64)
    probe = Probe(model, variables)
    pending = []  # (row, case id, kind, indices) to score after all probes ran
    swap_ids = _pick_swap_cases(cases)
    swap_heat: dict = {}
    flows: dict = {}
    linearity = []
    base_idx = {}
    noise = {}
    centre_vals: dict[str, list] = {}
    if cases:
        for i, c in enumerate(cases):
            base_idx[i] = probe.add(x[c.image], c.anchor)
            rng = np.random.default_rng([int(seed), c.scene, c.anchor])
            noise[i] = (np.asarray(low) + rng.random((S, S, 3)) * (np.asarray(high) - np.asarray(low))).astype(
                np.float32
            )
            # method-independent controls: random region order, random pixel removal
            kw = dict(patch=patch, steps=steps, order="random", baseline=noise[i], rng=rng)
            pending.append(("random", i, "aopc", _capture(kw, x[c.image], rng.random((S, S)), probe, c.anchor)))
            rnd = rng.random((S, S)) + 1e-3  # all positive: removes ceil(fraction * S * S) random pixels
            pending.append(
                ("random", i, "loc", probe.add(M.remove_positive_evidence(x[c.image], rnd, fraction, "mean"), c.anchor))
            )
            ctr = centre_heatmap(c.det_box, S)
            centre_vals.setdefault("pg", []).append(float(M.pointing_game(ctr, c.gt_box)))
            centre_vals.setdefault("pg0", []).append(float(M.pointing_game(ctr, c.gt_box, tolerance=0)))
            centre_vals.setdefault("epg", []).append(M.energy_pointing_game(ctr, c.gt_box))
    for m in methods if cases else []:
        tm = time.time()
        layers = m in FLOW_METHODS
        heat, sums, per_layer, cons = _explain_method(model, variables, meta, x, cases, m, layers)
        timings[f"explain {m}"] = time.time() - tm
        tp = time.time()
        for i, c in enumerate(cases):
            h_cls, h_partner = heat[(i, "cls")], heat[(i, "cls_partner")]
            row_heat = {m: h_cls}
            if m == "crp":
                row_heat["crp_pair"] = heat[(i, "pair")]
            for row, h in row_heat.items():
                v = values[row]
                v.setdefault("epg", []).append(M.energy_pointing_game(h, c.gt_box))
                v.setdefault("pg", []).append(float(M.pointing_game(h, c.gt_box)))
                v.setdefault("pg0", []).append(float(M.pointing_game(h, c.gt_box, tolerance=0)))
                if row == "crp_pair":
                    r = M.class_discriminativeness(h, heat[(i, "pair_partner")])
                    linearity.append(
                        float(np.max(np.abs(h + heat[(i, "pair_partner")])) / max(np.max(np.abs(h)), 1e-30))
                    )
                else:
                    r = M.class_discriminativeness(h_cls, h_partner)
                v.setdefault("class_r", []).append(r)
                pe = M.part_enrichment(h, c.part_mask, c.obj_mask) if c.part_mask.any() else float("nan")
                # "why detected and not partner": crp (pair) is the contrastive answer; the
                # default crp row ("others") is reported too, for comparison.
                v.setdefault("part", []).append(pe)
                larger = CLASS_NAMES[c.label] in LARGER
                v.setdefault("part_larger", []).append(pe if larger else float("nan"))
                v.setdefault("part_smaller", []).append(float("nan") if larger else pe)
                cs = cons[(i, "pair" if row == "crp_pair" else "cls")]
                v.setdefault("sum_R", []).append(cs["total"])
                v.setdefault("cons_rel_err", []).append(cs["relative_error"])
                kw = dict(patch=patch, steps=steps, order="most_relevant_first", baseline=noise[i])
                pending.append((row, i, "aopc", _capture(kw, x[c.image], h, probe, c.anchor)))
            for coord in ("cx", "cy"):
                pert = M.remove_positive_evidence(x[c.image], heat[(i, coord)], fraction, "mean")
                pending.append((m, i, f"loc_{coord}", probe.add(pert, c.anchor)))
            if i in swap_ids and m in ("crp", "lrp_ab"):
                swap_heat[(i, m)] = (h_cls, h_partner)
            if layers:
                R_in = {role: sums[(i, role)] for role in ("cls", "cls_partner", "pair") if (i, role) in sums}
                flows.setdefault(i, {})[m] = {role: (per_layer[(i, role)], R_in[role]) for role in R_in}
        timings[f"metrics + perturbation passes {m}"] = time.time() - tp
        log(
            f"  {m}: explain {timings[f'explain {m}']:.1f}s, metrics + perturbation forward passes "
            f"{timings[f'metrics + perturbation passes {m}']:.1f}s"
        )
    tp = time.time()
    logits, loc = probe.results()
    timings["last perturbation batch"] = time.time() - tp
    log(f"  {probe.n} perturbed images through the model in {probe.calls} batches of {probe.batch}")
    random_aopc = {}
    for row, i, kind, idx in pending:
        c = cases[i]
        if kind == "aopc":
            lg = logits[np.asarray(idx)]
            a = M.aopc(logit_margin(lg, c.label))
            ap = M.aopc(lg[:, c.label] - lg[:, c.partner])  # pairwise margin: det vs partner
            if row == "random":
                random_aopc[i] = (a, ap)
            else:
                values[row].setdefault("aopc", []).append(a)
                values[row].setdefault("aopc_pair", []).append(ap)
                values[row].setdefault("_aopc_case", []).append(i)
    # loc direction
    box_before = {i: decode(loc[base_idx[i]], anchors_cxcywh[c.anchor]) for i, c in enumerate(cases)} if cases else {}
    loc_res: dict[str, dict[str, list]] = {}
    for row, i, kind, idx in pending:
        if not kind.startswith("loc"):
            continue
        c = cases[i]
        before = box_before[i]
        after = decode(loc[idx], anchors_cxcywh[c.anchor])
        cen_b = ((before[0] + before[2]) / 2, (before[1] + before[3]) / 2)
        cen_a = ((after[0] + after[2]) / 2, (after[1] + after[3]) / 2)
        coords = ("cx", "cy") if kind == "loc" else (kind[4:],)
        for coord in coords:
            k = 0 if coord == "cx" else 1
            d = loc_res.setdefault(row, {})
            d.setdefault(f"before_{coord}", []).append(cen_b[k])
            d.setdefault(f"after_{coord}", []).append(cen_a[k])
    for row, d in loc_res.items():
        target = values.setdefault(row, {})
        for coord in ("cx", "cy"):
            if f"before_{coord}" in d:
                b, a = np.asarray(d[f"before_{coord}"]), np.asarray(d[f"after_{coord}"])
                # sign +1 ("what pushes right / down"): removing it must move the centre left / up
                ok = [float(M.localization_direction(bb, aa, 1)) for bb, aa in zip(b, a)]
                assert abs(np.mean(ok) - M.localization_direction_share(b, a, 1)) < 1e-12
                target[f"loc_{coord}"] = ok
                target[f"loc_{coord}_shift"] = list(a - b)
    for row in rows:
        v = values[row]
        if "aopc" in v:
            ids = v.pop("_aopc_case")
            v["aopc_random"] = [random_aopc[i][0] for i in ids]
            v["aopc_delta"] = [a - random_aopc[i][0] for a, i in zip(v["aopc"], ids)]
            v["aopc_pair_random"] = [random_aopc[i][1] for i in ids]
            v["aopc_pair_delta"] = [a - random_aopc[i][1] for a, i in zip(v["aopc_pair"], ids)]
    table = summarise(values, rows, n_boot)
    if centre_vals:
        table.update(summarise({"centre": centre_vals}, ["centre"], n_boot))
    san: dict = {}
    if sanity and cases:
        ts = time.time()
        keep = [i for i, c in enumerate(cases) if c.scene < sanity_scenes]
        s_cases = [cases[i] for i in keep]
        san = {"n_cases": len(s_cases), "scenes": min(sanity_scenes, n), "seed": randomization_seed}
        if s_cases:
            log(f"sanity checks on {len(s_cases)} detections of the first {san['scenes']} scenes")
            san["randomization"] = run_randomization(
                model, variables, meta, x, s_cases, methods, randomization_seed, log=log
            )
            timings["randomization"] = time.time() - ts
            tb = time.time()
            san["box"] = run_box_faithfulness(
                model, variables, meta, x, s_cases, methods, steps=box_steps, max_fraction=box_fraction, log=log
            )
            timings["box deletion"] = time.time() - tb
    result = {
        "rows": rows,
        "values": values,
        "table": table,
        "stats": stats,
        "n": n,
        "seed": seed,
        "methods": methods,
        "timings": timings,
        "linearity": max(linearity) if linearity else None,
        "settings": dict(
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            patch=patch,
            steps=steps,
            fraction=fraction,
            n_boot=n_boot,
            detector=detector,
        ),
        "figures": [],
        "image_size": S,
        "sanity": san,
        "sanity_table": summarise_sanity(san, n_boot) if san.get("n_cases") else {},
    }
    if out_dir is not None and cases:
        tf = time.time()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        both = all(m in methods for m in FLOW_METHODS)  # the figures compare crp with lrp_ab
        if swap_heat and both:
            p = out / "class_swap.png"
            save_png(class_swap_figure(shown, cases, swap_ids, swap_heat), p)
            result["figures"].append(str(p))
        if flows and both:
            p = out / "relevance_flow.png"
            img, flow_summary = relevance_flow_figure(flows, cases, model)
            save_png(img, p)
            result["figures"].append(str(p))
            result["flow"], result["flow_numbers"] = flow_summary
        if san.get("randomization"):
            p = out / "randomization_cascade.png"
            s_cases = [c for c in cases if c.scene < sanity_scenes]
            best = max(range(len(s_cases)), key=lambda j: (s_cases[j].source == 0, s_cases[j].score))
            fig = cascade_figure(
                model, variables, meta, x, shown, s_cases[best], san["randomization"], methods, randomization_seed
            )
            save_png(fig, p)
            result["figures"].append(str(p))
        timings["figures"] = time.time() - tf
    result["seconds"] = time.time() - t0
    text = format_report(result, weights_desc=weights_desc, command=command)
    result["markdown"] = text
    if md_path is not None:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(text)
    return result


# ------------------------------------------------------------------------------------------
# sanity checks (model randomization), pointing game, box-aware faithfulness
# ------------------------------------------------------------------------------------------

COORDS = ("cx", "cy", "w", "h")
SIGNS = (1, -1)
CONTROL = "edge map (control)"
FLAG_LEVEL = 0.5  # a method whose maps stay more similar than this at the half-way step is flagged
CASCADE_FIGURE_METHODS = ("crp", "lrp_ab", "gradient_x_input", "gradient", "lrp_eps")
# Localization-head variants tested against the paper's rule (crp: alpha=1, beta=1 at loc_*).
LOC_VARIANTS = {
    "crp (paper: α1β1 at loc heads)": None,
    "crp, α2β1 at loc heads": ("AlphaBeta", (2.0, 1.0)),
    "crp, w+ (α1β0) at loc heads": ("WPlus", ()),
    "crp, ε-rule (z) at loc heads": ("Epsilon", (1e-6,)),
}


def edge_map_explainer(model, variables, x, targets):
    """Adebayo et al.'s control: an edge map of the input (grey-level gradient magnitude),
    the same for every target of an image and independent of the weights: ``[T, S, S, 1]``."""
    xs = np.asarray(x, np.float64)
    out = []
    for t in targets:
        g = xs[t.image].mean(-1)
        out.append(np.abs(np.diff(g, axis=0, prepend=g[:1])) + np.abs(np.diff(g, axis=1, prepend=g[:, :1])))
    return np.stack(out)[..., None]


def centre_heatmap(box, S: int) -> np.ndarray:
    """Centre-of-box baseline ``[S, S]``: a Gaussian bump at the detected box's centre with
    standard deviations a quarter of its width and height (its maximum is the centre)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    c = np.arange(S) + 0.5
    sx, sy = max((x1 - x0) / 4, 0.5), max((y1 - y0) / 4, 0.5)
    gx = np.exp(-0.5 * ((c - (x0 + x1) / 2) / sx) ** 2)
    gy = np.exp(-0.5 * ((c - (y0 + y1) / 2) / sy) ** 2)
    return gy[:, None] * gx[None, :]


def _loc_variant(meta, spec):
    """The crp composite with another rule at the localization heads (``loc_*``)."""
    from crp_jax.relevance import rules as rule_types

    crp = cj.get_composite("crp", meta)
    if spec is None:
        return crp
    name, args = spec
    new = getattr(rule_types, name)(*args)
    return cj.Composite(
        rules=tuple((sel, new if sel == "loc_*" else r) for sel, r in crp.rules),
        contrast=crp.contrast,
        name=f"crp_loc_{name.lower()}",
    )


def _padded_targets(targets_per_image: dict[int, list]) -> tuple[list, list[int]]:
    """Targets padded per image to a multiple of ``CHUNK`` (one compile); the indices of
    the real ones."""
    out, real = [], []
    for _img, tg in targets_per_image.items():
        real += list(range(len(out), len(out) + len(tg)))
        out += tg + [tg[0]] * ((-len(tg)) % CHUNK)
    return out, real


def run_randomization(model, variables, meta, x, cases, methods, seed: int, log=print) -> dict:
    """Cascading randomization per method (class target, default contrast) and for the
    edge-map control: ``{"blocks": [...], "per_method": {m: [(block, {metric: [n]})]}}``."""
    per_image: dict[int, list] = {}
    for c in cases:
        per_image.setdefault(c.image, []).append(ClassTarget(c.image, c.anchor, c.label))
    targets, real = _padded_targets(per_image)
    out = {}
    for m in list(methods) + [CONTROL]:
        tm = time.time()
        method = edge_map_explainer if m == CONTROL else m
        res = cj.model_randomization(model, variables, x, targets, method=method, meta=meta, seed=seed, per_target=True)
        out[m] = [(name, {k: np.asarray(v)[real] for k, v in sims.items()}) for name, sims in res]
        log(f"  randomization {m}: {len(res) - 1} cascade steps in {time.time() - tm:.1f}s")
    return {"per_method": out, "blocks": [name for name, _ in next(iter(out.values()))]}


def run_box_faithfulness(
    model, variables, meta, x, cases, methods, *, steps: int, max_fraction: float, log=print
) -> dict:
    """Box-aware deletion (``metrics.box_deletion``) for every (coord, sign) of every case,
    per method, per localization-head variant, and for a random order.

    Returns ``{"curves": {row: {(case, coord, sign): (shift [L+1], iou [L+1], aopc_shift,
    aopc_iou)}}, "fractions": [L+1]}``.
    """
    anchors_cxcywh = xyxy_to_cxcywh(default_boxes_xyxy(model.config)).astype(np.float64)
    apply_at = jax.jit(lambda v, xb, a: model.apply(v, xb)[1][:, a])

    def box_fn_for(anchor):
        a = jnp.int32(anchor)

        def fn(batch):
            loc = np.asarray(apply_at(variables, jnp.asarray(batch, jnp.float32), a), np.float64)
            return decode(loc, anchors_cxcywh[anchor])

        return fn

    rows: dict[str, object] = {m: m for m in methods}
    aliases = {}
    for label, spec in LOC_VARIANTS.items():
        if spec is None and "crp" in rows:
            aliases[label] = "crp"  # the paper's rule is the crp preset: reuse its curves
        else:
            rows[label] = _loc_variant(meta, spec)
    curves: dict[str, dict] = {}
    fractions = None
    kw = dict(steps=steps, max_fraction=max_fraction, baseline="mean")
    tr = time.time()
    rand: dict = {}
    for i, c in enumerate(cases):
        fn = box_fn_for(c.anchor)
        for coord in COORDS:
            for s in SIGNS:
                rng = np.random.default_rng([c.scene, c.anchor, COORDS.index(coord), s + 1])
                r = M.box_deletion(fn, x[c.image], np.zeros(x.shape[1:3]), coord, s, order="random", rng=rng, **kw)
                rand[(i, coord, s)] = (r["shift"], r["iou"], r["aopc_shift"], r["aopc_iou"])
                fractions = r["fractions"]
    curves["random"] = rand
    log(f"  box deletion, random order: {time.time() - tr:.1f}s")
    for row, method in rows.items():
        tm = time.time()
        per_image: dict[int, list] = {}
        key_of: dict[int, list] = {}
        for i, c in enumerate(cases):
            for coord in COORDS:
                for s in SIGNS:
                    per_image.setdefault(c.image, []).append(LocTarget(c.image, c.anchor, coord, s))
                    key_of.setdefault(c.image, []).append((i, coord, s))
        keys = [k for img in per_image for k in key_of[img]]
        targets, real = _padded_targets(per_image)
        R = cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK)
        got = {}
        for t, key in zip(real, keys):
            i, coord, s = key
            c = cases[i]
            r = M.box_deletion(box_fn_for(c.anchor), x[c.image], R[t].sum(-1), coord, s, **kw)
            got[key] = (r["shift"], r["iou"], r["aopc_shift"], r["aopc_iou"])
        curves[row] = got
        log(f"  box deletion {row}: {time.time() - tm:.1f}s")
    for label, same in aliases.items():
        curves[label] = curves[same]
    return {"curves": curves, "fractions": fractions}


def _per_case(curves: dict, n_cases: int, pick, coords=COORDS, signs=SIGNS) -> np.ndarray:
    """``[n_cases]``: mean over the case's (coord, sign) pairs of ``pick(curve tuple)``."""
    out = np.full(n_cases, np.nan)
    for i in range(n_cases):
        vals = [pick(curves[(i, c, s)]) for c in coords for s in signs if (i, c, s) in curves]
        if vals:
            out[i] = float(np.mean(vals))
    return out


def summarise_sanity(san: dict, n_boot: int) -> dict:
    """Tables (mean, lo, hi, n) of the randomization and box-faithfulness runs."""
    out: dict = {}
    if "randomization" in san:
        rz = san["randomization"]
        blocks = rz["blocks"]
        half = (len(blocks) - 1 + 1) // 2  # entries 1..n are cascade steps; ceil(n / 2)
        steps = {"heads": 1, "half": half, "all": len(blocks) - 1}
        tab = {}
        for m, res in rz["per_method"].items():
            for tag, k in steps.items():
                for metric, vals in res[k][1].items():
                    tab[(m, tag, metric)] = (*M.bootstrap_ci(vals, n_boot=n_boot, seed=0), int(len(vals)))
            tab[(m, "curve")] = {
                metric: [float(np.mean(res[j][1][metric])) for j in range(len(res))] for metric in res[0][1]
            }
        out["randomization"] = {"table": tab, "steps": {t: blocks[k] for t, k in steps.items()}, "blocks": blocks}
    if "box" in san:
        bx = san["box"]
        curves, fr = bx["curves"], bx["fractions"]
        n = san["n_cases"]
        rnd = curves["random"]
        k10 = int(np.argmin(np.abs(fr - 0.1)))
        tab = {}

        def ci(v):
            v = np.asarray(v, np.float64)
            ok = v[~np.isnan(v)]
            return (*M.bootstrap_ci(ok, n_boot=n_boot, seed=0), int(ok.size)) if ok.size else None

        for row, cur in curves.items():
            d_shift = {k: cur[k][2] - rnd[k][2] for k in cur}
            d_iou = {k: cur[k][3] - rnd[k][3] for k in cur}
            tab[(row, "aopc_shift")] = ci(_per_case(cur, n, lambda t: t[2]))
            tab[(row, "d_aopc_shift")] = ci(_per_case({k: (v,) for k, v in d_shift.items()}, n, lambda t: t[0]))
            tab[(row, "aopc_iou")] = ci(_per_case(cur, n, lambda t: t[3]))
            tab[(row, "d_aopc_iou")] = ci(_per_case({k: (v,) for k, v in d_iou.items()}, n, lambda t: t[0]))
            tab[(row, "correct10")] = ci(_per_case(cur, n, lambda t, k=k10: float(t[0][k] > 0)))
            for coord in COORDS:
                tab[(row, f"d_{coord}")] = ci(
                    _per_case({k: (v,) for k, v in d_shift.items()}, n, lambda t: t[0], coords=(coord,))
                )
                for s in SIGNS:
                    tab[(row, f"d_{coord}_{s:+d}")] = ci(
                        _per_case({k: (v,) for k, v in d_shift.items()}, n, lambda t: t[0], (coord,), (s,))
                    )
                    tab[(row, f"ok10_{coord}_{s:+d}")] = ci(
                        _per_case(cur, n, lambda t, k=k10: float(t[0][k] > 0), (coord,), (s,))
                    )
            for j in range(1, len(fr)):
                tab[(row, f"shift@{j}")] = ci(_per_case(cur, n, lambda t, j=j: t[0][j]))
                tab[(row, f"ok@{j}")] = ci(_per_case(cur, n, lambda t, j=j: float(t[0][j] > 0)))
        out["box"] = {"table": tab, "rows": list(curves), "fractions": fr, "k10": k10}
    return out


def format_sanity(result: dict) -> str:
    """Markdown of the pointing game, randomization, box-faithfulness and localization
    investigation sections (those that ran)."""
    lines: list[str] = []
    t = result["table"]
    rows = result["rows"]
    pg_rows = [r for r in rows if "pg" in t.get(r, {})] + (["centre"] if "centre" in t else [])
    if pg_rows:
        tol = M.pointing_tolerance(result["image_size"])
        lines += [
            f"**Pointing game** (class heatmap; hit = its maximum within {tol:.2f} px of the ground-truth box, the usual "
            f"15 px at 224 px scaled to the {result['image_size']} px input; energy pointing game beside it), mean "
            "[95 % bootstrap CI] over matched detections",
            "",
            "| method | pointing game (15 px @ 224) ↑ | pointing game, no tolerance ↑ | energy pointing game ↑ |",
            "|---|---|---|---|",
        ]
        for r in pg_rows:
            lab = "centre of the detected box (baseline)" if r == "centre" else METHOD_LABELS.get(r, r)
            lines.append(f"| {lab} | {_fmt(t[r].get('pg'))} | {_fmt(t[r].get('pg0'))} | {_fmt(t[r].get('epg'))} |")
        lines += [
            "",
            "The centre baseline is a Gaussian bump at the detected box's centre (σ = a quarter of its width / "
            "height): it needs no explanation method at all, so a method's pointing game is only informative "
            "above it. A matched detection overlaps its ground truth with IoU >= 0.5, so its centre almost always "
            "lies inside the ground-truth box: the pointing game saturates for this baseline and cannot rank a "
            "method above it here; the energy pointing game (share of positive relevance in the box) still can.",
            "",
        ]
    san = result.get("sanity_table") or {}
    if "randomization" in san:
        rz = san["randomization"]
        tab, st = rz["table"], rz["steps"]
        n_blocks = len(rz["blocks"]) - 1
        methods = [m for m in result["sanity"]["randomization"]["per_method"]]
        lines += [
            f"**Model randomization, cascading** (Adebayo et al. 2018): {n_blocks} blocks randomized cumulatively "
            f"from the heads down to the input layer (`cj.model_randomization`, seed {result['sanity']['seed']}); "
            "similarity of each class heatmap (method's default contrast) to the trained model's, mean "
            f"[95 % bootstrap CI] over {result['sanity']['n_cases']} matched detections of the first "
            f"{result['sanity']['scenes']} held-out scenes. Steps: heads only (`{st['heads']}`), half of the blocks "
            f"(through `{st['half']}`), all (through `{st['all']}`). Lower = the explanation depends on the weights.",
            "",
            "| method | Spearman |R| heads | Spearman |R| half | Spearman |R| all | Spearman R heads | Spearman R half "
            "| Spearman R all | SSIM heads | SSIM half | SSIM all | > 0.5 at half? |",
            "|---|" + "---|" * 10,
        ]
        for m in methods:
            cells = [_fmt(tab[(m, tag, metric)]) for metric in ("spearman_abs", "spearman", "ssim") for tag in st]
            over = [
                metric for metric in ("spearman_abs", "spearman", "ssim") if tab[(m, "half", metric)][0] > FLAG_LEVEL
            ]
            flag = "**flagged**: " + ", ".join(over) if over else "no"
            if m == CONTROL:
                flag = "control: 1 by design"
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + f" | {flag} |")
        lines += ["", "Whole cascade, mean over detections (Spearman |R| / Spearman R / SSIM):", ""]
        blocks = rz["blocks"]
        lines.append("| step | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for j, b in enumerate(blocks):
            cells = []
            for m in methods:
                cv = tab[(m, "curve")]
                cells.append(f"{cv['spearman_abs'][j]:.2f} / {cv['spearman'][j]:.2f} / {cv['ssim'][j]:.2f}")
            lines.append(f"| {j}: {b} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Similarities: Spearman rank correlation over all pixels of |R| and of R (`metrics.spearman`), SSIM with "
            "7x7 uniform windows on maps scaled to [0, 1] by (R / max|R| + 1) / 2 (`metrics.ssim`). Blocks come from the "
            "model's data flow (`crp_jax.sanity.randomization_blocks`): all heads first, then each conv in reverse "
            "forward order (L2Norm joins conv4_3); weights re-drawn by `cj.init_variables` (Xavier-uniform, zero "
            f"biases). Flag: a mean similarity above {FLAG_LEVEL} with half of the blocks randomized. The edge-map "
            "control ignores the weights and must stay at 1. Spearman |R| and SSIM also reward what every map of "
            "this input shares whatever the weights (zero relevance off the object's receptive field, the glyph's "
            "outline through the input layer's x-dependence), so they stay above 0.5 for every method; the signed "
            "Spearman is the one that separates methods here.",
            "",
        ]
    if "box" in san:
        bx = san["box"]
        tab, fr = bx["table"], bx["fractions"]
        base_rows = [r for r in bx["rows"] if r in METHOD_LABELS or r == "random"]
        lines += [
            f"**Box-aware faithfulness** (DExT-style): for every matched detection of the first "
            f"{result['sanity']['scenes']} scenes ({result['sanity']['n_cases']}) and every (coordinate, sign) of "
            f"cx, cy, w, h × ±1, the most relevant pixels of LocTarget(coord, sign) are deleted (image mean) in "
            f"{len(fr) - 1} steps of {fr[1]:.1%} up to {fr[-1]:.0%}; at the same anchor, shift = −sign × (change of "
            "the decoded coordinate) in pixels (positive = the box moved against the removed evidence, correct) and "
            "IoU with the original box. AOPC = mean over steps 0..L; Δ = method − random order (same pixels count, "
            "one random order per target). Mean [95 % bootstrap CI] over detections (each the mean of its 8 targets).",
            "",
            "| method | AOPC shift px ↑ | ΔAOPC shift vs random ↑ | AOPC (1 − IoU) ↑ | ΔAOPC (1 − IoU) ↑ | "
            f"correct direction at {fr[bx['k10']]:.0%} ↑ |",
            "|---|---|---|---|---|---|",
        ]
        for r in base_rows:
            g = lambda k, r=r: _fmt(tab.get((r, k)))  # noqa: E731
            d1 = "—" if r == "random" else g("d_aopc_shift")
            d2 = "—" if r == "random" else g("d_aopc_iou")
            lab = "random order (control)" if r == "random" else METHOD_LABELS.get(r, r)
            lines.append(f"| {lab} | {g('aopc_shift')} | {d1} | {g('aopc_iou')} | {d2} | {g('correct10')} |")
        lines += ["", "ΔAOPC shift (px) per coordinate (mean over both signs):", ""]
        lines.append("| method | cx | cy | w | h |")
        lines.append("|---|---|---|---|---|")
        for r in base_rows:
            if r != "random":
                lines.append(
                    f"| {METHOD_LABELS.get(r, r)} | " + " | ".join(_fmt(tab.get((r, f"d_{c}"))) for c in COORDS) + " |"
                )
        lines.append("")
    if "box" in san and any(r in LOC_VARIANTS for r in san["box"]["rows"]):
        bx = san["box"]
        tab, fr = bx["table"], bx["fractions"]
        inv_rows = [r for r in bx["rows"] if r in LOC_VARIANTS] + [
            r for r in ("gradient_x_input", "lrp_ab", "random") if r in bx["rows"]
        ]
        lines += [
            "**Localization investigation** (why are CRP's localization explanations weak?). Same deletion test as "
            "above, same detections.",
            "",
            "H1, the rule at the localization heads (everything else as crp): ΔAOPC shift (px) vs random per coordinate, "
            "mean over both signs, and the share of targets moved the correct way at "
            f"{fr[bx['k10']]:.0%} deleted.",
            "",
            f"| rule | ΔAOPC cx | ΔAOPC cy | ΔAOPC w | ΔAOPC h | ΔAOPC all | correct at {fr[bx['k10']]:.0%} |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in inv_rows:
            if r == "random":
                continue
            cells = [_fmt(tab.get((r, f"d_{c}"))) for c in COORDS] + [
                _fmt(tab.get((r, "d_aopc_shift"))),
                _fmt(tab.get((r, "correct10"))),
            ]
            lines.append(f"| {METHOD_LABELS.get(r, r)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "H2, the two signs of one coordinate (share moved the correct way at "
            f"{fr[bx['k10']]:.0%}; for the linear rules R(−1) = −R(+1), so sign −1 deletes the most negative "
            "pixels of the +1 map). Deleting object pixels shrinks the box whatever the ranking (see the random row), "
            "so for w and h the +1 targets are flattered and the −1 targets are the hard, informative half:",
            "",
            "| method | " + " | ".join(f"{c} {s:+d}" for c in COORDS for s in SIGNS) + " |",
            "|---|" + "---|" * 8,
        ]
        for r in inv_rows:
            cells = [_fmt(tab.get((r, f"ok10_{c}_{s:+d}")), 2) for c in COORDS for s in SIGNS]
            lab = "random order (control)" if r == "random" else METHOD_LABELS.get(r, r)
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "H3, the deletion size: mean shift (px) and share moved the correct way after each step (all coordinates "
            "and signs):",
            "",
            "| method | " + " | ".join(f"{f:.1%}" for f in fr[1:]) + " |",
            "|---|" + "---|" * (len(fr) - 1),
        ]
        for r in inv_rows:
            cells = []
            for j in range(1, len(fr)):
                a, b = tab.get((r, f"shift@{j}")), tab.get((r, f"ok@{j}"))
                cells.append(f"{a[0]:+.2f} px / {b[0]:.2f}" if a and b else "n/a")
            lab = "random order (control)" if r == "random" else METHOD_LABELS.get(r, r)
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines.append("")
    reading = _sanity_reading(result)
    if reading:
        lines += ["Reading of these sections (generated from the numbers above):", ""] + reading + [""]
    return "\n".join(lines)


def _sanity_reading(result: dict) -> list[str]:
    """Plain statements quoting crp vs lrp_ab vs gradient_x_input on each new table."""
    t = result["table"]
    san = result.get("sanity_table") or {}
    trio = [m for m in ("crp", "lrp_ab", "gradient_x_input") if m in t]

    def ci(c, d=3):
        return f"{c[0]:.{d}f} [{c[1]:.{d}f}, {c[2]:.{d}f}]" if c and c[3] > 0 and math.isfinite(c[0]) else "n/a"

    def names(cells):
        return ", ".join(f"{METHOD_LABELS.get(m, m)} {ci(c)}" for m, c in cells)

    out = []
    if trio and "centre" in t:
        out.append(
            "- Pointing game (15 px @ 224): "
            + names([(m, t[m].get("pg")) for m in trio])
            + f"; centre-of-box baseline {ci(t['centre'].get('pg'))}. Without tolerance: "
            + names([(m, t[m].get("pg0")) for m in trio])
            + f"; baseline {ci(t['centre'].get('pg0'))}."
        )
    if "randomization" in san:
        tab = san["randomization"]["table"]
        have = [m for m in trio if (m, "half", "spearman") in tab]
        for tag, what in (("half", "half of the blocks randomized"), ("all", "all blocks randomized")):
            for metric, lab in (("spearman_abs", "Spearman |R|"), ("spearman", "Spearman R"), ("ssim", "SSIM")):
                out.append(
                    f"- Randomization, {what}, {lab}: " + names([(m, tab[(m, tag, metric)]) for m in have]) + "."
                )
        flagged = [
            METHOD_LABELS.get(m, m)
            for m in result["sanity"]["randomization"]["per_method"]
            if m != CONTROL and any(tab[(m, "half", k)][0] > FLAG_LEVEL for k in ("spearman_abs", "spearman", "ssim"))
        ]
        strict = [
            METHOD_LABELS.get(m, m)
            for m in result["sanity"]["randomization"]["per_method"]
            if m != CONTROL and tab[(m, "half", "spearman")][0] > FLAG_LEVEL
        ]
        out.append(
            f"- Flagged (some similarity > {FLAG_LEVEL} at half): {', '.join(flagged) or 'none'}; by the signed "
            f"Spearman alone: {', '.join(strict) or 'none'}."
        )
    if "box" in san:
        tab = san["box"]["table"]
        fr = san["box"]["fractions"][san["box"]["k10"]]
        have = [m for m in trio if (m, "d_aopc_shift") in tab]
        out.append(
            "- Box deletion, ΔAOPC shift (px) vs random: " + names([(m, tab[(m, "d_aopc_shift")]) for m in have]) + "."
        )
        out.append(
            f"- Box deletion, share moved the correct way at {fr:.0%}: "
            + names([(m, tab[(m, "correct10")]) for m in have])
            + f"; random order {ci(tab[('random', 'correct10')])}."
        )
        paper = next((r for r, spec in LOC_VARIANTS.items() if spec is None), None)
        variants = [r for r in LOC_VARIANTS if (r, "d_aopc_shift") in tab]
        if paper in variants and len(variants) > 1:
            p = tab[(paper, "d_aopc_shift")]
            best = max(variants, key=lambda r: tab[(r, "d_aopc_shift")][0])
            b = tab[(best, "d_aopc_shift")]
            clear = best != paper and b[1] > p[2]
            out.append(
                f"- H1 (loc-head rule): ΔAOPC shift, paper's α1β1 {ci(p)}; best variant: {best} {ci(b)}. "
                + (
                    "The intervals do not overlap: clear evidence for the variant on this test."
                    if clear
                    else "Not clearly better (intervals overlap or the paper's rule is best)."
                )
                + " (crp with w+ at the loc heads propagates exactly as lrp_ab does for a localization target.)"
            )
            plus = [tab[(paper, f"ok10_{c}_+1")][0] for c in COORDS]
            minus = [tab[(paper, f"ok10_{c}_-1")][0] for c in COORDS]
            rnd_minus = [tab[("random", f"ok10_{c}_-1")][0] for c in COORDS]
            gxi_minus = (
                [tab[("gradient_x_input", f"ok10_{c}_-1")][0] for c in COORDS]
                if ("gradient_x_input", "ok10_cx_-1") in tab
                else None
            )
            out.append(
                "- H2, sign −1 only (share correct at "
                f"{fr:.0%}, cx, cy, w, h): paper's rule "
                + ", ".join(f"{v:.2f}" for v in minus)
                + "; random order "
                + ", ".join(f"{v:.2f}" for v in rnd_minus)
                + ("; gradient_x_input " + ", ".join(f"{v:.2f}" for v in gxi_minus) if gxi_minus else "")
                + "."
            )
            out.append(
                f"- H2 (two signs), paper's rule, share correct at {fr:.0%} for (cx, cy, w, h): sign +1 "
                + ", ".join(f"{v:.2f}" for v in plus)
                + "; sign −1 "
                + ", ".join(f"{v:.2f}" for v in minus)
                + "."
            )
            L = len(san["box"]["fractions"]) - 1
            rows3 = [r for r in (paper, "gradient_x_input", "random") if (r, f"shift@{L}") in tab]
            out.append(
                "- H3 (deletion size), mean shift after the first / last step "
                f"({san['box']['fractions'][1]:.1%} / {san['box']['fractions'][L]:.0%}): "
                + "; ".join(
                    f"{'random order' if r == 'random' else METHOD_LABELS.get(r, r)} "
                    f"{tab[(r, 'shift@1')][0]:+.2f} / {tab[(r, f'shift@{L}')][0]:+.2f} px"
                    for r in rows3
                )
                + "."
            )
    return out


def cascade_figure(model, variables, meta, x, shown, case, rz: dict, methods, seed: int, n_cols: int = 7):
    """The classic cascade figure for one detection: rows = methods (and the edge-map
    control), columns = the trained model and cascade steps (each map on its own colour
    scale, cropped around the box); below, the mean Spearman |R| / SSIM per step over all
    detections (band: quartiles)."""
    from crp_jax.sanity import randomization_blocks, randomize

    blocks = randomization_blocks(model, variables, x)
    n = len(blocks)
    cols = sorted({0, 1, n} | {int(round(1 + k * (n - 1) / (n_cols - 2))) for k in range(n_cols - 1)})
    fresh = cj.init_variables(model, seed)
    S = x.shape[1]
    l, t, r, b = _crop_box(case.gt_box, S)
    scale = max(1, round(96 / (r - l)))
    crop = shown[case.image][t:b, l:r]
    box = np.asarray(case.det_box) - np.array([l, t, l, t])
    target = [ClassTarget(case.image, case.anchor, case.label)]
    images, titles = [], []
    rows = [m for m in CASCADE_FIGURE_METHODS if m in methods] + [CONTROL]
    for m in rows:
        for k in cols:
            done = [p for _, mods in blocks[:k] for p in mods]
            v = randomize(variables, fresh, done) if done else variables
            if m == CONTROL:
                R = edge_map_explainer(model, v, x, target)[0, ..., 0]
            else:
                R = cj.explain(model, v, x, target, method=m, meta=meta, chunk_size=CHUNK)[0].sum(-1)
            h = R[t:b, l:r]
            images.append(viz.overlay(crop, h, box=box, vmax=viz.robust_max(h), scale=scale))
            step = "trained" if k == 0 else f"… {blocks[k - 1][0]}"
            titles.append(f"{METHOD_LABELS.get(m, m)}\n{step}" if k == 0 else step)
    g = viz.grid(images, titles, ncols=len(cols), font_size=10)
    names = rz["blocks"]
    per = rz["per_method"]
    colours = [(200, 30, 40), (30, 90, 180), (0, 140, 70), (230, 120, 0), (120, 60, 160), (90, 90, 90)]
    panels = []
    for metric, title in (("spearman_abs", "Spearman rank correlation of |R|"), ("ssim", "SSIM")):
        series = []
        for (m, res), colour in zip(per.items(), colours):
            arr = np.stack([res[j][1][metric] for j in range(len(res))], 1)  # [cases, steps]
            series.append(
                (
                    METHOD_LABELS.get(m, m),
                    colour,
                    (arr.mean(0), np.percentile(arr, 25, 0), np.percentile(arr, 75, 0)),
                )
            )
        panels.append(
            dict(
                title=f"{title} to the trained map (mean; band: quartiles)", log=False, ylim=(-0.2, 1.05), series=series
            )
        )
    short = [n.replace("conv", "c").replace("+l2norm", "+l2") for n in names]  # rotated labels must be short
    chart = line_chart(
        panels,
        short,
        "Cascading randomization: heads first, then each conv back to the input",
        width=g.width,
        panel_h=170,
        footer="cascade step: the blocks randomized so far, from the heads (left) back to the input layer (right)",
    )
    head = Image.new("RGB", (g.width, 20), "white")
    ImageDraw.Draw(head).text(
        (6, 4),
        f"scene {case.scene}, {CLASS_NAMES[case.label]}: class heatmap as the network is randomized from the heads down "
        "(each map on its own scale; red +, blue -)",
        fill="black",
        font=viz.font(11),
    )
    out = Image.new("RGB", (g.width, head.height + g.height + chart.height), "white")
    out.paste(head, (0, 0))
    out.paste(g, (0, head.height))
    out.paste(chart, (0, head.height + g.height))
    return out


# ------------------------------------------------------------------------------------------
# summary and report
# ------------------------------------------------------------------------------------------

COLUMNS_CLASS = [
    ("epg", "EPG ↑"),
    ("class_r", "class r (det vs partner) ↓"),
    ("part", "part enrichment ↑"),
    ("part_larger", "part enr. E/Q/R"),
    ("part_smaller", "part enr. F/O/P"),
]
COLUMNS_PERT = [
    ("aopc", "AOPC MoRF"),
    ("aopc_random", "AOPC random"),
    ("aopc_delta", "ΔAOPC (MoRF − random) ↑"),
    ("aopc_pair", "pair AOPC MoRF"),
    ("aopc_pair_random", "pair AOPC random"),
    ("aopc_pair_delta", "pair ΔAOPC ↑"),
]
COLUMNS_LOC = [
    ("loc_cx", "loc dir. cx share ↑"),
    ("loc_cy", "loc dir. cy share ↑"),
    ("sum_R", "Σ R_input"),
    ("cons_rel_err", "conservation rel. error"),
]


def summarise(values: dict, rows: Sequence[str], n_boot: int) -> dict:
    """``{row: {metric: (mean, lo, hi, count)}}`` with percentile-bootstrap 95 % intervals
    of the mean (metrics.bootstrap_ci); NaN entries (undefined for a case) are dropped."""
    table: dict = {}
    for row in list(rows) + ["random"]:
        for key, vals in values.get(row, {}).items():
            if key.startswith("_"):
                continue
            arr = np.asarray(vals, np.float64)
            ok = arr[~np.isnan(arr)]
            if ok.size == 0:
                table.setdefault(row, {})[key] = (float("nan"), float("nan"), float("nan"), 0)
                continue
            est, lo, hi = M.bootstrap_ci(ok, n_boot=n_boot, seed=0)
            table.setdefault(row, {})[key] = (est, lo, hi, int(ok.size))
    return table


def _fmt(cell, digits: int = 3) -> str:
    if cell is None:
        return "—"
    est, lo, hi, k = cell
    if k == 0 or not math.isfinite(est):
        return "n/a"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_tables(result: dict) -> str:
    table, rows = result["table"], result["rows"]
    lines = []
    sections = (
        ("Class decision", COLUMNS_CLASS),
        (
            "Region perturbation (margin = logit[det] − max other logit; pair margin = logit[det] − logit[partner])",
            COLUMNS_PERT,
        ),
        ("Localization direction and conservation", COLUMNS_LOC),
    )
    for title, cols in sections:
        lines.append(f"**{title}**, mean [95 % bootstrap CI] over matched detections\n")
        lines.append("| method | " + " | ".join(c for _, c in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for row in rows:
            cells = []
            for key, _ in cols:
                cell = table.get(row, {}).get(key)
                if row == "crp_pair" and key.startswith("loc"):
                    cells.append("= crp")
                elif key.endswith("_random") and row != rows[0]:
                    cells.append("same")
                else:
                    cells.append(_fmt(cell))
            lines.append(f"| {METHOD_LABELS.get(row, row)} | " + " | ".join(cells) + " |")
        if cols is COLUMNS_LOC and "random" in table:
            t = table["random"]
            cells = [_fmt(t.get("loc_cx")), _fmt(t.get("loc_cy")), "—", "—"]
            lines.append("| random pixels (control) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def format_report(result: dict, *, weights_desc: str = "", command: str = "") -> str:
    st = result["stats"]
    s = result["settings"]
    dev = jax.devices()[0]
    lines = [
        "# Explanation quality (docs/design.md §5)",
        "",
        f"- command: `{command or 'run_quality(...)'}`",
        f"- weights: {weights_desc or 'in-memory model'}",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}, {_cpu_name()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"python {platform.python_version()}, "
        f"jax {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '')})",
        f"- runtime: {result['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items())
        + ")",
        f"- data: {result['n']} held-out scenes of data set seed {result['seed']} (`crp_jax.data.splits.HELDOUT_SEED` = "
        f"{HELDOUT_SEED}; training refuses it), {st['objects']} objects; detector "
        + (
            "**oracle anchors (not the model's detections)**"
            if s["detector"] == "oracle"
            else f"score threshold {s['score_threshold']}: {st['detections']} detections, "
            f"**{st['matched']} matched** (same label, IoU >= {s['iou_threshold']}), {st['unmatched']} unmatched (left out)"
        ),
        "- matched per class: "
        + ", ".join(f"{k} {v}" for k, v in st["per_class"].items())
        + (f"; {st['empty_part']} with an empty part mask (no part enrichment)" if st["empty_part"] else ""),
        f"- settings: region perturbation patch {s['patch']} px, {s['steps']} steps, uniform-noise baseline; "
        f"loc direction removes the top {s['fraction']:.0%} positive pixels (mean baseline); {s['n_boot']} bootstrap resamples",
        "",
    ]
    if st["matched"] == 0:
        lines += [
            "**0 detections counted**: no detection matched a ground-truth object, so there is nothing to score.",
            "",
        ]
        return "\n".join(lines)
    lines.append(format_tables(result))
    lines.append(format_sanity(result))
    notes = [
        "- EPG, class r and AOPC use each row's class heatmap: crp = contrast \"others\" (the method's default), "
        "crp (pair) = contrast (partner,), the other methods one-hot.",
        "- class r: Pearson over the whole image between the detected class's and the partner class's heatmaps "
        "(same box, same contrast type). For crp (pair) it compares (det vs partner) with (partner vs det), "
        "which is −1 by construction (one linear propagation of opposite initial relevance)"
        + (
            f"; measured max |R_a + R_b| / max |R_a| = {result['linearity']:.1e}."
            if result.get("linearity") is not None
            else "."
        ),
        "- part enrichment: 1 = no better than uniform over object ∪ part; the pairwise question "
        '"why det and not partner" is the crp (pair) row; the one-hot rows answer "why det".',
        "- AOPC: score = logit margin (logit of the class − max other logit, background included) at the detection's "
        "anchor; pair AOPC: score = logit[det] − logit[partner] on the same perturbed images (the question crp (pair) "
        "answers). Regions ranked by each row's class heatmap; random = one random region order per detection, "
        "the same for every method.",
        "- loc direction: LocTarget(cx, +1) / (cy, +1); success = the decoded centre at the same anchor moved left / up "
        "after removing the evidence. crp (pair) shares crp's localization heatmaps.",
        "- Σ R_input: initial relevance is 1 for one-hot rows, 0 for contrasts; rel. error = |Σ − initial| / |initial| "
        "(one-hot) or / Σ|R| (contrast). Only the bias-free LRP rules (crp, lrp_ab) are meant to conserve; "
        "lrp_eps keeps biases and gradients are not relevance.",
    ]
    lines += ["Notes:", ""] + notes + [""]
    reading = _reading(result)
    if reading:
        lines += ["Reading (generated from the numbers above):", ""] + reading + [""]
    if result.get("flow"):
        lines += ["Per-layer relevance flow (median over detections; `relevance_flow.png`):", "", result["flow"], ""]
    if result["figures"]:
        lines += ["Figures: " + ", ".join(f"`{_rel(p)}`" for p in result["figures"]), ""]
    return "\n".join(lines)


def _rel(path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    p = Path(path).resolve()
    try:
        return p.relative_to(HERE.parent).as_posix()
    except ValueError:
        return p.as_posix()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _reading(result: dict) -> list[str]:
    """Plain statements of what the table says about the paper's claims (CI-based)."""
    t = result["table"]

    def cell(row, key):
        c = t.get(row, {}).get(key)
        return c if c is not None and c[3] > 0 and math.isfinite(c[0]) else None

    def ci(c):
        return f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}]"

    out = []
    a, b = cell("crp", "class_r"), cell("lrp_ab", "class_r")
    if a and b:
        verdict = "yes, the intervals do not overlap" if a[2] < b[1] else "not clearly (the intervals overlap)"
        out.append(f"- Class-pair correlation: LRP-ab {ci(b)}, CRP {ci(a)}. Is CRP's lower? {verdict}.")
    for row, what in (("crp_pair", "CRP (pair contrast)"), ("crp", "CRP (others)")):
        pe, lr = cell(row, "part"), cell("lrp_ab", "part")
        if pe:
            above = "well above 1 (lower bound > 1.5)" if pe[1] > 1.5 else ("above 1" if pe[1] > 1 else "not above 1")
            comp = f"; LRP-ab {ci(lr)}" if lr else ""
            split = ", ".join(
                f"{lab} {ci(c)}"
                for lab, c in (("E/Q/R", cell(row, "part_larger")), ("F/O/P", cell(row, "part_smaller")))
                if c
            )
            out.append(f"- Part enrichment, {what}: {ci(pe)}, {above}{comp}. By glyph: {split}.")
            break
    flow = result.get("flow_numbers")
    if flow:
        out.append(
            f"- Class-specific share of LRP-ab relevance, ‖R(det) − R(partner)‖₁ / ‖R(det)‖₁ (median, source "
            f"{flow['source']}): {flow['head']:.2f} at the class head, {flow['source_value']:.3g} at the source "
            f"feature map, {flow['input']:.3g} at the input, a factor {flow['head'] / max(flow['input'], 1e-30):.0f} "
            "overall; the decline per layer is not uniform (see the flow table)."
        )
    lc, ctl = cell("crp", "loc_cx"), cell("random", "loc_cx")
    if lc and ctl:
        out.append(f"- Localization direction (cx): CRP {ci(lc)} vs removing random pixels {ci(ctl)}.")
    c1, c2 = cell("lrp_ab", "sum_R"), cell("crp", "cons_rel_err")
    if c1 and c2:
        out.append(
            f"- Conservation: LRP-ab input relevance sums to {ci(c1)} of 1; CRP's contrast to 0 up to "
            f"{c2[0]:.3f} of its total |R| (relevance of bias-driven units is dropped by the bias-free rules)."
        )
    return out


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------


def save_png(img: Image.Image, path, limit: int = 200_000) -> None:
    """Save a PNG; when it exceeds ``limit`` bytes, as a 256-colour palette image."""
    img.save(path, optimize=True)
    if Path(path).stat().st_size > limit:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _pick_swap_cases(cases: Sequence[Case], k: int = 3) -> list[int]:
    """Up to ``k`` detections, one per confusable pair (E/F, O/Q, P/R), best score first;
    alternately preferring the larger glyph (its part is ink) and the smaller one (its part
    is where the partner's extra stroke would be), so that both kinds are shown."""
    from crp_jax.data import PAIRS

    chosen: list[int] = []
    for j, pair in enumerate(PAIRS):
        labels = {CLASS_NAMES.index(ch) for ch in pair}
        cand = [i for i, c in enumerate(cases) if c.label in labels and c.part_mask.any()]
        if not cand:
            continue
        want_larger = j % 2 == 0
        cand.sort(key=lambda i: ((CLASS_NAMES[cases[i].label] in LARGER) != want_larger, -cases[i].score))
        chosen.append(cand[0])
        if len(chosen) == k:
            break
    return chosen


def _crop_box(box, S: int, margin: float = 0.3) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = int(min(S, max(24, math.ceil(side))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(cx - side / 2)), S - side))
    top = int(min(max(0, round(cy - side / 2)), S - side))
    return left, top, left + side, top + side


def class_swap_figure(shown, cases, ids, swap_heat, cell: int = 150) -> Image.Image:
    """Rows per detection: LRP-ab and CRP; columns: the crop with its box (or the part
    mask), the detected class's heatmap, the partner class's heatmap (same box)."""
    S = shown.shape[1]
    images, titles = [], []
    for i in ids:
        c = cases[i]
        if (i, "crp") not in swap_heat or (i, "lrp_ab") not in swap_heat:
            continue
        l, t, r, b = _crop_box(c.gt_box, S)
        scale = max(1, round(cell / (r - l)))
        crop = shown[c.image][t:b, l:r]
        box = np.asarray(c.gt_box) - np.array([l, t, l, t])
        det, par = CLASS_NAMES[c.label], CLASS_NAMES[c.partner]
        for m, name in (("lrp_ab", "LRP-ab"), ("crp", "CRP")):
            h_det, h_par = (h[t:b, l:r] for h in swap_heat[(i, m)])
            vmax = max(viz.robust_max(h_det), viz.robust_max(h_par))  # shared: magnitudes comparable
            rr = M.class_discriminativeness(*swap_heat[(i, m)])
            if m == "lrp_ab":
                images.append(
                    viz.overlay(
                        crop, np.zeros(crop.shape[:2]), box=box, label=f"{det} {c.score:.2f}", scale=scale, alpha=0.0
                    )
                )
                titles.append(f"scene {c.scene}: {det} (pair {det}/{par})")
            else:
                images.append(
                    viz.overlay(crop, c.part_mask[t:b, l:r].astype(np.float32), vmax=1.0, scale=scale, alpha=0.5)
                )
                titles.append(f"discriminative part ({'E/Q/R' if det in LARGER else 'F/O/P'} side)")
            suffix = "" if m == "lrp_ab" else " vs others"
            images.append(viz.overlay(crop, h_det, box=box, vmax=vmax, scale=scale))
            titles.append(f"{name}: {det}{suffix}")
            images.append(viz.overlay(crop, h_par, box=box, vmax=vmax, scale=scale))
            titles.append(f"{name}: {par}{suffix}  (r = {rr:.2f})")
    if not images:
        img = Image.new("RGB", (400, 40), "white")
        ImageDraw.Draw(img).text((8, 12), "no detection of a confusable pair to show", fill="black", font=viz.font(12))
        return img
    g = viz.grid(images, titles, ncols=3, font_size=11)
    head = Image.new("RGB", (g.width, 34), "white")
    ImageDraw.Draw(head).text(
        (6, 4),
        "Class swap: same box, detected class (middle) vs its confusable partner (right).\n"
        "Red = for the class, blue = against; each row shares one colour scale.",
        fill="black",
        font=viz.font(11),
    )
    out = Image.new("RGB", (g.width, g.height + head.height), "white")
    out.paste(head, (0, 0))
    out.paste(g, (0, head.height))
    return out


def _layer_axis(flows: dict) -> list[str]:
    """Layers on some detection's path (abs relevance > 0 for LRP-ab), input first, all
    classification heads merged into one "cls head" point, localization heads left out."""
    order: list[str] = ["input"]
    for _i, per in flows.items():
        layers, _ = per["lrp_ab"]["cls"]
        for name, (_, a) in layers.items():
            if name.startswith("loc_"):
                continue
            key = "cls head" if name.startswith("cls_") else name
            if a > 0 and key not in order:
                order.append(key)
    # keep forward order (dict order of the flow), heads last
    fwd = ["input"]
    any_layers = next(iter(flows.values()))["lrp_ab"]["cls"][0]
    for name in any_layers:
        if not name.startswith(("cls_", "loc_")) and name in order:
            fwd.append(name)
    if "cls head" in order:
        fwd.append("cls head")
    return fwd


def _series(flows: dict, axis: list[str], method: str, role: str, what: str) -> np.ndarray:
    """``[cases, layers]`` of total (what="total") or abs relevance; NaN off the path."""
    out = np.full((len(flows), len(axis)), np.nan)
    for r, (_i, per) in enumerate(flows.items()):
        if method not in per or role not in per[method]:
            continue
        layers, (tot_in, abs_in) = per[method][role]
        path = {k: v for k, v in per["lrp_ab"]["cls"][0].items() if v[1] > 0}
        for j, name in enumerate(axis):
            if name == "input":
                val = (tot_in, abs_in)
            elif name == "cls head":
                heads = [k for k in path if k.startswith("cls_")]
                if not heads:
                    continue
                val = layers[heads[0]]
            elif name in path:
                val = layers[name]
            else:
                continue
            out[r, j] = val[0] if what == "total" else val[1]
    return out


def relevance_flow_figure(flows: dict, cases: Sequence[Case], model) -> tuple[Image.Image, str]:
    """Per-layer relevance (``explain(..., layers=True)``) of the detections from the most
    common source feature map (so that every point of a curve has the same population and
    the same path input -> source -> class head)."""
    groups: dict[int, dict] = {}
    for i, per in flows.items():
        groups.setdefault(cases[i].source, {})[i] = per
    src = max(groups, key=lambda k: (len(groups[k]), -k))
    flows = groups[src]
    f = model.config.feature_sizes()[src]
    axis = _layer_axis(flows)
    lrp_abs = _series(flows, axis, "lrp_ab", "cls", "abs")
    lrp_tot = _series(flows, axis, "lrp_ab", "cls", "total")
    crp_abs = _series(flows, axis, "crp", "cls", "abs")
    crp_tot = _series(flows, axis, "crp", "cls", "total")
    pair_abs = _series(flows, axis, "crp", "pair", "abs")
    pair_tot = _series(flows, axis, "crp", "pair", "total")
    with np.errstate(divide="ignore", invalid="ignore"):
        share = pair_abs / lrp_abs  # ||R_l(det) - R_l(partner)||_1 / ||R_l(det)||_1 under LRP-ab

    def stats(a):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(a, 0), np.nanpercentile(a, 25, 0), np.nanpercentile(a, 75, 0)

    RED, BLUE, ORANGE = (200, 30, 40), (30, 90, 180), (230, 120, 0)
    panels = [
        dict(
            title="absolute relevance at each layer's output, sum |R_l| (log scale)",
            log=True,
            series=[
                ("LRP-ab, one-hot det", BLUE, stats(lrp_abs)),
                ("CRP, det vs others", RED, stats(crp_abs)),
                ("CRP, det vs partner = LRP-ab(det) - LRP-ab(partner)", ORANGE, stats(pair_abs)),
            ],
        ),
        dict(
            title="total relevance at each layer's output, sum R_l (initial: 1 one-hot, 0 contrast)",
            log=False,
            ylim=(-0.1, 1.1),
            series=[
                ("LRP-ab, one-hot det", BLUE, stats(lrp_tot)),
                ("CRP, det vs others", RED, stats(crp_tot)),
                ("CRP, det vs partner", ORANGE, stats(pair_tot)),
            ],
        ),
    ]
    img = line_chart(
        panels,
        axis,
        f"Relevance flow, input -> source {src} ({f}x{f} cells) -> class head: "
        f"median (band: quartiles) over its {len(flows)} detections",
    )
    med = stats(share)[0]
    tl, tc, tp = stats(lrp_tot)[0], stats(crp_tot)[0], stats(pair_tot)[0]
    la, ca, pa = stats(lrp_abs)[0], stats(crp_abs)[0], stats(pair_abs)[0]
    lines = [
        f"{len(flows)} detections of source {src} ({f}x{f} cells), the most common source among the matched ones.",
        "",
        "| layer | Σ R LRP-ab | Σ|R| LRP-ab | Σ R CRP | Σ|R| CRP (others) | Σ R CRP (pair) | Σ|R| CRP (pair) | class-specific share of LRP-ab |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(axis):
        lines.append(
            f"| {name} | {tl[j]:.3g} | {la[j]:.3g} | {tc[j]:.1e} | {ca[j]:.3g} | {tp[j]:.1e} | {pa[j]:.3g} | {med[j]:.3g} |"
        )
    lines += [
        "",
        "class-specific share = ‖R_l(det) − R_l(partner)‖₁ / ‖R_l(det)‖₁ under LRP-ab, i.e. Σ|R| of CRP (pair) "
        "over Σ|R| of LRP-ab (the class path of both uses the same rules, so CRP (pair) is exactly the difference "
        "of the two LRP-ab relevances at every layer).",
    ]
    src_j = max(j for j, name in enumerate(axis) if name not in ("cls head",) and not name.startswith("cls_"))
    numbers = {"source": src, "head": float(med[-1]), "source_value": float(med[src_j]), "input": float(med[0])}
    return img, ("\n".join(lines), numbers)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--weights", default=None, help="weights file, training checkpoint or checkpoint dir (default: shipped weights)"
    )
    p.add_argument("--n", type=int, default=40, help="held-out scenes (default 40)")
    p.add_argument(
        "--seed", type=int, default=HELDOUT_SEED, help=f"data-set seed (default HELDOUT_SEED = {HELDOUT_SEED})"
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--out", default=str(HERE / "figures"), help="figure folder (default benchmarks/figures)")
    p.add_argument(
        "--md", default=str(HERE / "QUALITY_RESULTS.md"), help="markdown report (default benchmarks/QUALITY_RESULTS.md)"
    )
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--iou", type=float, default=0.5, help="IoU to match a detection to its ground truth")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="region perturbation steps")
    p.add_argument("--fraction", type=float, default=0.1, help="share of pixels removed for the loc-direction test")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument(
        "--detector",
        choices=("model", "oracle"),
        default="model",
        help="oracle: explain every ground-truth object at its best default box (debugging untrained models)",
    )
    p.add_argument(
        "--sanity",
        action="store_true",
        help="also run the model-randomization cascade and the box-aware deletion test (with the "
        "localization-head variants) on the first --sanity-scenes scenes",
    )
    p.add_argument("--sanity-scenes", type=int, default=20, help="scenes for --sanity (default 20)")
    p.add_argument("--box-steps", type=int, default=8, help="box deletion steps (default 8)")
    p.add_argument("--box-fraction", type=float, default=0.2, help="share of pixels deleted at the last box step")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-md", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.n < 1:
        print("quality.py: error: --n must be >= 1", file=sys.stderr)
        return 2
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/quality.py" + "".join(f" {a}" for a in argv_list)
    try:
        model, variables, meta, desc = load_model(args.weights)
        print(f"weights: {desc}")
        res = run_quality(
            model,
            variables,
            meta,
            n=args.n,
            seed=args.seed,
            methods=methods,
            out_dir=None if args.no_figures else args.out,
            md_path=None if args.no_md else args.md,
            score_threshold=args.score_threshold,
            iou_threshold=args.iou,
            patch=args.patch,
            steps=args.steps,
            fraction=args.fraction,
            n_boot=args.n_boot,
            detector=args.detector,
            weights_desc=desc,
            command=command,
            sanity=args.sanity,
            sanity_scenes=args.sanity_scenes,
            box_steps=args.box_steps,
            box_fraction=args.box_fraction,
        )
    except (CRPError, OSError) as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 1
    print()
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
