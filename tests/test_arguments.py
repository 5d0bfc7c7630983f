"""Wrong types reach the package's own errors, naming the bad value (issue: hostile-user
probes). Each case used to leak a Python TypeError/AttributeError/KeyError or be silently
accepted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError, InputError, TargetError
from crp_jax.ssd import Meta


@pytest.fixture(scope="module")
def shipped():
    model, variables, meta = cj.load_pretrained()
    x = np.zeros((2, 128, 128, 3), np.float32)
    return model, variables, meta, x


@pytest.mark.parametrize(
    "make",
    [
        lambda: cj.ClassTarget(0, 1, 1, 2),  # contrast an int
        lambda: cj.ClassTarget(0, 1, 1, [2.7]),  # used to become (2,)
        lambda: cj.ClassTarget(0, 1, 1, [True]),  # used to become (1,)
        lambda: cj.ClassTarget(0, 1, 1, (2.7,)),
        lambda: cj.ClassTarget(0, 1, 1, [[1, 2]]),
        lambda: cj.LocTarget(0, 1, "cx", True),
        lambda: cj.LocTarget(0, 1, "cx", 1.0),
        lambda: cj.LocTarget(0, 1, "cx", 2),
        lambda: cj.LocTarget(0, 1, 1.5, 1),
    ],
)
def test_bad_target_fields_are_target_errors_naming_the_value(make):
    with pytest.raises(TargetError):
        make()


def test_lists_tuples_and_numpy_ints_are_accepted_alike():
    a = cj.ClassTarget(0, 1, 1, [2, np.int64(3)])
    b = cj.ClassTarget(0, 1, 1, (2, 3))
    c = cj.ClassTarget(0, 1, 1, np.array([2, 3]))
    assert a == b == c and b.contrast == (2, 3)
    assert cj.LocTarget(0, 1, "cx", np.int64(-1)).sign == -1


def test_explain_refuses_wrong_argument_types_with_package_errors(shipped):
    model, variables, meta, x = shipped
    t = [cj.ClassTarget(0, 5, 1)]
    with pytest.raises(TargetError, match="list"):
        cj.explain(model, variables, x, None, method="crp", meta=meta)
    with pytest.raises(TargetError, match=r"wrap it in \[\.\.\.\]"):
        cj.explain(model, variables, x, t[0], method="crp", meta=meta)
    with pytest.raises(ConfigError, match="pixel_bounds"):
        cj.explain(model, variables, x, t, method="crp", meta="meta")
    with pytest.raises(CheckpointError, match="'params'"):
        cj.explain(model, {}, x, t, method="crp", meta=meta)
    with pytest.raises(InputError, match="to_host must be True or False, got 'yes'"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, to_host="yes")
    with pytest.raises(InputError, match="crop must be one of"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, crop="sometimes")
    with pytest.raises(InputError, match="chunk_size"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, chunk_size=2.0)


def test_numpy_ints_are_accepted_for_chunk_size_as_for_indices(shipped):
    model, variables, meta, x = shipped
    t = [cj.ClassTarget(np.int64(0), np.int64(5), np.int32(1))]
    a = cj.explain(model, variables, x, t, method="gradient", chunk_size=np.int64(4))
    b = cj.explain(model, variables, x, t, method="gradient", chunk_size=4)
    np.testing.assert_array_equal(a, b)


def test_explain_refuses_a_meta_of_another_architecture_as_detect_does(shipped):
    model, variables, meta, x = shipped
    other_cfg = dataclasses.replace(meta.config, num_classes=meta.config.num_classes + 1)
    other = Meta(other_cfg, (*meta.class_names, "extra"), meta.mean, meta.std)
    with pytest.raises(ConfigError, match="different architecture"):
        cj.explain(model, variables, x, [cj.ClassTarget(0, 5, 1)], method="crp", meta=other)
    with pytest.raises(ConfigError, match="different architecture"):
        cj.detect(model, variables, x, meta=other)


def test_a_mesh_with_device_output_is_refused_clearly(shipped):
    # a mesh's devices may belong to other processes: results are gathered to the host
    model, variables, meta, x = shipped
    t = [cj.ClassTarget(0, 5, 1)]
    with pytest.raises(ConfigError, match="mesh"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, mesh="auto", to_host=False)
    with pytest.raises(ConfigError, match="mesh must be"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, mesh="all")


def test_crop_takes_a_named_mode_or_a_bool(shipped):
    # the shipped model's windows are over half its image: the default crops nothing, so
    # it equals the dense path bit for bit; "always" crops every head output (to 1e-5)
    model, variables, meta, x = shipped
    t = [cj.ClassTarget(0, 5, 1), cj.LocTarget(1, 700, "cy", -1)]
    a = cj.explain(model, variables, x, t, method="gradient", crop=False)
    b = cj.explain(model, variables, x, t, method="gradient")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cj.explain(model, variables, x, t, method="gradient", crop="never"), a)
    np.testing.assert_array_equal(cj.explain(model, variables, x, t, method="gradient", crop="auto"), b)
    c = cj.explain(model, variables, x, t, method="gradient", crop="always")
    assert np.abs(c - a).max() <= 1e-5 * np.abs(a).max()
    for bad in ("no", 1, None):
        with pytest.raises(InputError, match=r"crop must be one of \('auto', 'always', 'never'\)"):
            cj.explain(model, variables, x, t, method="gradient", crop=bad)
