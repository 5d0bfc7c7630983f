"""Small TFLite graphs written with the flatbuffers builder (the ``tflite`` package's
builder functions), for tests of the ops no shipped graph uses (tests/test_tflite_ops.py).

    g = GraphBuilder()
    x = g.tensor("input", (1, 8, 8, 3))
    w = g.tensor("w", (4, 3, 3, 3), data=np.ones(...))
    y = g.tensor("y", (1, 4, 4, 4))
    g.op("CONV_2D", [x, w, -1], [y], "Conv2DOptions", Padding=0, StrideW=2, StrideH=2)
    buf = g.build(inputs=[x], outputs=[y])      # bytes of a .tflite file
"""

from __future__ import annotations

import numpy as np

tflite = __import__("pytest").importorskip("tflite", reason="the [tflite] extra (tflite, flatbuffers) is not installed")
import flatbuffers  # noqa: E402  (after the skip: it comes with tflite)

_TYPES = {np.float32: 0, np.float16: 1, np.int32: 2, np.uint8: 3, np.int64: 4, np.int8: 9}
_NAME2CODE = {v: k for k, v in tflite.BUILTIN_OPCODE2NAME.items()}
_OPTION_TYPES = {
    "Conv2DOptions": tflite.BuiltinOptions.Conv2DOptions,
    "DepthwiseConv2DOptions": tflite.BuiltinOptions.DepthwiseConv2DOptions,
    "Pool2DOptions": tflite.BuiltinOptions.Pool2DOptions,
    "AddOptions": tflite.BuiltinOptions.AddOptions,
    "MulOptions": tflite.BuiltinOptions.MulOptions,
    "ConcatenationOptions": tflite.BuiltinOptions.ConcatenationOptions,
    "ResizeBilinearOptions": tflite.BuiltinOptions.ResizeBilinearOptions,
    "ReshapeOptions": tflite.BuiltinOptions.ReshapeOptions,
}


class GraphBuilder:
    """Collects tensors and ops; :meth:`build` writes the flatbuffer."""

    def __init__(self):
        self.tensors = []  # (name, shape, type, buffer index, quant)
        self.buffers = [b""]
        self.ops = []  # (opcode index, inputs, outputs, options)
        self.opcodes = []  # (builtin code, custom name)

    def tensor(self, name, shape, dtype=np.float32, data=None, quant=None) -> int:
        buf = 0
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data, dtype=dtype).reshape(shape))
            self.buffers.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
            buf = len(self.buffers) - 1
        self.tensors.append((name, tuple(shape), _TYPES[np.dtype(dtype).type], buf, quant))
        return len(self.tensors) - 1

    def op(self, opcode: str, inputs, outputs, options: str | None = None, custom: bool = False, **fields) -> None:
        key = (32, opcode) if custom else (_NAME2CODE[opcode], None)
        if key not in self.opcodes:
            self.opcodes.append(key)
        self.ops.append((self.opcodes.index(key), list(inputs), list(outputs), (options, fields)))

    def _vector(self, b, start, offsets):
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def build(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)
        buffers = []
        for data in self.buffers:
            vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
        tensors = []
        for name, shape, ttype, buf, quant in self.tensors:
            s = b.CreateString(name)
            shp = b.CreateNumpyVector(np.asarray(shape, np.int32))
            q = None
            if quant is not None:
                scale = b.CreateNumpyVector(np.asarray([quant[0]], np.float32))
                zp = b.CreateNumpyVector(np.asarray([quant[1]], np.int64))
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scale)
                tflite.QuantizationParametersAddZeroPoint(b, zp)
                q = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shp)
            tflite.TensorAddType(b, ttype)
            tflite.TensorAddBuffer(b, buf)
            tflite.TensorAddName(b, s)
            if q is not None:
                tflite.TensorAddQuantization(b, q)
            tensors.append(tflite.TensorEnd(b))
        ops = []
        for opc, ins, outs, (opt_name, fields) in self.ops:
            iv = b.CreateNumpyVector(np.asarray(ins, np.int32))
            ov = b.CreateNumpyVector(np.asarray(outs, np.int32))
            opt = None
            if opt_name is not None:
                getattr(tflite, f"{opt_name}Start")(b)
                for f, v in fields.items():
                    getattr(tflite, f"{opt_name}Add{f}")(b, v)
                opt = getattr(tflite, f"{opt_name}End")(b)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, opc)
            tflite.OperatorAddInputs(b, iv)
            tflite.OperatorAddOutputs(b, ov)
            if opt is not None:
                tflite.OperatorAddBuiltinOptionsType(b, _OPTION_TYPES[opt_name])
                tflite.OperatorAddBuiltinOptions(b, opt)
            ops.append(tflite.OperatorEnd(b))
        codes = []
        for code, custom in self.opcodes:
            cs = b.CreateString(custom) if custom else None
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            if cs is not None:
                tflite.OperatorCodeAddCustomCode(b, cs)
            tflite.OperatorCodeAddVersion(b, 1)
            codes.append(tflite.OperatorCodeEnd(b))
        tv = self._vector(b, tflite.SubGraphStartTensorsVector, tensors)
        ov = self._vector(b, tflite.SubGraphStartOperatorsVector, ops)
        iv = b.CreateNumpyVector(np.asarray(inputs, np.int32))
        outv = b.CreateNumpyVector(np.asarray(outputs, np.int32))
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tv)
        tflite.SubGraphAddInputs(b, iv)
        tflite.SubGraphAddOutputs(b, outv)
        tflite.SubGraphAddOperators(b, ov)
        sg = tflite.SubGraphEnd(b)
        sgv = self._vector(b, tflite.ModelStartSubgraphsVector, [sg])
        cv = self._vector(b, tflite.ModelStartOperatorCodesVector, codes)
        bv = self._vector(b, tflite.ModelStartBuffersVector, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, cv)
        tflite.ModelAddSubgraphs(b, sgv)
        tflite.ModelAddBuffers(b, bv)
        model = tflite.ModelEnd(b)
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())


def run_interpreter(buf: bytes, x: np.ndarray) -> list[np.ndarray] | None:
    """Outputs of Google's interpreter for the graph bytes ``buf``, or None without it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    it = Interpreter(model_content=buf)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]
