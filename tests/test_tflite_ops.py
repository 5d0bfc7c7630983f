"""Every op of the TFLite importer on small graphs written with the flatbuffers builder
(tests/tflite_graphs.py), against references written here in float64 numpy from TFLite's
reference-kernel definitions (and Google's interpreter too where ``ai_edge_litert`` is
installed), plus the refusals: int8 tensors, unsupported ops, custom post-processing."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

pytest.importorskip("tflite", reason="the [tflite] extra (tflite, flatbuffers) is not installed")

from tflite_graphs import GraphBuilder, run_interpreter  # noqa: E402

from crp_jax.errors import CheckpointError, GraphImportError, InputError, MissingExtraError  # noqa: E402
from crp_jax.tflite import import_graph, load_tflite, read_graph  # noqa: E402
from crp_jax.tflite.ops import same_pads  # noqa: E402

SAME, VALID = 0, 1
RNG = np.random.default_rng(0)


def _run(buf, x, outputs=None, rename=None):
    model, variables = import_graph(read_graph(buf), outputs, rename)
    return [np.asarray(o) for o in model.apply(variables, x)], model, variables


def _check(buf, x, refs, atol=1e-5, interpreter=True):
    """Our outputs equal the numpy references and (when installed) the interpreter's.
    ``interpreter=False`` for graphs the interpreter refuses (a conv without a bias)."""
    ours, _, _ = _run(buf, x)
    for a, r in zip(ours, refs):
        np.testing.assert_allclose(a, r, atol=atol, rtol=1e-5)
    litert = run_interpreter(buf, x) if interpreter else None
    if litert is not None:
        for a, r in zip(ours, litert):
            np.testing.assert_allclose(a, r, atol=atol, rtol=1e-5)


def _pad_nhwc(x, pads, value=0.0):
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _conv_ref(x, w_ohwi, b, stride, pads, act=None):
    """Plain loops: x [1, H, W, I], w [O, kh, kw, I]."""
    xp = _pad_nhwc(x.astype(np.float64), pads)
    o, kh, kw, _ = w_ohwi.shape
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((1, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            patch = xp[0, i * stride : i * stride + kh, j * stride : j * stride + kw]
            y[0, i, j] = np.einsum("hwi,ohwi->o", patch, w_ohwi) + b
    return np.clip(y, 0, 6) if act == "relu6" else y


def test_same_padding_puts_the_extra_pixel_after():
    assert same_pads(8, 3, 2) == (0, 1)  # out 4: total 1, after
    assert same_pads(7, 3, 2) == (1, 1)
    assert same_pads(64, 3, 2) == (0, 1)
    assert same_pads(5, 1, 1) == (0, 0)
    assert same_pads(6, 5, 1) == (2, 2)
    assert same_pads(6, 4, 1) == (1, 2)


def test_conv2d_same_stride2_with_fused_relu6_matches_loops():
    g = GraphBuilder()
    x = g.tensor("input", (1, 8, 8, 3))
    w = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = RNG.normal(size=(4,)).astype(np.float32)
    wi = g.tensor("conv/w", w.shape, data=w)
    bi = g.tensor("conv/b", b.shape, data=b)
    y = g.tensor("conv/out", (1, 4, 4, 4))
    g.op("CONV_2D", [x, wi, bi], [y], "Conv2DOptions", Padding=SAME, StrideW=2, StrideH=2, FusedActivationFunction=3)
    buf = g.build([x], [y])
    xv = RNG.normal(size=(1, 8, 8, 3)).astype(np.float32) * 2
    _check(buf, xv, [_conv_ref(xv, w, b, 2, ((0, 1), (0, 1)), "relu6")])


def test_conv2d_valid_without_bias_matches_loops():
    g = GraphBuilder()
    x = g.tensor("input", (1, 6, 5, 2))
    w = RNG.normal(size=(3, 3, 2, 2)).astype(np.float32)
    wi = g.tensor("w", w.shape, data=w)
    y = g.tensor("out", (1, 4, 4, 3))
    g.op("CONV_2D", [x, wi, -1], [y], "Conv2DOptions", Padding=VALID, StrideW=1, StrideH=1)
    buf = g.build([x], [y])
    xv = RNG.normal(size=(1, 6, 5, 2)).astype(np.float32)
    _check(buf, xv, [_conv_ref(xv, w, np.zeros(3), 1, ((0, 0), (0, 0)))], interpreter=False)


def test_depthwise_conv_with_multiplier_2_keeps_tflite_channel_order():
    g = GraphBuilder()
    c, m = 3, 2
    x = g.tensor("input", (1, 7, 7, c))
    w = RNG.normal(size=(1, 3, 3, c * m)).astype(np.float32)
    b = RNG.normal(size=(c * m,)).astype(np.float32)
    wi, bi = g.tensor("dw/w", w.shape, data=w), g.tensor("dw/b", b.shape, data=b)
    y = g.tensor("dw/out", (1, 4, 4, c * m))
    g.op(
        "DEPTHWISE_CONV_2D",
        [x, wi, bi],
        [y],
        "DepthwiseConv2DOptions",
        Padding=SAME,
        StrideW=2,
        StrideH=2,
        DepthMultiplier=m,
    )
    buf = g.build([x], [y])
    xv = RNG.normal(size=(1, 7, 7, c)).astype(np.float32)
    xp = _pad_nhwc(xv.astype(np.float64), ((1, 1), (1, 1)))
    ref = np.zeros((1, 4, 4, c * m))
    for i in range(4):
        for j in range(4):
            for ch in range(c):
                for k in range(m):
                    ref[0, i, j, ch * m + k] = (
                        xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, ch] * w[0, :, :, ch * m + k]
                    ).sum()
    _check(buf, xv, [ref + b])


def test_pools_same_padding_max_never_takes_padding_and_average_does_not_count_it():
    g = GraphBuilder()
    x = g.tensor("input", (1, 5, 5, 2))
    ymax = g.tensor("max", (1, 3, 3, 2))
    yavg = g.tensor("avg", (1, 3, 3, 2))
    opts = dict(Padding=SAME, StrideW=2, StrideH=2, FilterWidth=3, FilterHeight=3)
    g.op("MAX_POOL_2D", [x], [ymax], "Pool2DOptions", **opts)
    g.op("AVERAGE_POOL_2D", [x], [yavg], "Pool2DOptions", **opts)
    buf = g.build([x], [ymax, yavg])
    xv = -np.abs(RNG.normal(size=(1, 5, 5, 2))).astype(np.float32) - 1  # all negative: a 0 pad would win
    rmax, ravg = np.zeros((1, 3, 3, 2)), np.zeros((1, 3, 3, 2))
    for i in range(3):
        for j in range(3):
            # SAME, in 5, out 3, window 3, stride 2: total pad 2 -> (1, 1); real cells only
            rows = slice(max(2 * i - 1, 0), min(2 * i + 2, 5))
            cols = slice(max(2 * j - 1, 0), min(2 * j + 2, 5))
            win = xv[0, rows, cols].reshape(-1, 2)
            rmax[0, i, j], ravg[0, i, j] = win.max(0), win.mean(0)
    _check(buf, xv, [rmax, ravg])


def _resize_axis(n_in, n_out, o, align_corners, half_pixel):
    """TFLite's reference source taps of output ``o`` on one axis: ``(lo, hi, weight of hi)``."""
    scale = (n_in - 1) / (n_out - 1) if align_corners and n_out > 1 else n_in / n_out
    v = (o + 0.5) * scale - 0.5 if half_pixel else o * scale
    lo = max(int(np.floor(v)), 0)
    hi = min(int(np.ceil(v)), n_in - 1)
    return lo, hi, v - lo


def _resize_ref(x, out_hw, align_corners, half_pixel):
    """TFLite reference ResizeBilinear in float64 loops."""
    _, h, w, _ = x.shape

    def axis(n_in, n_out, o):
        return _resize_axis(n_in, n_out, o, align_corners, half_pixel)

    y = np.zeros((1, *out_hw, x.shape[-1]))
    for i in range(out_hw[0]):
        y0, y1, fy = axis(h, out_hw[0], i)
        for j in range(out_hw[1]):
            x0, x1, fx = axis(w, out_hw[1], j)
            y[0, i, j] = (
                x[0, y0, x0] * (1 - fy) * (1 - fx)
                + x[0, y1, x0] * fy * (1 - fx)
                + x[0, y0, x1] * (1 - fy) * fx
                + x[0, y1, x1] * fy * fx
            )
    return y


@pytest.mark.parametrize(
    "align_corners,half_pixel", [(False, True), (True, False), (False, False)], ids=["half_pixel", "align", "legacy"]
)
@pytest.mark.parametrize("out_hw", [(6, 8), (5, 7), (2, 3)], ids=["x2", "non_integer", "down"])
def test_resize_bilinear_matches_the_reference_kernel(align_corners, half_pixel, out_hw):
    g = GraphBuilder()
    x = g.tensor("input", (1, 3, 4, 2))
    size = g.tensor("size", (2,), np.int32, data=np.asarray(out_hw, np.int32))
    y = g.tensor("resized", (1, *out_hw, 2))
    g.op(
        "RESIZE_BILINEAR",
        [x, size],
        [y],
        "ResizeBilinearOptions",
        AlignCorners=align_corners,
        HalfPixelCenters=half_pixel,
    )
    buf = g.build([x], [y])
    xv = RNG.normal(size=(1, 3, 4, 2)).astype(np.float32)
    _check(buf, xv, [_resize_ref(xv.astype(np.float64), out_hw, align_corners, half_pixel)])


def test_resize_splits_relevance_by_x_w_so_a_dead_relu_source_gets_none():
    """LRP through RELU -> RESIZE_BILINEAR (x2, half-pixel): each axis's output relevance goes
    to its two sources in proportion to x w (the z-rule, reference: float64 interpolation
    matrices from TFLite's kernel, rows then columns); the total is kept and a source the ReLU
    zeroed gets none (a gradient would route w R to it, and the ReLU would drop it)."""
    import crp_jax as cj
    from crp_jax.relevance import Composite, Kind, rules

    g = GraphBuilder()
    x = g.tensor("input", (1, 3, 4, 2))
    r = g.tensor("relu", (1, 3, 4, 2))
    g.op("RELU", [x], [r])
    size = g.tensor("size", (2,), np.int32, data=np.asarray([6, 8], np.int32))
    y = g.tensor("resized", (1, 6, 8, 2))
    g.op("RESIZE_BILINEAR", [r, size], [y], "ResizeBilinearOptions", AlignCorners=False, HalfPixelCenters=True)
    model, variables = import_graph(read_graph(g.build([x], [y])))
    xv = RNG.uniform(0.2, 1.0, size=(1, 3, 4, 2)).astype(np.float32)
    xv[0, 1, 2, 0] = -1.0  # a dead source in the middle of the map
    comp = Composite(rules=((Kind("add"), rules.Proportional()), (Kind("rescale"), rules.PassThrough())))
    (out,), explain_fn = cj.relevance_vjp(lambda v, z: model.apply(v, z), variables, xv, comp)
    R_out = RNG.uniform(0.1, 1.0, size=(1, 6, 8, 2))
    R = np.asarray(explain_fn((R_out.astype(np.float32),)))[0]  # [3, 4, C]

    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            lo, hi, f = _resize_axis(n_in, n_out, o, False, True)
            m[o, lo] += 1 - f
            m[o, hi] += f
        return m

    Wr, Wc = matrix(3, 6), matrix(4, 8)
    a = np.maximum(xv[0].astype(np.float64), 0)  # [3, 4, C] after the ReLU
    y1 = np.einsum("oh,hwc->owc", Wr, a)  # rows first, as TFLite
    y2 = np.einsum("pw,owc->opc", Wc, y1)
    R1 = np.einsum("pw,owc,opc->owc", Wc, y1, R_out[0] / y2)
    ref = np.einsum("oh,hwc,owc->hwc", Wr, a, R1 / y1)
    np.testing.assert_allclose(np.asarray(out)[0], y2, atol=1e-5)
    np.testing.assert_allclose(R, ref, rtol=1e-4, atol=1e-6)
    assert R[1, 2, 0] == 0.0
    assert abs(float(R.sum()) - R_out.sum()) < 1e-4 * R_out.sum()


def test_average_pool_splits_relevance_by_x_so_a_dead_relu_cell_gets_none():
    """LRP through RELU -> AVERAGE_POOL_2D (SAME 3x3 / 2 on 5x5, padding not counted): each
    output's relevance goes to the real cells of its window in proportion to x (the z-rule,
    reference: float64 loops); the total is kept and a cell the ReLU zeroed gets none."""
    import crp_jax as cj
    from crp_jax.relevance import Composite, Kind, rules

    g = GraphBuilder()
    x = g.tensor("input", (1, 5, 5, 2))
    r = g.tensor("relu", (1, 5, 5, 2))
    g.op("RELU", [x], [r])
    y = g.tensor("avg", (1, 3, 3, 2))
    g.op(
        "AVERAGE_POOL_2D", [r], [y], "Pool2DOptions", Padding=SAME, StrideW=2, StrideH=2, FilterWidth=3, FilterHeight=3
    )
    model, variables = import_graph(read_graph(g.build([x], [y])))
    xv = RNG.uniform(0.2, 1.0, size=(1, 5, 5, 2)).astype(np.float32)
    xv[0, 2, 2, 1] = -1.0  # a dead cell shared by four windows
    comp = Composite(rules=((Kind("add"), rules.Proportional()), (Kind("rescale"), rules.PassThrough())))
    (out,), explain_fn = cj.relevance_vjp(lambda v, z: model.apply(v, z), variables, xv, comp)
    R_out = RNG.uniform(0.1, 1.0, size=(1, 3, 3, 2))
    R = np.asarray(explain_fn((R_out.astype(np.float32),)))[0]  # [5, 5, C]
    a = np.maximum(xv[0].astype(np.float64), 0)
    ref = np.zeros_like(a)
    for i in range(3):
        for j in range(3):
            rows = slice(max(2 * i - 1, 0), min(2 * i + 2, 5))
            cols = slice(max(2 * j - 1, 0), min(2 * j + 2, 5))
            win = a[rows, cols]
            np.testing.assert_allclose(np.asarray(out)[0, i, j], win.mean((0, 1)), atol=1e-6)
            ref[rows, cols] += win / win.sum((0, 1)) * R_out[0, i, j]
    np.testing.assert_allclose(R, ref, rtol=1e-4, atol=1e-6)
    assert R[2, 2, 1] == 0.0
    assert abs(float(R.sum()) - R_out.sum()) < 1e-4 * R_out.sum()


def test_mul_by_constant_logistic_relu6_relu_add_pad_reshape_concat():
    g = GraphBuilder()
    x = g.tensor("input", (1, 4, 4, 3))
    scale = np.asarray([0.5, -2.0, 3.0], np.float32)
    si = g.tensor("scale", (3,), data=scale)
    m = g.tensor("mul", (1, 4, 4, 3))
    g.op("MUL", [x, si], [m], "MulOptions", FusedActivationFunction=0)
    lg = g.tensor("logistic", (1, 4, 4, 3))
    g.op("LOGISTIC", [m], [lg])
    r6 = g.tensor("relu6", (1, 4, 4, 3))
    g.op("RELU6", [m], [r6])
    r = g.tensor("relu", (1, 4, 4, 3))
    g.op("RELU", [m], [r])
    a = g.tensor("add", (1, 4, 4, 3))
    g.op("ADD", [lg, m], [a], "AddOptions", FusedActivationFunction=1)
    pads = np.asarray([[0, 0], [1, 0], [0, 2], [0, 1]], np.int32)  # spatial (asymmetric) + channel
    pi = g.tensor("paddings", (4, 2), np.int32, data=pads)
    p = g.tensor("padded", (1, 5, 6, 4))
    g.op("PAD", [a, pi], [p])
    rs = g.tensor("reshaped", (1, 30, 4))
    g.op("RESHAPE", [p, g.tensor("shape0", (3,), np.int32, data=[1, 30, 4])], [rs])
    r6r = g.tensor("r6_reshaped", (1, 16, 3))
    g.op("RESHAPE", [r6, g.tensor("shape1", (3,), np.int32, data=[1, 16, 3])], [r6r])
    rr = g.tensor("relu_reshaped", (1, 16, 3))
    g.op("RESHAPE", [r, g.tensor("shape2", (3,), np.int32, data=[1, 16, 3])], [rr])
    cat = g.tensor("cat", (1, 16, 6))
    g.op("CONCATENATION", [r6r, rr], [cat], "ConcatenationOptions", Axis=-1)
    buf = g.build([x], [rs, cat])
    xv = (RNG.normal(size=(1, 4, 4, 3)) * 3).astype(np.float32)
    mv = xv.astype(np.float64) * scale
    av = np.maximum(1 / (1 + np.exp(-mv)) + mv, 0)
    pv = np.pad(av, pads)
    ref_cat = np.concatenate([np.clip(mv, 0, 6).reshape(1, 16, 3), np.maximum(mv, 0).reshape(1, 16, 3)], -1)
    _check(buf, xv, [pv.reshape(1, 30, 4), ref_cat])


def test_modules_declare_kinds_and_convs_are_flax_convs_named_without_slashes():
    import flax.linen as nn

    g = GraphBuilder()
    x = g.tensor("input", (1, 4, 4, 2))
    w = RNG.normal(size=(2, 1, 1, 2)).astype(np.float32)
    wi = g.tensor("blk/conv/w", w.shape, data=w)
    c = g.tensor("blk/conv/Conv2D", (1, 4, 4, 2))
    g.op("CONV_2D", [x, wi, -1], [c], "Conv2DOptions", Padding=SAME, StrideW=1, StrideH=1)
    si = g.tensor("s", (1,), data=np.asarray([2.0], np.float32))
    m = g.tensor("blk/mul", (1, 4, 4, 2))
    g.op("MUL", [c, si], [m], "MulOptions")
    a = g.tensor("blk/add", (1, 4, 4, 2))
    g.op("ADD", [m, x], [a], "AddOptions")
    s = g.tensor("blk/sigmoid", (1, 4, 4, 2))
    g.op("LOGISTIC", [a], [s])
    buf = g.build([x], [s])
    model, variables = import_graph(read_graph(buf))
    assert set(variables["params"]) == {"blk_conv_Conv2D", "blk_mul"}
    seen = {}

    def record(next_fun, args, kwargs, context):
        seen["/".join(context.module.path)] = context.module
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, np.zeros((1, 4, 4, 2), np.float32))
    assert isinstance(seen["blk_conv_Conv2D"], nn.Conv)
    assert type(seen["blk_mul"]).relevance_kind == "rescale"
    assert type(seen["blk_add"]).relevance_kind == "add"
    assert type(seen["blk_sigmoid"]).relevance_kind == "activation"
    assert not any("/" in p for p in seen if p)


def test_float16_weights_behind_dequantize_are_exact():
    g = GraphBuilder()
    x = g.tensor("input", (1, 3, 3, 2))
    w16 = (RNG.normal(size=(2, 1, 1, 2)) * 3).astype(np.float16)
    wq = g.tensor("w16", w16.shape, np.float16, data=w16)
    wd = g.tensor("w16_dequantize", w16.shape)
    g.op("DEQUANTIZE", [wq], [wd])
    y = g.tensor("y", (1, 3, 3, 2))
    g.op("CONV_2D", [x, wd, -1], [y], "Conv2DOptions", Padding=VALID, StrideW=1, StrideH=1)
    buf = g.build([x], [y])
    graph = read_graph(buf)
    assert [op.opcode for op in graph.ops] == ["CONV_2D"]  # DEQUANTIZE folded
    _, _, variables = _run(buf, np.zeros((1, 3, 3, 2), np.float32))
    kernel = variables["params"]["y"]["kernel"]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, np.transpose(w16.astype(np.float32), (1, 2, 3, 0)))
    xv = RNG.normal(size=(1, 3, 3, 2)).astype(np.float32)
    _check(buf, xv, [_conv_ref(xv, w16.astype(np.float64), 0.0, 1, ((0, 0), (0, 0)))], interpreter=False)


def test_an_int8_quantized_tensor_is_refused_by_name():
    g = GraphBuilder()
    x = g.tensor("input", (1, 2, 2, 1))
    wq = g.tensor("Conv/weights_int8", (1, 1, 1, 1), np.int8, data=np.asarray([3], np.int8), quant=(0.1, 0))
    y = g.tensor("y", (1, 2, 2, 1))
    g.op("CONV_2D", [x, wq, -1], [y], "Conv2DOptions", Padding=VALID, StrideW=1, StrideH=1)
    with pytest.raises(GraphImportError, match=r"Conv/weights_int8.*INT8"):
        read_graph(g.build([x], [y]))


def test_a_uint8_activation_is_refused_by_name():
    g = GraphBuilder()
    x = g.tensor("image_uint8", (1, 2, 2, 1), np.uint8, quant=(1 / 255, 0))
    y = g.tensor("y", (1, 2, 2, 1), np.uint8, quant=(1 / 255, 0))
    g.op("RELU", [x], [y])
    with pytest.raises(GraphImportError, match=r"image_uint8.*UINT8"):
        read_graph(g.build([x], [y]))


def _graph_with_postprocess():
    """conv heads -> reshape -> TFLite_Detection_PostProcess (custom), as SSD exports are."""
    g = GraphBuilder()
    x = g.tensor("normalized_input_image_tensor", (1, 4, 4, 3))
    w = RNG.normal(size=(2, 1, 1, 3)).astype(np.float32)
    wi = g.tensor("BoxPredictor/ClassPredictor/weights", w.shape, data=w)
    c = g.tensor("BoxPredictor/ClassPredictor/BiasAdd", (1, 4, 4, 2))
    g.op("CONV_2D", [x, wi, -1], [c], "Conv2DOptions", Padding=SAME, StrideW=1, StrideH=1)
    cr = g.tensor("raw_outputs/class_predictions", (1, 16, 2))
    g.op("RESHAPE", [c], [cr])
    wl = g.tensor("BoxPredictor/BoxEncodingPredictor/weights", (4, 1, 1, 3), data=RNG.normal(size=(4, 1, 1, 3)))
    lc = g.tensor("BoxPredictor/BoxEncodingPredictor/BiasAdd", (1, 4, 4, 4))
    g.op("CONV_2D", [x, wl, -1], [lc], "Conv2DOptions", Padding=SAME, StrideW=1, StrideH=1)
    lr = g.tensor("raw_outputs/box_encodings", (1, 16, 4))
    g.op("RESHAPE", [lc], [lr])
    anchors = g.tensor("anchors", (16, 4), data=np.ones((16, 4)))
    outs = [g.tensor(f"TFLite_Detection_PostProcess:{i}", (1, 10, 4)) for i in range(4)]
    g.op("TFLite_Detection_PostProcess", [lr, cr, anchors], outs, custom=True)
    return g.build([x], outs)


def test_a_graph_cut_before_tflite_detection_postprocess_imports(tmp_path):
    path = tmp_path / "ssd.tflite"
    path.write_bytes(_graph_with_postprocess())
    model, variables, meta = load_tflite(
        path,
        outputs=("raw_outputs/class_predictions", "raw_outputs/box_encodings"),
        rename={"BoxPredictor/ClassPredictor/BiasAdd": "cls_0", "BoxPredictor/BoxEncodingPredictor/BiasAdd": "loc_0"},
    )
    cls, loc = model.apply(variables, np.zeros((2, 4, 4, 3), np.float32))  # any batch size
    assert cls.shape == (2, 16, 2) and loc.shape == (2, 16, 4)
    assert set(variables["params"]) == {"cls_0", "loc_0"}
    assert meta.output_names == ("raw_outputs/class_predictions", "raw_outputs/box_encodings")
    assert meta.image_size == (4, 4)
    with pytest.raises(GraphImportError, match="TFLite_Detection_PostProcess.*outputs="):
        load_tflite(path)  # the graph's own outputs need the custom op


def test_an_unsupported_op_is_named_with_its_output_tensor():
    g = GraphBuilder()
    x = g.tensor("input", (1, 2, 2, 3))
    y = g.tensor("head/Softmax", (1, 2, 2, 3))
    g.op("SOFTMAX", [x], [y])
    with pytest.raises(GraphImportError, match=r"SOFTMAX \(output 'head/Softmax'\)"):
        import_graph(read_graph(g.build([x], [y])))


def test_mul_of_two_activations_and_unknown_outputs_are_refused():
    g = GraphBuilder()
    x = g.tensor("input", (1, 2, 2, 3))
    y = g.tensor("square", (1, 2, 2, 3))
    g.op("MUL", [x, x], [y], "MulOptions")
    buf = g.build([x], [y])
    with pytest.raises(GraphImportError, match="MUL .*two activations"):
        import_graph(read_graph(buf))
    with pytest.raises(GraphImportError, match="no tensor named 'nope'"):
        import_graph(read_graph(buf), outputs=("nope",))


def test_wrong_input_size_and_garbage_files_raise_package_errors(tmp_path):
    g = GraphBuilder()
    x = g.tensor("input", (1, 4, 4, 3))
    y = g.tensor("y", (1, 4, 4, 3))
    g.op("RELU6", [x], [y])
    model, variables = import_graph(read_graph(g.build([x], [y])))
    with pytest.raises(InputError, match=r"\[B, 4, 4, 3\]"):
        model.apply(variables, np.zeros((1, 5, 5, 3), np.float32))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(CheckpointError, match="not a TFLite flatbuffer"):
        read_graph(bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_graph(tmp_path / "missing.tflite")


def test_without_the_tflite_package_the_error_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_tflite(name, *args, **kwargs):
        if name == "tflite":
            raise ImportError("No module named 'tflite'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tflite)
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[tflite\]"'):
        read_graph(b"12345678")
