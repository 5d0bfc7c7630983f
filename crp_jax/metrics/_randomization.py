"""Model-randomization sanity check (Adebayo et al., NeurIPS 2018) for any explainer.

An explanation that does not change when the model's weights are destroyed explains the
input, not the model. The check re-initialises the model's parameterised layers with the
model's own initializer (``crp_jax.init_variables(model, seed)``: Xavier-uniform kernels,
zero biases, the L2Norm scale at its initial value) and compares each heatmap with the
trained model's, for the same targets.

Blocks and their order are found from the model itself, not from SSD300's layer names:

1. one ``eval_shape`` forward pass under ``flax.linen.intercept_methods`` records every
   module that owns parameters, in call (forward) order, with its input and output;
2. the pass is also traced to a jaxpr, and a forward data-flow sweep over its equations says
   which module outputs reach which module inputs; modules whose output reaches no other
   module are the *heads* (SSD: every ``cls_k`` / ``loc_k`` conv);
3. blocks: the heads first (one block), then every other module in reverse forward order;
   a module without a ``kernel`` (a normalisation scale such as SSD's ``l2norm``) joins the
   block of the module called just before it (its producer), since alone it only rescales.

``mode="cascading"`` (Adebayo's main test) randomizes the blocks cumulatively, heads first,
down to the input layer; ``mode="independent"`` randomizes one block at a time in an
otherwise trained model. Similarity per target between the trained and the randomized
channel-summed heatmap (``metrics.spearman`` of |R| and of R, ``metrics.ssim``), averaged
over targets. Heatmaps whose values do not depend on the weights (Adebayo's edge-detector
control) keep all three at 1.0; a method that passes the check drops well below 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from crp_jax.errors import ConfigError, InputError
from crp_jax.metrics._similarity import spearman, ssim

__all__ = ["model_randomization", "randomization_blocks", "randomize"]

MODES = ("cascading", "independent")
HEADS = "heads"  # name of the block of head modules
SIMILARITIES = ("spearman_abs", "spearman", "ssim")


def _param_paths(variables) -> dict[tuple[str, ...], list[str]]:
    """Module path -> names of the parameters it owns directly (any collection)."""
    owned: dict[tuple[str, ...], list[str]] = {}
    for key in traverse_util.flatten_dict(_plain(variables)):
        owned.setdefault(tuple(key[1:-1]), []).append(key[-1])
    return owned


def _plain(tree):
    return tree.unfreeze() if hasattr(tree, "unfreeze") else dict(tree)


def randomization_blocks(model, variables, x) -> list[tuple[str, tuple[str, ...]]]:
    """The randomization blocks of ``model``, in cascade order (heads first).

    Args:
      model: a Flax module whose ``apply(variables, x)`` runs the network.
      variables: its variables (only their tree structure is used).
      x: one input batch ``[B, H, W, C]`` (only its shape and dtype are used).

    Returns:
      ``[(name, (module path, ...)), ...]``: the heads block (``"heads"``) first, then the
      other modules in reverse forward order; a block's name is its modules' paths joined
      by ``+`` (paths joined by ``/``).
    """
    owned = _param_paths(variables)
    order: list[tuple[str, ...]] = []

    def run(x):
        ins, outs = [], []

        def interceptor(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            path = tuple(context.module.path)
            if context.method_name == "__call__" and path in owned and args and isinstance(y, jax.Array):
                if path not in order:
                    order.append(path)
                ins.append((path, args[0]))
                outs.append((path, y))
            return y

        with nn.intercept_methods(interceptor):
            model.apply(variables, x)
        return [a for _, a in ins], [a for _, a in outs], [p for p, _ in ins], [p for p, _ in outs]

    xs = jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    paths_box: dict = {}

    def traced(x):
        ins, outs, in_paths, out_paths = run(x)
        paths_box["in"], paths_box["out"] = in_paths, out_paths
        return ins, outs

    closed = jax.make_jaxpr(traced)(xs)
    if not order:
        raise ConfigError(f"{type(model).__name__} called no module that owns parameters; nothing to randomize")
    jaxpr = closed.jaxpr
    n_in = len(paths_box["in"])
    in_vars, out_vars = jaxpr.outvars[:n_in], jaxpr.outvars[n_in:]
    index = {p: k for k, p in enumerate(order)}
    # forward sweep: label[v] = bit set of modules whose output v depends on
    seeds = {id(v): 1 << index[p] for v, p in zip(out_vars, paths_box["out"])}
    label: dict[int, int] = dict(seeds)  # keyed by id: jaxpr literals are not hashable

    def lab(v) -> int:
        return label.get(id(v), 0)

    for eqn in jaxpr.eqns:
        bits = 0
        for v in eqn.invars:
            bits |= lab(v)
        for v in eqn.outvars:
            label[id(v)] = label.get(id(v), 0) | bits | seeds.get(id(v), 0)
    consumed = 0
    for v, p in zip(in_vars, paths_box["in"]):
        consumed |= lab(v) & ~(1 << index[p])
    heads = [p for p in order if not consumed >> index[p] & 1]
    rest = [p for p in order if consumed >> index[p] & 1]
    # modules without a kernel join their producer (the module called just before them)
    groups: list[list[tuple[str, ...]]] = []
    for p in rest:
        if groups and "kernel" not in owned[p]:
            groups[-1].append(p)
        else:
            groups.append([p])
    blocks = [(HEADS, tuple("/".join(p) for p in heads))] if heads else []
    for g in reversed(groups):
        names = tuple("/".join(p) for p in g)
        blocks.append(("+".join(names), names))
    return blocks


def randomize(variables, fresh, modules: Sequence[str]):
    """``variables`` with every array owned by the modules ``modules`` (paths joined by
    ``/``) taken from ``fresh`` (e.g. ``init_variables(model, seed)``; same tree)."""
    flat = traverse_util.flatten_dict(_plain(variables))
    new = traverse_util.flatten_dict(_plain(fresh))
    wanted = {tuple(m.split("/")) for m in modules}
    out = {}
    for key, v in flat.items():
        if tuple(key[1:-1]) in wanted:
            if key not in new or np.shape(new[key]) != np.shape(v):
                raise ConfigError(f"fresh variables lack {'/'.join(key)} with shape {np.shape(v)}")
            out[key] = new[key]
        else:
            out[key] = v
    return traverse_util.unflatten_dict(out)


def _explainer(method, meta) -> Callable:
    if callable(method) and not isinstance(method, str):
        return method
    from crp_jax.relevance import explain
    from crp_jax.relevance.composite import get_composite

    comp = get_composite(method, meta)  # unknown names raise ConfigError here, before any work
    return lambda model, variables, x, targets: explain(model, variables, x, targets, method=comp, meta=meta)


def _heatmaps(fn, model, variables, x, targets) -> np.ndarray:
    R = np.asarray(fn(model, variables, x, targets), np.float64)
    T = len(targets)
    if R.ndim == 4:
        R = R.sum(-1)
    if R.ndim != 3 or R.shape[0] != T:
        raise InputError(f"the explainer returned shape {R.shape}; expected [T={T}, H, W, C] or [T, H, W]")
    if not np.all(np.isfinite(R)):
        raise InputError("the explainer returned non-finite relevance")
    return R


def similarities(trained, randomized) -> dict[str, np.ndarray]:
    """Per-target ``{"spearman_abs", "spearman", "ssim"}`` (each ``[T]``) of two heatmap
    stacks ``[T, H, W]`` (see :func:`crp_jax.metrics.spearman`, :func:`crp_jax.metrics.ssim`)."""
    a, b = np.asarray(trained, np.float64), np.asarray(randomized, np.float64)
    out = {k: np.zeros(len(a)) for k in SIMILARITIES}
    for t in range(len(a)):
        out["spearman_abs"][t] = spearman(np.abs(a[t]), np.abs(b[t]))
        out["spearman"][t] = spearman(a[t], b[t])
        out["ssim"][t] = ssim(a[t], b[t])
    return out


def model_randomization(
    model,
    variables,
    x,
    targets: Sequence,
    method="crp",
    meta=None,
    seed: int = 0,
    mode: str = "cascading",
    per_target: bool = False,
) -> list[tuple[str, dict]]:
    """Cascading (or independent) model-randomization test of an explainer.

    Args:
      model: the detector (``cj.load_pretrained()``'s first element, or any Flax module that
        ``cj.explain`` and ``cj.init_variables`` accept).
      variables: its trained variables.
      x: preprocessed images ``[B, S, S, 3]``.
      targets: ``ClassTarget``/``LocTarget`` list (``T`` targets).
      method: a preset name, a ``Composite``, or a callable
        ``(model, variables, x, targets) -> R [T, H, W, C]`` (or ``[T, H, W]``), e.g. a
        control that ignores the weights.
      meta: the weights' meta (needed by presets with the z^B input rule).
      seed: seed of ``cj.init_variables``, the fresh weights every block takes its arrays from.
      mode: "cascading" (cumulative, heads first, down to the input layer) or "independent"
        (one block at a time, the others trained).
      per_target: return each similarity as a ``[T]`` array instead of its mean.

    Returns:
      ``[("trained", sims), (block name, sims), ...]`` where ``sims`` maps "spearman_abs",
      "spearman" and "ssim" to the mean over targets (``[T]`` with ``per_target``); the first
      entry compares the trained heatmaps with themselves (all 1.0). Block names come from
      :func:`randomization_blocks` ("heads", then module paths).

    Raises:
      ConfigError: unknown ``mode`` or method name.
      InputError: ``seed`` not an int, no targets, or an explainer output of the wrong shape.
    """
    from crp_jax.ssd.build import init_variables

    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} unknown; use one of {MODES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, got {seed!r}")
    if len(targets) == 0:
        raise InputError("targets is empty: nothing to explain")
    fn = _explainer(method, meta)
    blocks = randomization_blocks(model, variables, x)
    fresh = init_variables(model, int(seed))
    base = _heatmaps(fn, model, variables, x, targets)

    def summary(sims):
        return sims if per_target else {k: float(np.mean(v)) for k, v in sims.items()}

    out = [("trained", summary(similarities(base, base)))]
    done: list[str] = []
    for name, modules in blocks:
        if mode == "cascading":
            done += list(modules)
            v = randomize(variables, fresh, done)
        else:
            v = randomize(variables, fresh, modules)
        out.append((name, summary(similarities(base, _heatmaps(fn, model, v, x, targets)))))
    return out
