"""The tables ``benchmarks/speed.py`` measures per model (docs/design.md §6), one function
each: conv FLOPs, XLA's forward throughput with the decomposition of crp and of the floor,
the torch side (zennit's parity, torchvision's SSDlite), the timing grid, per-layer timing
and the memory subprocesses; then the data-set shape table over all models. Each function
logs its lines and writes its figures into ``results`` (``mres``: the model's entry), and
calls ``save`` after each configuration."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from _common import block, log, make_images, med, timed
from _speed_child import run_child
from _speed_convs import conv_layers, per_layer
from _speed_report import GiB, loadavg
from _speed_runners import get_floor, make_runners, run_interleaved
from _speed_targets import encoded, make_targets

import crp_jax as cj
from crp_jax.relevance import compiled_functions, get_composite


@dataclass(frozen=True)
class Settings:
    """What the command line asks, after ``--quick``: models, target and image counts,
    repeats, the methods timed (``big_methods`` for T > ``--big-T``), targets per chunk and
    the T values of the memory subprocesses."""

    models: list[str]
    targets: list[int]
    images: list[int]
    repeats: int
    methods: list[str]
    big_methods: list[str]
    chunk: int
    mem_targets: list[int]


class TorchSides(NamedTuple):
    """Which torch comparisons run: zennit (VGG models) and torchvision's SSDlite320
    (``ssdlite_versions`` says which torch, or why not)."""

    zennit: bool
    ssdlite: bool
    ssdlite_versions: str


def torch_sides(args, models: list[str], info: dict) -> TorchSides:
    """Whether zennit and torch (SSDlite320) can run, logged and recorded in ``info``."""
    zok, zwhy = (False, "--no-zennit") if args.no_zennit else __import__("zennit_ssd").available()
    info["zennit"] = zwhy
    log(f"zennit: {zwhy}" if zok else f"zennit: skipped ({zwhy})")
    tok, twhy = False, "not asked"
    if "ssdlite320" in models:
        tok, twhy = (False, "--no-zennit") if args.no_zennit else __import__("torch_ssdlite").available()
        info["torch_ssdlite"] = twhy
        log(f"torch (SSDlite320 torch_grad): {twhy}" if tok else f"torch (SSDlite320 torch_grad): skipped ({twhy})")
    return TorchSides(zok, tok, twhy)


def measure_model(mname, model, variables, meta, args, s: Settings, torch: TorchSides, results, save) -> None:
    """Every table of one model (all but ``--crop``'s), in the order they are printed."""
    mres = results["models"][mname]
    layers = conv_flops(model, variables, meta, s.methods, mres)
    fwd = jax.jit(model.apply)
    x1 = make_images(1, model.config.image_size, meta)
    decomposition(model, variables, meta, fwd, x1, s, mres)
    save()
    trunner = torch_side(mname, model, variables, meta, fwd, x1, args, torch, results)
    timing_grid(mname, model, variables, meta, trunner, args, s, results, save)
    if trunner is not None:
        trunner.close()
    if args.per_layer and mname == "ssd300":
        per_layer_table(mname, layers, s, results)
        save()
    for L in layers:
        L.pop("op", None)
    mres["conv_layers"] = layers
    if not args.no_mem:
        memory_table(mname, args, s, results, save)


def conv_flops(model, variables, meta, methods: list[str], mres: dict) -> list[dict]:
    """The model's convs (:func:`_speed_convs.conv_layers`) and their FLOPs: forward per
    image, backward per target per method."""
    flop_methods = list(dict.fromkeys(methods + ["crp", "gradient"]))
    layers = conv_layers(model, variables, meta, flop_methods)
    fwd_flops = sum(L["flops"] for L in layers)
    bwd_flops = {m: sum(L["flops"] * L["mult"][m] for L in layers) for m in flop_methods}
    mres["conv_flops_forward"] = fwd_flops
    mres["conv_flops_backward_per_target"] = bwd_flops
    log(
        f"conv FLOPs: forward {fwd_flops / 1e9:.2f} GFLOP/image; backward per target "
        + ", ".join(f"{m} {v / 1e9:.2f}" for m, v in bwd_flops.items())
    )
    return layers


def decomposition(model, variables, meta, fwd, x1, s: Settings, mres: dict) -> None:
    """XLA's forward throughput (``fwd``, the jitted ``model.apply``, at batch 1 and batch
    ``chunk``) and crp and the floor split into their per-image forward and per-chunk
    backward, all timed in one loop."""
    cfg, chunk = model.config, s.chunk
    fwd_flops, bwd_flops = mres["conv_flops_forward"], mres["conv_flops_backward_per_target"]
    xc = jnp.concatenate([x1] * chunk)
    for xx in (x1, xc):
        block(fwd(variables, xx))
    comp = get_composite("crp", meta)
    cfwd, cbwd = compiled_functions(model, comp, chunk, cfg.num_anchors())
    fl = get_floor(model, chunk)
    tg = make_targets(cfg, 1, chunk)
    im, an, cc, lc = encoded(cfg, tg, 1)
    first = {}
    first["crp_forward"] = timed(lambda: block(cfwd(variables, x1)))
    _, vjp_c = block(cfwd(variables, x1))
    an1, cc1, lc1 = an[None], cc[None], lc[None]  # one image's slots: [1, chunk, ...]
    first["crp_backward_chunk"] = timed(lambda: block(cbwd(vjp_c, x1, an1, cc1, lc1)))
    first["floor_forward"] = timed(lambda: block(fl.forward(variables, x1)))
    vjp_f = block(fl.forward(variables, x1))
    first["floor_backward_chunk"] = timed(lambda: block(fl.backward(vjp_f, an, cc, lc)))
    # The plain forward (the machine's conv throughput) is timed in the same loop as the
    # backward passes, repeat by repeat, so that their ratio sees the same load.
    dts = {"crp_forward": [], "crp_backward_chunk": [], "floor_forward": [], "floor_backward_chunk": []}
    ts1, tsc = [], []
    for _ in range(max(3, s.repeats)):
        ts1.append(timed(lambda: block(fwd(variables, x1))))
        tsc.append(timed(lambda: block(fwd(variables, xc))))
        dts["crp_forward"].append(timed(lambda: block(cfwd(variables, x1))))
        dts["crp_backward_chunk"].append(timed(lambda: block(cbwd(vjp_c, x1, an1, cc1, lc1))))
        dts["floor_forward"].append(timed(lambda: block(fl.forward(variables, x1))))
        dts["floor_backward_chunk"].append(timed(lambda: block(fl.backward(vjp_f, an, cc, lc))))
    mres["forward_s_batch1"] = med(ts1)
    mres["forward_s_batch_chunk"] = med(tsc)
    mres["forward_gflops_batch1"] = fwd_flops / med(ts1) / 1e9
    mres["forward_gflops_batch_chunk"] = chunk * fwd_flops / med(tsc) / 1e9
    log(
        f"XLA forward (jitted model.apply): batch 1 {med(ts1):.3f} s = {mres['forward_gflops_batch1']:.1f} GFLOP/s; "
        f"batch {chunk} {med(tsc):.3f} s = {mres['forward_gflops_batch_chunk']:.1f} GFLOP/s"
    )
    dec = {k: med(v) for k, v in dts.items()}
    dec["compile_s"] = {k: first[k] - dec[k] for k in first}
    dec["crp_backward_per_target"] = dec["crp_backward_chunk"] / chunk
    dec["floor_backward_per_target"] = dec["floor_backward_chunk"] / chunk
    dec["crp_backward_gflops"] = bwd_flops["crp"] / dec["crp_backward_per_target"] / 1e9
    dec["floor_backward_gflops"] = bwd_flops["gradient"] / dec["floor_backward_per_target"] / 1e9
    for k in ("crp", "floor"):
        g = dec[f"{k}_backward_gflops"]
        dec[f"{k}_backward_fraction_of_fwd_batch1"] = g / mres["forward_gflops_batch1"] if g else None
        dec[f"{k}_backward_fraction_of_fwd_batch_chunk"] = g / mres["forward_gflops_batch_chunk"] if g else None
    mres["decomposition"] = dec
    log(
        f"decomposition (chunk {chunk}): crp forward {dec['crp_forward']:.3f} s, backward "
        f"{dec['crp_backward_per_target']:.3f} s/target ({dec['crp_backward_gflops']:.1f} GFLOP/s = "
        f"{100 * dec['crp_backward_fraction_of_fwd_batch1']:.0f}% of fwd b1, "
        f"{100 * dec['crp_backward_fraction_of_fwd_batch_chunk']:.0f}% of fwd b{chunk}); floor forward "
        f"{dec['floor_forward']:.3f} s, backward {dec['floor_backward_per_target']:.3f} s/target "
        f"({dec['floor_backward_gflops']:.1f} GFLOP/s); compile (first - steady) "
        + ", ".join(f"{k} {v:.1f} s" for k, v in dec["compile_s"].items())
    )


def torch_side(mname, model, variables, meta, fwd, x1, args, torch: TorchSides, results):
    """The torch runner of the timing grid (one image), or None: zennit on VGG models, after
    checking its forward and relevance against ours (``results["zennit_parity"]``);
    torchvision's gradient on SSDlite320, after checking its output shapes."""
    cfg, mres = model.config, results["models"][mname]
    zrunner = None
    if torch.zennit and cfg.backbone != "vgg16":
        log(f"zennit: skipped for {mname} (zennit has no SSDlite canonizer)")
    elif torch.zennit:
        import zennit_ssd

        zrunner = zennit_ssd.ZennitRunner(cfg, variables, meta, np.asarray(x1), threads=args.torch_threads)
        ref = fwd(variables, x1)
        tc, tl = zrunner.forward(0)
        par = {
            "forward_max_abs_diff_cls": float(np.abs(tc - np.asarray(ref[0])).max()),
            "forward_max_abs_diff_loc": float(np.abs(tl - np.asarray(ref[1])).max()),
            "forward_max_abs_cls": float(np.abs(np.asarray(ref[0])).max()),
            "threads": zrunner.threads,
            "device": zrunner.device,
        }
        tg = make_targets(cfg, 1, 2)
        im, an, cc, _ = encoded(cfg, tg, 1)
        zr = zrunner.run(im, an, cc, mode="zennit", keep=2)
        jr = cj.explain(model, variables, x1, tg, method="crp", meta=meta, chunk_size=args.chunk)
        rel, cor = [], []
        for a, b in zip(zr, jr):
            rel.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)))
            cor.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        par["relevance_rel_l2_err"] = rel
        par["relevance_corr"] = cor
        results["zennit_parity"][mname] = par
        log(
            f"torch vs jax forward max |diff|: cls {par['forward_max_abs_diff_cls']:.2e} "
            f"(max |cls| {par['forward_max_abs_cls']:.2e}), loc {par['forward_max_abs_diff_loc']:.2e}; "
            f"zennit vs crp-jax relevance rel. L2 error {rel}, corr {cor}"
        )
    if mname == "ssdlite320" and torch.ssdlite:
        import torch_ssdlite

        zrunner = torch_ssdlite.TorchSSDliteRunner(np.asarray(x1), threads=args.torch_threads)
        tc, tl = zrunner.forward(0)
        ref = fwd(variables, x1)
        if tc.shape != ref[0].shape or tl.shape != ref[1].shape:
            raise SystemExit(
                f"torchvision's SSDlite outputs {tc.shape}, {tl.shape}; ours {ref[0].shape}, {ref[1].shape}"
            )
        mres["torch"] = {"threads": zrunner.threads, "device": zrunner.device, "versions": torch.ssdlite_versions}
        log(
            f"torch: torchvision ssdlite320_mobilenet_v3_large (own random init, eval), outputs {tc.shape} "
            f"{tl.shape} as ours; {zrunner.threads} threads on {zrunner.device}"
        )
    return zrunner


def timing_grid(mname, model, variables, meta, trunner, args, s: Settings, results, save) -> None:
    """Per (B images, T targets), T <= ``--big-T``: every runner interleaved, per target
    against the floor (``results["timing"]``)."""
    cfg, chunk = model.config, s.chunk
    for B in s.images:
        x = make_images(B, cfg.image_size, meta)
        Ts = s.targets
        if args.quick and mname == "shipped":
            Ts = sorted(set(Ts) | {32})
        for T in Ts:
            if T > args.big_T:
                continue
            kinds = s.methods + ["gradient", "floor"] + (["floor_host"] if args.host_copy else [])
            if args.device_output:
                kinds += [m + "_dev" for m in s.methods]
            if T <= args.naive_max_T:
                kinds.append("naive")
            if trunner is not None and B == 1 and T <= args.zennit_max_T:
                kinds += list(trunner.modes)
            targets = make_targets(cfg, B, T)
            runners = make_runners(kinds, model, variables, meta, x, targets, chunk, trunner, B)
            la0 = loadavg()
            t0 = time.perf_counter()
            run_interleaved(runners, s.repeats)
            floor_pt = med(next(r for r in runners if r.name == "floor").steady)
            for r in runners:
                pt = med(r.steady)
                rec = {
                    "model": mname,
                    "images": B,
                    "T": T,
                    "method": r.name,
                    "chunk": chunk,
                    "per_target_s": pt,
                    "repeats_s": r.steady,
                    "first_call_s": r.first,
                    "n_warm": r.n_warm,
                    "compile_s": r.first - pt * r.n_warm,
                    "vs_floor": pt / floor_pt,
                    "loadavg": f"{la0} -> {loadavg()}",
                }
                results["timing"].append(rec)
            save()
            log(f"-- {mname} B={B} T={T} ({time.perf_counter() - t0:.0f} s, load {la0} -> {loadavg()})")
            for r in runners:
                pt = med(r.steady)
                log(
                    f"   {r.name:>10}: {pt:8.4f} s/target  x{pt / floor_pt:5.2f} floor  "
                    f"compile {r.first - pt * r.n_warm:6.1f} s  repeats {[round(v, 4) for v in r.steady]}"
                )
            del runners


def per_layer_table(mname, layers, s: Settings, results) -> None:
    """``--per-layer``: every conv's forward, rule backward and autodiff backward at batch
    ``chunk`` (:func:`_speed_convs.per_layer`) and their sums."""
    chunk, repeats = s.chunk, max(3, s.repeats)
    log(f"per-layer (batch {chunk}, medians of {repeats}):")
    pl = per_layer(layers, chunk, repeats)
    tot = {k: sum(r[k + "_s"] for r in pl) for k in ("fwd", "rule_bwd", "autodiff_bwd")}
    fl_f = sum(r["flops_fwd"] for r in pl)
    fl_r = sum(r["flops_fwd"] * r["mult"] for r in pl)
    summ = {
        "sum_s": tot,
        "fwd_gflops": fl_f / tot["fwd"] / 1e9,
        "rule_bwd_gflops": fl_r / tot["rule_bwd"] / 1e9,
        "autodiff_bwd_gflops": fl_f / tot["autodiff_bwd"] / 1e9,
    }
    summ["rule_bwd_fraction_of_fwd"] = summ["rule_bwd_gflops"] / summ["fwd_gflops"]
    results["per_layer"][mname] = {"layers": pl, "summary": summ}
    log(
        f"  all convs: fwd {tot['fwd']:.3f} s ({summ['fwd_gflops']:.1f} GFLOP/s), crp rule-bwd convs "
        f"{tot['rule_bwd']:.3f} s ({summ['rule_bwd_gflops']:.1f} GFLOP/s = "
        f"{100 * summ['rule_bwd_fraction_of_fwd']:.0f}% of fwd), autodiff-bwd {tot['autodiff_bwd']:.3f} s "
        f"({summ['autodiff_bwd_gflops']:.1f} GFLOP/s)"
    )


def memory_table(mname, args, s: Settings, results, save) -> None:
    """One subprocess per configuration (``results["memory"]``): every T > ``--big-T``
    (``--big-methods``, each image count) and, without ``--quick``, ``--mem-targets``
    (crp and floor, one image)."""
    specs = []
    for T in s.targets:
        if T > args.big_T:
            for B in s.images:
                specs += [{"model": mname, "images": B, "T": T, "chunk": s.chunk, "method": m} for m in s.big_methods]
    if not args.quick:
        for T in s.mem_targets:
            if T <= args.big_T:
                specs += [
                    {"model": mname, "images": 1, "T": T, "chunk": s.chunk, "method": m} for m in ("crp", "floor")
                ]
    for spec in specs:
        log(f"subprocess {spec} ...")
        res = run_child(spec, args.child_timeout)
        results["memory"].append(res)
        save()
        if "error" in res:
            log(f"   error: {res['error']}")
        else:
            dp = res.get("device_peak_bytes")
            log(
                f"   {res['per_target_s']:.4f} s/target (compile {res['compile_s']:.1f} s), peak RSS "
                f"{res['peak_rss_bytes'] / GiB:.2f} GiB (after warm-up {res['peak_rss_after_warmup_bytes'] / GiB:.2f}, "
                f"base {res['rss_base_bytes'] / GiB:.2f})" + (f", device peak {dp / GiB:.2f} GiB" if dp else "")
            )


def dataset_table(models: list[str], total: int, repeats: int, results, save) -> None:
    """``--dataset TOTAL``: the data-set shape table (``benchmarks/dataset_shape.py``) per model."""
    import dataset_shape

    for mname in models:
        text, rows = dataset_shape.run(mname, total, repeats)
        log("\ndata-set shape, " + text)
        results.setdefault("dataset", {})[mname] = rows
        save()
