"""Receptive-field cones (``crp_jax/relevance/cones.py``) against independent references:
hand arithmetic for SSD300's first source and for a tiny detector written here, a plain
layer-by-layer interval chain for every cell of SSD300's first source, and brute force (the
support of input gradients) on the small SSD and a small SSDlite."""

from __future__ import annotations

import ast
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.errors import InputError
from crp_jax.relevance.cones import Window, anchor_cone, cone_geometry, cone_sizes
from crp_jax.ssd.build import build_detector, init_variables
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.model import SSD
from crp_jax.ssd.ssdlite import random_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _abstract(model, size):
    """Variables as ShapeDtypeStructs: no weights are allocated."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


@pytest.fixture(scope="module")
def ssd300():
    model = SSD(SSDConfig.ssd300_vgg16(21))
    variables = _abstract(model, 300)
    return model, variables, cone_geometry(model, variables, (1, 300, 300, 3))


# ---- 1. SSD300, first source (conv4_3, 38 x 38 cells, 4 boxes per cell) ------------------
#
# Hand arithmetic, rows (columns alike) for the cell at row i, as [first, last] inclusive:
#   head cls_0/loc_0 (3x3, pad 1) reads l2norm = conv4_3's output   [i-1, i+1]       3
#   conv4_3 (3x3, pad 1) reads conv4_2's output                      [i-2, i+2]       5
#   conv4_2 reads conv4_1's output                                   [i-3, i+3]       7
#   conv4_1 reads pool3's output                                     [i-4, i+4]       9
#   pool3 (2x2/2, ceil mode) reads conv3_3's output                  [2i-8, 2i+9]    18
#   conv3_3 reads conv3_2's output                                   [2i-9, 2i+10]   20
#   conv3_2 reads conv3_1's output                                   [2i-10, 2i+11]  22
#   conv3_1 reads pool2's output                                     [2i-11, 2i+12]  24
#   pool2 (2x2/2) reads conv2_2's output                             [4i-22, 4i+25]  48
#   conv2_2 reads conv2_1's output                                   [4i-23, 4i+26]  50
#   conv2_1 reads pool1's output                                     [4i-24, 4i+27]  52
#   pool1 (2x2/2) reads conv1_2's output                             [8i-48, 8i+55] 104
#   conv1_2 reads conv1_1's output                                   [8i-49, 8i+56] 106
#   conv1_1 reads the input                                          [8i-50, 8i+57] 108
# So the issue's "3x3 cells at conv4_3, 18x18 at conv3_3, 48x48 at conv2_2, 104x104 at
# conv1_2 and 108x108 pixels at the input" are the windows at the *outputs* of conv4_3,
# conv3_3, conv2_2 and conv1_2 (the inputs of the head, pool3, pool2 and pool1), and they
# agree with this arithmetic. The cone is unclipped for 7 <= i <= 30 (8i-50 >= 0,
# 8i+57 <= 299); i = 19 below gives input rows [102, 209].

INTERIOR = [
    # key (the module whose output it is), (height, width), top-left as a function of i
    ("l2norm", 3, lambda i: i - 1),
    ("conv4_3", 3, lambda i: i - 1),
    ("conv4_2", 5, lambda i: i - 2),
    ("conv4_1", 7, lambda i: i - 3),
    ("_max_pool#2", 9, lambda i: i - 4),  # pool3's output
    ("conv3_3", 18, lambda i: 2 * i - 8),
    ("conv3_2", 20, lambda i: 2 * i - 9),
    ("conv3_1", 22, lambda i: 2 * i - 10),
    ("_max_pool#1", 24, lambda i: 2 * i - 11),  # pool2's output
    ("conv2_2", 48, lambda i: 4 * i - 22),
    ("conv2_1", 50, lambda i: 4 * i - 23),
    ("_max_pool#0", 52, lambda i: 4 * i - 24),  # pool1's output
    ("conv1_2", 104, lambda i: 8 * i - 48),
    ("conv1_1", 106, lambda i: 8 * i - 49),
    ("input", 108, lambda i: 8 * i - 50),
]


def test_ssd300_first_source_interior(ssd300):
    model, variables, geom = ssd300
    i, j, box = 19, 21, 3
    cone = anchor_cone(model, variables, (1, 300, 300, 3), (i * 38 + j) * 4 + box)
    assert cone.input == Window(8 * i - 50, 8 * j - 50, 108, 108) == Window(102, 118, 108, 108)
    for key, size, top in INTERIOR:
        win = cone.input if key == "input" else cone.windows[key]
        assert win == Window(top(i), top(j), size, size), key
        assert cone.unclipped[key] == win, key  # nothing to clip in the interior
    # the head reads one cell; the anchor's own row maps back to it
    assert cone.windows["cls_0"] == cone.windows["loc_0"] == Window(i, j, 1, 1)
    # activations of the other sources are not in the cone
    assert "conv6" not in cone.windows and "cls_1" not in cone.windows
    assert cone.map_sizes["conv3_3"] == (75, 75) and cone.map_sizes["conv4_3"] == (38, 38)
    assert cone.global_ops == () and cone.conservative == ()


def _chain_reference(i: int) -> tuple[int, int]:
    """Input rows ``[lo, hi)`` of cell row ``i`` of SSD300's first source, by plain interval
    arithmetic per layer with clipping to each map (an independent reference): kernel k,
    stride s, padding p read ``[lo * s - p, (hi - 1) * s - p + k)`` of a map of n cells."""
    layers = (  # (k, s, p, n = rows of the map read), from the head down
        [(3, 1, 1, 38)] * 4  # head, conv4_3, conv4_2, conv4_1
        + [(2, 2, 0, 75)]  # pool3 (ceil mode: its last window pads past row 74)
        + [(3, 1, 1, 75)] * 3  # conv3_3, conv3_2, conv3_1
        + [(2, 2, 0, 150)]  # pool2
        + [(3, 1, 1, 150)] * 2
        + [(2, 2, 0, 300)]  # pool1
        + [(3, 1, 1, 300)] * 2  # conv1_2, conv1_1
    )
    lo, hi = i, i + 1
    for k, s, p, n in layers:
        lo, hi = max(lo * s - p, 0), min((hi - 1) * s - p + k, n)
    return lo, hi


def test_ssd300_first_source_every_cell_and_corners(ssd300):
    _, _, geom = ssd300
    cells = np.arange(38 * 38)
    anchors = cells * 4 + 1
    win = geom.windows(anchors)["input"]
    for c, (top, left, h, w) in zip(cells, win):
        r, q = divmod(int(c), 38)
        (t0, t1), (l0, l1) = _chain_reference(r), _chain_reference(q)
        assert (top, left, h, w) == (t0, l0, t1 - t0, l1 - l0), (r, q)
    # 2. corners: clipped to the image, starting at 0 and ending at 300
    top_left = geom.cone(0)
    assert top_left.input == Window(0, 0, 58, 58)  # rows [8*0-50, 57] clipped to [0, 57]
    assert top_left.windows["conv3_3"] == Window(0, 0, 10, 10)  # [-8, 9] clipped
    assert top_left.unclipped["input"] == Window(-50, -50, 108, 108)
    bottom_right = geom.cone(38 * 38 * 4 - 1)
    # rows [8*37-50, 8*37+57] = [246, 353] clipped to [246, 299]; pool3's ceil-mode window
    # over conv3_3 rows [74, 75] reads only row 74 (75 is padding)
    assert bottom_right.input == Window(246, 246, 54, 54)
    assert bottom_right.windows["conv3_3"] == Window(66, 66, 9, 9)
    assert bottom_right.unclipped["conv3_3"] == Window(66, 66, 18, 18)
    top_right = geom.cone(37 * 4)  # row 0, column 37
    assert top_right.input == Window(0, 246, 58, 54)


def test_ssd300_sizes(ssd300):
    model, variables, _ = ssd300
    groups = cone_sizes(model, variables, (1, 300, 300, 3))
    # one group per source, in anchor order: 38^2*4, 19^2*6, 10^2*6, 5^2*6, 3^2*4, 1*4
    assert [len(g.anchors) for g in groups] == [5776, 2166, 600, 150, 36, 4]
    assert groups[0].anchors == range(0, 5776)
    first = groups[0]
    assert {"l2norm", "cls_0", "loc_0"} <= set(first.heads) and "conv4_3" not in first.heads
    assert first.sizes["input"] == (108, 108)
    assert first.sizes["conv3_3"] == (18, 18) and first.sizes["conv2_2"] == (48, 48)
    assert first.sizes["conv1_2"] == (104, 104) and first.sizes["l2norm"] == (3, 3)
    assert "conv6" not in first.sizes
    # deeper sources see more of the image; sizes are unclipped, so they exceed 300
    inputs = [g.sizes["input"][0] for g in groups]
    assert inputs == sorted(inputs) and inputs[1] > 300
    assert all(g.global_ops == () for g in groups)


def test_bad_anchor(ssd300):
    _, _, geom = ssd300
    for bad in (-1, 8732, 1.5, True):
        with pytest.raises(InputError, match="anchor"):
            geom.cone(bad)
    with pytest.raises(InputError, match="x_shape"):
        cone_geometry(*ssd300[:2], (300, 300, 3))


# ---- 3. a tiny detector, windows by hand -----------------------------------------------


class TinyDetector(nn.Module):
    """``[B, 16, 16, 2] -> (cls [B, 32, 3], loc [B, 32, 4])``: 3x3/1 pad 1, 3x3/2 pad 1,
    2x2/2 max-pool, 1x1 heads, two boxes per cell of the 4 x 4 map."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="c1")(x))
        h = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="c2")(h))
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        B = x.shape[0]
        cls = nn.Conv(2 * 3, (1, 1), name="cls_0")(h).reshape(B, -1, 3)
        loc = nn.Conv(2 * 4, (1, 1), name="loc_0")(h).reshape(B, -1, 4)
        return cls, loc


def _tiny_rows(r: int) -> dict[str, tuple[int, int]]:
    """Rows ``[lo, hi)`` by hand for cell row r of the 4 x 4 map: the pool reads c2 rows
    [2r, 2r+1]; c2 (stride 2, pad 1) row o reads c1 rows 2o-1 .. 2o+1, so [4r-1, 4r+3];
    c1 (pad 1) reads input rows [4r-2, 4r+4]; each clipped to [0, 16) / [0, 8)."""
    return {
        "cls_0": (r, r + 1),
        "c2": (2 * r, 2 * r + 2),
        "c1": (max(4 * r - 1, 0), min(4 * r + 4, 16)),
        "input": (max(4 * r - 2, 0), min(4 * r + 5, 16)),
    }


def test_tiny_detector_by_hand():
    model = TinyDetector()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 2), jnp.float32))
    geom = cone_geometry(model, variables, (2, 16, 16, 2))
    assert geom.num_anchors == 32
    assert {"c1", "c2", "cls_0", "loc_0", "reduce_window_max#0"} <= set(geom.names)  # the pool: no module
    for anchor in range(32):
        r, c = divmod(anchor // 2, 4)
        cone = geom.cone(anchor)
        rows, cols = _tiny_rows(r), _tiny_rows(c)
        for key in ("cls_0", "c2", "c1", "input"):
            win = cone.input if key == "input" else cone.windows[key]
            (t0, t1), (l0, l1) = rows[key], cols[key]
            assert win == Window(t0, l0, t1 - t0, l1 - l0), (anchor, key)
        assert cone.windows["reduce_window_max#0"] == Window(r, c, 1, 1)
        # unclipped: 2 c2 cells, 5 c1 cells, 7 pixels, wherever the cell is
        assert cone.unclipped["c1"] == Window(4 * r - 1, 4 * c - 1, 5, 5)
        assert cone.unclipped["input"] == Window(4 * r - 2, 4 * c - 2, 7, 7)
    (group,) = geom.sizes()
    assert group.anchors == range(32) and group.sizes["input"] == (7, 7) and group.sizes["c2"] == (2, 2)


class OddDetector(nn.Module):
    """A linear detector of the less common window arithmetic: a dilated conv (rhs dilation
    4) reading the input, a transposed conv (lhs dilation 2), a depthwise conv with stride 3
    and asymmetric padding, an average pool with asymmetric padding, a 1x1 head."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (3, 3), kernel_dilation=(4, 4), padding=((4, 4), (4, 4)), name="dilated")(x)  # 20
        h = nn.ConvTranspose(3, (3, 3), strides=(2, 2), padding="SAME", name="up")(h)  # 40
        h = nn.Conv(3, (3, 3), strides=(3, 3), padding=((0, 2), (1, 0)), feature_group_count=3, name="dw")(h)  # 14
        h = nn.avg_pool(h, (2, 2), strides=(1, 1), padding=((1, 0), (0, 1)))  # 14
        B = x.shape[0]
        return nn.Conv(2, (1, 1), name="cls_0")(h).reshape(B, -1, 2), nn.Conv(4, (1, 1), name="loc_0")(h).reshape(
            B, -1, 4
        )


def test_dilations_groups_and_asymmetric_padding_against_gradients():
    """Positive weights and no non-linearity: the input gradient of an anchor's logit is
    non-zero exactly where a path reaches, so its bounding box is the exact cone. The dilated
    conv reads a sparse set (rows o-4, o, o+4): near the border the exact window starts at
    the first row actually read, not at 0."""
    model = OddDetector()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 2)))
    variables = jax.tree.map(lambda a: jnp.abs(a) + 0.1, variables)
    geom = cone_geometry(model, variables, (1, 20, 20, 2))
    anchors = list(range(geom.num_anchors))
    support = _gradient_support(model, variables, np.ones((1, 20, 20, 2), np.float32), anchors, cls=0)
    windows = geom.windows(anchors)["input"]
    for a, mask, win in zip(anchors, support, windows):
        assert _bbox(mask) == tuple(int(v) for v in win), a
    assert geom.cone(0).conservative == ()


class SharedHeadDetector(nn.Module):
    """One head module applied to two levels (as RetinaNet shares its heads): ``[B, 8, 8, 1]
    -> (cls [B, 80, 2], loc [B, 80, 4])``, 64 anchors from the 8 x 8 level, then 16 from 4 x 4."""

    def setup(self):
        self.stem = nn.Conv(2, (3, 3), padding=((1, 1), (1, 1)))
        self.down = nn.Conv(2, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.head = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))

    def __call__(self, x):
        B = x.shape[0]
        levels = [self.stem(x)]
        levels.append(self.down(levels[0]))
        outs = [self.head(h).reshape(B, -1, 6) for h in levels]
        y = jnp.concatenate(outs, axis=1)
        return y[..., :2], y[..., 2:]


def test_shared_head_calls_are_keyed_apart():
    model = SharedHeadDetector()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
    geom = cone_geometry(model, variables, (1, 8, 8, 1))
    assert {"stem", "down", "head", "head@1"} <= set(geom.names)
    assert geom.map_sizes["head"] == (8, 8) and geom.map_sizes["head@1"] == (4, 4)
    groups = geom.sizes()
    assert [g.anchors for g in groups] == [range(0, 64), range(64, 80)]
    assert "head" in groups[0].heads and "head@1" in groups[1].heads
    cone = geom.cone(64 + 5)  # level 2, cell (1, 1)
    assert cone.windows["head@1"] == Window(1, 1, 1, 1) and "head" not in cone.windows
    assert cone.windows["down"] == Window(0, 0, 3, 3)  # rows 0..2 of the 4 x 4 map
    assert cone.windows["stem"] == Window(0, 0, 6, 6)  # stride 2, pad 1: rows 2*0-1 .. 2*2+1
    assert cone.input == Window(0, 0, 7, 7)


# ---- 4. brute force: where the input gradient of one anchor's logit is non-zero ---------


def _gradient_support(model, variables, x, anchors, cls: int = 1, interceptor=None):
    """``[N, H, W]`` bool: pixels where d cls_logit[anchor] / d x is non-zero for any of the
    images in ``x`` (summed |gradient| over images and channels)."""

    def f(x):
        if interceptor is None:
            return model.apply(variables, x)[0][:, :, cls]
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x)[0][:, :, cls]

    out, vjp = jax.vjp(f, jnp.asarray(x))
    eye = jnp.zeros((len(anchors),) + out.shape).at[jnp.arange(len(anchors)), :, jnp.asarray(anchors)].set(1.0)
    (g,) = jax.jit(jax.vmap(vjp))(eye)
    return np.asarray(jnp.abs(g).sum(axis=(1, 4)) > 0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _inside(mask: np.ndarray, win) -> bool:
    top, left, h, w = (int(v) for v in win)
    outside = mask.copy()
    outside[top : top + h, left : left + w] = False
    return not outside.any()


def _sample_anchors(groups, per_group: int, rng) -> list[int]:
    """Per group: its first and last anchor (corner cells), the middle one and a few more."""
    out = []
    for g in groups:
        picks = {g.start, g.stop - 1, (g.start + g.stop) // 2}
        picks |= {int(a) for a in rng.choice(np.arange(g.start, g.stop), min(per_group, len(g)), replace=False)}
        out += sorted(picks)
    return out


def test_brute_force_small_ssd():
    """Shipped-size SSD (width 0.125, 128 px). Kernels made positive and inputs positive, so
    every ReLU is open and no dependency is hidden; max-pools still pass the gradient to one
    winner per window (a subset of the cone), but across channels and two images every
    window border is some window's winner, so the support's bounding box is the window."""
    model = SSD(SSDConfig.small(num_classes=7, width=0.125))
    variables = jax.tree.map(jnp.abs, init_variables(model, seed=0))
    geom = cone_geometry(model, variables, (1, 128, 128, 3))
    rng = np.random.default_rng(0)
    groups = [g.anchors for g in geom.sizes()]
    assert len(groups) == 4
    anchors = _sample_anchors(groups, 3, rng)
    x = rng.uniform(0.0, 1.0, size=(2, 128, 128, 3)).astype(np.float32)
    support = _gradient_support(model, variables, x, anchors)
    windows = geom.windows(anchors)["input"]
    smaller = 0
    for a, mask, win in zip(anchors, support, windows):
        assert mask.any(), a
        assert _inside(mask, win), a
        assert _bbox(mask) == tuple(int(v) for v in win), a  # the exact bounding box
        smaller += int(win[2] * win[3] < 128 * 128)
    assert smaller >= 6  # the first source's cones (and corner cones) are not the whole image


def test_brute_force_ssdlite_squeeze_excite():
    """Small SSDlite (width 0.25, random weights with non-zero SE and project convs: the
    training initialiser zeroes them, which would hide the very dependencies checked here).

    Its squeeze-excitation gates read a spatial mean, so every anchor's cone is the whole
    image, and the gradient really does reach pixels far outside the local cone. With the
    gates held constant (``constant=("*/se/gate_act",)``, as relevance rules hold them; the
    gradient gets ``stop_gradient`` on the same modules), the first source's cone is 307 px
    unclipped: at 256 px its corner cells see a 154 x 154 window, and at 64 px (the size
    named in the issue) every cone is still the whole image."""
    S = 256
    model = build_detector(SSDConfig.ssdlite_small(num_classes=7, image_size=S, width=0.25))
    variables = random_variables(model, seed=0)
    dense = cone_geometry(model, variables, (1, S, S, 3))
    local = cone_geometry(model, variables, (1, S, S, 3), constant=("*/se/gate_act",))
    groups = [g.anchors for g in local.sizes()]
    assert len(groups) == 4
    first = groups[0]
    corner = first.start  # top-left cell of the first source (16 x 16 cells, stride 16)

    cone = dense.cone(corner)
    assert cone.input == Window(0, 0, S, S)
    assert any("se:reduce_sum(1, 2)" in op for op in cone.global_ops)
    assert local.cone(corner).input == Window(0, 0, 154, 154)
    assert local.cone(corner).global_ops == ()
    sizes = local.sizes()
    assert sizes[0].sizes["input"] == (307, 307)
    assert {"cls_0", "loc_0", "dw_cls_0", "dw_loc_0"} <= set(sizes[0].heads)

    def hold_gates(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        return jax.lax.stop_gradient(out) if context.module.name == "gate_act" else out

    rng = np.random.default_rng(1)
    anchors = [corner, first.stop - 1, (first.start + first.stop) // 2, first.start + 6 * 37]
    x = rng.normal(size=(2, S, S, 3)).astype(np.float32)
    # the global dependency is real: the dense gradient leaves the local cone
    dense_support = _gradient_support(model, variables, x, anchors[:1])[0]
    assert not _inside(dense_support, local.cone(corner).input)
    support = _gradient_support(model, variables, x, anchors, interceptor=hold_gates)
    windows = local.windows(anchors)["input"]
    for a, mask, win in zip(anchors, support, windows):
        assert win[2] * win[3] < S * S, a
        assert _inside(mask, win), a
        assert _bbox(mask) == tuple(int(v) for v in win), a

    small = build_detector(SSDConfig.ssdlite_small(num_classes=7, image_size=64, width=0.25))
    g64 = cone_geometry(small, _abstract(small, 64), (1, 64, 64, 3), constant=("*/se/gate_act",))
    assert (g64.windows(np.arange(g64.num_anchors))["input"] == [0, 0, 64, 64]).all()
    assert g64.cone(0).conservative == ()


# ---- 5. the engine does not import the detector -----------------------------------------


def test_engine_imports_nothing_from_ssd():
    for path in sorted((ROOT / "crp_jax" / "relevance").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("crp_jax.ssd"), f"{path.name} imports {name}"
