"""Sanity checks of the quality benchmark (``--sanity``): the model-randomization cascade
(Adebayo et al. 2018), the box-aware deletion test with the localization-head rule variants,
and their bootstrap summaries. The edge-map control (:func:`edge_map_explainer`) does not
depend on the weights, so its similarity stays at 1 through the cascade.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import crp_jax as cj
from crp_jax import metrics as M
from crp_jax.eval.quality.cases import CHUNK
from crp_jax.relevance.targets import COORDS, ClassTarget, LocTarget
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import decode, xyxy_to_cxcywh

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
