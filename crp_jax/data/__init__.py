"""Procedurally generated glyph-detection data (docs/design.md §4).

Seeded, deterministic scenes of bold capital letters on cluttered backgrounds, with boxes,
labels, per-object visible-ink masks and *discriminative-part* masks (what tells E from F,
Q from O, R from P). Nothing is stored; every scene is generated on demand::

    from crp_jax.data import SceneSpec, generate_scene, make_batch, CLASS_NAMES, PAIRS
    scene = generate_scene(seed=0, index=17)                  # Scene
    batch = make_batch(0, range(32), SceneSpec(image_size=128))  # dict of numpy arrays

See :mod:`crp_jax.data.scenes` for the exact definitions of boxes and masks,
:mod:`crp_jax.data.glyphs` for the font and the pair geometry and :mod:`crp_jax.data.splits`
for the data-set seeds of the splits (training, validation, held-out test).
"""

from crp_jax.data.glyphs import (
    CLASS_NAMES,
    FOREGROUND_CLASSES,
    INK_THRESHOLD,
    LARGER,
    NUM_CLASSES,
    PAIRS,
    PARTNER,
    SMALLER,
    STROKE_FRACTION,
    Glyph,
    GlyphPair,
    class_index,
    default_stroke_width,
    partner_label,
    render_glyph,
    render_pair,
)
from crp_jax.data.scenes import (
    STREAM_VERSION,
    Scene,
    SceneSpec,
    generate_dataset,
    generate_scene,
    iter_scenes,
    make_batch,
)
from crp_jax.data.splits import HELDOUT_SEED, RESERVED_SEEDS, TRAIN_SEED, VALIDATION_SEED

__all__ = [
    "CLASS_NAMES",
    "FOREGROUND_CLASSES",
    "HELDOUT_SEED",
    "INK_THRESHOLD",
    "LARGER",
    "NUM_CLASSES",
    "PAIRS",
    "PARTNER",
    "RESERVED_SEEDS",
    "SMALLER",
    "STREAM_VERSION",
    "STROKE_FRACTION",
    "TRAIN_SEED",
    "VALIDATION_SEED",
    "Glyph",
    "GlyphPair",
    "Scene",
    "SceneSpec",
    "class_index",
    "default_stroke_width",
    "generate_dataset",
    "generate_scene",
    "iter_scenes",
    "make_batch",
    "partner_label",
    "render_glyph",
    "render_pair",
]
