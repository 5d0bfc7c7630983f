"""Data-set mode (``crp-jax report --scenes N``): generated held-out scenes and a quality table.

The scenes come from ``crp_jax.data.generate_scene`` with the held-out seed
(``crp_jax.data.splits.HELDOUT_SEED``, never trained on) and are written as PNG files into the
report, so they go through exactly the same loading and detection path as the user's images.

The table is a *reduced* version of the quality benchmark's (:mod:`crp_jax.eval.quality`,
run by ``benchmarks/quality.py``; its perturbation columns re-run the model thousands of
times): the same matching (a detection counts when it overlaps a ground-truth object of its
class with IoU >= 0.5, ground truth taken at most once, detections by descending score), the
same definitions from ``crp_jax.metrics`` and the same percentile bootstrap intervals, for
EPG, class r (detected class vs its confusable partner), part enrichment and conservation;
AOPC and localization direction are left to the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from crp_jax import metrics, viz
from crp_jax.errors import InputError
from crp_jax.eval.voc import match_to_ground_truth

N_BOOT = 1000
IOU = 0.5
COLUMNS = (
    {
        "key": "epg",
        "title": "EPG",
        "doc": "energy pointing game: share of positive relevance inside the ground-truth box (higher is better).",
    },
    {
        "key": "class_r",
        "title": "class r",
        "doc": "Pearson correlation over the whole image between the heatmaps of the detected class and of its "
        "confusable partner (E/F, O/Q, P/R) at the same anchor; lower = more class-discriminative.",
    },
    {
        "key": "part",
        "title": "part enrichment",
        "doc": "share of positive relevance on the discriminative part (what tells E from F) divided by the "
        "part's share of the object; 1 = no better than uniform, higher is better.",
    },
    {
        "key": "conservation",
        "title": "conservation error",
        "doc": "relative error of Σ R at the input against the initial relevance (0 for a contrast, 1 for a "
        "one-hot target); methods without a conservation law are left out.",
    },
)
NOTE = (
    "Reduced table: the metrics and intervals of benchmarks/quality.py for EPG, class r, part enrichment and "
    "conservation, computed with crp_jax.metrics; the perturbation columns (AOPC, localization direction) "
    "are only in the benchmark. 'crp (pair)' asks 'why the detected class and not its partner'."
)


def write_scenes(n: int, seed: int, folder: Path) -> dict[str, object]:
    """Generate scenes ``0..n-1`` of data set ``seed`` as ``folder/scene_IIII.png``;
    returns ``{path: Scene}``."""
    from crp_jax.data import generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        scene = generate_scene(seed, i)
        path = folder / f"scene_{i:04d}.png"
        Image.fromarray(scene.image).save(path)
        out[str(path)] = scene
    return out


def match(det, scene, iou: float = IOU) -> list[tuple[int, int]]:
    """``(detection, ground truth)`` pairs by descending score: VOC matching of the quality
    benchmark and of ``crp-jax evaluate`` (:func:`crp_jax.eval.voc.match_to_ground_truth`,
    same label, IoU >= ``iou``, a detection whose best ground truth is taken stays unmatched)."""
    if len(det) == 0 or scene.num_objects == 0:
        return []
    matched = match_to_ground_truth(
        det.boxes, det.scores, scene.boxes, iou, det_labels=det.labels, gt_labels=scene.labels
    )
    order = np.argsort(-np.asarray(det.scores), kind="stable")
    return [(int(i), int(matched[i])) for i in order if matched[i] >= 0]


def _on_scene(R, shape) -> np.ndarray:
    """Channel-summed heatmap at the scene's pixel size."""
    return viz.resize_heatmap(np.asarray(R).sum(-1), shape)


def _part(heat, part_mask, mask) -> float:
    try:
        return metrics.part_enrichment(heat, part_mask, mask)
    except InputError:  # an empty part (a glyph fully hidden): undefined, left out
        return float("nan")


def scene_values(exps: Sequence, det, scene, methods: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Per row (method, and "crp_pair") and column: the values of this scene's matched detections."""
    rows = list(methods) + ["crp_pair"]
    vals: dict[str, dict[str, list[float]]] = {r: {c["key"]: [] for c in COLUMNS} for r in rows}
    shape = scene.image.shape[:2]
    for i, g in match(det, scene):
        e = exps[i]
        if e.partner is None:
            continue
        box, mask, part = scene.boxes[g], scene.masks[g], scene.part_masks[g]
        cons = e.numbers["conservation"]
        for r in rows:
            name = "crp_vs_partner" if r == "crp_pair" else r
            heat = _on_scene(e.relevance[name], shape)
            v = vals[r]
            v["epg"].append(metrics.energy_pointing_game(heat, box))
            v["part"].append(_part(heat, part, mask))
            if r != "crp_pair":
                v["class_r"].append(
                    metrics.class_discriminativeness(heat, _on_scene(e.relevance[f"{r}_partner"], shape))
                )
            c = metrics.conservation(e.relevance[name], 0.0) if r == "crp_pair" else cons.get(r)
            if c is not None:
                v["conservation"].append(c["relative_error"])
    return vals


def quality_table(per_scene: Sequence[dict], methods: Sequence[str], n_scenes: int, seed: int) -> dict:
    """Merge :func:`scene_values` of every scene into the JSON-ready table."""
    rows = list(methods) + ["crp_pair"]
    merged = {r: {c["key"]: [] for c in COLUMNS} for r in rows}
    for vals in per_scene:
        for r in rows:
            for k, v in vals.get(r, {}).items():
                merged[r][k] += v
    cells = {}
    for r in rows:
        cells[r] = {}
        for c in COLUMNS:
            v = np.asarray(merged[r][c["key"]], np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:
                cells[r][c["key"]] = None
                continue
            mean, lo, hi = metrics.bootstrap_ci(v, n_boot=N_BOOT)
            cells[r][c["key"]] = {"mean": mean, "lo": lo, "hi": hi, "n": int(v.size)}
    titles = {"crp": "crp", "crp_pair": "crp (pair)"}
    return {
        "n_scenes": n_scenes,
        "seed": seed,
        "n_matched": max((len(merged[r]["epg"]) for r in rows), default=0),
        "n_boot": N_BOOT,
        "rows": rows,
        "row_titles": {r: titles.get(r, r) for r in rows},
        "columns": [dict(c) for c in COLUMNS],
        "cells": cells,
        "values": merged,
        "note": NOTE,
    }
