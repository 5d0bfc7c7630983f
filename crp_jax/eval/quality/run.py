"""The whole quality benchmark, :func:`run_quality`: cases, explanations of every method,
the metrics and perturbation tests, the optional sanity checks, then the tables, the
figures and the markdown report. What is measured is described in
:mod:`crp_jax.eval.quality`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import crp_jax as cj
from crp_jax import metrics as M
from crp_jax.data import CLASS_NAMES, LARGER
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import ConfigError
from crp_jax.eval.quality.cases import (
    CHUNK,
    DEFAULT_METHODS,
    FLOW_METHODS,
    Case,
    Probe,
    collect_cases,
    logit_margin,
    queue_region_perturbation,
)
from crp_jax.eval.quality.figures import (
    cascade_figure,
    class_swap_figure,
    pick_swap_cases,
    relevance_flow_figure,
    save_png,
)
from crp_jax.eval.quality.report import format_report
from crp_jax.eval.quality.sanity import centre_heatmap, run_box_faithfulness, run_randomization, summarise_sanity
from crp_jax.relevance.targets import ClassTarget, LocTarget
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import decode, xyxy_to_cxcywh


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
    for ids in by_image.values():
        for i in ids:
            for role, tg in _targets_for(method, cases[i]):
                targets.append(tg)
                keys.append((i, role))
    if layers:
        R, flow = cj.relevance_flow(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK)
    else:
        R, flow = cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK), None
    heat, sums, per_layer, cons = {}, {}, {}, {}
    for t, key in enumerate(keys):
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
    swap_ids = pick_swap_cases(cases)
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
            pending.append(
                ("random", i, "aopc", queue_region_perturbation(kw, x[c.image], rng.random((S, S)), probe, c.anchor))
            )
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
                pending.append((row, i, "aopc", queue_region_perturbation(kw, x[c.image], h, probe, c.anchor)))
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
