"""The ways ``benchmarks/speed.py`` computes all targets of one configuration, each a
:class:`Runner`: ``explain`` with each method (and its other paths: dense, windows, on the
device), the plain-gradient floor (:class:`Floor`), the naive loop (:class:`Naive`) and the
torch side; and the interleaved timing of several runners."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import block, timed
from _speed_targets import encoded

import crp_jax as cj
from crp_jax.relevance import PRESETS
from crp_jax.relevance.schedule import chunk_size_for

EXPLAIN_METHODS = PRESETS


class Floor:
    """Plain gradient, the fastest way: per image one jitted forward returning ``jax.vjp``'s
    function (a ``jax.tree_util.Partial`` pytree), then a jitted ``vmap`` of it over each
    chunk of targets; batching, padding and chunk sizes exactly as ``explain``."""

    def __init__(self, model, chunk: int):
        A = model.config.num_anchors()
        self.chunk = chunk

        @jax.jit
        def forward(variables, x):
            _, vjp_fn = jax.vjp(lambda x: model.apply(variables, x), x)
            return vjp_fn

        @jax.jit
        def backward(vjp_fn, anchors, cls_coef, loc_coef):
            def one(a, cc, lc):
                # one-hot product, as explain builds its initial relevance
                onehot = (jnp.arange(A) == a).astype(jnp.float32)[:, None]
                return vjp_fn(((onehot * cc)[None], (onehot * lc)[None]))[0][0]

            return jax.vmap(one)(anchors, cls_coef, loc_coef)

        self.forward, self.backward = forward, backward

    def __call__(self, variables, x, images, anchors, cls_coef, loc_coef, to_host: bool = False):
        """All targets; ``to_host``: also copy each chunk into one numpy ``[T, H, W, 3]``
        array the way ``explain`` does (one chunk behind), to isolate that cost."""
        outs = []
        out = np.zeros((len(anchors),) + tuple(x.shape[1:]), np.float32) if to_host else None
        pending = None
        for b in np.unique(images):
            sel = np.flatnonzero(images == b)
            chunk = chunk_size_for(len(sel), self.chunk)
            vjp_fn = self.forward(variables, x[b : b + 1])
            for start in range(0, len(sel), chunk):
                idx = sel[start : start + chunk]
                pad = chunk - len(idx)
                r = self.backward(
                    vjp_fn,
                    np.pad(anchors[idx], (0, pad)),
                    np.pad(cls_coef[idx], ((0, pad), (0, 0))),
                    np.pad(loc_coef[idx], ((0, pad), (0, 0))),
                )
                if to_host:
                    if pending is not None:
                        out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
                    pending = (idx, r)
                else:
                    outs.append(r)
        if to_host:
            if pending is not None:
                out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
            return out
        return block(outs)


_FLOORS: dict = {}
_NAIVES: dict = {}


def get_floor(model, chunk: int) -> Floor:
    """One Floor (its jitted functions) per (model, chunk), reused like explain's cache."""
    if (model, chunk) not in _FLOORS:
        _FLOORS[model, chunk] = Floor(model, chunk)
    return _FLOORS[model, chunk]


def get_naive(model) -> Naive:
    if model not in _NAIVES:
        _NAIVES[model] = Naive(model)
    return _NAIVES[model]


class Naive:
    """One jitted ``jax.vjp`` (forward + backward) per target, no vmap."""

    def __init__(self, model):
        @jax.jit
        def grad_one(variables, x, ct_cls, ct_loc):
            _, vjp_fn = jax.vjp(lambda x: model.apply(variables, x), x)
            return vjp_fn((ct_cls, ct_loc))[0]

        cfg = model.config
        self.A, self.K = cfg.num_anchors(), cfg.num_classes
        self.fn = grad_one

    def __call__(self, variables, x, images, anchors, cls_coef, loc_coef):
        outs = []
        for t in range(len(anchors)):
            c = np.zeros((1, self.A, self.K), np.float32)
            l = np.zeros((1, self.A, 4), np.float32)
            c[0, anchors[t]] = cls_coef[t]
            l[0, anchors[t]] = loc_coef[t]
            b = int(images[t])
            outs.append(self.fn(variables, x[b : b + 1], c, l))
        return block(outs)


class Runner:
    """A named way of computing all targets of one configuration."""

    def __init__(self, name, full, warm, n_full, n_warm):
        self.name, self.full, self.warm, self.n_full, self.n_warm = name, full, warm, n_full, n_warm
        self.first = None
        self.steady: list[float] = []


def make_runners(kinds, model, variables, meta, x, targets, chunk, trunner, B):
    """Runner per kind for one (model, images, T) configuration. Warm-up = the first
    ``min(T, chunk * B)`` targets (round-robin: the same chunk shapes as the full call).
    ``trunner``: the torch side (``zennit_ssd.ZennitRunner`` or
    ``torch_ssdlite.TorchSSDliteRunner``) for the kinds in its ``modes``."""
    cfg = model.config
    T = len(targets)
    nw = min(T, chunk * B)
    images, anchors, cc, lc = encoded(cfg, targets, B)
    runners = []
    floor = get_floor(model, chunk)
    for kind in kinds:
        if kind.removesuffix("_dev") in EXPLAIN_METHODS:
            # "<method>_dev": explain(..., to_host=False), timed until the device is done
            on_device = kind.endswith("_dev")

            def f(k=kind.removesuffix("_dev"), tg=targets, dev=on_device):  # noqa: B008 (bound per loop)
                def call():
                    R = cj.explain(model, variables, x, tg, method=k, meta=meta, chunk_size=chunk, to_host=not dev)
                    return R.block_until_ready() if dev else R

                return call

            runners.append(Runner(kind, f(), f(tg=targets[:nw]), T, nw))
        elif kind in CROP_KINDS:
            fn, opts = CROP_KINDS[kind]

            def g(tg=targets, fn=fn, o=opts):  # noqa: B008 (bound per loop)
                return lambda: fn(model, variables, x, tg, method="crp", meta=meta, chunk_size=chunk, **o)

            runners.append(Runner(kind, g(), g(targets[:nw]), T, nw))
        elif kind == "floor":
            runners.append(
                Runner(
                    kind,
                    lambda: floor(variables, x, images, anchors, cc, lc),
                    lambda: floor(variables, x, images[:nw], anchors[:nw], cc[:nw], lc[:nw]),
                    T,
                    nw,
                )
            )
        elif kind == "floor_host":
            runners.append(
                Runner(
                    kind,
                    lambda: floor(variables, x, images, anchors, cc, lc, to_host=True),
                    lambda: floor(variables, x, images[:nw], anchors[:nw], cc[:nw], lc[:nw], to_host=True),
                    T,
                    nw,
                )
            )
        elif kind == "naive":
            naive = get_naive(model)
            runners.append(
                Runner(
                    kind,
                    lambda: naive(variables, x, images, anchors, cc, lc),
                    lambda: naive(variables, x, images[:1], anchors[:1], cc[:1], lc[:1]),
                    T,
                    1,
                )
            )
        elif trunner is not None and kind in trunner.modes:
            mode = kind
            runners.append(
                Runner(
                    kind,
                    lambda m=mode: trunner.run(images, anchors, cc, mode=m),
                    lambda m=mode: trunner.run(images[:1], anchors[:1], cc[:1], mode=m),
                    T,
                    1,
                )
            )
    return runners


# crp through explain's other paths: dense (no cropping), forced cropping and the window
# output form (explain_windows): (function, keywords)
CROP_KINDS = {
    "crp_dense": (cj.explain, {"crop": False}),
    "crp_windows": (cj.explain_windows, {}),
    "crp_always": (cj.explain, {"crop": "always"}),
}


def run_interleaved(runners, repeats: int) -> None:
    for r in runners:
        t = timed(r.warm)
        r.first = t
    for _ in range(repeats):
        for r in runners:
            r.steady.append(timed(r.full) / r.n_full)
