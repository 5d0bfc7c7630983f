"""The markdown report of the quality benchmark: metric tables with bootstrap intervals,
the sanity tables, notes, and plain-language readings generated from the numbers.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from pathlib import Path

import jax

from crp_jax import metrics as M
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.eval.quality.cases import METHOD_LABELS
from crp_jax.eval.quality.sanity import CONTROL, COORDS, FLAG_LEVEL, LOC_VARIANTS, SIGNS


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
            "model's data flow (`crp_jax.metrics.randomization_blocks`): all heads first, then each conv in reverse "
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
        lines += ["Figures: " + ", ".join(f"`{display_path(p)}`" for p in result["figures"]), ""]
    return "\n".join(lines)


def display_path(path) -> str:
    """``path`` relative to the working directory when it lies inside it (the benchmark
    runs from the repository root, so its report names repository files), else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
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
