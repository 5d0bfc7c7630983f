"""Detector errors explained by contrast (issue 24, item 4): where the evidence of missed
objects, anchor contrasts and false alarms lies, on held-out generated scenes.

Scenes: data set ``HELDOUT_SEED`` (never trained on) drawn with a busy ``SceneSpec``
(clutter 3, every object may overlap, up to 60 % of an object's ink and 50 % of its
discriminative part occluded, up to 6 objects) until at least ``--min-missed`` missed objects
and ``--min-false-alarms`` false alarms are found by ``cj.diagnose`` at the report's score
threshold 0.5; the shipped model. Every heatmap is ``R.sum(-1)`` at the input (128 x 128).

1. Missed objects (CRP: "why not <true class>", the true class against the class that won at
   the anchor whose decoded box fits the object best, background included; LRP-ab and
   gradient x input: their own one-hot question "evidence for <true class>", and gradient x
   input also CRP's question; LRP-ab given CRP's question *is* CRP on class targets, same w+
   and z^B rules, so that row would repeat CRP's): the share of the *negative*
   relevance (evidence for the winner) that lies on (a) the ink of the other objects whose
   boxes overlap the missed one's (its occluders and crowders; objects without any are left
   out), (b) the missed object's discriminative part (what tells E from F), (c) its own ink;
   beside it the region's share of the image's area (what a uniform map would give).
2. Anchor contrasts (ODAM's object discrimination, Zhao et al. ICLR 2023): pairs of correctly
   detected objects in one image whose boxes overlap by IoU < 0.5; the share of positive
   relevance inside the explained box (minus the other box) against the other box (minus
   the explained one): ``P(a \\ b) / (P(a \\ b) + P(b \\ a))``; 1 = the map is about the explained
   object only, 0.5 = it cannot tell the two apart. Methods: the anchor contrast
   ``AnchorContrastTarget(a, b)`` under CRP, LRP-ab and gradient x input, and the single-anchor
   questions (CRP's class contrast, LRP-ab's and gradient x input's one-hot).
3. False alarms (CRP: "why <class> and not background"; the baselines their one-hot class
   evidence, gradient x input also CRP's question):
   the share of the positive relevance on glyph ink (partial glyphs: other objects' visible
   ink), on clutter shapes (``Scene.clutter_mask``), on the rest (smooth background), inside
   the false alarm's box and in the whole image.

Intervals: 95 % percentile bootstrap over cases (``crp_jax.metrics.bootstrap_ci``, 1000
resamples).

Usage::

    python benchmarks/errors.py                      # writes the tables to stdout and --md
    python benchmarks/errors.py --min-missed 20 --min-false-alarms 5   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import time
from pathlib import Path

import numpy as np
from _common import cj, jax

from crp_jax.data import SceneSpec, generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.metrics import bootstrap_ci

SPEC = SceneSpec(clutter=3.0, allow_overlap=1.0, max_occlusion=0.6, max_part_occlusion=0.5, max_objects=6)
THRESHOLD = 0.5
# (row, method, question): each method's own question (CRP's contrast, the baselines' one-hot
# class evidence) and gradient x input given CRP's contrastive question. LRP-ab given CRP's
# question is CRP itself: on class targets both use w+ down to z^B at the input, CRP differs by
# its initial relevance (and its box rule), so that row would repeat CRP's to the last digit.
MISSED_ROWS = (
    ("crp: why not <true> (against the winner)", "crp", "why_not"),
    ("lrp_ab: evidence for <true> (one-hot)", "lrp_ab", "missing"),
    ("gradient_x_input: evidence for <true> (one-hot)", "gradient_x_input", "missing"),
    ("gradient_x_input: why not <true> (CRP's question)", "gradient_x_input", "why_not"),
)
FALSE_ALARM_ROWS = (
    ("crp: why <class> and not background", "crp", "contrast"),
    ("lrp_ab: evidence for <class> (one-hot)", "lrp_ab", "one-hot"),
    ("gradient_x_input: evidence for <class> (one-hot)", "gradient_x_input", "one-hot"),
    ("gradient_x_input: why <class> and not background", "gradient_x_input", "contrast"),
)


def find_cases(min_missed: int, min_fa: int, max_scenes: int, batch: int, model, variables, meta):
    """Scenes in order until both quotas are met: ``(scenes {index: Scene}, diagnoses
    {index: ImageDiagnosis}, scenes looked at)``."""
    scenes, diags = {}, {}
    n_missed = n_fa = 0
    start = 0
    while (n_missed < min_missed or n_fa < min_fa) and start < max_scenes:
        batch_scenes = [generate_scene(HELDOUT_SEED, i, SPEC) for i in range(start, min(max_scenes, start + batch))]
        x = cj.preprocess(np.stack([s.image for s in batch_scenes]), meta)
        res = cj.diagnose(
            model,
            variables,
            x,
            [s.boxes for s in batch_scenes],
            [s.labels for s in batch_scenes],
            meta=meta,
            score_threshold=THRESHOLD,
        )
        for j, (s, r) in enumerate(zip(batch_scenes, res)):
            if r.missed or r.false_alarms or len(r.correct) >= 2:
                scenes[start + j], diags[start + j] = s, r
            n_missed += len(r.missed)
            n_fa += len(r.false_alarms)
        start += len(batch_scenes)
    return scenes, diags, start


def _explain(model, variables, meta, scenes, items, method):
    """``items``: ``[(scene index, target with image 0)]`` -> heatmaps ``[n, S, S]``, one
    explain call per scene (the targets of a scene share its forward pass)."""
    import dataclasses

    out = [None] * len(items)
    by_scene: dict = {}
    for k, (i, t) in enumerate(items):
        by_scene.setdefault(i, []).append((k, t))
    for i, group in by_scene.items():
        x = cj.preprocess(scenes[i].image, meta)
        R = cj.explain(
            model, variables, x, [dataclasses.replace(t, image=0) for _, t in group], method=method, meta=meta
        )
        for (k, _), r in zip(group, R):
            out[k] = r.sum(-1)
    return np.stack(out) if out else np.zeros((0,))


def _box_mask(box, S: int) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    m = np.zeros((S, S), bool)
    m[max(0, int(np.floor(y1))) : int(np.ceil(y2)), max(0, int(np.floor(x1))) : int(np.ceil(x2))] = True
    return m


def _share(mass: np.ndarray, region: np.ndarray) -> float:
    total = mass.sum()
    return float(mass[region].sum() / total) if total > 0 else float("nan")


def missed_table(model, variables, meta, scenes, diags, max_cases: int):
    cases = [(i, m) for i, d in diags.items() for m in d.missed][:max_cases]
    S = meta.config.image_size
    rows = {}
    regions = []
    for i, m in cases:
        s = scenes[i]
        box = _box_mask(m.box, S)
        others = [j for j in range(s.num_objects) if j != m.gt and (_box_mask(s.boxes[j], S) & box).any()]
        occl = s.masks[others].any(0) if others else None
        regions.append((occl, s.part_masks[m.gt], s.masks[m.gt]))
    area = {
        "occluders": [r[0].mean() if r[0] is not None else np.nan for r in regions],
        "part": [r[1].mean() for r in regions],
        "own": [r[2].mean() for r in regions],
    }
    for row, method, question in MISSED_ROWS:
        h = _explain(model, variables, meta, scenes, [(i, m.targets()[question]) for i, m in cases], method)
        neg = np.maximum(-h, 0.0)
        rows[row] = {
            "occluders": [_share(n, r[0]) if r[0] is not None else np.nan for n, r in zip(neg, regions)],
            "part": [_share(n, r[1]) for n, r in zip(neg, regions)],
            "own": [_share(n, r[2]) for n, r in zip(neg, regions)],
            "neg_fraction": [float(n.sum() / max(np.abs(hh).sum(), 1e-30)) for n, hh in zip(neg, h)],
        }
    return cases, rows, area


def pair_table(model, variables, meta, scenes, diags, max_pairs: int):
    S = meta.config.image_size
    pairs = []
    for i, d in diags.items():
        c = d.correct
        for a in c:
            for b in c:
                if a is b:
                    continue
                ba, bb = np.asarray(a.box), np.asarray(b.box)
                iw = max(0.0, min(ba[2], bb[2]) - max(ba[0], bb[0]))
                ih = max(0.0, min(ba[3], bb[3]) - max(ba[1], bb[1]))
                inter = iw * ih
                iou = inter / ((ba[2] - ba[0]) * (ba[3] - ba[1]) + (bb[2] - bb[0]) * (bb[3] - bb[1]) - inter)
                if iou < 0.5:
                    pairs.append((i, a, b))
    pairs = pairs[:max_pairs]
    variants = {
        "crp, anchor contrast": ("crp", "pair"),
        "lrp_ab, anchor contrast": ("lrp_ab", "pair"),
        "gradient_x_input, anchor contrast": ("gradient_x_input", "pair"),
        "crp, class contrast (one anchor)": ("crp", "single"),
        "lrp_ab, one-hot (one anchor)": ("lrp_ab", "single"),
        "gradient_x_input, one-hot (one anchor)": ("gradient_x_input", "single"),
    }
    rows = {}
    for name, (method, kind) in variants.items():
        items = []
        for i, a, b in pairs:
            if kind == "pair":
                t = cj.AnchorContrastTarget(0, a.anchor, b.anchor, cls=a.label, other_cls=b.label)
            else:
                t = cj.ClassTarget(0, a.anchor, a.label)
            items.append((i, t))
        h = _explain(model, variables, meta, scenes, items, method)
        odi = []
        for hh, (_, a, b) in zip(h, pairs):
            pos = np.maximum(hh, 0.0)
            ma, mb = _box_mask(a.box, S), _box_mask(b.box, S)
            pa, pb = pos[ma & ~mb].sum(), pos[mb & ~ma].sum()
            odi.append(float(pa / (pa + pb)) if pa + pb > 0 else np.nan)
        rows[name] = odi
    return pairs, rows


def false_alarm_table(model, variables, meta, scenes, diags):
    S = meta.config.image_size
    cases = [(i, f) for i, d in diags.items() for f in d.false_alarms]
    regions = []
    for i, f in cases:
        s = scenes[i]
        ink = s.masks.any(0)
        clutter = s.clutter_mask
        rest = ~ink & ~clutter
        regions.append((_box_mask(f.box, S), ink, clutter, rest))
    rows = {}
    for row, method, question in FALSE_ALARM_ROWS:
        items = []
        for i, f in cases:
            t = f.targets()["why"]
            items.append((i, t if question == "contrast" else cj.ClassTarget(t.image, t.anchor, t.cls, "none")))
        h = _explain(model, variables, meta, scenes, items, method)
        pos = np.maximum(h, 0.0)
        r = {k: [] for k in ("in_box", "ink", "clutter", "rest", "ink_in_box", "clutter_in_box", "rest_in_box")}
        for p, (box, ink, clutter, rest) in zip(pos, regions):
            r["in_box"].append(_share(p, box))
            for name, reg in (("ink", ink), ("clutter", clutter), ("rest", rest)):
                r[name].append(_share(p, reg))
                r[f"{name}_in_box"].append(_share(p * box, reg))
        rows[row] = r
    area = {
        "in_box": [b.mean() for b, *_ in regions],
        "ink": [k.mean() for _, k, _, _ in regions],
        "clutter": [c.mean() for _, _, c, _ in regions],
        "rest": [r.mean() for *_, r in regions],
        "ink_in_box": [(k & b).sum() / b.sum() for b, k, _, _ in regions],
        "clutter_in_box": [(c & b).sum() / b.sum() for b, _, c, _ in regions],
        "rest_in_box": [(r & b).sum() / b.sum() for b, _, _, r in regions],
    }
    return cases, rows, area


def cell(values) -> str:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return "–"
    m, lo, hi = bootstrap_ci(v)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _n(values) -> int:
    return int((~np.isnan(np.asarray(values, np.float64))).sum())


def figures(model, variables, meta, scenes, missed, pairs, fas, out: Path) -> list[str]:
    """Three example pictures (a missed object, an anchor contrast, a false alarm): CRP maps."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (i, target, boxes) in {
        "errors_missed.png": (missed[0][0], missed[0][1].targets()["why_not"], [missed[0][1].box]),
        "errors_anchor_contrast.png": (
            pairs[0][0],
            cj.AnchorContrastTarget(
                0, pairs[0][1].anchor, pairs[0][2].anchor, cls=pairs[0][1].label, other_cls=pairs[0][2].label
            ),
            [pairs[0][1].box, pairs[0][2].box],
        ),
        "errors_false_alarm.png": (fas[0][0], fas[0][1].targets()["why"], [fas[0][1].box]),
    }.items():
        h = _explain(model, variables, meta, scenes, [(i, target)], "crp")[0]
        img = cj.viz.overlay(scenes[i].image, h, box=boxes[0], scale=3)
        img.save(out / name)
        written.append(str(out / name))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--min-missed", type=int, default=100)
    p.add_argument("--min-false-alarms", type=int, default=100)
    p.add_argument("--max-scenes", type=int, default=6000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--max-missed", type=int, default=300, help="missed objects explained (the first ones found)")
    p.add_argument("--max-pairs", type=int, default=300, help="anchor-contrast pairs explained")
    p.add_argument("--md", default=None, help="write the tables as Markdown to this file")
    p.add_argument("--figures", default="benchmarks/figures", help="folder of the three example pictures")
    args = p.parse_args(argv)
    t0 = time.time()
    model, variables, meta = cj.load_pretrained()
    scenes, diags, looked = find_cases(
        args.min_missed, args.min_false_alarms, args.max_scenes, args.batch, model, variables, meta
    )
    t_find = time.time() - t0
    totals = {
        k: sum(d.counts()[k] for d in diags.values()) for k in ("missed", "false_alarm", "wrong_label", "duplicate")
    }
    n_correct = sum(len(d.correct) for d in diags.values())
    missed, m_rows, m_area = missed_table(model, variables, meta, scenes, diags, args.max_missed)
    pairs, p_rows = pair_table(model, variables, meta, scenes, diags, args.max_pairs)
    fas, f_rows, f_area = false_alarm_table(model, variables, meta, scenes, diags)
    figs = figures(model, variables, meta, scenes, missed, pairs, fas, Path(args.figures))
    seconds = time.time() - t0

    L = []
    L.append("## Detector errors explained by contrast (issue 24)\n")
    L.append("- command: `python benchmarks/errors.py" + (" " + " ".join(argv) if argv else "") + "`")
    L.append(
        f"- date: {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC; runtime {seconds:.0f} s (finding cases {t_find:.0f} s)"
    )
    L.append(
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, 2 CPU cores (shared), no GPU; "
        f"python {platform.python_version()}, jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    L.append(
        f"- data: scenes 0..{looked - 1} of held-out data set {HELDOUT_SEED}, `{SPEC}`; shipped model, score threshold "
        f"{THRESHOLD}; cj.diagnose found {totals['missed']} missed objects, {totals['false_alarm']} false alarms, "
        f"{totals['wrong_label']} wrong labels, {totals['duplicate']} duplicates, {n_correct} correct detections "
        f"(in the {len(diags)} scenes kept). Explained: the first {len(missed)} missed objects, {len(pairs)} pairs, "
        f"all {len(fas)} false alarms."
    )
    L.append("- cells: mean [95 % percentile bootstrap interval, 1000 resamples] over cases (n)\n")
    L.append(
        "**Missed objects**: share of each map's negative relevance (evidence against the true class) on each region; "
        'CRP asks "why not <true class>" (the true class against the class that won at the anchor), the baselines '
        f"their own one-hot question, gradient x input also CRP's; n = {len(missed)} "
        f"(occluders: the {_n(m_area['occluders'])} missed objects whose box another object's box overlaps)\n"
    )
    L.append("| method | on occluders' ink | on its discriminative part | on its own ink | negative share of Σ|R| |")
    L.append("|---|---|---|---|---|")
    for method, r in m_rows.items():
        L.append(
            f"| {method} | {cell(r['occluders'])} | {cell(r['part'])} | {cell(r['own'])} | {cell(r['neg_fraction'])} |"
        )
    L.append(
        f"| area share (uniform map) | {cell(m_area['occluders'])} | {cell(m_area['part'])} | {cell(m_area['own'])} | |\n"
    )
    L.append(
        f"**Anchor contrasts**: object discrimination P(a∖b) / (P(a∖b) + P(b∖a)), positive relevance inside the explained "
        f"box a against the other box b; {len(pairs)} ordered pairs of correctly detected objects in one image, box IoU < 0.5 "
        "(1 = only the explained object, 0.5 = no discrimination)\n"
    )
    L.append("| question, method | object discrimination ↑ | n |")
    L.append("|---|---|---|")
    for name, v in p_rows.items():
        L.append(f"| {name} | {cell(v)} | {_n(v)} |")
    L.append("")
    L.append(
        '**False alarms**: where each map\'s positive relevance lies; CRP asks "why <class> and not background", the '
        f"baselines their one-hot class evidence, gradient x input also CRP's question; n = {len(fas)}\n"
    )
    L.append(
        "| method | in the box | glyph ink (partial glyphs) | clutter shapes | smooth background | in the box: ink | in the box: clutter | in the box: background |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    keys = ("in_box", "ink", "clutter", "rest", "ink_in_box", "clutter_in_box", "rest_in_box")
    for method, r in f_rows.items():
        L.append(f"| {method} | " + " | ".join(cell(r[k]) for k in keys) + " |")
    L.append("| area share (uniform map) | " + " | ".join(cell(f_area[k]) for k in keys) + " |\n")
    L.append("Figures (CRP maps, 3x): " + ", ".join(f"`{Path(f).name}`" for f in figs) + f" in `{args.figures}`")
    text = "\n".join(L) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
