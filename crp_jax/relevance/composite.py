"""Composites: a labelling of a model's layers with rules, and the named presets.

A :class:`Composite` is an ordered tuple of ``(selector, rule)`` pairs; the first selector
that matches a module decides its rule (like zennit's composites, or optax's
``multi_transform`` labelling a pytree). A selector is

- a glob on the module path joined by ``/`` (``"conv1_1"``, ``"cls_*"``),
- a module type (``nn.Conv``),
- :class:`Kind` (``Kind("rescale")``): every module whose class declares that layer kind in a
  ``relevance_kind`` class attribute. This is how a detector says which of its own modules
  are which (SSD's ``L2Norm`` declares "rescale") without importing the engine, and how the
  engine stays free of any detector (docs/design.md, "Architecture"),
- :data:`INPUT_LAYER`: the linear layer that reads the model input itself (z^B's place).

Layers no selector matches keep their gradient. The composite is applied with
``flax.linen.intercept_methods``, so the model is never edited to be explained.

Build your own in a few lines::

    import flax.linen as nn
    from crp_jax.relevance import Composite, Kind, INPUT_LAYER, rules

    mine = Composite(rules=(
        (INPUT_LAYER, rules.Flat()),            # the conv that reads the pixels
        ("loc_*", rules.AlphaBeta(2.0, 1.0)),   # localization heads
        (Kind("rescale"), rules.PassThrough()), # e.g. SSD's L2Norm
        (nn.Conv, rules.Epsilon(0.25)),         # everything else
    ))
    R = cj.explain(model, variables, x, targets, method=mine)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax

from crp_jax.errors import ConfigError
from crp_jax.relevance import rules

CONTRASTS = ("others", "foreground", "none")

# Layer kinds a module may declare as ``relevance_kind: ClassVar[str]`` (zennit's layer
# type groups, as plain strings so that a detector need not import the engine):
#   "rescale":    shape-preserving per-position rescaling (SSD's L2Norm): pass-through.
#   "activation": elementwise non-linearity other than ReLU (hardswish, ReLU6): pass-through.
#   "add":        residual addition of its inputs: proportional split.
#   "gate":       product of features and a gate computed from them (squeeze-excitation).
# Whether a Conv/Dense sees negative inputs, or passes relevance to negative outputs, is not a
# kind: it is read from the graph (crp_jax/relevance/signs.py, ``Composite.sign_aware``).
LAYER_KINDS = ("rescale", "activation", "add", "gate")


@dataclass(frozen=True)
class Kind:
    """Selector matching every module whose class declares ``relevance_kind == name``."""

    name: str

    def __post_init__(self):
        if self.name not in LAYER_KINDS:
            raise ConfigError(f"layer kind {self.name!r} unknown; use one of {LAYER_KINDS}")


@dataclass(frozen=True)
class _InputLayer:
    """Selector matching the linear layer whose input is the model input itself."""

    def __repr__(self) -> str:
        return "INPUT_LAYER"


INPUT_LAYER = _InputLayer()


def layer_kind(module: nn.Module) -> str | None:
    """The layer kind a module's class declares (``relevance_kind``), or None."""
    return getattr(type(module), "relevance_kind", None)


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
      sign_aware: give every linear rule the form its layer's sign facts need
        (``rule.specialize``; facts read from the model's graph, crp_jax/relevance/signs.py):
        w+ takes signed contributions where a layer's input can be negative and splits by
        the output's sign where relevance reaches negative outputs. False: every rule
        exactly as written.
    """

    rules: tuple = ()
    contrast: str | tuple[int, ...] = "none"
    times_input: bool = False
    name: str = "custom"
    sign_aware: bool = True

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(tuple(r) for r in self.rules))
        for pair in self.rules:
            if len(pair) != 2:
                raise ConfigError(f"composite rules must be (selector, rule) pairs, got {pair!r}")
            sel, rule = pair
            if not isinstance(sel, (str, type, Kind, _InputLayer)):
                raise ConfigError(f"selector must be a path glob, a module type, a Kind or INPUT_LAYER, got {sel!r}")
            if not isinstance(rule, rules.Rule):
                raise ConfigError(f"{rule!r} (for {sel!r}) is not a crp_jax rule")
        if not isinstance(self.sign_aware, bool):
            raise ConfigError(f"Composite.sign_aware must be True or False, got {self.sign_aware!r}")
        if isinstance(self.contrast, str) and self.contrast not in CONTRASTS:
            raise ConfigError(f"contrast {self.contrast!r} unknown; use one of {CONTRASTS} or a tuple of classes")

    def rule_for(self, module: nn.Module, reads_input: bool = False) -> rules.Rule | None:
        """The rule of ``module``: the first matching selector's, or None (its gradient).
        ``reads_input``: the module's input is the model input (matches INPUT_LAYER)."""
        path = "/".join(module.path)
        for sel, rule in self.rules:
            if isinstance(sel, str):
                hit = fnmatch.fnmatchcase(path, sel)
            elif isinstance(sel, Kind):
                hit = layer_kind(module) == sel.name
            elif isinstance(sel, _InputLayer):
                hit = reads_input and isinstance(module, _LINEAR_TYPES)
            else:
                hit = isinstance(module, sel)
            if hit:
                return rule
        return None

    def _handles(self, module: nn.Module) -> bool:
        """Whether the interceptor looks at ``module``: linear layers, modules declaring a
        layer kind, and modules of a type this composite names. Containers (the detector
        itself, blocks) are not handled: they run as they are and their submodules are."""
        if isinstance(module, _LINEAR_TYPES) or layer_kind(module) is not None:
            return True
        return any(isinstance(sel, type) and isinstance(module, sel) for sel, _ in self.rules)

    def forward_part(self) -> Composite:
        """This composite less what the forward pass does not read (contrast, times_input,
        name): the key of compiled forwards, so that composites differing only there share one
        traced and compiled forward (gradient and gradient x input do)."""
        return dataclasses.replace(self, contrast="none", times_input=False, name="forward")

    def needs_signs(self) -> bool:
        """Whether :meth:`intercept` uses the graph's sign facts (some linear rule may change)."""
        return self.sign_aware and any(isinstance(r, rules.LinearRule) for _, r in self.rules)

    @contextlib.contextmanager
    def intercept(
        self, probes: dict | None = None, record: dict | None = None, model_input=None, signs: dict | None = None
    ):
        """Context in which every ``module.__call__`` runs under its rule.

        ``probes``: path -> zero array added to that layer's output, so that the cotangent
        of the probe is the relevance at the layer (per-layer relevance flow).
        ``record``: filled with path -> output shape of every probe-able layer.
        ``model_input``: the array passed to the model; the layer that receives this very
        object is the INPUT_LAYER.
        ``signs``: path -> ``LayerSigns`` (:func:`crp_jax.relevance.signs.layer_signs`); a
        linear rule of a listed layer runs as ``rule.specialize(signs[path])``.
        """

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not self._handles(module):
                return next_fun(*args, **kwargs)
            reads_input = model_input is not None and bool(args) and args[0] is model_input
            rule = self.rule_for(module, reads_input)
            path = "/".join(module.path)
            if signs is not None and isinstance(rule, rules.LinearRule) and path in signs:
                rule = rule.specialize(signs[path])
            y = next_fun(*args, **kwargs) if rule is None else rule.apply(module, next_fun, args, kwargs)
            if record is not None:
                record[path] = jax.ShapeDtypeStruct(y.shape, y.dtype)
            if probes is not None and path in probes:
                y = y + probes[path]
            return y

        with nn.intercept_methods(interceptor):
            yield


_LINEAR_TYPES = (nn.Conv, nn.Dense)

# ---- presets ----------------------------------------------------------------------------

_REGISTRY: dict[str, Callable] = {}
_TITLES: dict[str, str] = {}


def register_composite(name: str, factory: Callable, title: str | None = None) -> None:
    """Register ``factory(meta) -> Composite`` under ``name`` (usable as ``method=name``);
    ``title``: how figures, the CLI and reports call it (default: the name)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"composite name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory
    _TITLES[name] = title if isinstance(title, str) and title else name


def method_title(method) -> str:
    """Display name of a method: a registered preset's title, a Composite's ``name``, or
    the string itself. The one table of method names for figures, the CLI and reports."""
    if isinstance(method, Composite):
        return _TITLES.get(method.name, method.name)
    return _TITLES.get(method, str(method))


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


def _zbox(meta, who: str) -> rules.ZBox:
    if meta is None:
        raise ConfigError(
            f"method {who!r} uses the z^B rule at the input layer, which needs the pixel bounds: "
            "pass meta=... (from load_pretrained or a converter)"
        )
    bounds = getattr(meta, "pixel_bounds", None)
    if bounds is None:
        raise ConfigError(
            f"meta must carry the input's pixel_bounds (a Meta from load_pretrained or a converter), "
            f"got {type(meta).__name__} {meta!r:.60}"
        )
    low, high = bounds
    return rules.ZBox(low, high)


# Rules of the layer kinds beyond linear layers, shared by the LRP presets (docs/ssdlite.md):
# activations and SE gates pass relevance to their (first) input, residual adds split it over
# the addends of the sum's sign (every share in [0, 1], so relevance stays bounded). An
# eval-mode BatchNorm left in the model (not folded, crp_jax.ssd.fold) is a per-channel affine
# map: relevance passes it unchanged; its gradient would scale relevance by gamma / sigma at
# every layer (torchvision's SSDlite with calibrated statistics: 1e37, then NaN).
_KIND_RULES = (
    (nn.BatchNorm, rules.PassThrough()),
    (Kind("rescale"), rules.PassThrough()),
    (Kind("activation"), rules.PassThrough()),
    (Kind("gate"), rules.PassThrough()),
    (Kind("add"), rules.Proportional(by_sign=True)),
)


def _crp(meta) -> Composite:
    return Composite(
        rules=(
            (INPUT_LAYER, _zbox(meta, "crp")),
            ("cls_*", rules.WPlus()),
            ("loc_*", rules.AlphaBeta(1.0, 1.0)),
            *_KIND_RULES,
            (nn.Conv, rules.WPlus()),
            (nn.Dense, rules.WPlus()),
        ),
        contrast="others",
        name="crp",
    )


def _lrp_ab(meta) -> Composite:
    return Composite(
        rules=(
            (INPUT_LAYER, _zbox(meta, "lrp_ab")),
            *_KIND_RULES,
            (nn.Conv, rules.WPlus()),
            (nn.Dense, rules.WPlus()),
        ),
        contrast="none",
        name="lrp_ab",
    )


def _lrp_eps(meta) -> Composite:
    return Composite(
        rules=(*_KIND_RULES, (nn.Conv, rules.Epsilon(1e-6)), (nn.Dense, rules.Epsilon(1e-6))),
        contrast="none",
        name="lrp_eps",
    )


register_composite("crp", _crp, "CRP")
register_composite("lrp_ab", _lrp_ab, "LRP-ab")
register_composite("lrp_eps", _lrp_eps, "LRP-eps")
register_composite("gradient", lambda meta: Composite(name="gradient"), "gradient")
register_composite(
    "gradient_x_input", lambda meta: Composite(times_input=True, name="gradient_x_input"), "grad x input"
)

# The built-in presets, in the order reports and the CLI list them.
PRESETS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
