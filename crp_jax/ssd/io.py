"""Weights on disk in safe formats only (docs/design.md §4): flax msgpack plus a JSON sidecar.

A checkpoint is two files with the same stem:

- ``NAME.msgpack``: ``flax.serialization.msgpack_serialize`` of the variables as a nested
  dict of numpy arrays (``{"params": {"conv1_1": {"kernel": ..., "bias": ...}, ...}}``);
- ``NAME.json``: ``Meta.to_json()`` (architecture, class names, preprocessing, source).

Nothing here (or anywhere in crp_jax) unpickles anything. Every way a file can be wrong
(missing, not msgpack, not a variables tree, missing/bad sidecar, keys or shapes that do not
fit the architecture) raises :class:`crp_jax.errors.CheckpointError` naming the path.

``check_variables(model, variables)`` is the one place that compares a variables tree with
what ``model.init`` would create; the converters (``crp_jax.ssd.convert``) use it too. It
ends with :func:`check_finite`, which refuses arrays holding NaN or Inf (after the cast to
float32, so a float64 1e300 counts as Inf): every loader and ``save_weights`` go through it,
so non-finite weights never load and are never written.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.numerics import nonfinite_counts
from crp_jax.ssd.build import Detector, build_detector
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import Meta

WEIGHTS_SUFFIX = ".msgpack"
META_SUFFIX = ".json"
DEFAULT_NAME = "default"
#: Environment variable that overrides the folder ``load_pretrained`` looks in.
WEIGHTS_DIR_ENV = "CRP_JAX_WEIGHTS_DIR"

_MAX_LISTED = 25  # keys listed per category in an error message


# ---------------------------------------------------------------------------------------
# variables <-> expected tree
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def expected_shapes(config: SSDConfig, batchnorm: bool = False) -> dict[str, tuple[int, ...]]:
    """``{"params/conv1_1/kernel": (3, 3, 3, 64), ...}``: what ``build_detector(config,
    batchnorm=batchnorm).init`` creates (computed with ``jax.eval_shape``: no arrays are
    allocated). ``batchnorm`` only matters for SSDlite (saved checkpoints are folded)."""
    model = build_detector(config, batchnorm=batchnorm)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return {k: tuple(v.shape) for k, v in flatten_variables(tree).items()}


def flatten_variables(variables: Mapping) -> dict[str, Any]:
    """Nested mapping -> ``{"params/conv1_1/kernel": leaf}`` (keys joined with ``/``)."""
    if hasattr(variables, "unfreeze"):
        variables = variables.unfreeze()
    if not isinstance(variables, Mapping):
        raise CheckpointError(f"variables must be a nested mapping, got {type(variables).__name__}")
    flat = traverse_util.flatten_dict(_to_plain_dict(variables), sep="/")
    return flat


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_variables`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _to_plain_dict(tree):
    if isinstance(tree, Mapping):
        return {str(k): _to_plain_dict(v) for k, v in tree.items()}
    return tree


def _list(keys, limit: int = _MAX_LISTED, sep: str = ", ") -> str:
    keys = list(keys)
    shown = sep.join(keys[:limit])
    if len(keys) > limit:
        shown += f"{sep}... ({len(keys) - limit} more)"
    return shown


def variable_problems(
    config: SSDConfig, variables: Mapping, batchnorm: bool = False
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """``(missing, unexpected, misshaped)`` of ``variables`` against
    ``build_detector(config, batchnorm=batchnorm)``;
    ``misshaped`` holds ``(key, expected_shape, found_shape)``. Keys as in
    :func:`flatten_variables`. Leaves that are not arrays count as mis-shaped (found ``None``)."""
    expected = expected_shapes(config, batchnorm)
    found = flatten_variables(variables)
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    misshaped = []
    for k in sorted(set(expected) & set(found)):
        shape = getattr(found[k], "shape", None)
        shape = tuple(shape) if shape is not None else None
        if shape != expected[k]:
            misshaped.append((k, expected[k], shape))
    return missing, unexpected, misshaped


def format_problems(missing, unexpected, misshaped) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
    if misshaped:
        items = [f"{k} expected {tuple(e)} found {f if f is None else tuple(f)}" for k, e, f in misshaped]
        parts.append(f"mis-shaped keys ({len(misshaped)}): {_list(items)}")
    return "; ".join(parts)


def check_variables(model: Detector | SSDConfig, variables: Mapping, *, where: str | None = None) -> dict:
    """Check ``variables`` against the tree ``model.init`` would create.

    ``model``: an ``SSD``, an ``SSDLite`` (with or without BatchNorm) or an ``SSDConfig``
    (its :func:`~crp_jax.ssd.build.build_detector` module; SSDlite folded).
    Raises :class:`CheckpointError` listing missing keys, unexpected keys and mis-shaped
    keys (expected vs found shape). Returns the variables as a plain nested dict of float32
    numpy arrays (so FrozenDicts, jax arrays and float64 inputs all come out the same).
    ``where`` (a path or a description) prefixes the message.
    """
    config = getattr(model, "config", model)
    if not isinstance(config, SSDConfig):
        raise CheckpointError(f"check_variables needs an SSD/SSDLite model or SSDConfig, got {type(model).__name__}")
    batchnorm = bool(getattr(model, "batchnorm", False))
    missing, unexpected, misshaped = variable_problems(config, variables, batchnorm)
    flat = flatten_variables(variables)
    bad_dtype = []
    if not (missing or unexpected or misshaped):
        for k, v in flat.items():
            dt = getattr(v, "dtype", None)
            if dt is None or not np.issubdtype(np.dtype(dt), np.floating):
                bad_dtype.append(f"{k} ({dt})")
    if missing or unexpected or misshaped or bad_dtype:
        msg = format_problems(missing, unexpected, misshaped)
        if bad_dtype:
            msg = f"non-floating arrays: {_list(bad_dtype)}"
        prefix = f"{where}: " if where else ""
        hint = ""
        if config.backbone == "mobilenet_v3_large" and not batchnorm and any("/bn/" in k for k in unexpected):
            hint = " (an SSDlite with BatchNorm: fold it first with cj.fold_batchnorm(model, variables))"
        raise CheckpointError(f"{prefix}variables do not fit {_describe(config, batchnorm)}: {msg}{hint}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf: reported next
        flat32 = {k: np.asarray(v, dtype=np.float32) for k, v in flat.items()}
    check_finite(flat32, where=where)
    return unflatten_variables(flat32)


def check_finite(variables: Mapping, *, where: str | None = None) -> None:
    """Raise :class:`CheckpointError` if any array of ``variables`` (nested or flat mapping)
    holds NaN or Inf, naming each such array with its counts, e.g.
    ``"w.msgpack: non-finite values in 2 arrays: params/conv3_1/kernel: 2 NaN, 1 Inf values;
    ..."``. ``where`` (a path or a description) prefixes the message. Non-array leaves are
    not checked here (:func:`check_variables` refuses them)."""
    bad = []
    for k, v in flatten_variables(variables).items():
        nan, inf = nonfinite_counts(v)
        if nan or inf:
            bad.append(f"{k}: {nan} NaN, {inf} Inf values")
    if bad:
        prefix = f"{where}: " if where else ""
        arrays = "array" if len(bad) == 1 else "arrays"
        raise CheckpointError(f"{prefix}non-finite values in {len(bad)} {arrays}: {_list(bad, sep='; ')}")


def _describe(config: SSDConfig, batchnorm: bool = False) -> str:
    name = "SSD"
    if config.backbone == "mobilenet_v3_large":
        name = "SSDLite" if batchnorm else "SSDLite (folded)"
    return (
        f"{name}(num_classes={config.num_classes}, image_size={config.image_size}, width={config.width}, "
        f"sources={config.num_sources})"
    )


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------
def _paths(path) -> tuple[Path, Path]:
    """``(weights_path, sidecar_path)`` for a user path: ``NAME.msgpack``, ``NAME.json`` or
    ``NAME`` all name the pair ``NAME.msgpack`` + ``NAME.json``."""
    p = Path(os.fspath(path))
    if p.suffix == META_SUFFIX:
        p = p.with_suffix(WEIGHTS_SUFFIX)
    elif p.suffix == "":
        p = p.with_suffix(WEIGHTS_SUFFIX)
    return p, p.with_suffix(META_SUFFIX)


def save_weights(path, variables: Mapping, meta: Meta) -> Path:
    """Write ``variables`` to ``path`` (``.msgpack``; added when there is no suffix) and
    ``meta.to_json()`` to the sidecar with the same stem and ``.json``. The variables are
    checked against ``build_detector(meta.config)`` first (an SSDlite must be
    folded: :func:`crp_jax.ssd.fold.fold_batchnorm`), so a saved file always loads. Returns the
    weights path."""
    if not isinstance(meta, Meta):
        raise ConfigError(f"meta must be a crp_jax Meta, got {type(meta).__name__}")
    wpath, mpath = _paths(path)
    if wpath == mpath:
        raise ConfigError(f"weights path {path} would collide with its JSON sidecar")
    plain = check_variables(meta.config, variables, where=str(wpath))
    wpath.parent.mkdir(parents=True, exist_ok=True)
    data = serialization.msgpack_serialize(plain)
    tmp = wpath.with_name(wpath.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, wpath)
    mpath.write_text(meta.to_json() + "\n", encoding="utf-8")
    return wpath


def read_meta(path) -> Meta:
    """The :class:`Meta` of a checkpoint (reads only the JSON sidecar)."""
    wpath, mpath = _paths(path)
    if not mpath.is_file():
        raise CheckpointError(
            f"{wpath}: its metadata sidecar {mpath} is missing (a crp-jax checkpoint is "
            f"NAME{WEIGHTS_SUFFIX} + NAME{META_SUFFIX})"
        )
    try:
        text = mpath.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: cannot read the metadata sidecar: {e}") from None
    try:
        return Meta.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{mpath}: not a valid crp-jax metadata sidecar: {e}") from None


def load_weights(path) -> tuple[Detector, dict, Meta]:
    """Read a checkpoint written by :func:`save_weights`: ``(model, variables, meta)``.

    ``variables`` is a nested dict of float32 numpy arrays checked against
    ``build_detector(meta.config)`` (SSDlite: folded). Anything wrong raises :class:`CheckpointError` naming the path.
    """
    wpath, _ = _paths(path)
    if not wpath.is_file():
        raise CheckpointError(f"{wpath}: no such checkpoint file")
    meta = read_meta(wpath)
    try:
        data = wpath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{wpath}: cannot read: {e}") from None
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises many unrelated types on garbage
        raise CheckpointError(
            f"{wpath}: not a crp-jax weights file (flax msgpack could not decode it: {type(e).__name__})"
        ) from None
    if not isinstance(tree, Mapping) or not tree:
        raise CheckpointError(
            f"{wpath}: not a crp-jax weights file (decoded to {type(tree).__name__}, expected a "
            "nested mapping of arrays)"
        )
    model = build_detector(meta.config)
    variables = check_variables(model, tree, where=str(wpath))
    return model, variables, meta


def default_weights_dir() -> Path:
    """Where the shipped models live: ``$CRP_JAX_WEIGHTS_DIR`` if set; else the package
    data ``crp_jax.weights`` of an installed wheel (``pip install .``); else the repository's
    top-level ``weights/`` folder next to the ``crp_jax`` package (a checkout)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env)
    import crp_jax

    here = Path(crp_jax.__file__).resolve().parent
    for folder in (here / "weights", here.parent / "weights"):
        if (folder / f"{DEFAULT_NAME}.msgpack").is_file():
            return folder
    return here.parent / "weights"


#: The models shipped in ``weights/`` (``NAME.msgpack`` + ``NAME.json``), loaded by name.
SHIPPED_MODELS = {
    "default": "the small VGG SSD (128 px, width 0.125)",
    "ssdlite": "SSDlite-MobileNetV3-Large (256 px, width 0.35, folded BatchNorm-free form)",
}


#: Shipped TFLite graphs (``weights/NAME.tflite``), imported by ``crp_jax.blazeface``.
SHIPPED_TFLITE = {
    "blazeface": "MediaPipe BlazeFace short range (128 px, 896 anchors, face logit + box + 6 keypoints)",
    "blazeface_full": "MediaPipe BlazeFace full range (192 px, 2304 anchors)",
}


def load_pretrained(name=None) -> tuple[Detector, dict, Meta]:
    """A shipped model by name, or the checkpoint at a path: ``(model, variables, meta)``.

    ``name``: None or "default" (the small VGG SSD), "ssdlite" (SSDlite-MobileNetV3), both
    read from :func:`default_weights_dir` (offline; the files are produced by
    ``crp-jax train [--model ssdlite]``); "blazeface" / "blazeface_full" (MediaPipe's
    BlazeFace, imported from the shipped ``.tflite`` by :mod:`crp_jax.blazeface`; needs the
    ``[tflite]`` extra); anything else is a checkpoint path, as :func:`load_weights`. When a
    shipped file is missing the :class:`CheckpointError` says where it looked.
    """
    if name is None:
        name = DEFAULT_NAME
    if isinstance(name, str) and name in SHIPPED_TFLITE:
        from crp_jax.blazeface.presets import load_blazeface  # the detector package, not the engine

        return load_blazeface(name)
    if not (isinstance(name, str) and name in SHIPPED_MODELS):
        if isinstance(name, str) and os.sep not in name and not Path(name).suffix and not Path(name).exists():
            known = ", ".join(f"{k!r} ({v})" for k, v in {**SHIPPED_MODELS, **SHIPPED_TFLITE}.items())
            raise CheckpointError(f"no shipped model named {name!r} and no such file; shipped models: {known}")
        return load_weights(name)
    folder = default_weights_dir()
    wpath = folder / (name + WEIGHTS_SUFFIX)
    mpath = folder / (name + META_SUFFIX)
    if not wpath.is_file() or not mpath.is_file():
        missing = [str(p) for p in (wpath, mpath) if not p.is_file()]
        train = "crp-jax train" + ("" if name == DEFAULT_NAME else f" --model {name}")
        raise CheckpointError(
            f"no shipped {name!r} model: looked for {wpath} and {mpath} "
            f"(missing: {', '.join(missing)}). It is trained and saved there by "
            f"`{train} --out {wpath}`; set {WEIGHTS_DIR_ENV} to use another folder, or pass a path "
            "to load_pretrained(path) / load_weights(path)."
        )
    return load_weights(wpath)
