"""Images batched through one forward and one backward (crp_jax/relevance/schedule.py) give
each image's relevance as if it were explained alone, for every preset, mixed target counts
per image, dense and cropped; and the schedule bounds every call by ``chunk_size``."""

import dataclasses

import jax
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.relevance import PRESETS
from crp_jax.relevance.schedule import DENSE, plan
from crp_jax.ssd import SSD, Meta, SSDConfig
from crp_jax.ssd.build import init_variables
from crp_jax.ssd.meta import default_class_names

K = 4
# targets per image: one image without any, widths 1, 2, 3 and one over chunk_size (4)
COUNTS = (3, 0, 1, 5, 2, 1, 2)


@pytest.fixture(scope="module")
def tiny():
    cfg = SSDConfig.small(num_classes=K, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    variables = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.01 if p[-1].key == "bias" else v, variables)
    meta = Meta(cfg, default_class_names(K), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    low, high = meta.pixel_bounds
    x = jax.random.uniform(jax.random.PRNGKey(3), (len(COUNTS), 64, 64, 3), minval=low[0], maxval=high[0])
    return model, variables, meta, np.asarray(x)


def mixed_targets(counts, num_anchors: int, seed: int = 0) -> list:
    """Class targets (every contrast) and box targets, images interleaved."""
    rng = np.random.default_rng(seed)
    out = []
    for b, n in enumerate(counts):
        for i in range(n):
            a = int(rng.integers(num_anchors))
            if i % 3 == 2:
                out.append(cj.LocTarget(b, a, ("cx", "cy", "w", "h")[i % 4], (-1) ** i))
            else:
                out.append(cj.ClassTarget(b, a, 1 + i % (K - 1), contrast=(None, "none", (2,))[i % 3]))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def each_image_alone(model, variables, x, targets, **kw) -> np.ndarray:
    R = np.zeros((len(targets), *x.shape[1:]), np.float32)
    for b in range(len(x)):
        mine = [i for i, t in enumerate(targets) if t.image == b]
        if mine:
            alone = [dataclasses.replace(targets[i], image=0) for i in mine]
            R[mine] = cj.explain(model, variables, x[b : b + 1], alone, **kw)
    return R


@pytest.mark.parametrize("method", PRESETS)
def test_batched_images_equal_each_image_alone_for_every_preset(tiny, method):
    model, variables, meta, x = tiny
    targets = mixed_targets(COUNTS, model.config.num_anchors())
    for crop in ("never", "always"):
        kw = dict(method=method, meta=meta, chunk_size=4, crop=crop)
        together = cj.explain(model, variables, x, targets, **kw)
        alone = each_image_alone(model, variables, x, targets, **kw)
        scale = np.abs(alone).max()
        assert scale > 0
        assert np.abs(together - alone).max() <= 1e-5 * scale, (method, crop)


def test_batched_images_on_the_shipped_model_device_and_window_outputs(tmp_path):
    model, variables, meta = cj.load_pretrained()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 128, 128, 3), np.uint8)
    x = np.asarray(cj.preprocess(list(images), meta))
    targets = mixed_targets((1, 4, 1, 2, 1), model.config.num_anchors(), seed=1)
    alone = each_image_alone(model, variables, x, targets, method="crp", meta=meta, crop="always")
    scale = np.abs(alone).max()
    dense = cj.explain(model, variables, x, targets, method="crp", meta=meta, crop="always")
    device = cj.explain(model, variables, x, targets, method="crp", meta=meta, crop="always", to_host=False)
    windows = cj.explain_windows(model, variables, x, targets, method="crp", meta=meta, crop="always")
    for got in (dense, np.asarray(device), windows.dense()):
        assert np.abs(got - alone).max() <= 1e-5 * scale


def test_schedule_places_every_target_once_and_bounds_each_call():
    rng = np.random.default_rng(0)
    for chunk in (1, 3, 8):
        images = rng.integers(0, 20, 200)
        group_of = np.where(rng.random(200) < 0.3, rng.integers(0, 3, 200), DENSE)
        seen = []
        for batch in plan(images, group_of, chunk):
            n = len(batch.images)
            assert len(np.unique(batch.images)) == n
            if batch.width:
                assert n * batch.width <= chunk  # a dense call's backwards
                assert np.all(images[batch.dense] == batch.images[batch.rows])
                assert np.all(group_of[batch.dense] == DENSE)
                pairs = set(zip(batch.rows.tolist(), batch.slots.tolist()))
                assert len(pairs) == len(batch.dense)  # one target per slot
                called = np.concatenate([pos for _, pos in batch.calls()])
                assert sorted(called.tolist()) == list(range(len(batch.dense)))
            else:
                assert not len(batch.dense) and n <= chunk
            seen.append(batch.dense)
            for row, g, members in batch.cropped:
                assert np.all(images[members] == batch.images[row]) and np.all(group_of[members] == g)
                seen.append(members)
        seen = np.concatenate(seen)
        assert sorted(seen.tolist()) == list(range(200))
