"""Training: SSD target assignment, multibox loss against a numpy reference, a few optimiser
steps, checkpoint/resume equal to an uninterrupted run, command-line exit codes."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from crp_jax.cli.train import train_main
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.boxes import decode, encode
from crp_jax.ssd.loss import assign_targets as _assign_targets
from crp_jax.ssd.loss import assign_targets_batch as _assign_targets_batch
from crp_jax.ssd.loss import multibox_loss as _multibox_loss
from crp_jax.training import (
    TrainConfig,
    batch_for_step,
    init_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train,
)
from crp_jax.training.config import _result_config
from crp_jax.training.loop import _compiled

# jitted: one XLA program per case compiles faster than dispatching every op eagerly
assign_targets = jax.jit(_assign_targets, static_argnames=("iou_threshold", "variances"))
assign_targets_batch = jax.jit(_assign_targets_batch, static_argnames=("iou_threshold", "variances"))
multibox_loss = jax.jit(_multibox_loss, static_argnames=("neg_pos_ratio",))

# ---------------------------------------------------------------------------------------
# target assignment
# ---------------------------------------------------------------------------------------
# Three default boxes in pixels (xyxy): two 10x10 squares and one 20x20 square.
ANCHORS = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 20, 20]], np.float32)


def _cxcywh(b):
    b = np.asarray(b, np.float32)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def test_gt_equal_to_default_box_is_matched_with_zero_offsets():
    gt = np.array([[10, 10, 20, 20], [0, 0, 0, 0]], np.float32)  # second row is padding
    labels, loc = assign_targets(gt, np.array([2, 5]), np.array([True, False]), ANCHORS)
    labels, loc = np.asarray(labels), np.asarray(loc)
    # anchor 1 is the box itself; anchor 2 overlaps it with IoU 100/400 = 0.25 < 0.5
    np.testing.assert_array_equal(labels, [0, 2, 0])
    np.testing.assert_array_equal(loc, np.zeros((3, 4), np.float32))  # zero offsets, zero for background
    assert not np.any(labels == 5)  # padding never matches


def test_iou_threshold_is_respected_and_inclusive():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 32], [20, 20, 30, 30]], np.float32)
    gt = np.array([[0, 0, 10, 16]], np.float32)
    # IoU 100/160 = 0.625 with anchor 0 (the best), 160/320 = 0.5 exactly with anchor 1,
    # 0 with anchor 2: at threshold 0.5 (inclusive) anchors 0 and 1 are positive ...
    labels, _ = assign_targets(gt, np.array([3]), np.array([True]), anchors)
    np.testing.assert_array_equal(np.asarray(labels), [3, 3, 0])
    # ... at 0.55 only anchor 0; at 0.9 anchor 0 is still the GT's forced best match
    labels, _ = assign_targets(gt, np.array([3]), np.array([True]), anchors, iou_threshold=0.55)
    np.testing.assert_array_equal(np.asarray(labels), [3, 0, 0])
    labels, _ = assign_targets(gt, np.array([3]), np.array([True]), anchors, iou_threshold=0.9)
    np.testing.assert_array_equal(np.asarray(labels), [3, 0, 0])
    # a box overlapping two anchors at IoU >= 0.5 matches both
    gt = np.array([[0, 0, 16, 16]], np.float32)  # IoU 100/256 = 0.39 with anchor 0, 256/400 = 0.64 with anchor 2
    labels, _ = assign_targets(gt, np.array([1]), np.array([True]), ANCHORS)
    np.testing.assert_array_equal(np.asarray(labels), [0, 0, 1])
    labels, _ = assign_targets(gt, np.array([1]), np.array([True]), ANCHORS, iou_threshold=0.35)
    np.testing.assert_array_equal(np.asarray(labels), [1, 0, 1])


def test_low_overlap_gt_still_claims_its_best_default_box():
    gt = np.array([[12, 12, 15, 15]], np.float32)  # IoU 9/100 with anchor 1, the best
    labels, loc = assign_targets(gt, np.array([4]), np.array([True]), ANCHORS)
    np.testing.assert_array_equal(np.asarray(labels), [0, 4, 0])
    # offsets are SSD's encoding with variances (0.1, 0.2) and decode back to the box
    want = encode(gt, _cxcywh(ANCHORS[1:2]), (0.1, 0.2))
    np.testing.assert_allclose(np.asarray(loc)[1], want[0], rtol=1e-6)
    np.testing.assert_allclose(decode(np.asarray(loc)[1:2], _cxcywh(ANCHORS[1:2])), gt, atol=1e-5)


def test_each_default_box_takes_its_best_gt_and_batch_matches_single():
    gt = np.array([[[0, 0, 10, 11], [10, 10, 21, 20]], [[0, 0, 20, 20], [0, 0, 0, 0]]], np.float32)
    lab = np.array([[1, 2], [6, 0]])
    valid = np.array([[True, True], [True, False]])
    labels, loc = assign_targets_batch(gt, lab, valid, ANCHORS)
    np.testing.assert_array_equal(np.asarray(labels), [[1, 2, 0], [0, 0, 6]])
    for b in range(2):
        l1, c1 = assign_targets(gt[b], lab[b], valid[b], ANCHORS)
        np.testing.assert_array_equal(np.asarray(labels[b]), np.asarray(l1))
        np.testing.assert_allclose(np.asarray(loc[b]), np.asarray(c1))


# ---------------------------------------------------------------------------------------
# multibox loss
# ---------------------------------------------------------------------------------------
def _reference_multibox(cls_logits, loc, cls_t, loc_t, ratio=3.0):
    """Plain numpy/loop statement of SSD's loss."""
    B, A, K = cls_logits.shape
    total_cls, total_loc, npos_total = 0.0, 0.0, 0
    for b in range(B):
        z = cls_logits[b].astype(np.float64)
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        ce = -logp[np.arange(A), cls_t[b]]
        pos = [a for a in range(A) if cls_t[b, a] > 0]
        negs = sorted((a for a in range(A) if cls_t[b, a] == 0), key=lambda a: -ce[a])
        hard = negs[: int(math.floor(ratio * len(pos)))]
        total_cls += sum(ce[a] for a in pos) + sum(ce[a] for a in hard)
        for a in pos:
            for c in range(4):
                d = abs(float(loc[b, a, c]) - float(loc_t[b, a, c]))
                total_loc += 0.5 * d * d if d < 1 else d - 0.5
        npos_total += len(pos)
    n = max(npos_total, 1)
    return total_cls / n, total_loc / n


def test_multibox_loss_matches_numpy_reference_with_hard_negative_mining():
    rng = np.random.default_rng(0)
    B, A, K = 3, 40, 4
    logits = rng.normal(0, 2, (B, A, K)).astype(np.float32)
    loc = rng.normal(0, 1.5, (B, A, 4)).astype(np.float32)
    loc_t = rng.normal(0, 1.5, (B, A, 4)).astype(np.float32)
    cls_t = np.zeros((B, A), np.int32)
    cls_t[0, [1, 7, 30]] = [1, 3, 2]  # 3 positives -> 9 hard negatives
    cls_t[1, [5]] = [2]  # 1 positive -> 3 hard negatives
    cls_t[2, :12] = 1  # 12 positives -> 36 wanted, only 28 negatives exist
    loc_t[cls_t == 0] = 0.0
    loss, aux = multibox_loss(logits, loc, cls_t, loc_t)
    ref_cls, ref_loc = _reference_multibox(logits, loc, cls_t, loc_t)
    np.testing.assert_allclose(float(aux["cls_loss"]), ref_cls, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loc_loss"]), ref_loc, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ref_cls + ref_loc, rtol=1e-5)
    assert int(aux["num_pos"]) == 16
    # hard negatives matter: the mined loss differs from using every negative
    all_neg = multibox_loss(logits, loc, cls_t, loc_t, neg_pos_ratio=100.0)[1]["cls_loss"]
    assert float(all_neg) > float(aux["cls_loss"])


def test_multibox_loss_without_positives_is_zero_and_finite():
    logits = np.random.default_rng(1).normal(size=(2, 10, 3)).astype(np.float32)
    loss, aux = multibox_loss(logits, np.zeros((2, 10, 4)), np.zeros((2, 10), np.int32), np.zeros((2, 10, 4)))
    assert float(loss) == 0.0 and int(aux["num_pos"]) == 0


# ---------------------------------------------------------------------------------------
# optimisation, checkpoints, resume
# ---------------------------------------------------------------------------------------
TINY = TrainConfig(
    image_size=64,
    width=0.125,
    batch_size=2,
    steps=6,
    lr=3e-3,
    warmup_steps=0,
    ckpt_interval=2,
    progress=False,
    log_interval=1,
)


def test_a_few_steps_decrease_the_loss():
    model, tx, _, step_fn = _compiled(_result_config(TINY))
    state = init_state(TINY, model, tx)
    batch = batch_for_step(TINY, 0)
    losses = []
    for _ in range(8):  # the same batch: the loss must go down
        state, m = step_fn(state, batch)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_batches_depend_only_on_seed_and_step():
    a = batch_for_step(TINY, 3)
    b = batch_for_step(TINY, 3)
    c = batch_for_step(TINY, 4)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])
    assert a["x"].shape == (2, 64, 64, 3) and a["boxes"].shape[0] == 2


def _leaves(variables):
    return jax.tree_util.tree_leaves(variables)


def test_resume_equals_uninterrupted(tmp_path):
    hist: list = []
    _, full, _ = train(TrainConfig(**{**TINY.to_dict(), "ckpt_dir": str(tmp_path / "a")}), history=hist)
    cfg_b = TrainConfig(**{**TINY.to_dict(), "ckpt_dir": str(tmp_path / "b")})
    _, half, _ = train(cfg_b, until=3)  # "interrupted" after step 3 (checkpoint at 3)
    assert latest_checkpoint(tmp_path / "b").name == "ckpt_00000003.msgpack"
    _, resumed, meta = train(cfg_b, resume=True)
    for x, y in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(full), _leaves(half)))
    assert meta.class_names == ("__background__", "E", "F", "O", "Q", "P", "R")
    assert [h["step"] for h in hist if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_round_trip_and_settings_check(tmp_path):
    model, tx, _, _ = _compiled(_result_config(TINY))
    state = init_state(TINY, model, tx)
    path = save_checkpoint(tmp_path, state, TINY)
    back = load_checkpoint(path, init_state(TINY, model, tx), TINY)
    for x, y in zip(_leaves(state), _leaves(back)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    other = TrainConfig(**{**TINY.to_dict(), "lr": 1e-3})
    with pytest.raises(CheckpointError, match="lr"):
        load_checkpoint(path, init_state(TINY, model, tx), other)
    (tmp_path / "ckpt_00000009.msgpack").write_bytes(b"not msgpack")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ckpt_00000009.msgpack", state)


def test_config_validation():
    from crp_jax.data.splits import HELDOUT_SEED

    with pytest.raises(ConfigError, match="reserved"):
        TrainConfig(seed=HELDOUT_SEED)
    with pytest.raises(ConfigError):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError):
        TrainConfig(lr=-1.0)
    meta = TrainConfig().meta()
    assert meta.num_classes == 7 and meta.config.num_sources >= 4 and meta.source == "crp-jax"


def test_train_main_exit_codes(tmp_path, capsys):
    assert train_main(["--bogus"]) == 2
    assert train_main(["--steps", "0"]) == 2
    assert train_main(["--out", str(tmp_path / "w.txt")]) == 2
    capsys.readouterr()
    rc = train_main(
        ["--resume", "--steps", "2", "--out", str(tmp_path / "w.msgpack"), "--ckpt-dir", str(tmp_path / "none")]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "no checkpoint" in err


def test_train_config_dict_round_trip_and_unknown_fields():
    assert TrainConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError, match=r"unknown TrainConfig fields \['stpes'\]"):
        TrainConfig.from_dict({**TINY.to_dict(), "stpes": 3})


def test_read_checkpoint_returns_step_settings_and_parameters(tmp_path):
    from crp_jax.training import read_checkpoint

    model, tx, _, _ = _compiled(_result_config(TINY))
    state = init_state(TINY, model, tx)
    path = save_checkpoint(tmp_path, state, TINY)
    rec = read_checkpoint(path)
    assert rec.step == 0 and rec.config == TINY and rec.path == path
    for x, y in zip(_leaves(state["params"]), _leaves(rec.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    bad = tmp_path / "ckpt_00000001.msgpack"
    bad.write_bytes(b"\x93not a checkpoint")
    with pytest.raises(CheckpointError, match="ckpt_00000001.msgpack"):
        read_checkpoint(bad)


def test_training_starts_from_the_one_initializer_of_the_model():
    from crp_jax.ssd.build import init_variables

    model, tx, _, _ = _compiled(_result_config(TINY))
    state = init_state(TINY, model, tx)
    reference = init_variables(model, seed=TINY.seed)["params"]
    for x, y in zip(_leaves(state["params"]), _leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
