"""Propagation speed of crp-jax against its floor (plain gradient) and zennit (docs/design.md §6).

Models (``--model``; ``_common.build_model``): "ssd300", SSD300-VGG16 (random weights from
``init_variables``); "shipped", ``cj.load_pretrained()`` (when no weights are shipped yet,
``SSDConfig.small(num_classes=7)`` with random weights stands in, and the output says so);
"ssdlite320", torchvision's SSDlite320-MobileNetV3-Large layout (91 classes, random weights
and BatchNorm statistics, BN folded into the convs as rules see it); "shipped_ssdlite",
``cj.load_pretrained("ssdlite")`` (else ``SSDConfig.ssdlite_small(num_classes=7)`` at
random, said so); "blazeface", MediaPipe's short-range BlazeFace (``cj.load_pretrained("blazeface")``,
``--crop`` only, target sets "faces_first" and "faces": ``face_targets``). "both" is ssd300 +
shipped, "all" every SSD model. Measured:

- per-target time of ``cj.explain`` with ``--methods`` (crp, lrp_ab, lrp_eps) and with
  method="gradient" (reference), in steady state (after a warm-up call that compiles the
  same shapes; compile time = first call minus the steady time of the same targets);
- the floor: plain gradient computed the fastest way, exactly as ``explain`` batches crp:
  per image one jitted forward that returns ``jax.vjp``'s function (a pytree), then one
  jitted ``vmap`` of it per chunk of ``--chunk`` targets;
- a naive loop: one jitted ``jax.vjp`` (forward + backward) per target, no vmap;
- zennit (``benchmarks/zennit_ssd.py``): the same network and weights in PyTorch, ZBox on
  conv1_1, ZPlus on every other conv, Pass on L2Norm and ReLU; one forward per image, then
  one backward per target with ``retain_graph=True``; also plain torch autograd the same way
  (VGG models only: zennit has no SSDlite canonizer);
- on "ssdlite320", torch's plain input gradient (``benchmarks/torch_ssdlite.py``, row
  "torch_grad"): torchvision's own ``ssdlite320_mobilenet_v3_large`` (its random init, eval
  mode), one forward per image, one ``torch.autograd.grad`` per target, same anchors and
  cotangents as crp's targets; needs torch + torchvision, else skipped with the reason;
- the decomposition of crp and of the floor into their per-image forward (for crp: the
  residuals, i.e. forward + z+ denominators + flipped kernels) and their per-chunk backward;
- XLA conv throughput: GFLOP/s of the jitted forward (FLOPs counted analytically,
  2*Ho*Wo*Cout*(Cin/groups)*kh*kw per conv, so depthwise convs count kh*kw per output) at
  batch 1 and batch ``--chunk``, and the GFLOP/s the crp backward achieves per target (FLOPs
  of the transposed convs it runs: 1x per conv, 2x for AlphaBeta (w+ and w- stacked), 2x
  for ZBox (w and the folded bound kernel stacked), 4x for SignedWPlus (SSDlite));
- per-conv-layer timing (``--per-layer``, SSD300 only);
- peak memory of a separate subprocess per configuration (peak RSS on CPU; on an
  accelerator jax's ``peak_bytes_in_use``), always for T > ``--big-T``.

Timing is steady state, medians of ``--repeats``; the methods of one configuration are
interleaved repeat by repeat, so that a ratio compares runs taken under the same load.
On a shared CPU absolute times mean little: read the ratios.

Usage::

    python benchmarks/speed.py --quick                       # minutes
    python benchmarks/speed.py --model ssd300 --targets 1,8,32,1024 --images 1 --json out.json
    python benchmarks/speed.py --model ssdlite320 --targets 1,8,32 --images 1 --no-mem --json lite.json
    python benchmarks/speed.py --model both --targets 1 --images 1 --no-mem --no-zennit --dataset 48

Runs unchanged on a CUDA build of jax (device name from ``jax.devices()[0].device_kind``;
zennit/torch go to CUDA when torch sees it). Torch uses every core unless
``--torch-threads N``: on a loaded CPU, torch with several threads can be many times slower
than with one (measured: SSDlite320 torch_grad 2.8 s/target on 2 threads vs 0.05 s on 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common.py, zennit_ssd.py, torch_ssdlite.py, beside this script

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import MODELS, SSDLITE_MODELS, block, build_model, make_images  # noqa: E402

import crp_jax as cj  # noqa: E402
from crp_jax.compiled import cache_info, clear_caches  # noqa: E402
from crp_jax.relevance import PRESETS, compiled_functions, get_composite, rules  # noqa: E402
from crp_jax.relevance.linear import conv_op_from_module  # noqa: E402
from crp_jax.relevance.schedule import chunk_size_for  # noqa: E402
from crp_jax.relevance.targets import COORDS, ClassTarget, LocTarget, encode_targets  # noqa: E402

EXPLAIN_METHODS = PRESETS
GiB = 1024.0**3


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    dev = jax.devices()[0]
    info = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": " ".join(load),
        "jax_backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except Exception:
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------
# models, images, targets
# ---------------------------------------------------------------------------------------
def make_targets(cfg, num_images: int, T: int, seed: int = 0) -> list:
    """``T`` class targets, round-robin over the images, anchors drawn over all sources,
    classes cycling through the foreground classes. ``contrast=None``: the method's default
    (crp: all other classes; LRP/gradient: one-hot)."""
    rng = np.random.default_rng(seed)
    A, K = cfg.num_anchors(), cfg.num_classes
    anchors = rng.choice(A, size=T, replace=T > A)
    return [ClassTarget(t % num_images, int(anchors[t]), 1 + t % (K - 1)) for t in range(T)]


def first_source_targets(cfg, num_images: int, T: int, seed: int = 0) -> list:
    """``T`` class targets at anchors of the first source (SSD300: conv4_3, 38x38x4 = 5776
    anchors), drawn uniformly, round-robin over the images."""
    rng = np.random.default_rng(seed)
    f, a = cfg.feature_sizes()[0], cfg.anchors_per_cell[0]
    anchors = rng.choice(f * f * a, size=T, replace=T > f * f * a)
    return [ClassTarget(t % num_images, int(anchors[t]), 1 + t % (cfg.num_classes - 1)) for t in range(T)]


# COCO's object sizes (the data torchvision's SSD300 is trained on): the share of objects by
# area, small < 32^2 <= medium < 96^2 <= large, in images of about 640 x 480 (Lin et al.,
# "Microsoft COCO", 2014: 41% / 34% / 24%). SSD resizes to 300 x 300, about 0.54x per side.
COCO_SIZE_CLASSES = ((0.41, 8.0, 32.0), (0.34, 32.0, 96.0), (0.24, 96.0, 640.0))  # (share, min side, max side)
COCO_TO_300 = 0.54


def detection_like_targets(cfg, num_images: int, T: int, seed: int = 0, sizes: str = "coco") -> list:
    """``T`` class targets drawn like real detections: one object per target, the target
    being the default box with the highest IoU with it (the anchor that detects it).
    Object sides: ``sizes="coco"``, COCO's size classes (:data:`COCO_SIZE_CLASSES`) scaled
    to the input, log-uniform within each class; ``"loguniform"``, log-uniform between
    0.07 and 1.0 of the image (the range of SSD300's default-box scales). Aspect ratio from
    {1/2, 1, 2}, centre uniform inside the image."""
    rng = np.random.default_rng(seed)
    S = cfg.image_size
    boxes = cj.default_boxes_xyxy(cfg)
    shares = np.array([c[0] for c in COCO_SIZE_CLASSES])
    out = []
    for t in range(T):
        if sizes == "coco":
            _, lo, hi = COCO_SIZE_CLASSES[rng.choice(len(shares), p=shares / shares.sum())]
            side = min(S, COCO_TO_300 * S / 300 * np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            side = S * np.exp(rng.uniform(np.log(0.07), 0.0))
        r = rng.choice([0.5, 1.0, 2.0])
        w, h = min(S, side * np.sqrt(r)), min(S, side / np.sqrt(r))
        cx, cy = rng.uniform(w / 2, S - w / 2), rng.uniform(h / 2, S - h / 2)
        obj = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        lt = np.maximum(boxes[:, :2], obj[:2])
        rb = np.minimum(boxes[:, 2:], obj[2:])
        inter = np.clip(rb - lt, 0, None).prod(1)
        union = (boxes[:, 2:] - boxes[:, :2]).prod(1) + w * h - inter
        out.append(ClassTarget(t % num_images, int(np.argmax(inter / union)), 1 + t % (cfg.num_classes - 1)))
    return out


def face_targets(cfg, num_images: int, T: int, seed: int = 0, first: bool = False) -> list:
    """BlazeFace (``_common.BlazeFaceDims``): ``T`` targets at anchors drawn uniformly (of the
    first source, 16x16 cells x 2 at 128 px, with ``first``), round-robin over the images,
    cycling through the face logit and the 16 regressors (+1)."""
    rng = np.random.default_rng(seed)
    n = cfg.feature_sizes()[0] ** 2 * cfg.anchors_per_cell[0] if first else cfg.num_anchors()
    anchors = rng.choice(n, size=T, replace=T > n)
    kinds = ("cls", *cfg.regressor_names)
    return [
        ClassTarget(t % num_images, int(a), 0) if k == "cls" else LocTarget(t % num_images, int(a), k, 1)
        for t, (a, k) in enumerate(zip(anchors, [kinds[t % len(kinds)] for t in range(T)]))
    ]


TARGET_SETS = {
    "uniform": make_targets,
    "first": first_source_targets,
    "faces": face_targets,
    "faces_first": lambda cfg, B, T, seed=0: face_targets(cfg, B, T, seed, first=True),
    "coco": detection_like_targets,
    "loguniform": lambda cfg, B, T, seed=0: detection_like_targets(cfg, B, T, seed, sizes="loguniform"),
}


def source_histogram(cfg, targets) -> list[int]:
    """How many of ``targets`` fall on each source."""
    edges = np.cumsum([0] + [f * f * a for f, a in zip(cfg.feature_sizes(), cfg.anchors_per_cell)])
    return np.bincount(
        np.searchsorted(edges, [t.anchor for t in targets], side="right") - 1, minlength=len(edges) - 1
    ).tolist()


def encoded(cfg, targets, num_images: int):
    """Cotangents for the non-explain paths: crp's initial relevance (contrast vs all
    other classes), so every path propagates the same vectors."""
    regressors = getattr(cfg, "regressor_names", COORDS)  # BlazeFace: 16
    return encode_targets(targets, num_images, cfg.num_anchors(), cfg.num_classes, "others", regressors)


# ---------------------------------------------------------------------------------------
# the floor, the naive loop
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# conv layers, FLOPs
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def med(ts):
    return statistics.median(ts) if ts else float("nan")


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
            opts = CROP_KINDS[kind]

            def g(tg=targets, o=opts):  # noqa: B008 (bound per loop)
                return lambda: cj.explain(model, variables, x, tg, method="crp", meta=meta, chunk_size=chunk, **o)

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


# crp through explain's other paths: dense (no cropping) and the window output form
CROP_KINDS = {"crp_dense": {"crop": False}, "crp_windows": {"output": "windows"}, "crp_always": {"crop": "always"}}


def run_interleaved(runners, repeats: int) -> None:
    for r in runners:
        t = timed(r.warm)
        r.first = t
    for _ in range(repeats):
        for r in runners:
            r.steady.append(timed(r.full) / r.n_full)


# ---------------------------------------------------------------------------------------
# subprocess per configuration: peak memory (and the timing of very large T)
# ---------------------------------------------------------------------------------------
def _rss_now() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def _hwm() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def _ru_maxrss() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb * 1024.0 if sys.platform != "darwin" else float(kb)


def _peak_rss() -> float:
    """This process's peak RSS: VmHWM where /proc has it. ``ru_maxrss`` can be inflated in a
    child: Linux folds the high-water mark of the pre-exec (forked) address space, i.e. the
    parent's RSS, into it, so a small child of a big parent reports the parent's size."""
    h = _hwm()
    return h if h == h else _ru_maxrss()


def _device_peak():
    try:
        st = jax.devices()[0].memory_stats() or {}
        return st.get("peak_bytes_in_use")
    except Exception:
        return None


def child_main(spec: dict) -> dict:
    label, model, variables, meta = build_model(spec["model"])
    B, T, chunk, kind = spec["images"], spec["T"], spec["chunk"], spec["method"]
    x = make_images(B, model.config.image_size, meta)
    targets = TARGET_SETS[spec.get("targets", "uniform")](model.config, B, T)
    block(variables)
    rss_base = _rss_now()
    (r,) = make_runners([kind], model, variables, meta, x, targets, chunk, None, B)
    r.first = timed(r.warm)
    rss_warm = _peak_rss()
    steady = timed(r.full)
    return {
        **spec,
        "label": label,
        "first_s": r.first,
        "n_warm": r.n_warm,
        "steady_total_s": steady,
        "per_target_s": steady / T,
        "compile_s": r.first - steady / T * r.n_warm,
        "rss_base_bytes": rss_base,
        "peak_rss_after_warmup_bytes": rss_warm,
        "peak_rss_bytes": _peak_rss(),
        "vmhwm_bytes": _hwm(),
        "ru_maxrss_bytes": _ru_maxrss(),
        "device_peak_bytes": _device_peak(),
        "backend": jax.default_backend(),
        "loadavg_end": loadavg(),
    }


def run_child(spec: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            res = json.loads(line[len("CHILD_RESULT ") :])
            res["wall_s"] = time.perf_counter() - t0
            return res
    tail = (p.stderr or p.stdout)[-800:]
    return {**spec, "error": f"exit {p.returncode}: {tail}"}


# ---------------------------------------------------------------------------------------
# receptive-field-cropped propagation (--crop)
# ---------------------------------------------------------------------------------------
def crop_section(mname, model, variables, meta, args, zok: bool) -> dict:
    """Cropped against dense propagation (docs/design.md §6), one image, interleaved:

    - the anchor groups (one per source): grid, input window, whether explain crops them;
    - per target set ("first": first-source anchors; "coco" and "loguniform": anchors drawn
      like real detections, :func:`detection_like_targets`): per-target time of explain's cropped
      path ("crp", dense output), "crp_windows" (window output), "crp_dense" (crop=False),
      the floor and zennit (VGG models, when installed), and their ratios;
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


# ---------------------------------------------------------------------------------------
# per-layer diagnosis
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        choices=MODELS + ("both", "all"),
        default="both",
        help="both: ssd300 and shipped; all: "
        + ", ".join(m for m in MODELS if m != "blazeface")
        + "; blazeface: --crop only",
    )
    p.add_argument(
        "--targets",
        default="1,8,32,128,1024",
        help="comma-separated target counts T (in total, round-robin over the images)",
    )
    p.add_argument("--images", default="1,4", help="comma-separated image counts B")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median reported)")
    p.add_argument("--chunk", type=int, default=8, help="targets per vmapped backward (explain's chunk_size)")
    p.add_argument("--methods", default="crp,lrp_ab,lrp_eps", help="explain methods to time besides gradient")
    p.add_argument(
        "--no-zennit",
        action="store_true",
        help="skip the torch comparisons (zennit and torch_grad; SSDlite's torch_grad)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small T only (T <= 8 plus 32 on the shipped model), 2 repeats, one image count",
    )
    p.add_argument("--json", metavar="OUT", help="write all results as JSON")
    p.add_argument(
        "--big-T",
        type=int,
        default=128,
        help="T above this runs only in a subprocess (timing + peak memory), methods --big-methods, one repeat",
    )
    p.add_argument("--big-methods", default="crp", help="methods run for T > --big-T")
    p.add_argument("--naive-max-T", type=int, default=8, help="largest T for the naive per-target loop")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch's intra-op threads (default 0: every core, as jax uses). On a loaded machine "
        "torch with every core can be many times slower than with one (its threads wait for each other)",
    )
    p.add_argument("--zennit-max-T", type=int, default=32, help="largest T for zennit/torch_grad (one image)")
    p.add_argument(
        "--mem-targets",
        default="32",
        help="T values (<= --big-T) that also get a peak-memory subprocess (crp and floor, one image)",
    )
    p.add_argument("--no-mem", action="store_true", help="no memory subprocesses at all (T > --big-T is then skipped)")
    p.add_argument(
        "--dataset",
        type=int,
        default=0,
        metavar="TOTAL",
        help="also the data-set shape table (benchmarks/dataset_shape.py): 1 x TOTAL, TOTAL/3 x 3 and TOTAL x 1 "
        "targets per image against the batched plain-gradient floor",
    )
    p.add_argument(
        "--host-copy",
        action="store_true",
        help="also time floor_host: the floor plus copying results to one numpy array as explain does",
    )
    p.add_argument(
        "--device-output",
        action="store_true",
        help="also time <method>_dev: explain(..., to_host=False), relevance left on the device",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="per-conv-layer timing of forward, rule backward and autodiff backward (SSD300)",
    )
    p.add_argument(
        "--crop",
        action="store_true",
        help="only the cropped-propagation section: cropped vs dense crp (first-source and "
        "detection-like targets), zennit, compile time and count, peak RSS of --crop-big-T targets",
    )
    p.add_argument("--crop-T", type=int, default=32, help="targets per set in the --crop section")
    p.add_argument("--crop-big-T", type=int, default=1024, help="first-source targets of the --crop memory rows")
    p.add_argument("--child-timeout", type=float, default=None, help="seconds before a subprocess is abandoned")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        res = child_main(json.loads(args.child))
        print("CHILD_RESULT " + json.dumps(res), flush=True)
        return 0

    ssds = [m for m in MODELS if m != "blazeface"]  # blazeface has the --crop section only
    models = {"both": ["ssd300", "shipped"], "all": ssds}.get(args.model, [args.model])
    if "blazeface" in models and not args.crop:
        raise SystemExit("--model blazeface: only the --crop section is measured for it (add --crop)")
    targets_list = ints(args.targets)
    images_list = ints(args.images)
    repeats = args.repeats
    if args.quick:
        targets_list = [t for t in targets_list if t <= 8] or [1, 8]
        images_list = images_list[:1]
        repeats = min(repeats, 2)
    methods = [m for m in args.methods.split(",") if m]
    big_methods = [m for m in args.big_methods.split(",") if m]
    chunk = args.chunk

    info = machine_info()
    info["command"] = "python " + " ".join([sys.argv[0]] + sys.argv[1:])
    log(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, load {info['loadavg']}; jax {info['jax']} "
        f"on {info['jax_backend']} ({info['device_kind']})"
    )
    zok, zwhy = (False, "--no-zennit") if args.no_zennit else __import__("zennit_ssd").available()
    info["zennit"] = zwhy
    log(f"zennit: {zwhy}" if zok else f"zennit: skipped ({zwhy})")
    tok, twhy = False, "not asked"
    if "ssdlite320" in models:
        tok, twhy = (False, "--no-zennit") if args.no_zennit else __import__("torch_ssdlite").available()
        info["torch_ssdlite"] = twhy
        log(f"torch (SSDlite320 torch_grad): {twhy}" if tok else f"torch (SSDlite320 torch_grad): skipped ({twhy})")

    results = {"machine": info, "models": {}, "timing": [], "memory": [], "zennit_parity": {}, "per_layer": {}}
    t_start = time.perf_counter()

    def save(final: bool = False) -> None:
        """Write the JSON after every configuration, so that a run cut short keeps its results."""
        if not args.json:
            return
        results["complete"] = final
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        os.replace(tmp, args.json)

    for mname in models:
        label, model, variables, meta = build_model(mname)
        cfg = model.config
        block(variables)
        log(f"\n=== {mname}: {label}")
        mres = {"label": label}
        results["models"][mname] = mres
        if args.crop:
            mres["crop"] = crop_section(mname, model, variables, meta, args, zok)
            save()
            continue

        # --- conv layers, FLOPs, forward throughput --------------------------------------
        flop_methods = list(dict.fromkeys(methods + ["crp", "gradient"]))
        layers = conv_layers(model, variables, meta, flop_methods)
        fwd_flops = sum(L["flops"] for L in layers)
        bwd_flops = {m: sum(L["flops"] * L["mult"][m] for L in layers) for m in flop_methods}
        mres["conv_flops_forward"] = fwd_flops
        mres["conv_flops_backward_per_target"] = bwd_flops
        fwd = jax.jit(model.apply)
        x1 = make_images(1, cfg.image_size, meta)
        xc = jnp.concatenate([x1] * chunk)
        for xx in (x1, xc):
            block(fwd(variables, xx))
        log(
            f"conv FLOPs: forward {fwd_flops / 1e9:.2f} GFLOP/image; backward per target "
            + ", ".join(f"{m} {v / 1e9:.2f}" for m, v in bwd_flops.items())
        )

        # --- decomposition: per-image forward and per-chunk backward (crp, floor) ---------
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
        for _ in range(max(3, repeats)):
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
        save()
        del vjp_c, vjp_f
        log(
            f"decomposition (chunk {chunk}): crp forward {dec['crp_forward']:.3f} s, backward "
            f"{dec['crp_backward_per_target']:.3f} s/target ({dec['crp_backward_gflops']:.1f} GFLOP/s = "
            f"{100 * dec['crp_backward_fraction_of_fwd_batch1']:.0f}% of fwd b1, "
            f"{100 * dec['crp_backward_fraction_of_fwd_batch_chunk']:.0f}% of fwd b{chunk}); floor forward "
            f"{dec['floor_forward']:.3f} s, backward {dec['floor_backward_per_target']:.3f} s/target "
            f"({dec['floor_backward_gflops']:.1f} GFLOP/s); compile (first - steady) "
            + ", ".join(f"{k} {v:.1f} s" for k, v in dec["compile_s"].items())
        )

        # --- torch side (one image): zennit on VGG models, torch's gradient on SSDlite320 ----
        zrunner = None
        if zok and cfg.backbone != "vgg16":
            log(f"zennit: skipped for {mname} (zennit has no SSDlite canonizer)")
        elif zok:
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
            jr = cj.explain(model, variables, x1, tg, method="crp", meta=meta, chunk_size=chunk)
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
        if mname == "ssdlite320" and tok:
            import torch_ssdlite

            zrunner = torch_ssdlite.TorchSSDliteRunner(np.asarray(x1), threads=args.torch_threads)
            tc, tl = zrunner.forward(0)
            ref = fwd(variables, x1)
            if tc.shape != ref[0].shape or tl.shape != ref[1].shape:
                raise SystemExit(
                    f"torchvision's SSDlite outputs {tc.shape}, {tl.shape}; ours {ref[0].shape}, {ref[1].shape}"
                )
            mres["torch"] = {"threads": zrunner.threads, "device": zrunner.device, "versions": twhy}
            log(
                f"torch: torchvision ssdlite320_mobilenet_v3_large (own random init, eval), outputs {tc.shape} "
                f"{tl.shape} as ours; {zrunner.threads} threads on {zrunner.device}"
            )

        # --- timing grid -------------------------------------------------------------------
        for B in images_list:
            x = make_images(B, cfg.image_size, meta)
            Ts = targets_list
            if args.quick and mname == "shipped":
                Ts = sorted(set(Ts) | {32})
            for T in Ts:
                if T > args.big_T:
                    continue
                kinds = methods + ["gradient", "floor"] + (["floor_host"] if args.host_copy else [])
                if args.device_output:
                    kinds += [m + "_dev" for m in methods]
                if T <= args.naive_max_T:
                    kinds.append("naive")
                if zrunner is not None and B == 1 and T <= args.zennit_max_T:
                    kinds += list(zrunner.modes)
                targets = make_targets(cfg, B, T)
                runners = make_runners(kinds, model, variables, meta, x, targets, chunk, zrunner, B)
                la0 = loadavg()
                t0 = time.perf_counter()
                run_interleaved(runners, repeats)
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
        if zrunner is not None:
            zrunner.close()

        # --- per-layer -----------------------------------------------------------------------
        if args.per_layer and mname == "ssd300":
            log(f"per-layer (batch {chunk}, medians of {max(3, repeats)}):")
            pl = per_layer(layers, chunk, max(3, repeats))
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
            save()
        for L in layers:
            L.pop("op", None)
        mres["conv_layers"] = layers

        # --- subprocesses: big T and memory --------------------------------------------------
        if not args.no_mem:
            specs = []
            for T in targets_list:
                if T > args.big_T:
                    for B in images_list:
                        specs += [
                            {"model": mname, "images": B, "T": T, "chunk": chunk, "method": m} for m in big_methods
                        ]
            if not args.quick:
                for T in ints(args.mem_targets):
                    if T <= args.big_T:
                        specs += [
                            {"model": mname, "images": 1, "T": T, "chunk": chunk, "method": m} for m in ("crp", "floor")
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
        if mname == "ssd300":
            del model, variables

    if args.dataset:
        import dataset_shape

        for mname in models:
            text, rows = dataset_shape.run(mname, args.dataset, repeats)
            log("\ndata-set shape, " + text)
            results.setdefault("dataset", {})[mname] = rows
            save()
    results["machine"]["loadavg_end"] = loadavg()
    results["elapsed_s"] = time.perf_counter() - t_start
    if not args.crop:
        report(results, methods, chunk)
    if args.json:
        save(final=True)
        log(f"\nwrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def _find(results, **kw):
    for r in results["timing"]:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def headlines(results, chunk) -> list[str]:
    out = []
    crp32 = _find(results, model="ssd300", images=1, T=32, method="crp")
    if crp32:
        out.append(f"crp / floor per target, SSD300, T=32, 1 image: {crp32['vs_floor']:.2f}x (target <= 1.15x)")
        z = _find(results, model="ssd300", images=1, T=32, method="zennit")
        if z:
            out.append(
                f"zennit / crp per target, SSD300, T=32: {z['per_target_s'] / crp32['per_target_s']:.2f}x (target >= 3x)"
            )
        else:
            out.append("zennit / crp per target, SSD300, T=32: not measured")
    elif "ssd300" in results["models"]:
        out.append("SSD300 T=32 not measured (run without --quick, --targets including 32)")
    m = results["models"].get("ssd300")
    if m:
        d = m["decomposition"]
        out.append(
            f"crp backward conv throughput, SSD300: {d['crp_backward_gflops']:.1f} GFLOP/s = "
            f"{100 * d['crp_backward_fraction_of_fwd_batch1']:.0f}% of the jitted forward at batch 1 "
            f"({m['forward_gflops_batch1']:.1f} GFLOP/s), {100 * d['crp_backward_fraction_of_fwd_batch_chunk']:.0f}% "
            f"of batch {chunk} ({m['forward_gflops_batch_chunk']:.1f} GFLOP/s) (target >= 70%)"
        )
    pl = results["per_layer"].get("ssd300")
    if pl:
        sm = pl["summary"]
        out.append(
            f"convs alone (--per-layer, batch {chunk}): crp's backward convs {sm['rule_bwd_gflops']:.1f} GFLOP/s = "
            f"{100 * sm['rule_bwd_fraction_of_fwd']:.0f}% of the forward convs ({sm['fwd_gflops']:.1f} GFLOP/s)"
        )
    for r in results["memory"]:
        if r.get("model") == "ssd300" and r.get("T") == 1024 and r.get("method") == "crp" and r.get("images") == 1:
            if "error" in r:
                out.append(f"T=1024 crp SSD300 1 image: {r['error']}")
            else:
                s = f"T=1024 crp SSD300, 1 image: peak RSS {r['peak_rss_bytes'] / GiB:.2f} GiB (target <= 4 GiB)"
                if r.get("device_peak_bytes"):
                    s += f", device peak {r['device_peak_bytes'] / GiB:.2f} GiB"
                out.append(s + f"; {r['per_target_s']:.3f} s/target")
    out += ssdlite_headlines(results)
    return out


def ssdlite_headlines(results) -> list[str]:
    """Per SSDlite model measured: crp / floor per target (goal <= 1.3x) and, on SSDlite320,
    torch's plain gradient / crp per target, at each T of one image (same run, same load)."""
    out = []
    for mname in SSDLITE_MODELS:
        rows = [r for r in results["timing"] if r["model"] == mname and r["images"] == 1 and r["method"] == "crp"]
        for crp in sorted(rows, key=lambda r: r["T"]):
            s = f"crp / floor per target, {mname}, T={crp['T']}, 1 image: {crp['vs_floor']:.2f}x (target <= 1.3x)"
            tg = _find(results, model=mname, images=1, T=crp["T"], method="torch_grad")
            if tg:
                s += f"; torch_grad / crp: {tg['per_target_s'] / crp['per_target_s']:.2f}x"
            out.append(s)
    return out


def report(results, methods, chunk) -> None:
    log("\n" + "=" * 100)
    mi = results["machine"]
    log(
        f"{mi['nproc']} cores, {mi['cpu_model']}, {mi['device_kind']} ({mi['jax_backend']}); load {mi['loadavg']} -> {mi.get('loadavg_end')}"
    )
    log(f"\n{'model':>15} {'B':>2} {'T':>5} {'method':>11} {'s/target':>9} {'x floor':>8} {'compile s':>9}")
    for r in results["timing"]:
        log(
            f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>11} {r['per_target_s']:9.4f} "
            f"{r['vs_floor']:8.2f} {r['compile_s']:9.1f}"
        )
    if results["memory"]:
        log(f"\n{'model':>15} {'B':>2} {'T':>5} {'method':>8} {'s/target':>9} {'peak RSS GiB':>12} {'device GiB':>10}")
        for r in results["memory"]:
            if "error" in r:
                log(f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>8}  error")
                continue
            dp = r.get("device_peak_bytes")
            log(
                f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>8} {r['per_target_s']:9.4f} "
                f"{r['peak_rss_bytes'] / GiB:12.2f} {dp / GiB if dp else float('nan'):10.2f}"
            )
    log("\nheadlines:")
    for h in headlines(results, chunk):
        log("  " + h)


if __name__ == "__main__":
    sys.exit(main())
