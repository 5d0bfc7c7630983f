"""Composites: a labelling of a model's layers with rules, and the named presets.

A :class:`Composite` is an ordered tuple of ``(selector, rule)`` pairs; the first selector
that matches a module decides its rule (like zennit's composites, or optax's
``multi_transform`` labelling a pytree). A selector is a glob on the module path joined by
``/`` (``"conv1_1"``, ``"cls_*"``) or a module type (``nn.Conv``). Layers no selector
matches keep their gradient. The composite is applied with ``flax.linen.intercept_methods``,
so the model is never edited to be explained.

Build your own in a few lines::

    import flax.linen as nn
    from crp_jax.relevance import Composite, rules
    from crp_jax.ssd import L2Norm

    mine = Composite(rules=(
        ("conv1_1", rules.Flat()),            # input layer
        ("loc_*", rules.AlphaBeta(2.0, 1.0)), # localization heads
        (L2Norm, rules.PassThrough()),
        (nn.Conv, rules.Epsilon(0.25)),       # everything else
    ))
    R = cj.explain(model, variables, x, targets, method=mine)
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax

from crp_jax.errors import ConfigError
from crp_jax.relevance import rules as R
from crp_jax.ssd.model import L2Norm

CONTRASTS = ("others", "foreground", "none")


@dataclass(frozen=True)
class Composite:
    """Layer -> rule labelling plus how relevance starts and ends.

    Attributes:
      rules: ordered ``(selector, Rule)`` pairs, first match wins; selector is a path glob
        (``str``) or a module type.
      contrast: default contrast of class targets under this composite: "others" (CRP),
        "foreground" or "none" (one-hot, plain LRP).
      times_input: multiply the input relevance by the input (gradient x input).
      name: for display.
    """

    rules: tuple = ()
    contrast: str | tuple[int, ...] = "none"
    times_input: bool = False
    name: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(tuple(r) for r in self.rules))
        for pair in self.rules:
            if len(pair) != 2:
                raise ConfigError(f"composite rules must be (selector, rule) pairs, got {pair!r}")
            sel, rule = pair
            if not isinstance(sel, (str, type)):
                raise ConfigError(f"selector must be a path glob or a module type, got {sel!r}")
            if not isinstance(rule, R.Rule):
                raise ConfigError(f"{rule!r} (for {sel!r}) is not a crp_jax rule")
        if isinstance(self.contrast, str) and self.contrast not in CONTRASTS:
            raise ConfigError(f"contrast {self.contrast!r} unknown; use one of {CONTRASTS} or a tuple of classes")

    def rule_for(self, module: nn.Module) -> R.Rule | None:
        path = "/".join(module.path)
        for sel, rule in self.rules:
            if isinstance(sel, str):
                if fnmatch.fnmatchcase(path, sel):
                    return rule
            elif isinstance(module, sel):
                return rule
        return None

    @contextlib.contextmanager
    def intercept(self, probes: dict | None = None, record: dict | None = None):
        """Context in which every ``module.__call__`` runs under its rule.

        ``probes``: path -> zero array added to that layer's output, so that the cotangent
        of the probe is the relevance at the layer (per-layer relevance flow).
        ``record``: filled with path -> output shape of every probe-able layer.
        """

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not isinstance(module, _LAYER_TYPES):
                return next_fun(*args, **kwargs)
            rule = self.rule_for(module)
            y = next_fun(*args, **kwargs) if rule is None else rule.apply(module, next_fun, args, kwargs)
            path = "/".join(module.path)
            if record is not None:
                record[path] = jax.ShapeDtypeStruct(y.shape, y.dtype)
            if probes is not None and path in probes:
                y = y + probes[path]
            return y

        with nn.intercept_methods(interceptor):
            yield


_LAYER_TYPES = (nn.Conv, nn.Dense, L2Norm)

# ---- presets ----------------------------------------------------------------------------

_REGISTRY: dict[str, Callable] = {}


def register_composite(name: str, factory: Callable) -> None:
    """Register ``factory(meta) -> Composite`` under ``name`` (usable as ``method=name``)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"composite name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def composite_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_composite(method, meta=None) -> Composite:
    """A preset by name (needs ``meta`` for the input layer's pixel bounds where it uses
    z^B), or a :class:`Composite` returned as is."""
    if isinstance(method, Composite):
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ConfigError(f"unknown method {method!r}; known: {list(composite_names())} or a Composite")
    return _REGISTRY[method](meta)


def _zbox(meta, who: str) -> R.ZBox:
    if meta is None:
        raise ConfigError(
            f"method {who!r} uses the z^B rule at the input layer, which needs the pixel bounds: "
            "pass meta=... (from load_pretrained or a converter)"
        )
    low, high = meta.pixel_bounds
    return R.ZBox(low, high)


def _crp(meta) -> Composite:
    return Composite(
        rules=(
            ("conv1_1", _zbox(meta, "crp")),
            ("cls_*", R.WPlus()),
            ("loc_*", R.AlphaBeta(1.0, 1.0)),
            (L2Norm, R.PassThrough()),
            (nn.Conv, R.WPlus()),
            (nn.Dense, R.WPlus()),
        ),
        contrast="others",
        name="crp",
    )


def _lrp_ab(meta) -> Composite:
    return Composite(
        rules=(
            ("conv1_1", _zbox(meta, "lrp_ab")),
            (L2Norm, R.PassThrough()),
            (nn.Conv, R.WPlus()),
            (nn.Dense, R.WPlus()),
        ),
        contrast="none",
        name="lrp_ab",
    )


def _lrp_eps(meta) -> Composite:
    return Composite(
        rules=((L2Norm, R.PassThrough()), (nn.Conv, R.Epsilon(1e-6)), (nn.Dense, R.Epsilon(1e-6))),
        contrast="none",
        name="lrp_eps",
    )


register_composite("crp", _crp)
register_composite("lrp_ab", _lrp_ab)
register_composite("lrp_eps", _lrp_eps)
register_composite("gradient", lambda meta: Composite(name="gradient"))
register_composite("gradient_x_input", lambda meta: Composite(times_input=True, name="gradient_x_input"))

# The built-in presets, in the order reports and the CLI list them.
PRESETS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
