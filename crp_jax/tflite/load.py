"""One call from a ``.tflite`` path to ``(model, variables, meta)``: :func:`load_tflite`.

The importer itself knows nothing about detectors. What makes a graph a *detector* for
crp-jax (which two tensors are the raw ``(cls [B, A, K], loc [B, A, R])``, which head convs
to call ``cls_<i>`` / ``loc_<i>``, anchors, decoding, regressor names) comes from the caller
(``outputs=``, ``rename=``, ``meta=``) or from a *preset*: any object with

- ``outputs``: the two tensor names ``(cls, loc)``,
- ``rename``: ``{conv output tensor name: module name}``,
- ``sha256``: the expected file hash or None,
- ``make_meta(graph) -> meta``.

Presets by name (``preset="blazeface"``) are looked up lazily in :data:`PRESETS`, so this
package imports no detector. Every loaded array is checked finite
(:func:`crp_jax.ssd.io.check_finite`), and the file's sha256 against the preset's.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.io import check_finite
from crp_jax.tflite.module import TFLiteModule, import_graph
from crp_jax.tflite.reader import Graph, read_graph

#: preset name -> "module:attribute" of the preset object (imported on first use).
PRESETS = {
    "blazeface": "crp_jax.blazeface.presets:SHORT_RANGE",
    "blazeface_full": "crp_jax.blazeface.presets:FULL_RANGE",
}


@dataclass(frozen=True)
class TFLiteMeta:
    """What :func:`load_tflite` knows about a graph loaded without a preset.

    Attributes:
      source: the file path; sha256: its hash.
      image_size: ``(H, W)`` of the graph input; channels: its C.
      output_names: the tensors the module returns, in order.
      pixel_bounds: ``(low, high)`` per channel of the model input if the caller gave them
        (the z^B rule needs them), else None.
    """

    source: str
    sha256: str
    image_size: tuple[int, int]
    channels: int
    output_names: tuple[str, ...]
    pixel_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def resolve_preset(preset):
    """A preset object from a name in :data:`PRESETS` (or the object itself)."""
    if preset is None or not isinstance(preset, str):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown TFLite preset {preset!r}; known: {sorted(PRESETS)}")
    module, attr = PRESETS[preset].split(":")
    return getattr(importlib.import_module(module), attr)


def load_tflite(
    path: str | os.PathLike,
    *,
    preset=None,
    outputs: tuple[str, ...] | None = None,
    rename: dict[str, str] | None = None,
    meta=None,
    pixel_bounds=None,
) -> tuple[TFLiteModule, dict, object]:
    """Import the TFLite graph at ``path``: ``(model, variables, meta)``.

    ``model.apply(variables, x)`` takes ``x [B, H, W, C]`` float (NHWC) and returns the
    tensors named ``outputs`` (Netron's names; default: the preset's ``(cls, loc)``, else the
    graph's own outputs), e.g. ``outputs=("classificators", "regressors")``; a graph whose raw
    outputs feed a custom ``TFLite_Detection_PostProcess`` op loads with ``outputs`` naming
    the tensors before it.

    Args:
      preset: a name in :data:`PRESETS` ("blazeface", "blazeface_full") or a preset object
        (module doc); supplies outputs, head-conv names, the file check and the meta.
      rename: conv output tensor name -> module name (``{"classificator_8": "cls_0"}``).
      meta: returned as is (the caller's detector description); default: the preset's, else
        a :class:`TFLiteMeta`.
      pixel_bounds: for the :class:`TFLiteMeta` of a graph loaded without preset or meta.

    Raises :class:`~crp_jax.errors.MissingExtraError` without the ``tflite`` package,
    :class:`~crp_jax.errors.GraphImportError` for an unsupported op, a quantized tensor or an
    unknown output name (each named), :class:`CheckpointError` for an unreadable file, a
    sha256 that differs from the preset's, or non-finite weights.
    """
    preset = resolve_preset(preset)
    graph = read_graph(path)
    if preset is not None:
        expected = getattr(preset, "sha256", None)
        if expected and graph.sha256 != expected:
            raise CheckpointError(
                f"{graph.source}: sha256 {graph.sha256} differs from the {getattr(preset, 'name', 'preset')!r} "
                f"file's {expected}; pass outputs=/rename=/meta= instead of preset= to load another graph"
            )
        outputs = preset.outputs if outputs is None else outputs
        rename = dict(preset.rename) if rename is None else rename
    model, variables = import_graph(graph, outputs, rename)
    check_finite(variables, where=graph.source)
    if meta is None:
        meta = preset.make_meta(graph) if preset is not None else _generic_meta(graph, model, pixel_bounds)
    return model, variables, meta


def _generic_meta(graph: Graph, model: TFLiteModule, pixel_bounds) -> TFLiteMeta:
    h, w, c = model.spec.input_hwc
    return TFLiteMeta(
        source=graph.source,
        sha256=graph.sha256,
        image_size=(h, w),
        channels=c,
        output_names=model.spec.output_names,
        pixel_bounds=pixel_bounds,
    )
