"""The model's convolutions for ``benchmarks/speed.py``: their shapes and FLOPs (forward, and
per rule the FLOPs of its backward), and the per-conv-layer timing (``--per-layer``)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _common import log, med, timed

from crp_jax.relevance import get_composite, rules
from crp_jax.relevance.linear import conv_op_from_module


def backward_flop_multiplier(rule) -> int:
    """FLOPs of a rule's backward (transposed) conv relative to the forward conv: the
    kernel it transposes is stacked 2x (ZBox: w and the bound kernel; AlphaBeta: w+ and w-;
    WPlus with contributions: w+ and w- along the input) or 4x (SignedWPlus, AlphaBeta with
    contributions: along both channel axes), crp_jax/relevance/rules.py."""
    if isinstance(rule, rules.SignedWPlus) or (isinstance(rule, rules.AlphaBeta) and rule.contributions):
        return 4
    if isinstance(rule, (rules.AlphaBeta, rules.ZBox)) or (isinstance(rule, rules.WPlus) and rule.contributions):
        return 2
    return 1


def conv_layers(model, variables, meta, methods) -> list[dict]:
    """Every conv of the model at batch 1: path, shapes, ConvOp, forward FLOPs, and per
    method the rule and the FLOP multiplier of its backward. FLOPs are
    ``2 * Ho * Wo * Cout * kh * kw * Cin / groups``: flax's kernel is ``[kh, kw, Cin /
    groups, Cout]``, so a depthwise conv (SSDlite) counts ``kh * kw`` MACs per output."""
    S = model.config.image_size
    comps = {m: get_composite(m, meta) for m in methods}
    recs = []

    def interceptor(next_fun, args, kwargs, ctx):
        y = next_fun(*args, **kwargs)
        mod = ctx.module
        if ctx.method_name == "__call__" and isinstance(mod, nn.Conv):
            k = mod.variables["params"]["kernel"].shape  # [kh, kw, Cin / groups, Cout]
            n, ho, wo, cout = y.shape
            op = conv_op_from_module(mod)
            assert k[2] * op.groups == args[0].shape[-1], (mod.path, k, op.groups)
            rec = {
                "path": "/".join(mod.path),
                "in": tuple(args[0].shape),
                "out": tuple(y.shape),
                "kernel": tuple(k),
                "groups": op.groups,
                "op": op,
                "flops": 2.0 * n * ho * wo * cout * k[0] * k[1] * k[2],
                "rules": {},
                "mult": {},
            }
            for m, comp in comps.items():
                rule = comp.rule_for(mod)
                rec["rules"][m] = type(rule).__name__ if rule is not None else "Gradient"
                rec["mult"][m] = backward_flop_multiplier(rule)
            recs.append(rec)
        return y

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: model.apply(variables, x), jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32))
    return recs


def per_layer(layers, chunk: int, repeats: int, method: str = "crp") -> list[dict]:
    """Per conv layer at batch ``chunk``: the forward conv, the rule's backward conv as crp
    runs it (``ConvOp.transpose``, forward conv on the flipped kernel, with the rule's stacked
    channels), and autodiff's transposed conv (what the floor runs)."""
    rng = np.random.default_rng(0)
    out = []
    for L in layers:
        op, kh, kw, cin, cout = L["op"], *L["kernel"]
        _, h, w, _ = L["in"]
        _, ho, wo, _ = L["out"]
        m = L["mult"][method]
        rule = L["rules"][method]
        x = jnp.asarray(rng.random((chunk, h, w, cin), np.float32))
        wk = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)).astype(np.float32) * 0.01)
        s = jnp.asarray(rng.normal(size=(chunk, ho, wo, cout)).astype(np.float32))
        # the rule's transposed kernel, with its stacked channels
        if rule == "ZBox":
            wt = op.transpose_kernel(jnp.concatenate([wk, wk], axis=2))
            s_rule = s
        elif rule == "AlphaBeta":
            wt = op.transpose_kernel(jnp.concatenate([wk, wk], axis=3))
            s_rule = jnp.concatenate([s, s], axis=-1)
        else:
            wt = op.transpose_kernel(wk)
            s_rule = s
        fwd = jax.jit(op.apply)
        rule_bwd = jax.jit(lambda s, wt, op=op, hw=(h, w): op.transpose(s, wt, hw))
        ad_bwd = jax.jit(lambda s, w, x=x, op=op: jax.vjp(lambda x: op.apply(x, w), x)[1](s)[0])
        fns = {
            "fwd": lambda: fwd(x, wk).block_until_ready(),
            "rule_bwd": lambda: rule_bwd(s_rule, wt).block_until_ready(),
            "autodiff_bwd": lambda: ad_bwd(s, wk).block_until_ready(),
        }
        ts = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(repeats):
            for k, f in fns.items():
                ts[k].append(timed(f))
        flops = L["flops"] * chunk
        rec = {"path": L["path"], "rule": rule, "flops_fwd": flops, "mult": m}
        for k in fns:
            rec[k + "_s"] = med(ts[k])
        rec["fwd_gflops"] = flops / rec["fwd_s"] / 1e9
        rec["rule_bwd_gflops"] = m * flops / rec["rule_bwd_s"] / 1e9
        rec["autodiff_bwd_gflops"] = flops / rec["autodiff_bwd_s"] / 1e9
        out.append(rec)
        log(
            f"    {L['path']:>9} {rule:>10} fwd {rec['fwd_s'] * 1e3:8.1f} ms ({rec['fwd_gflops']:6.1f} GF/s)"
            f"  rule-bwd {rec['rule_bwd_s'] * 1e3:8.1f} ms ({rec['rule_bwd_gflops']:6.1f})"
            f"  autodiff-bwd {rec['autodiff_bwd_s'] * 1e3:8.1f} ms ({rec['autodiff_bwd_gflops']:6.1f})"
        )
    return out
