"""The relevance engine on BlazeFace (issue 23 items 3 and 5): 16 named regressors per
anchor, a single sigmoid logit, conservation through every op kind of the imported graphs.

References are independent of the engine: regressor indices written out by hand from
MediaPipe's order, ``jax.grad`` of one raw output for the gradient method, and conservation
laws (LRP-ab with biases zeroed gives sum R = initial relevance; CRP's alpha1beta1 regressor
start gives 0).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tflite", reason="the [tflite] extra (tflite, flatbuffers) is not installed")

import crp_jax as cj  # noqa: E402
from crp_jax.errors import ConfigError, TargetError  # noqa: E402
from crp_jax.relevance.targets import COORDS, encode_targets, regressor_names  # noqa: E402
from crp_jax.tflite import read_graph  # noqa: E402

# MediaPipe's 16 regressors, written out by hand: box, then six keypoints' x and y.
HAND_NAMES = (
    "cx cy w h right_eye_x right_eye_y left_eye_x left_eye_y nose_tip_x nose_tip_y "
    "mouth_x mouth_y right_ear_x right_ear_y left_ear_x left_ear_y"
).split()


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image (real photos) is not installed")
    return data.astronaut()


@pytest.fixture(scope="module")
def short(astronaut):
    model, variables, meta = cj.load_pretrained("blazeface")
    x, sizes = cj.preprocess_with_sizes([astronaut], meta)
    det = cj.detect(model, variables, x, meta=meta, image_sizes=sizes)[0]
    return model, variables, meta, np.asarray(x), int(det.anchors[0])


def _zero_biases(variables):
    n = [0]

    def zero(path, v):
        if str(getattr(path[-1], "key", "")) == "bias":
            n[0] += 1
            return jnp.zeros_like(v)
        return v

    out = jax.tree_util.tree_map_with_path(zero, variables)
    assert n[0] > 0, "no bias found: the zero-bias variant would prove nothing"
    return out


# ---- names -----------------------------------------------------------------------------


def test_blazeface_meta_names_16_regressors_in_mediapipes_order(short):
    _, _, meta, _, _ = short
    assert tuple(meta.regressor_names) == tuple(HAND_NAMES)
    assert regressor_names(meta, 16) == tuple(HAND_NAMES)


def test_ssd_meta_names_the_four_box_offsets_and_its_json_does_not_change():
    _, _, meta = cj.load_pretrained()
    assert meta.regressor_names == ("cx", "cy", "w", "h")
    d = json.loads(meta.to_json())
    assert "regressor_names" not in d
    assert type(meta).from_json(meta.to_json()) == meta


def test_nose_tip_x_target_puts_its_sign_at_regressor_8():
    _, _, _, loc = encode_targets([cj.LocTarget(0, 5, "nose_tip_x", -1)], 1, 10, 1, "others", HAND_NAMES)
    expected = np.zeros((1, 16), np.float32)
    expected[0, 8] = -1.0
    np.testing.assert_array_equal(loc, expected)


def test_unknown_regressor_name_raises_target_error_naming_the_models_names(short):
    model, variables, meta, x, a = short
    with pytest.raises(TargetError, match="nose_x") as e:
        cj.explain(model, variables, x, [cj.LocTarget(0, a, "nose_x", 1)], method="gradient", meta=meta)
    assert "nose_tip_x" in str(e.value) and "left_ear_y" in str(e.value)


def test_without_a_meta_box_names_stay_valid_for_4_regressors_and_indices_for_others():
    _, _, _, loc = encode_targets([cj.LocTarget(0, 0, "h", 1)], 1, 3, 2, "none", 4)
    assert loc.tolist() == [[0, 0, 0, 1]]
    _, _, _, loc = encode_targets([cj.LocTarget(0, 0, 9, 1)], 1, 3, 2, "none", 16)
    assert np.flatnonzero(loc[0]).tolist() == [9]
    with pytest.raises(TargetError, match="'cx' unknown.*0..15"):
        encode_targets([cj.LocTarget(0, 0, "cx", 1)], 1, 3, 2, "none", 16)
    with pytest.raises(TargetError, match="16 out of range"):
        encode_targets([cj.LocTarget(0, 0, 16, 1)], 1, 3, 2, "none", HAND_NAMES)
    assert cj.LocTarget(0, 0, "w", 1).coord_index == COORDS.index("w")


def test_a_meta_whose_names_do_not_fit_the_output_is_refused(short):
    _, _, meta, _, _ = short
    with pytest.raises(ConfigError, match="16 regressors"):
        regressor_names(meta, 4)


def test_targets_from_detections_keypoints_are_the_twelve_non_box_regressors(short):
    model, variables, meta, x, a = short
    dets = cj.detect(model, variables, x, meta=meta)
    ts = cj.targets_from_detections(dets, "keypoints", regressors=meta.regressor_names)
    assert [t.coord for t in ts] == HAND_NAMES[4:]
    ts = cj.targets_from_detections(dets, "all", regressors=meta.regressor_names)
    assert len(ts) == 17 and isinstance(ts[0], cj.ClassTarget)


def test_gradient_of_nose_tip_x_is_jax_grad_of_regressor_8(short):
    model, variables, meta, x, a = short

    def out(xx):
        return model.apply(variables, xx)[1][0, a, 8]

    ref = np.asarray(jax.grad(out)(jnp.asarray(x)))[0]
    R = cj.explain(model, variables, x, [cj.LocTarget(0, a, "nose_tip_x", 1)], method="gradient", meta=meta)
    np.testing.assert_allclose(R[0], ref, atol=1e-5 * np.abs(ref).max())


# ---- single logit ----------------------------------------------------------------------


def test_single_logit_others_contrast_is_one_hot_on_the_logit_not_a_no_op():
    for contrast in ("others", None, "none"):
        c, loc = cj.ClassTarget(0, 0, 0, contrast).coefficients(1, "others", HAND_NAMES)
        assert c.tolist() == [1.0] and loc.shape == (16,) and not loc.any()


def test_single_logit_foreground_and_missing_contrast_classes_raise_target_error_with_a_reason():
    with pytest.raises(TargetError, match="single .*logit"):
        cj.ClassTarget(0, 0, 0, "foreground").coefficients(1)
    with pytest.raises(TargetError, match="contrast class 1 out of range"):
        cj.ClassTarget(0, 0, 0, (1,)).coefficients(1)
    with pytest.raises(TargetError, match="contains the target class 0"):
        cj.ClassTarget(0, 0, 0, (0,)).coefficients(1)


def test_crp_class_map_on_a_single_logit_equals_lrp_ab_and_conserves_one(short):
    model, variables, meta, x, a = short
    t = [cj.ClassTarget(0, a, 0)]
    crp = cj.explain(model, variables, x, t, method="crp", meta=meta, crop=False)
    ab = cj.explain(model, variables, x, t, method="lrp_ab", meta=meta, crop=False)
    assert np.isfinite(crp).all()
    np.testing.assert_allclose(crp, ab, atol=1e-6 * np.abs(ab).max())
    assert abs(crp.sum() - 1.0) < 1e-3


# ---- conservation through every op kind ------------------------------------------------

# every op kind of the two shipped graphs (the list the conservation tests cover)
OP_KINDS = {
    "blazeface": {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "PAD", "RELU", "RESHAPE"},
    "blazeface_full": {
        "ADD",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "MAX_POOL_2D",
        "PAD",
        "RELU",
        "RESHAPE",
        "RESIZE_BILINEAR",
    },
}


# Full range: its three top-down merges add a bilinear upsampling of ReLU features; a resize
# explained by its gradient gave dead (zero) sources relevance that the ReLU then dropped (sum
# 0.9938). crp_jax/tflite/ops.py ResizeBilinear splits by x w instead.
@pytest.mark.parametrize("name", ["blazeface", "blazeface_full"])
def test_lrp_ab_with_zero_biases_conserves_relevance_through_every_op_kind(name, astronaut):
    model, variables, meta = cj.load_pretrained(name)
    from crp_jax.blazeface import PRESETS
    from crp_jax.ssd.io import default_weights_dir

    graph = read_graph(f"{default_weights_dir()}/{PRESETS[name].filename}")
    kinds = {op.opcode for op in graph.ops}
    assert kinds == OP_KINDS[name]  # the graph's op kinds (float16 weights are dequantized on reading)
    x, _ = cj.preprocess_with_sizes([astronaut], meta)
    a = int(cj.detect(model, variables, x, meta=meta)[0].anchors[0])
    v0 = _zero_biases(variables)
    targets = [
        cj.ClassTarget(0, a, 0),
        cj.LocTarget(0, a, "nose_tip_x", 1),
        cj.LocTarget(0, a, "cy", -1),
        cj.LocTarget(0, a, "left_ear_y", 1),
    ]
    initial = np.array([1.0, 1.0, -1.0, 1.0])
    for crop in (False, "always"):
        R = cj.explain(model, v0, x, targets, method="lrp_ab", meta=meta, crop=crop)
        assert np.isfinite(R).all()
        np.testing.assert_allclose(R.reshape(len(targets), -1).sum(1), initial, atol=1e-3, err_msg=f"crop={crop}")
    # CRP: class map conserves 1, a regressor's alpha1beta1 start conserves 0
    R = cj.explain(model, v0, x, targets[:2], method="crp", meta=meta, crop=False)
    assert np.isfinite(R).all()
    np.testing.assert_allclose(R.reshape(2, -1).sum(1), [1.0, 0.0], atol=1e-3)
    assert np.abs(R[1]).sum() > 1e-2  # a contrast, not a zero map


def test_cropped_blazeface_keypoint_map_equals_dense(short):
    model, variables, meta, x, a = short
    t = [cj.LocTarget(0, a, "nose_tip_x", 1), cj.LocTarget(0, 700, "mouth_y", -1)]
    dense = cj.explain(model, variables, x, t, method="crp", meta=meta, crop=False)
    cropped = cj.explain(model, variables, x, t, method="crp", meta=meta, crop="always")
    np.testing.assert_allclose(cropped, dense, atol=1e-5 * np.abs(dense).max())


# ---- the command line ------------------------------------------------------------------


def test_cli_explain_writes_class_and_keypoint_maps_and_json_for_the_astronaut(astronaut, tmp_path):
    from PIL import Image

    from crp_jax.cli import main

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    out = tmp_path / "out"
    rc = main(["explain", str(path), "--weights", "blazeface", "--compare", "none", "--out", str(out)])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "astronaut_det00_face_cls_crp.png",
        "astronaut_det00_face_keypoints_crp.png",
        "astronaut_explain.json",
    ]
    rec = json.loads((out / "astronaut_explain.json").read_text())["detections"]
    assert len(rec) == 1
    d = rec[0]
    assert [m["regressor"] for m in d["keypoint_maps"]] == HAND_NAMES[4:]
    assert set(d["keypoints"]) == {"right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear"}
    # the class map (one-hot on the logit, LRP-ab rules) conserves 1; its peak lies in the face box
    assert abs(d["class_map"]["sum"] - 1.0) < 1e-2
    x1, y1, x2, y2 = d["box"]
    px, py = d["class_map"]["peak_xy"]
    assert x1 <= px <= x2 and y1 <= py <= y2
    for m in d["keypoint_maps"]:  # CRP regressor maps are contrasts: they sum to about 0
        assert abs(m["sum"]) < 1e-2 * max(m["abs_sum"], 1e-6) + 1e-3


def test_cli_target_takes_a_keypoint_regressor_with_a_sign(astronaut, tmp_path):
    from PIL import Image

    from crp_jax.cli import main

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    out = tmp_path / "out"
    argv = ["explain", str(path), "--weights", "blazeface", "--compare", "none", "--out", str(out)]
    assert main(argv + ["--target", "nose_tip_x", "--sign", "-"]) == 0
    # one overlay of "what moves the nose tip left"; the keypoint grid belongs to class targets
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_det00_face_nose_tip_x-_crp.png"]


@pytest.mark.parametrize(
    "weights, bad, valid",
    [("blazeface", "nose_x", ("nose_tip_x", "left_ear_y", "cx")), ("default", "nose_tip_x", ("cx", "cy", "w", "h"))],
)
def test_cli_unknown_target_is_a_target_error_naming_it_and_the_weights_names(weights, bad, valid, tmp_path, capsys):
    from crp_jax.cli import main
    from crp_jax.cli.explain import check_target

    _, _, meta = cj.load_pretrained(None if weights == "default" else weights)
    with pytest.raises(TargetError, match=f"'{bad}'") as e:
        check_target(bad, meta)
    assert all(n in str(e.value) for n in valid)
    argv = ["explain", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), "--target", bad]
    assert main(argv + ([] if weights == "default" else ["--weights", weights])) == 1  # before any image is read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{bad}'" in err[0] and all(n in err[0] for n in valid)
