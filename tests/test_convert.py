"""Converters from torchvision / ssd.pytorch SSD300 state dicts.

The key lists below are the ground truth the converters are checked against without torch:
TORCHVISION_KEYS was printed from
``torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
num_classes=21).state_dict()`` (torchvision 0.29.1; ``test_torchvision_keys_match_torchvision``
re-checks it when torchvision is installed), SSDPYTORCH_KEYS is amdegroot/ssd.pytorch's
``build_ssd("test", 300, 21)`` (re-checked against the hand-built replica below).
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from crp_jax.cli.convert import convert_main
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd import convert, io
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import (
    SSDPYTORCH_MEAN,
    SSDPYTORCH_STD,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    VOC_CLASSES,
)
from crp_jax.ssd.model import SSD


def _parse(text: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in text.strip().splitlines():
        key, shape = line.split()
        out[key] = tuple(int(s) for s in shape.split(","))
    return out


# name [out,in,kh,kw] for weights, [out] for biases; each conv listed as its weight (bias = out).
_TV_CONVS = """
backbone.features.0 64,3,3,3
backbone.features.2 64,64,3,3
backbone.features.5 128,64,3,3
backbone.features.7 128,128,3,3
backbone.features.10 256,128,3,3
backbone.features.12 256,256,3,3
backbone.features.14 256,256,3,3
backbone.features.17 512,256,3,3
backbone.features.19 512,512,3,3
backbone.features.21 512,512,3,3
backbone.extra.0.1 512,512,3,3
backbone.extra.0.3 512,512,3,3
backbone.extra.0.5 512,512,3,3
backbone.extra.0.7.1 1024,512,3,3
backbone.extra.0.7.3 1024,1024,1,1
backbone.extra.1.0 256,1024,1,1
backbone.extra.1.2 512,256,3,3
backbone.extra.2.0 128,512,1,1
backbone.extra.2.2 256,128,3,3
backbone.extra.3.0 128,256,1,1
backbone.extra.3.2 256,128,3,3
backbone.extra.4.0 128,256,1,1
backbone.extra.4.2 256,128,3,3
head.classification_head.module_list.0 84,512,3,3
head.classification_head.module_list.1 126,1024,3,3
head.classification_head.module_list.2 126,512,3,3
head.classification_head.module_list.3 126,256,3,3
head.classification_head.module_list.4 84,256,3,3
head.classification_head.module_list.5 84,256,3,3
head.regression_head.module_list.0 16,512,3,3
head.regression_head.module_list.1 24,1024,3,3
head.regression_head.module_list.2 24,512,3,3
head.regression_head.module_list.3 24,256,3,3
head.regression_head.module_list.4 16,256,3,3
head.regression_head.module_list.5 16,256,3,3
"""

_SP_CONVS = """
vgg.0 64,3,3,3
vgg.2 64,64,3,3
vgg.5 128,64,3,3
vgg.7 128,128,3,3
vgg.10 256,128,3,3
vgg.12 256,256,3,3
vgg.14 256,256,3,3
vgg.17 512,256,3,3
vgg.19 512,512,3,3
vgg.21 512,512,3,3
vgg.24 512,512,3,3
vgg.26 512,512,3,3
vgg.28 512,512,3,3
vgg.31 1024,512,3,3
vgg.33 1024,1024,1,1
extras.0 256,1024,1,1
extras.1 512,256,3,3
extras.2 128,512,1,1
extras.3 256,128,3,3
extras.4 128,256,1,1
extras.5 256,128,3,3
extras.6 128,256,1,1
extras.7 256,128,3,3
loc.0 16,512,3,3
loc.1 24,1024,3,3
loc.2 24,512,3,3
loc.3 24,256,3,3
loc.4 16,256,3,3
loc.5 16,256,3,3
conf.0 84,512,3,3
conf.1 126,1024,3,3
conf.2 126,512,3,3
conf.3 126,256,3,3
conf.4 84,256,3,3
conf.5 84,256,3,3
"""


def _keys(convs: str, l2key: str) -> dict[str, tuple[int, ...]]:
    out = {l2key: (512,)}
    for name, shape in _parse(convs).items():
        out[f"{name}.weight"] = shape
        out[f"{name}.bias"] = shape[:1]
    return out


TORCHVISION_KEYS = _keys(_TV_CONVS, "backbone.scale_weight")
SSDPYTORCH_KEYS = _keys(_SP_CONVS, "L2Norm.weight")
ANCHORS = (4, 6, 6, 6, 4, 4)
CLS_PREFIX = {"torchvision": "head.classification_head.module_list.", "ssd.pytorch": "conf."}


def _shapes(fmt: str, num_classes: int = 21) -> dict[str, tuple[int, ...]]:
    base = TORCHVISION_KEYS if fmt == "torchvision" else SSDPYTORCH_KEYS
    out = dict(base)
    for k, a in enumerate(ANCHORS):
        w = f"{CLS_PREFIX[fmt]}{k}.weight"
        out[w] = (a * num_classes,) + base[w][1:]
        out[f"{CLS_PREFIX[fmt]}{k}.bias"] = (a * num_classes,)
    return out


def numpy_state_dict(fmt: str, num_classes: int = 21, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in _shapes(fmt, num_classes).items()}


@pytest.fixture(scope="module")
def tv_sd():
    return numpy_state_dict("torchvision")


@pytest.fixture(scope="module")
def sp_sd():
    return numpy_state_dict("ssd.pytorch")


# ---------------------------------------------------------------------------------------
# key layout (no torch needed)
# ---------------------------------------------------------------------------------------
def test_key_maps_cover_documented_layouts():
    assert set(convert.torch_key_map("torchvision")) == set(TORCHVISION_KEYS)
    assert set(convert.torch_key_map("ssd.pytorch")) == set(SSDPYTORCH_KEYS)
    ours = set(io.expected_shapes(SSDConfig.ssd300_vgg16()))
    for fmt in convert.FORMATS:
        km = convert.torch_key_map(fmt)
        assert sorted(km.values()) == sorted(ours)  # a bijection onto our variables
    km = convert.torch_key_map("torchvision")
    assert km["backbone.features.21.weight"] == "params/conv4_3/kernel"
    assert km["backbone.extra.0.7.1.weight"] == "params/conv6/kernel"
    assert km["backbone.extra.4.2.bias"] == "params/conv11_2/bias"
    km = convert.torch_key_map("ssd.pytorch")
    assert km["vgg.28.weight"] == "params/conv5_3/kernel"
    assert km["vgg.33.weight"] == "params/conv7/kernel"
    assert km["extras.3.weight"] == "params/conv9_2/kernel"
    assert km["conf.5.bias"] == "params/cls_5/bias"


def test_convert_torchvision_numpy(tv_sd):
    model, variables, meta = convert.convert_torchvision_ssd(tv_sd)
    assert isinstance(model, SSD) and model.config == SSDConfig.ssd300_vgg16(21)
    assert meta.class_names == VOC_CLASSES and meta.source == "torchvision"
    assert meta.mean == TORCHVISION_MEAN and meta.std == TORCHVISION_STD
    p = variables["params"]
    np.testing.assert_array_equal(p["conv1_1"]["kernel"], tv_sd["backbone.features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["conv6"]["kernel"], tv_sd["backbone.extra.0.7.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["conv10_1"]["bias"], tv_sd["backbone.extra.3.0.bias"])
    np.testing.assert_array_equal(p["l2norm"]["scale"], tv_sd["backbone.scale_weight"])
    np.testing.assert_array_equal(
        p["cls_3"]["kernel"], tv_sd["head.classification_head.module_list.3.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(p["loc_5"]["bias"], tv_sd["head.regression_head.module_list.5.bias"])
    assert all(a.dtype == np.float32 for a in io.flatten_variables(variables).values())


@pytest.mark.parametrize("num_classes", [2, 7])
def test_num_classes_from_heads(num_classes):
    sd = numpy_state_dict("torchvision", num_classes, seed=1)
    _, _, meta = convert.convert_torchvision_ssd(sd)
    assert meta.num_classes == num_classes
    assert meta.class_names == ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))
    names = [f"c{i}" for i in range(1, num_classes)]
    _, _, meta = convert.convert_torchvision_ssd(sd, class_names=names)  # foreground only
    assert meta.class_names == ("__background__", *names)
    _, _, meta = convert.convert_torchvision_ssd(sd, class_names=["bg", *names])
    assert meta.class_names == ("bg", *names)
    with pytest.raises(ConfigError, match=f"{num_classes} classes"):
        convert.convert_torchvision_ssd(sd, class_names=["a"] * (num_classes + 3))


def test_module_prefix_and_torch_like_values(tv_sd):
    class FakeTensor:  # duck-typed like a torch tensor
        def __init__(self, a):
            self.a, self.shape = a, a.shape

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    sd = {f"module.{k}": FakeTensor(v) for k, v in tv_sd.items()}
    _, variables, _ = convert.convert_torchvision_ssd(sd)
    np.testing.assert_array_equal(variables["params"]["conv7"]["bias"], tv_sd["backbone.extra.0.7.3.bias"])


def test_torchvision_errors_list_torch_keys(tv_sd):
    sd = dict(tv_sd)
    del sd["backbone.features.5.bias"]
    del sd["head.regression_head.module_list.2.weight"]
    sd["backbone.features.7.weight"] = np.zeros((128, 64, 3, 3), np.float32)
    sd["backbone.scale_weight"] = np.zeros((256,), np.float32)
    sd["num_batches_tracked"] = np.zeros((), np.float32)
    with pytest.raises(CheckpointError) as e:
        convert.convert_torchvision_ssd(sd)
    msg = str(e.value)
    assert "missing keys (2)" in msg
    assert "backbone.features.5.bias" in msg and "head.regression_head.module_list.2.weight" in msg
    assert "unexpected keys (1): num_batches_tracked" in msg
    assert "backbone.features.7.weight expected (128, 128, 3, 3) found (128, 64, 3, 3)" in msg
    assert "backbone.scale_weight expected (512,) found (256,)" in msg


def test_inconsistent_heads(tv_sd):
    sd = dict(tv_sd)
    sd["head.classification_head.module_list.4.weight"] = np.zeros((4 * 9, 256, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"module_list\.4\.weight expected \(84, 256, 3, 3\)"):
        convert.convert_torchvision_ssd(sd)
    sd = dict(tv_sd)
    sd["head.classification_head.module_list.0.weight"] = np.zeros((83, 512, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match="A=4 anchors per cell"):
        convert.convert_torchvision_ssd(sd)


def test_not_a_state_dict(tv_sd, sp_sd):
    with pytest.raises(CheckpointError, match="mapping"):
        convert.convert_torchvision_ssd([1, 2, 3])
    with pytest.raises(CheckpointError, match="missing keys"):
        convert.convert_torchvision_ssd({"foo": np.zeros(3)})
    with pytest.raises(CheckpointError, match="neither"):
        convert.convert_state_dict({"foo": np.zeros(3)})
    with pytest.raises(CheckpointError, match="not a numeric array"):
        convert.convert_torchvision_ssd({**tv_sd, "backbone.scale_weight": np.array(["x"] * 512)})
    with pytest.raises(CheckpointError, match="missing keys"):  # the other layout
        convert.convert_torchvision_ssd(sp_sd)
    assert convert.detect_format(tv_sd) == "torchvision"
    assert convert.detect_format(sp_sd) == "ssd.pytorch"


def test_convert_ssdpytorch_numpy(sp_sd):
    model, variables, meta = convert.convert_ssdpytorch(sp_sd)
    assert model.config == SSDConfig.ssd300_vgg16_ssdpytorch(21)
    assert meta.source == "ssd.pytorch" and meta.mean == SSDPYTORCH_MEAN and meta.std == SSDPYTORCH_STD
    p = variables["params"]
    # conv1_1 takes RGB: its input channels are ssd.pytorch's BGR ones reversed.
    np.testing.assert_array_equal(p["conv1_1"]["kernel"], sp_sd["vgg.0.weight"].transpose(2, 3, 1, 0)[:, :, ::-1])
    np.testing.assert_array_equal(p["conv1_2"]["kernel"], sp_sd["vgg.2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["conv8_2"]["kernel"], sp_sd["extras.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["cls_2"]["bias"], sp_sd["conf.2.bias"])
    np.testing.assert_array_equal(p["l2norm"]["scale"], sp_sd["L2Norm.weight"])
    sd = dict(sp_sd)
    del sd["extras.6.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): extras\.6\.bias"):
        convert.convert_ssdpytorch(sd)


def _priorbox_ssdpytorch() -> np.ndarray:
    """amdegroot/ssd.pytorch ``layers/functions/prior_box.py`` with its VOC config."""
    feature_maps, steps = [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    min_sizes, max_sizes = [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315]
    ars = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    mean = []
    for k, f in enumerate(feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = 300 / steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = min_sizes[k] / 300
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (max_sizes[k] / 300))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in ars[k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return np.clip(np.asarray(mean, dtype=np.float32).reshape(-1, 4), 0, 1)


def test_ssdpytorch_config_matches_its_priors():
    anchors = pytest.importorskip("crp_jax.ssd.anchors")
    ours = anchors.default_boxes(SSDConfig.ssd300_vgg16_ssdpytorch())
    ref = _priorbox_ssdpytorch()
    assert ours.shape == ref.shape == (8732, 4)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


# ---------------------------------------------------------------------------------------
# .pth reading and the command line (torch needed only where it writes .pth files)
# ---------------------------------------------------------------------------------------
def test_load_torch_state_dict_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "x.pth"
    path.write_bytes(b"whatever")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(CheckpointError, match=re.escape("pip install 'crp-jax[convert]'")):
        convert.load_torch_state_dict(path)


def test_load_torch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(CheckpointError, match="no such file"):
        convert.load_torch_state_dict(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError) as e:
        convert.load_torch_state_dict(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    sd = {"a.weight": torch.ones(2, 3), "a.bias": torch.zeros(2)}
    for wrap in (lambda s: s, lambda s: {"model": s, "epoch": 3}, lambda s: {"state_dict": s}):
        p = tmp_path / "ok.pth"
        torch.save(wrap(sd), p)
        got = convert.load_torch_state_dict(p)
        assert set(got) == set(sd)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        convert.load_torch_state_dict(tmp_path / "list.pth")


def test_convert_main(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    sd = numpy_state_dict("torchvision", num_classes=3, seed=2)
    src = tmp_path / "tv.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, src)
    out = tmp_path / "out" / "tv.msgpack"
    assert convert_main([str(src), str(out), "--classes", "cat", "dog"]) == 0
    assert "3 classes" in capsys.readouterr().out
    model, variables, meta = io.load_weights(out)
    assert meta.class_names == ("__background__", "cat", "dog") and meta.source == "torchvision"
    np.testing.assert_array_equal(
        variables["params"]["conv5_2"]["kernel"], sd["backbone.extra.0.3.weight"].transpose(2, 3, 1, 0)
    )
    # runtime errors: 1 and one line, no traceback
    assert convert_main([str(tmp_path / "nope.pth"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "nope.pth" in err and "Traceback" not in err and err.count("\n") == 1
    assert convert_main([str(src), str(out), "--format", "ssd.pytorch"]) == 1
    assert "missing keys" in capsys.readouterr().err
    assert convert_main([str(src), str(out), "--classes", "a"]) == 1
    capsys.readouterr()
    # usage errors: 2
    assert convert_main([str(src)]) == 2
    assert convert_main([str(src), str(out), "--format", "caffe"]) == 2
    assert convert_main(["--help"]) == 0


# ---------------------------------------------------------------------------------------
# ssd.pytorch equivalence: a hand-built replica of amdegroot's SSD300 with random weights
# ---------------------------------------------------------------------------------------
def _ssdpytorch_module(torch, num_classes: int):
    nn, F = torch.nn, torch.nn.functional

    class L2Norm(nn.Module):
        def __init__(self, n_channels, scale):
            super().__init__()
            self.weight = nn.Parameter(torch.full((n_channels,), float(scale)))
            self.eps = 1e-10

        def forward(self, x):
            norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
            return self.weight[None, :, None, None] * (x / norm)

    def vgg():
        layers, c = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif v == "C":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        layers += [
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
        ]
        return layers

    def extras():
        return [
            nn.Conv2d(1024, 256, 1),
            nn.Conv2d(256, 512, 3, stride=2, padding=1),
            nn.Conv2d(512, 128, 1),
            nn.Conv2d(128, 256, 3, stride=2, padding=1),
            nn.Conv2d(256, 128, 1),
            nn.Conv2d(128, 256, 3),
            nn.Conv2d(256, 128, 1),
            nn.Conv2d(128, 256, 3),
        ]

    class SSD300(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_classes = num_classes
            self.vgg = nn.ModuleList(vgg())
            self.L2Norm = L2Norm(512, 20)
            self.extras = nn.ModuleList(extras())
            chans = [512, 1024, 512, 256, 256, 256]
            self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(chans, ANCHORS))
            self.conf = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(chans, ANCHORS))

        def forward(self, x):
            sources, loc, conf = [], [], []
            for k in range(23):
                x = self.vgg[k](x)
            sources.append(self.L2Norm(x))
            for k in range(23, len(self.vgg)):
                x = self.vgg[k](x)
            sources.append(x)
            for k, v in enumerate(self.extras):
                x = F.relu(v(x), inplace=True)
                if k % 2 == 1:
                    sources.append(x)
            for x, l, c in zip(sources, self.loc, self.conf):
                loc.append(l(x).permute(0, 2, 3, 1).contiguous())
                conf.append(c(x).permute(0, 2, 3, 1).contiguous())
            loc = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
            conf = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
            return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, self.num_classes)

    return SSD300()


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_ssdpytorch_equivalence():
    torch = pytest.importorskip("torch")
    import jax

    torch.manual_seed(0)
    net = _ssdpytorch_module(torch, num_classes=6).eval()
    # Variance-preserving weights so that the input reaches the heads (torch's default init
    # shrinks the signal ~6x per layer and the outputs would be mostly biases).
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.uniform_(m.bias, -0.1, 0.1)
        net.L2Norm.weight.uniform_(10.0, 30.0)
    sd = net.state_dict()
    assert set(sd) == set(convert.torch_key_map("ssd.pytorch"))  # the documented layout
    model, variables, meta = convert.convert_ssdpytorch(sd)
    assert meta.num_classes == 6

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(1, 300, 300, 3)).astype(np.float32)
    ours_in = (rgb / 255.0 - np.float32(SSDPYTORCH_MEAN)) / np.float32(SSDPYTORCH_STD)  # RGB
    bgr = rgb[..., ::-1] - np.float32([104.0, 117.0, 123.0])  # ssd.pytorch's own preprocessing
    with torch.no_grad():
        t_loc, t_conf = net(torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))))
    t_loc, t_conf = t_loc.numpy(), t_conf.numpy()
    apply = jax.jit(model.apply)
    j_conf, j_loc = (np.asarray(a) for a in apply(variables, ours_in.astype(np.float32)))
    assert j_conf.shape == t_conf.shape == (1, 8732, 6) and j_loc.shape == t_loc.shape == (1, 8732, 4)
    assert _rel(j_conf, t_conf) < 1e-4, _rel(j_conf, t_conf)
    assert _rel(j_loc, t_loc) < 1e-4, _rel(j_loc, t_loc)
    # The input matters: feeding our model BGR (no flip) is far off.
    w_conf, _ = (np.asarray(a) for a in apply(variables, np.ascontiguousarray(ours_in[..., ::-1])))
    assert _rel(w_conf, t_conf) > 1e-2


def test_coco_class_names_for_91_classes():
    from crp_jax.ssd.meta import default_class_names

    names = default_class_names(91)
    assert len(names) == 91 and names[0] == "__background__"
    # COCO ids (instances_*.json categories): 1 person, 17 cat, 18 dog, 90 toothbrush; 12 unused
    assert (names[1], names[17], names[18], names[90], names[12]) == ("person", "cat", "dog", "toothbrush", "N/A")
    assert sum(n == "N/A" for n in names) == 10  # 80 real categories
    pytest.importorskip("torchvision")
    from torchvision.models.detection import SSD300_VGG16_Weights

    assert list(names) == list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])


# ---------------------------------------------------------------------------------------
# error lines of `crp-jax convert`: torch's wording filtered, output suffix checked
# ---------------------------------------------------------------------------------------
class NotATensor:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def test_torch_load_errors_carry_no_ansi_codes_and_no_unsafe_advice(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from crp_jax.cli import main

    src = tmp_path / "objects.pth"
    torch.save({"model": NotATensor()}, src)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02garbage" * 50)
    for path, diagnosis in ((src, "Unsupported global"), (garbage, "Unsupported operand")):
        with pytest.raises(CheckpointError) as e:
            convert.load_torch_state_dict(path)
        msg = str(e.value)
        assert str(path) in msg and diagnosis in msg  # torch's own diagnosis is kept
        assert "\x1b" not in msg and "\n" not in msg
        assert not re.search(r"weights_only`? (set to `?|=)False|re-?run|safe_globals", msg, re.I), msg
        capsys.readouterr()
        assert main(["convert", str(path), str(tmp_path / "out.msgpack")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "\x1b" not in err and "False" not in err and diagnosis in err


@pytest.mark.parametrize("name", ["X.json", "X.pth", "X.weights.v2"])
def test_convert_refuses_an_output_suffix_it_would_not_write(tmp_path, capsys, name):
    from crp_jax.cli import main

    src = tmp_path / "in.pth"
    src.write_bytes(b"never read")  # the output name is checked first
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert f"OUT must be NAME.msgpack or NAME, got {tmp_path / name}" in err
    assert list(tmp_path.iterdir()) == [src]  # nothing written


def test_convert_without_suffix_writes_and_prints_name_msgpack(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    sd = numpy_state_dict("torchvision", num_classes=3, seed=1)
    src = tmp_path / "tv.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
    assert convert_main([str(src), str(tmp_path / "X")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'X.msgpack'} + {tmp_path / 'X.json'}" in out
    assert (tmp_path / "X.msgpack").is_file() and (tmp_path / "X.json").is_file()
