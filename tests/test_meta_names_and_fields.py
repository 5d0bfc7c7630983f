"""Meta sidecars that used to load silently: no ``mean`` / ``std`` (read as 0 / 1), an
empty class name, a class name given twice (``--contrast E`` then picked the first E)."""

from __future__ import annotations

import json

import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.meta import COCO_CLASSES, Meta


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    _, variables, meta = cj.load_pretrained()
    d = tmp_path_factory.mktemp("w")
    cj.save_weights(d / "w.msgpack", variables, meta)
    return d / "w.msgpack", json.loads((d / "w.json").read_text())


@pytest.mark.parametrize("field", ["mean", "std"])
def test_a_sidecar_without_mean_or_std_is_refused_naming_the_field_and_file(saved, tmp_path, field):
    path, record = saved
    (tmp_path / "w.msgpack").write_bytes(path.read_bytes())
    record = {k: v for k, v in record.items() if k != field}
    (tmp_path / "w.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=rf"w\.json.*'{field}'"):
        cj.load_weights(tmp_path / "w.msgpack")


def test_empty_or_repeated_class_names_are_refused_naming_them():
    _, _, meta = cj.load_pretrained()
    names = list(meta.class_names)
    with pytest.raises(ConfigError, match="empty name at index 2"):
        Meta(meta.config, names[:2] + [" "] + names[3:], meta.mean, meta.std)
    twice = names[:3] + [names[1]] + names[4:]
    with pytest.raises(ConfigError, match=rf"{names[1]!r} twice \(indices 1 and 3\)"):
        Meta(meta.config, twice, meta.mean, meta.std)


def test_cocos_placeholder_may_repeat_but_cannot_be_looked_up():
    config = cj.SSDConfig.ssd300_vgg16(num_classes=len(COCO_CLASSES))
    meta = Meta(config, COCO_CLASSES)
    assert meta.class_index("dog") == COCO_CLASSES.index("dog")
    with pytest.raises(ConfigError, match="'N/A' names"):
        meta.class_index("N/A")
