"""Receptive-field-cropped propagation against dense propagation: ``benchmarks/speed.py
--crop``, the only section measured for BlazeFace."""

from __future__ import annotations

import time

import numpy as np
from _common import log, make_images, med, timed
from _speed_child import run_child
from _speed_report import GiB, loadavg
from _speed_runners import make_runners, run_interleaved
from _speed_targets import TARGET_SETS, source_histogram

from crp_jax.compiled import cache_info, clear_caches
from crp_jax.relevance import get_composite
from crp_jax.relevance.targets import COORDS


def crop_section(mname, model, variables, meta, args, zok: bool) -> dict:
    """Cropped against dense propagation (docs/design.md §6), one image, interleaved:

    - the anchor groups (one per source): grid, input window, whether explain crops them;
    - per target set ("first": first-source anchors; "coco" and "loguniform": anchors drawn
      like real detections, :func:`_speed_targets.detection_like_targets`): per-target time
      of explain's cropped path ("crp", dense output), "crp_windows" (window output),
      "crp_dense" (crop=False), the floor and zennit (VGG models, when installed), and their
      ratios;
    - compile time of the cropped path (first call minus steady state, with explain's
      compiled functions cleared before) and how many functions that call compiled;
    - peak RSS of ``--crop-big-T`` first-source targets in a subprocess, window output and
      dense output.
    """
    from crp_jax.relevance import crop_groups

    cfg = model.config
    chunk, T = args.chunk, args.crop_T
    x = make_images(1, cfg.image_size, meta)
    comp = get_composite("crp", meta)
    A, K = cfg.num_anchors(), cfg.num_classes
    t0 = time.perf_counter()
    groups = crop_groups(model, variables, x.shape, comp, A, K, len(getattr(cfg, "regressor_names", COORDS)))
    sec = {"plan_s": time.perf_counter() - t0, "T": T, "chunk": chunk, "sets": {}, "memory": []}
    sec["groups"] = [
        {"anchors": list(g.anchors), "grid": list(g.grid), "window": list(g.window), "cropped": g.cropped}
        for g in groups
    ]
    log(f"cropped propagation, {mname}: groups (planned in {sec['plan_s']:.1f} s)")
    for g in groups:
        log(f"   anchors {g.anchors}: grid {g.grid}, input window {g.window}, cropped {g.cropped}")
    zrunner = None
    if zok and cfg.backbone == "vgg16":
        import zennit_ssd

        zrunner = zennit_ssd.ZennitRunner(cfg, variables, meta, np.asarray(x), threads=args.torch_threads)
    for set_name in getattr(cfg, "target_sets", ("first", "coco", "loguniform")):
        targets = TARGET_SETS[set_name](cfg, 1, T)
        kinds = ["crp", "crp_dense", "crp_windows", "floor"] + (["zennit"] if zrunner is not None else [])
        if not any(g.cropped for g in groups):  # explain does not crop here: time the forced crop too
            kinds.insert(1, "crp_always")
        runners = make_runners(kinds, model, variables, meta, x, targets, chunk, zrunner, 1)
        # compile time and count of this very call: explain's compiled functions start empty
        clear_caches()
        crp = runners[0]
        first = timed(crp.full)
        info = cache_info()
        n_forward, n_trimmed = info["forward"].compilations, info["trimmed_forward"].compilations
        n_dense, n_cropped = info["dense_backward"].compilations, info["cropped_backward"].compilations
        for r in runners:
            r.warm, r.n_warm = r.full, r.n_full  # warm-up = the same call: every group compiles
        la0 = loadavg()
        run_interleaved(runners, args.repeats)
        per = {r.name: med(r.steady) for r in runners}
        row = {
            "targets": set_name,
            "source_histogram": source_histogram(cfg, targets),
            "per_target_s": per,
            "repeats_s": {r.name: r.steady for r in runners},
            "dense_over_cropped": per["crp_dense"] / per["crp"],
            "floor_over_cropped": per["floor"] / per["crp"],
            "windows_over_cropped": per["crp_windows"] / per["crp"],
            "zennit_over_cropped": per["zennit"] / per["crp"] if "zennit" in per else None,
            "compile_s": first - per["crp"] * T,
            "compiled_functions": {
                "forward": n_forward,
                "trimmed_forward": n_trimmed,
                "dense_backward": n_dense,
                "cropped_backward": n_cropped,
            },
            "loadavg": f"{la0} -> {loadavg()}",
        }
        sec["sets"][set_name] = row
        z = f", zennit/cropped {row['zennit_over_cropped']:.1f}x" if row["zennit_over_cropped"] else ""
        log(
            f"-- {set_name} targets, T={T} (per source {row['source_histogram']}), load {row['loadavg']}: "
            f"dense/cropped {row['dense_over_cropped']:.2f}x, floor/cropped {row['floor_over_cropped']:.2f}x{z}; "
            f"compile {row['compile_s']:.1f} s, compiled {n_forward} forward + {n_trimmed} trimmed forward + "
            f"{n_dense} dense backward + {n_cropped} cropped backward"
        )
        for r in runners:
            log(f"   {r.name:>12}: {per[r.name]:8.4f} s/target  repeats {[round(v, 4) for v in r.steady]}")
    if zrunner is not None:
        zrunner.close()
    if not args.no_mem:
        for kind in ("crp_windows", "crp"):
            spec = {"model": mname, "images": 1, "T": args.crop_big_T, "chunk": chunk, "method": kind}
            spec["targets"] = getattr(cfg, "target_sets", ("first",))[0]
            log(f"subprocess {spec} ...")
            res = run_child(spec, args.child_timeout)
            sec["memory"].append(res)
            if "error" in res:
                log(f"   error: {res['error']}")
            else:
                log(
                    f"   {res['per_target_s']:.4f} s/target (compile {res['compile_s']:.1f} s), peak RSS "
                    f"{res['peak_rss_bytes'] / GiB:.2f} GiB (base {res['rss_base_bytes'] / GiB:.2f})"
                )
    return sec
