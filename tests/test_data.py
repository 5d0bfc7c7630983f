"""Tests of the procedural glyph-detection data set (crp_jax.data).

The checks compare against independent facts — set relations between masks, box geometry
recomputed by hand, where a letter's distinguishing stroke must lie — never against
numbers copied from the generator's own output.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from crp_jax.data import (
    CLASS_NAMES,
    LARGER,
    NUM_CLASSES,
    PAIRS,
    PARTNER,
    SMALLER,
    SceneSpec,
    generate_dataset,
    generate_scene,
    make_batch,
    partner_label,
    render_glyph,
    render_pair,
)
from crp_jax.errors import ConfigError, InputError

SPEC = SceneSpec()
S = SPEC.image_size
N_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return generate_dataset(7, N_SCENES, SPEC)


def _luma(rgb):
    rgb = np.asarray(rgb, np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _digest(scene) -> str:
    h = hashlib.sha256()
    for a in (scene.image, scene.boxes, scene.labels, scene.masks, scene.part_masks):
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- classes


def test_class_names_and_pairs():
    assert CLASS_NAMES == ("__background__", "E", "F", "O", "Q", "P", "R")
    assert NUM_CLASSES == 7
    assert PAIRS == (("E", "F"), ("O", "Q"), ("P", "R"))
    for a, b in PAIRS:
        assert PARTNER[a] == b and PARTNER[b] == a
        assert len({a, b} & LARGER) == 1 and len({a, b} & SMALLER) == 1
    assert LARGER == {"E", "Q", "R"} and SMALLER == {"F", "O", "P"}
    for k in range(1, NUM_CLASSES):
        assert partner_label(partner_label(k)) == k
        assert CLASS_NAMES[partner_label(k)] == PARTNER[CLASS_NAMES[k]]
    with pytest.raises(ConfigError):
        partner_label(0)


# --------------------------------------------------------------------------- glyph geometry


def _ink_at_common_origin(a: str, b: str, size: int):
    """Render two letters with render_glyph and place both on one canvas by their origin."""
    ga, gb = render_glyph(a, size), render_glyph(b, size)
    x0, y0 = min(ga.x0, gb.x0), min(ga.y0, gb.y0)
    x1 = max(ga.x0 + ga.alpha.shape[1], gb.x0 + gb.alpha.shape[1])
    y1 = max(ga.y0 + ga.alpha.shape[0], gb.y0 + gb.alpha.shape[0])
    out = []
    for g in (ga, gb):
        m = np.zeros((y1 - y0, x1 - x0), bool)
        m[g.y0 - y0 : g.y0 - y0 + g.alpha.shape[0], g.x0 - x0 : g.x0 - x0 + g.alpha.shape[1]] = g.alpha >= 128
        out.append(m)
    return out


@pytest.mark.parametrize("big,small", [("E", "F"), ("Q", "O"), ("R", "P")])
def test_smaller_glyph_is_nearly_inside_larger(big, small):
    # every font size the generator can use at 128 px (and beyond), same origin and stroke
    for size in range(15, 172, 4):
        B, Sm = _ink_at_common_origin(big, small, size)
        assert Sm.sum() > 0 and B.sum() > Sm.sum()
        outside = (Sm & ~B).sum() / Sm.sum()
        assert outside < 0.05, (big, small, size, outside)


def test_render_glyph_is_cached_and_readonly():
    g = render_glyph("E", 30)
    assert g is render_glyph("E", 30)
    assert g.alpha.dtype == np.uint8 and not g.alpha.flags.writeable
    # drawn with anchor "ls": E stands on the baseline (y = 0), give or take the stroke
    rows = np.flatnonzero((g.alpha >= 128).any(1)) + g.y0
    assert -2 <= rows.max() <= 2
    assert -26 <= rows.min() <= -18  # cap height of a 30 px font is about 21 px, + stroke


def test_render_glyph_matches_drawing_at_an_offset():
    """render_glyph's crop and (x0, y0) reproduce a direct drawing on a big canvas."""
    from PIL import Image, ImageDraw, ImageFont

    for ch, size in [("E", 15), ("Q", 37), ("R", 90)]:
        g = render_glyph(ch, size)
        stroke = max(1.0, 0.045 * size)
        canvas = Image.new("L", (3 * size, 3 * size), 0)
        X, Y = size, 2 * size
        ImageDraw.Draw(canvas).text(
            (X, Y),
            ch,
            font=ImageFont.load_default(size=size),
            fill=255,
            anchor="ls",
            stroke_width=stroke,
            stroke_fill=255,
        )
        ref = np.zeros_like(np.asarray(canvas))
        ref[Y + g.y0 : Y + g.y0 + g.alpha.shape[0], X + g.x0 : X + g.x0 + g.alpha.shape[1]] = g.alpha
        np.testing.assert_array_equal(ref, np.asarray(canvas))


def _box(m):
    r, c = np.nonzero(m)
    return r.min(), r.max() + 1, c.min(), c.max() + 1


@pytest.mark.parametrize("size", [16, 22, 31, 47, 80, 140])
def test_part_relations_and_location(size):
    for big, small in [("E", "F"), ("Q", "O"), ("R", "P")]:
        pb, ps = render_pair(big, size), render_pair(small, size)
        # the same region for both members, computed in the same frame
        assert pb.shape == ps.shape and (pb.x0, pb.y0) == (ps.x0, ps.y0)
        np.testing.assert_array_equal(pb.part, ps.part)
        np.testing.assert_array_equal(pb.ink, ps.partner_ink)
        part = pb.part
        assert part.sum() > 0
        assert not (part & ~pb.ink).any()  # inside the larger glyph's ink ...
        assert not (part & ps.ink).any()  # ... outside the smaller one's
        assert part.sum() < 0.35 * pb.ink.sum()
        y0, y1, x0, x1 = _box(pb.ink)
        h, w = y1 - y0, x1 - x0
        pr, pc = np.nonzero(part)
        fy, fx = (pr - y0 + 0.5) / h, (pc - x0 + 0.5) / w
        if big == "E":  # the bottom bar: lowest rows, spanning much of the width
            assert np.mean(fy >= 0.65) >= 0.9
            assert pr.max() + 1 == y1
            assert (pc.max() - pc.min() + 1) >= 0.5 * w
            assert _box(ps.ink)[1] <= y1 + 1  # F does not reach below E (1 px hinting slack)
        elif big == "Q":  # the tail: lower-right quadrant, reaching as low as the bowl
            assert np.mean((fy >= 0.5) & (fx >= 0.5)) >= 0.9
            assert pr.max() >= np.nonzero(ps.ink)[0].max()
            if size >= 20:
                assert pr.max() > np.nonzero(ps.ink)[0].max()  # hangs below the O
        else:  # R's leg: bottom right, standing on the baseline
            assert np.mean(fy >= 0.5) >= 0.8
            assert np.mean(fx >= 0.5) >= 0.85
            assert np.mean(fy < 0.25) <= 0.1
            assert pr.max() + 1 == y1


# --------------------------------------------------------------------------- determinism


def test_deterministic_and_index_dependent():
    a = generate_scene(3, 11)
    # other work in between, and cold caches, must not matter
    generate_scene(3, 12)
    render_glyph.cache_clear()
    render_pair.cache_clear()
    b = generate_scene(3, 11)
    for x, y in zip(
        (a.image, a.boxes, a.labels, a.masks, a.part_masks), (b.image, b.boxes, b.labels, b.masks, b.part_masks)
    ):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert _digest(generate_scene(3, 12)) != _digest(a)
    assert _digest(generate_scene(4, 11)) != _digest(a)
    assert not np.array_equal(generate_scene(3, 12).image, a.image)


def test_deterministic_across_processes():
    code = textwrap.dedent(
        """
        import hashlib, numpy as np
        from crp_jax.data import generate_scene
        s = generate_scene(5, 123)
        h = hashlib.sha256()
        for a in (s.image, s.boxes, s.labels, s.masks, s.part_masks):
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        print(h.hexdigest())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(generate_scene(5, 123))


# --------------------------------------------------------------------------- scenes


def test_shapes_dtypes_ranges(scenes):
    for sc in scenes:
        n = sc.num_objects
        assert SPEC.min_objects <= n <= SPEC.max_objects
        assert sc.image.shape == (S, S, 3) and sc.image.dtype == np.uint8
        assert sc.boxes.shape == (n, 4) and sc.boxes.dtype == np.float32
        assert sc.labels.shape == (n,) and sc.labels.dtype == np.int32
        assert sc.masks.shape == (n, S, S) and sc.masks.dtype == np.bool_
        assert sc.part_masks.shape == (n, S, S) and sc.part_masks.dtype == np.bool_
        assert ((sc.labels >= 1) & (sc.labels < NUM_CLASSES)).all()
        assert ((sc.boxes >= 0) & (sc.boxes <= S)).all()
        assert (sc.boxes[:, 2] > sc.boxes[:, 0]).all() and (sc.boxes[:, 3] > sc.boxes[:, 1]).all()


def test_boxes_are_tight_around_masks(scenes):
    for sc in scenes:
        for box, m in zip(sc.boxes, sc.masks):
            assert m.any()
            x0, y0, x1, y1 = (int(v) for v in box)
            assert np.array_equal(box, np.array([x0, y0, x1, y1], np.float32))  # integer pixel edges
            rows, cols = np.nonzero(m)
            # every mask pixel lies inside [x0, x1) x [y0, y1)
            assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
            # and each edge touches the mask
            assert m[y0, x0:x1].any() and m[y1 - 1, x0:x1].any()
            assert m[y0:y1, x0].any() and m[y0:y1, x1 - 1].any()


def test_masks_disjoint_and_parts_consistent(scenes):
    nonempty = {k: [] for k in range(1, NUM_CLASSES)}
    for sc in scenes:
        assert (sc.masks.sum(0) <= 1).all()  # visible ink of different objects never shared
        union = sc.masks.any(0)
        for _i, (lab, m, p) in enumerate(zip(sc.labels, sc.masks, sc.part_masks)):
            name = CLASS_NAMES[lab]
            others = union & ~m
            assert not (p & others).any()
            if name in LARGER:
                assert not (p & ~m).any()  # E's bar, Q's tail, R's leg are its own ink
            else:
                assert not (p & m).any()  # where F, O, P lack ink
            nonempty[int(lab)].append(bool(p.any()))
            # a part is small next to its object: bar / tail / leg area < the glyph's ink
            assert p.sum() < m.sum() + 1
    for k, v in nonempty.items():
        assert len(v) > 0 and np.mean(v) >= 0.95, (CLASS_NAMES[k], np.mean(v))


def test_part_location_in_scenes(scenes):
    """E/F: the bottom bar region lies in the lowest rows of the box; Q/O: the tail in the
    lower right; R/P: the leg in the lower right. Occlusion can hide bits, so shares."""
    low, lowright = {k: [] for k in "EFQORP"}, {k: [] for k in "EFQORP"}
    for sc in scenes:
        for box, lab, p in zip(sc.boxes, sc.labels, sc.part_masks):
            if p.sum() < 4:
                continue
            name = CLASS_NAMES[lab]
            x0, y0, x1, y1 = box
            pr, pc = np.nonzero(p)
            fy = (pr + 0.5 - y0) / (y1 - y0)
            fx = (pc + 0.5 - x0) / (x1 - x0)
            low[name].append(np.mean(fy >= 0.65))
            lowright[name].append(np.mean((fy >= 0.45) & (fx >= 0.45)))
    for name in "EF":  # for F the region lies at and just below its box's lowest rows
        assert np.median(low[name]) >= 0.9, name
    for name in "QORP":
        assert np.median(lowright[name]) >= 0.85, name


def test_every_class_and_size_spread(scenes):
    labels = np.concatenate([sc.labels for sc in scenes])
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert counts[0] == 0
    assert (counts[1:] >= 0.5 * len(labels) / 6).all(), counts
    boxes = np.concatenate([sc.boxes for sc in scenes])
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert side.min() <= 16  # small glyphs for the finest (16-cell) source
    assert side.max() >= 0.75 * S  # near-image-size glyphs for the coarsest source
    # every scale band an SSD with 16/8/4/2-cell sources covers is populated
    for lo, hi in [(0, 20), (20, 40), (40, 80), (80, S + 1)]:
        assert ((side >= lo) & (side < hi)).sum() >= 0.05 * len(side), (lo, hi)
    # some scenes have overlapping objects, most have several objects
    n_overlap = 0
    for sc in scenes:
        b = sc.boxes
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                n_overlap += bool(iw > 0 and ih > 0)
    assert n_overlap >= 10


def test_glyphs_contrast_with_their_surroundings(scenes):
    diffs = []
    for sc in scenes:
        union = sc.masks.any(0)
        y = _luma(sc.image)
        # background pixels at least 2 px from any ink (beyond the anti-aliased fringe)
        near = union.copy()
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                near |= np.roll(np.roll(union, dy, 0), dx, 1)
        for box, m in zip(sc.boxes, sc.masks):
            if m.sum() < 20:
                continue
            x0, y0, x1, y1 = (int(v) for v in box)
            bg = ~near[y0:y1, x0:x1]
            if bg.sum() < 20:
                continue
            diffs.append(abs(np.median(y[m]) - np.median(y[y0:y1, x0:x1][bg])))
    diffs = np.array(diffs)
    assert len(diffs) > 100
    assert np.mean(diffs >= 40) >= 0.95, np.percentile(diffs, [1, 5, 10, 50])


def test_masks_are_where_the_glyph_was_painted():
    """Without noise, the bulk of a large glyph's mask has one colour: the glyph's."""
    spec = SceneSpec(clutter=0.0)
    checked = 0
    for i in range(12):
        sc = generate_scene(2, i, spec)
        for m in sc.masks:
            if m.sum() < 300:
                continue
            px = sc.image[m].astype(np.int32)
            med = np.median(px, axis=0)
            assert np.mean(np.abs(px - med).max(-1) <= 2) >= 0.6
            checked += 1
    assert checked >= 5


def test_make_batch_matches_scenes():
    idx = [4, 0, 9]
    b = make_batch(11, idx, SPEC, with_masks=True)
    M = SPEC.max_objects
    assert b["images"].shape == (3, S, S, 3) and b["images"].dtype == np.uint8
    assert b["boxes"].shape == (3, M, 4) and b["boxes"].dtype == np.float32
    assert b["labels"].shape == (3, M) and b["labels"].dtype == np.int32
    assert b["valid"].shape == (3, M) and b["valid"].dtype == np.bool_
    assert b["masks"].shape == (3, M, S, S) and b["part_masks"].shape == (3, M, S, S)
    np.testing.assert_array_equal(b["valid"], b["labels"] > 0)
    for row, i in enumerate(idx):
        sc = generate_scene(11, i, SPEC)
        n = sc.num_objects
        assert b["num_objects"][row] == n
        np.testing.assert_array_equal(b["images"][row], sc.image)
        np.testing.assert_array_equal(b["boxes"][row, :n], sc.boxes)
        np.testing.assert_array_equal(b["labels"][row, :n], sc.labels)
        np.testing.assert_array_equal(b["masks"][row, :n], sc.masks)
        assert (b["labels"][row, n:] == 0).all() and (b["boxes"][row, n:] == 0).all()
        assert not b["masks"][row, n:].any()
    b2 = make_batch(11, idx, SPEC, max_boxes=6)
    assert b2["boxes"].shape == (3, 6, 4) and "masks" not in b2
    np.testing.assert_array_equal(b2["images"], b["images"])


def test_spec_variants_and_validation():
    small = SceneSpec(image_size=64, min_objects=2, max_objects=2, allow_overlap=1.0, clutter=0.0)
    for i in range(10):
        sc = generate_scene(0, i, small)
        assert sc.image.shape == (64, 64, 3)
        assert 1 <= sc.num_objects <= 2
        assert (sc.masks.sum(0) <= 1).all()
    # no clutter and one object: the background is a smooth gradient (small local steps)
    sc = generate_scene(1, 0, SceneSpec(min_objects=1, max_objects=1, clutter=0.0))
    img = sc.image.astype(np.int32)
    far = np.ones((S, S), bool)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            far &= ~np.roll(np.roll(sc.masks[0], dy, 0), dx, 1)
    step = np.abs(np.diff(img, axis=1)).max(-1)
    assert np.percentile(step[far[:, 1:] & far[:, :-1]], 99) <= 4
    with pytest.raises(ConfigError):
        SceneSpec(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError):
        SceneSpec(image_size=16)
    with pytest.raises(ConfigError):
        SceneSpec(allow_overlap=1.5)
    with pytest.raises(ConfigError):
        SceneSpec(min_object_size=200)
    with pytest.raises(InputError):
        generate_scene(-1, 0)
    with pytest.raises(InputError):
        generate_scene(0, 1.5)
    with pytest.raises(ConfigError):
        make_batch(0, [0], SPEC, max_boxes=2)


def test_clutter_mask_marks_the_clutter_shapes_and_no_glyph():
    quiet = generate_scene(3, 5, SceneSpec(clutter=0.0))
    assert quiet.clutter_mask.shape == quiet.image.shape[:2] and not quiet.clutter_mask.any()
    busy = [generate_scene(3, i, SceneSpec(clutter=2.0)) for i in range(4)]
    for s in busy:
        m = s.clutter_mask
        assert m.any() and not (m & s.masks.any(0)).any()  # under the glyphs' visible ink: none
    # clutter shapes are drawn over a smooth background: on them the image departs from its
    # 3x3 neighbourhood's mean far more than on the background elsewhere
    edge, flat = [], []
    for s in busy:
        img = s.image.astype(np.float64).mean(-1)
        pad = np.pad(img, 1, mode="edge")
        local = (
            sum(
                pad[1 + dy : 1 + dy + img.shape[0], 1 + dx : 1 + dx + img.shape[1]]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
            / 9
        )
        dev = np.abs(img - local)
        background = ~s.clutter_mask & ~s.masks.any(0)
        edge.append(dev[s.clutter_mask].mean())
        flat.append(dev[background].mean())
    assert np.mean(edge) > 1.5 * np.mean(flat), (edge, flat)
