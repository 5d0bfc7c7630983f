"""Reading a TFLite flatbuffer into plain Python: tensors, constants and ops, nothing else.

This file owns the only contact with the flatbuffer schema (through the pure-Python
``tflite`` package, the ``[tflite]`` extra; no TensorFlow). It returns a :class:`Graph`:
tensors with their Netron names, shapes and dtypes; constant tensors as numpy arrays; ops
with their builtin options as plain dicts. Turning that into a Flax module is
``crp_jax/tflite/module.py``'s job.

Two things are settled here because they are properties of the file, not of the module:

- **float16 weights.** TFLite stores them as FLOAT16 constants behind a ``DEQUANTIZE`` op.
  Every float16 value is exactly representable in float32, so the dequantized constant is
  ``w16.astype(float32)`` (exact); the DEQUANTIZE op is folded away and its output becomes a
  float32 constant.
- **integer quantization is refused.** A tensor of type INT8/UINT8/INT16 or carrying
  quantization scales (an int8 SSD-MobileNet export) raises :class:`GraphImportError` naming
  the tensor: computing it in float would be a different model, and a wrong model must
  never load silently.

Ops are read as they are (even ones the importer cannot run): the module builder only
refuses an unsupported op when a requested output needs it, so a graph whose raw outputs
sit before a custom ``TFLite_Detection_PostProcess`` op imports fine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crp_jax.errors import CheckpointError, GraphImportError, MissingExtraError

#: numpy dtypes of the TFLite tensor types this importer reads (schema ``TensorType``).
_NUMPY_TYPES = {
    0: np.float32,  # FLOAT32
    1: np.float16,  # FLOAT16
    2: np.int32,  # INT32
    4: np.int64,  # INT64
    6: np.bool_,  # BOOL
    10: np.float64,  # FLOAT64
}
#: TensorType names, for messages.
_TYPE_NAMES = {
    0: "FLOAT32",
    1: "FLOAT16",
    2: "INT32",
    3: "UINT8",
    4: "INT64",
    5: "STRING",
    6: "BOOL",
    7: "INT16",
    8: "COMPLEX64",
    9: "INT8",
    10: "FLOAT64",
}
_QUANTIZED_TYPES = {3: "UINT8", 7: "INT16", 9: "INT8"}

# builtin op -> (options class name in the ``tflite`` package, fields read from it)
_OPTION_FIELDS = {
    "CONV_2D": (
        "Conv2DOptions",
        ("Padding", "StrideW", "StrideH", "DilationWFactor", "DilationHFactor", "FusedActivationFunction"),
    ),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        (
            "Padding",
            "StrideW",
            "StrideH",
            "DepthMultiplier",
            "DilationWFactor",
            "DilationHFactor",
            "FusedActivationFunction",
        ),
    ),
    "MAX_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"),
    ),
    "AVERAGE_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"),
    ),
    "ADD": ("AddOptions", ("FusedActivationFunction",)),
    "MUL": ("MulOptions", ("FusedActivationFunction",)),
    "CONCATENATION": ("ConcatenationOptions", ("Axis", "FusedActivationFunction")),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", ("AlignCorners", "HalfPixelCenters")),
}


def require_tflite():
    """The ``tflite`` flatbuffer reader module, or :class:`MissingExtraError` naming the extra."""
    try:
        import tflite
    except ImportError:
        raise MissingExtraError(
            "reading .tflite files needs the 'tflite' package (pure Python, with 'flatbuffers'): "
            'pip install -e ".[tflite]"  (or: pip install tflite flatbuffers)'
        ) from None
    return tflite


@dataclass(frozen=True)
class Tensor:
    """One tensor of the graph: ``index`` in the subgraph, Netron ``name``, static ``shape``
    (batch first for activations, TFLite's own layout for weights) and numpy ``dtype`` name."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Op:
    """One operator: ``opcode`` (builtin name, e.g. "CONV_2D", or the custom code of a custom
    op), ``inputs`` / ``outputs`` tensor indices (-1: an optional input left out) and its
    builtin ``options`` as a dict of plain values."""

    index: int
    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict, hash=False, compare=False)
    custom: bool = False


@dataclass
class Graph:
    """A TFLite subgraph in plain Python. ``constants`` maps tensor index -> numpy array
    (float16 weights already dequantized to float32; DEQUANTIZE ops folded and removed)."""

    tensors: list[Tensor]
    ops: list[Op]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    constants: dict[int, np.ndarray]
    source: str = ""
    sha256: str = ""

    def tensor_index(self, name: str) -> int:
        """Index of the tensor called ``name`` (as Netron shows it); :class:`GraphImportError`
        listing some names when there is none."""
        for t in self.tensors:
            if t.name == name:
                return t.index
        names = [t.name for t in self.tensors if t.index not in self.constants]
        shown = ", ".join(names[-12:])
        raise GraphImportError(
            f"{self.source or 'graph'}: no tensor named {name!r}; activation tensors include: {shown}"
        )

    def producers(self) -> dict[int, Op]:
        """Tensor index -> the op that writes it."""
        return {t: op for op in self.ops for t in op.outputs}


def _options(tflite, op, opcode: str) -> dict[str, Any]:
    spec = _OPTION_FIELDS.get(opcode)
    table = op.BuiltinOptions()
    if spec is None or table is None:
        return {}
    cls_name, fields = spec
    opts = getattr(tflite, cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return {f: int(getattr(opts, f)()) for f in fields}


def _buffer_bytes(model, buf: bytes, index: int) -> bytes | None:
    if index <= 0 or index >= model.BuffersLength():
        return None
    b = model.Buffers(index)
    offset = int(b.Offset()) if hasattr(b, "Offset") else 0
    if offset > 1:  # large models keep tensor data after the flatbuffer (schema: Buffer.offset)
        return bytes(buf[offset : offset + int(b.Size())])
    if b.DataLength() == 0:
        return None
    return b.DataAsNumpy().tobytes()


def _check_not_quantized(t, tensor: Tensor, where: str) -> None:
    ttype = int(t.Type())
    q = t.Quantization()
    scaled = q is not None and q.ScaleLength() > 0
    if ttype in _QUANTIZED_TYPES or (scaled and ttype != 2):
        kind = _QUANTIZED_TYPES.get(ttype, _TYPE_NAMES.get(ttype, str(ttype)))
        raise GraphImportError(
            f"{where}: tensor {tensor.name!r} is quantized ({kind}"
            + (", with scale/zero-point" if scaled else "")
            + "); only float32 graphs (float16 weights allowed) can be imported: "
            "use the float export of the model"
        )


def read_graph(path: str | os.PathLike | bytes, subgraph: int = 0) -> Graph:
    """Read ``path`` (a ``.tflite`` file, or its bytes) into a :class:`Graph`.

    Raises :class:`CheckpointError` for a file that cannot be read or is not a TFLite
    flatbuffer, :class:`GraphImportError` for a quantized tensor (named), and
    :class:`MissingExtraError` when the ``tflite`` package is missing.
    """
    tflite = require_tflite()
    if isinstance(path, (bytes, bytearray)):
        buf, where = bytes(path), "<bytes>"
    else:
        p = Path(os.fspath(path))
        where = str(p)
        try:
            buf = p.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{p}: cannot read: {e.strerror or e}") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckpointError(f"{where}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        if not 0 <= subgraph < model.SubgraphsLength():
            raise CheckpointError(f"{where}: has {model.SubgraphsLength()} subgraphs, asked for {subgraph}")
        g = model.Subgraphs(subgraph)
        opnames = tflite.BUILTIN_OPCODE2NAME
        tensors, constants = [], {}
        raw_tensors = []
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            ttype = int(t.Type())
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            dtype = np.dtype(_NUMPY_TYPES[ttype]).name if ttype in _NUMPY_TYPES else _TYPE_NAMES.get(ttype, "?")
            tensor = Tensor(i, (t.Name() or b"").decode("utf-8", "replace"), shape, dtype)
            tensors.append(tensor)
            raw_tensors.append(t)
        for t, tensor in zip(raw_tensors, tensors):
            _check_not_quantized(t, tensor, where)
            data = _buffer_bytes(model, buf, int(t.Buffer()))
            if data is not None:
                if int(t.Type()) not in _NUMPY_TYPES:
                    raise GraphImportError(
                        f"{where}: constant tensor {tensor.name!r} has unsupported type {tensor.dtype}"
                    )
                arr = np.frombuffer(data, dtype=np.dtype(tensor.dtype).newbyteorder("<"))
                if arr.size != int(np.prod(tensor.shape, dtype=np.int64)):
                    raise CheckpointError(
                        f"{where}: constant {tensor.name!r} holds {arr.size} values for shape {tensor.shape}"
                    )
                constants[tensor.index] = arr.reshape(tensor.shape).astype(arr.dtype.newbyteorder("="))
        ops = []
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            oc = model.OperatorCodes(op.OpcodeIndex())
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            custom = code == 32
            opcode = (oc.CustomCode() or b"CUSTOM").decode() if custom else opnames.get(code, f"BUILTIN_{code}")
            ins = tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else ()
            outs = tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            ops.append(Op(i, opcode, ins, outs, _options(tflite, op, opcode), custom))
        inputs = tuple(int(v) for v in g.InputsAsNumpy())
        outputs = tuple(int(v) for v in g.OutputsAsNumpy())
    except (CheckpointError, MissingExtraError):
        raise
    except Exception as e:  # a damaged flatbuffer fails in many ways inside the reader
        raise CheckpointError(f"{where}: not a readable TFLite flatbuffer ({type(e).__name__}: {e})") from None
    graph = Graph(tensors, ops, inputs, outputs, constants, where, hashlib.sha256(buf).hexdigest())
    _fold_dequantize(graph)
    return graph


def _fold_dequantize(graph: Graph) -> None:
    """Replace every DEQUANTIZE of a float16 constant by its exact float32 value."""
    kept = []
    for op in graph.ops:
        if op.opcode == "DEQUANTIZE":
            (src,) = op.inputs
            if src not in graph.constants:
                raise GraphImportError(
                    f"{graph.source}: DEQUANTIZE of the activation tensor {graph.tensors[src].name!r} "
                    "(only float16 constants behind DEQUANTIZE are supported)"
                )
            value = graph.constants[src]
            if value.dtype != np.float16:
                raise GraphImportError(
                    f"{graph.source}: DEQUANTIZE of {graph.tensors[src].name!r} with dtype {value.dtype} "
                    "(only float16 weights are supported)"
                )
            graph.constants[op.outputs[0]] = value.astype(np.float32)  # exact: f16 is a subset of f32
            continue
        kept.append(op)
    graph.ops = kept
