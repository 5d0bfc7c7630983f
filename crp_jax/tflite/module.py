"""A TFLite graph as a pure ``flax.linen`` module: :func:`import_graph` and :class:`TFLiteModule`.

The :class:`~crp_jax.tflite.reader.Graph` read from the file is pruned to the ops that the
requested outputs need, translated op by op into a hashable :class:`GraphSpec` (static
geometry only), and the weights go into an ordinary variables tree::

    {"params": {"<conv name>": {"kernel": [kh, kw, in/groups, out], "bias": [out]},
                "<mul name>": {"scale": <constant's shape>}}}

so ``module.apply(variables, x)`` with ``x [B, H, W, C]`` (NHWC float, any batch size)
returns the output tensors in the order asked for. What makes the module explainable
without being edited (crp_jax/relevance/composite.py):

- every CONV_2D and DEPTHWISE_CONV_2D is a real ``flax.linen.Conv`` submodule (depthwise:
  ``feature_group_count = in_channels``, kernels ``[kh, kw, 1, C * multiplier]``, TFLite's
  channel order) named after its output tensor, sanitised (``[^0-9A-Za-z_]`` -> ``_``, so no
  ``/``), unless ``rename`` gives it a name (a detector preset renames its head convs
  ``cls_<i>`` / ``loc_<i>`` for composites' ``cls_*`` / ``loc_*`` globs);
- which convs read negative inputs or pass relevance to negative outputs is not declared:
  the engine reads it from the traced graph (crp_jax/relevance/signs.py);
- every other op is a module declaring its kind or a plain ``jnp`` op whose gradient routes
  relevance (table in crp_jax/tflite/ops.py).

An op the importer cannot run, a fused activation other than NONE/RELU/RELU6, or an
operand shape it does not handle raises :class:`GraphImportError` naming the op (opcode and
output tensor) when (and only when) a requested output depends on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from crp_jax.checks import check_image_batch
from crp_jax.errors import GraphImportError, InputError
from crp_jax.grouped_conv import conv_general_dilated
from crp_jax.ssd.ssdlite import Add, ReLU6
from crp_jax.tflite import ops
from crp_jax.tflite.reader import Graph, Op

#: Ops the importer runs (DEQUANTIZE of float16 constants is folded by the reader).
SUPPORTED_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "ADD",
    "MUL",
    "RELU",
    "RELU6",
    "LOGISTIC",
    "PAD",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "RESHAPE",
    "CONCATENATION",
    "RESIZE_BILINEAR",
    "DEQUANTIZE",
)


@dataclass(frozen=True)
class Node:
    """One op of the module: ``kind`` (how :class:`TFLiteModule` runs it), the module
    ``name``, activation ``inputs`` and ``output`` (tensor indices) and static ``attrs``."""

    kind: str
    name: str
    inputs: tuple[int, ...]
    output: int
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str):
        return dict(self.attrs)[key]


@dataclass(frozen=True)
class GraphSpec:
    """The static description :class:`TFLiteModule` runs: input tensor and its ``[H, W, C]``,
    nodes in execution order, output tensors, and names for messages."""

    input: int
    input_hwc: tuple[int, int, int]
    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]
    output_names: tuple[str, ...]
    source: str = ""


class TFLiteModule(nn.Module):
    """An imported TFLite graph: ``x [B, H, W, C]`` float (NHWC) -> the requested output
    tensors (a tuple, batch first), computed as the file computes them in float32."""

    spec: GraphSpec

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        h, w, c = self.spec.input_hwc
        check_image_batch(x, channels=c)
        if tuple(x.shape[1:3]) != (h, w):
            raise InputError(
                f"this graph ({self.spec.source}) takes [B, {h}, {w}, {c}] inputs, got shape {tuple(x.shape)}; "
                "preprocess the images to its size"
            )
        env = {self.spec.input: x}
        for node in self.spec.nodes:
            env[node.output] = _run(node, [env[i] for i in node.inputs])
        return tuple(env[o] for o in self.spec.outputs)


def _run(node: Node, xs: list[jax.Array]) -> jax.Array:
    a = dict(node.attrs)
    k = node.kind
    if k == "conv":
        depthwise = a["groups"] > 1
        y = nn.Conv(
            a["features"],
            a["kernel"],
            strides=a["strides"],
            padding=a["pads"],
            kernel_dilation=a["dilation"],
            feature_group_count=a["groups"],
            use_bias=a["use_bias"],
            conv_general_dilated=conv_general_dilated if depthwise else None,
            name=node.name,
        )(xs[0])
    elif k == "add":
        y = Add(name=node.name)(*xs)
    elif k == "rescale":
        y = ops.Rescale(a["shape"], name=node.name)(xs[0])
    elif k == "relu":
        y = nn.relu(xs[0])
    elif k == "relu6":
        y = ReLU6(name=node.name)(xs[0])
    elif k == "logistic":
        y = ops.Logistic(name=node.name)(xs[0])
    elif k == "max_pool":
        y = ops.max_pool(xs[0], a["window"], a["strides"], a["pads"])
    elif k == "avg_pool":
        y = ops.AveragePool(a["window"], a["strides"], a["pads"], name=node.name)(xs[0])
    elif k == "pad":
        y = ops.pad(xs[0], a["paddings"])
    elif k == "reshape":
        y = ops.reshape(xs[0], a["shape"])
    elif k == "concat":
        y = jax.numpy.concatenate(xs, axis=a["axis"])
    elif k == "resize":
        y = ops.ResizeBilinear(a["size"], a["align_corners"], a["half_pixel_centers"], name=node.name)(xs[0])
    else:  # pragma: no cover - specs are built by import_graph only
        raise GraphImportError(f"unknown node kind {k!r}")
    act = a.get("act", ops.ACT_NONE)
    return ops.fused_activation(y, act, name=f"{node.name}_relu6")


# ---- graph -> spec + variables ----------------------------------------------------------


def sanitize(name: str) -> str:
    """A tensor name as a Flax module name: ``[^0-9A-Za-z_]`` -> ``_`` (``conv2d/Kernel`` ->
    ``conv2d_Kernel``); never empty."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name) or "tensor"


def _needed_ops(graph: Graph, outputs: tuple[int, ...]) -> list[Op]:
    producers = graph.producers()
    need, stack = set(), list(outputs)
    seen = set()
    while stack:
        t = stack.pop()
        if t in seen or t < 0:
            continue
        seen.add(t)
        op = producers.get(t)
        if op is None or op.index in need:
            continue
        need.add(op.index)
        stack.extend(i for i in op.inputs if i >= 0 and i not in graph.constants)
    return [op for op in graph.ops if op.index in need]


def import_graph(
    graph: Graph, outputs: tuple[str, ...] | list[str] | None = None, rename: dict[str, str] | None = None
) -> tuple[TFLiteModule, dict]:
    """``(module, variables)`` computing the tensors named ``outputs`` (default: the graph's
    own outputs) from the graph's input. ``rename``: output tensor name -> module name for
    chosen convs (e.g. ``{"classificator_8": "cls_0"}``). Raises :class:`GraphImportError`
    naming the first unsupported op, activation or operand a requested output needs."""
    where = graph.source or "graph"
    rename = dict(rename or {})
    if outputs is None:
        out_idx = tuple(graph.outputs)
    else:
        if isinstance(outputs, str):
            outputs = (outputs,)
        out_idx = tuple(graph.tensor_index(n) for n in outputs)
    ops_ = _needed_ops(graph, out_idx)
    produced = {t for op in ops_ for t in op.outputs}
    inputs = {i for op in ops_ for i in op.inputs if i >= 0 and i not in graph.constants and i not in produced}
    if not inputs and out_idx and all(o in produced for o in out_idx):
        raise GraphImportError(f"{where}: the requested outputs do not depend on any input tensor")
    if len(inputs) != 1 or next(iter(inputs)) not in graph.inputs:
        names = sorted(graph.tensors[i].name for i in inputs)
        raise GraphImportError(
            f"{where}: the requested outputs must depend on exactly one graph input, they read {names}"
        )
    (x_idx,) = inputs
    x_shape = graph.tensors[x_idx].shape
    if len(x_shape) != 4:
        raise GraphImportError(
            f"{where}: input {graph.tensors[x_idx].name!r} has shape {x_shape}, expected [1, H, W, C]"
        )
    used_names: set[str] = set()
    params: dict[str, dict[str, np.ndarray]] = {}
    nodes = []

    def unique(tensor: int) -> str:
        tname = graph.tensors[tensor].name
        base = rename.pop(tname) if tname in rename else sanitize(tname)
        name, n = base, 1
        while name in used_names or f"{name}_relu6" in used_names:
            name, n = f"{base}_{n}", n + 1
        used_names.add(name)
        return name

    for op in ops_:
        nodes.append(_translate(graph, op, unique, params, where))
    if rename:
        raise GraphImportError(f"{where}: rename names tensors no requested output needs: {sorted(rename)}")
    spec = GraphSpec(
        input=x_idx,
        input_hwc=tuple(int(v) for v in x_shape[1:]),
        nodes=tuple(nodes),
        outputs=out_idx,
        output_names=tuple(graph.tensors[i].name for i in out_idx),
        source=where,
    )
    return TFLiteModule(spec), {"params": params}


def _describe(graph: Graph, op: Op) -> str:
    out = graph.tensors[op.outputs[0]].name if op.outputs else "?"
    return f"op {op.index} {op.opcode} (output {out!r})"


def _translate(graph, op, unique, params, where) -> Node:
    desc = _describe(graph, op)
    if op.opcode not in SUPPORTED_OPS:
        raise GraphImportError(
            f"{where}: {desc} is not supported by the TFLite importer (supported: {', '.join(SUPPORTED_OPS)}); "
            "if it is post-processing (e.g. TFLite_Detection_PostProcess), ask for the raw tensors before it "
            "with outputs=(...)"
        )
    opts = op.options
    act = opts.get("FusedActivationFunction", ops.ACT_NONE)
    if act not in (ops.ACT_NONE, ops.ACT_RELU, ops.ACT_RELU6):
        raise GraphImportError(
            f"{where}: {desc} has fused activation {ops.ACTIVATION_NAMES.get(act, act)}, not supported"
        )
    t = graph.tensors
    consts = graph.constants
    acts_in = tuple(i for i in op.inputs if i >= 0 and i not in consts)
    out = op.outputs[0]
    out_shape = t[out].shape

    def const(pos: int, what: str) -> np.ndarray:
        if pos >= len(op.inputs) or op.inputs[pos] < 0:
            raise GraphImportError(f"{where}: {desc} has no {what}")
        i = op.inputs[pos]
        if i not in consts:
            raise GraphImportError(f"{where}: {desc}: its {what} {t[i].name!r} is not a constant (not supported)")
        return consts[i]

    if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        x_shape = t[op.inputs[0]].shape
        w = const(1, "weights").astype(np.float32)
        depthwise = op.opcode == "DEPTHWISE_CONV_2D"
        if depthwise:  # [1, kh, kw, C * M] -> HWIO [kh, kw, 1, C * M], groups = C
            kernel = w.reshape(w.shape[1:])[:, :, None, :]
            groups = int(x_shape[-1])
        else:  # [O, kh, kw, I] -> [kh, kw, I, O]
            kernel = np.transpose(w, (1, 2, 3, 0))
            groups = 1
        features = int(kernel.shape[-1])
        use_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        strides = (opts["StrideH"], opts["StrideW"])
        dilation = (max(opts.get("DilationHFactor", 1), 1), max(opts.get("DilationWFactor", 1), 1))
        pads = ops.spatial_pads(opts["Padding"], x_shape[1:3], kernel.shape[:2], strides, dilation)
        name = unique(out)
        params[name] = {"kernel": np.ascontiguousarray(kernel)}
        if use_bias:
            params[name]["bias"] = const(2, "bias").astype(np.float32).reshape(features)
        attrs = dict(
            features=features,
            kernel=tuple(int(v) for v in kernel.shape[:2]),
            strides=strides,
            pads=pads,
            dilation=dilation,
            groups=groups,
            use_bias=use_bias,
            act=act,
        )
        return Node("conv", name, (op.inputs[0],), out, tuple(attrs.items()))
    if op.opcode == "ADD":
        if len(acts_in) != 2:
            raise GraphImportError(f"{where}: {desc} adds a constant; only ADD of two activations is supported")
        if t[acts_in[0]].shape != t[acts_in[1]].shape:
            raise GraphImportError(
                f"{where}: {desc} broadcasts {t[acts_in[0]].shape} + {t[acts_in[1]].shape}; only same-shaped ADD is supported"
            )
        return Node("add", unique(out), acts_in, out, (("act", act),))
    if op.opcode == "MUL":
        if len(acts_in) != 1:
            raise GraphImportError(f"{where}: {desc} multiplies two activations; only MUL by a constant is supported")
        c_idx = next(i for i in op.inputs if i in consts)
        value = consts[c_idx].astype(np.float32)
        name = unique(out)
        params[name] = {"scale": value}
        return Node("rescale", name, acts_in, out, (("shape", tuple(value.shape)), ("act", act)))
    if op.opcode in ("RELU", "RELU6", "LOGISTIC"):
        kind = {"RELU": "relu", "RELU6": "relu6", "LOGISTIC": "logistic"}[op.opcode]
        name = unique(out) if kind != "relu" else sanitize(t[out].name)
        return Node(kind, name, acts_in[:1], out)
    if op.opcode in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        x_shape = t[op.inputs[0]].shape
        window = (opts["FilterHeight"], opts["FilterWidth"])
        strides = (opts["StrideH"], opts["StrideW"])
        pads = ops.spatial_pads(opts["Padding"], x_shape[1:3], window, strides)
        kind = "max_pool" if op.opcode == "MAX_POOL_2D" else "avg_pool"
        attrs = (("window", window), ("strides", strides), ("pads", pads), ("act", act))
        return Node(kind, unique(out) if act == ops.ACT_RELU6 else sanitize(t[out].name), acts_in, out, attrs)
    if op.opcode == "PAD":
        paddings = tuple(tuple(int(v) for v in row) for row in const(1, "paddings").reshape(-1, 2))
        if paddings and paddings[0] != (0, 0):
            raise GraphImportError(f"{where}: {desc} pads the batch axis {paddings[0]}; not supported")
        if any(v < 0 for row in paddings for v in row):
            raise GraphImportError(f"{where}: {desc} has negative paddings {paddings}")
        return Node("pad", sanitize(t[out].name), acts_in, out, (("paddings", paddings),))
    if op.opcode == "RESHAPE":
        in_shape = t[acts_in[0]].shape
        if not out_shape or not in_shape or out_shape[0] != in_shape[0]:
            raise GraphImportError(
                f"{where}: {desc} reshapes {in_shape} -> {out_shape} across the batch axis; not supported"
            )
        return Node("reshape", sanitize(t[out].name), acts_in, out, (("shape", tuple(out_shape)),))
    if op.opcode == "CONCATENATION":
        if len(acts_in) != len([i for i in op.inputs if i >= 0]):
            raise GraphImportError(f"{where}: {desc} concatenates a constant; not supported")
        rank = len(out_shape)
        axis = opts["Axis"] % rank if rank else 0
        if axis == 0:
            raise GraphImportError(f"{where}: {desc} concatenates along the batch axis; not supported")
        name = unique(out) if act == ops.ACT_RELU6 else sanitize(t[out].name)
        return Node("concat", name, acts_in, out, (("axis", axis), ("act", act)))
    if op.opcode == "RESIZE_BILINEAR":
        size = tuple(int(v) for v in const(1, "size").reshape(-1))
        if len(size) != 2:
            raise GraphImportError(f"{where}: {desc} has size {size}, expected (height, width)")
        attrs = (
            ("size", size),
            ("align_corners", bool(opts.get("AlignCorners", 0))),
            ("half_pixel_centers", bool(opts.get("HalfPixelCenters", 0))),
        )
        return Node("resize", sanitize(t[out].name), acts_in, out, attrs)
    raise GraphImportError(f"{where}: {desc} is not supported")  # pragma: no cover
