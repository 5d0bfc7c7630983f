"""The data splits: which data-set seed of :func:`crp_jax.data.generate_scene` is used for what.

The generator never repeats a scene, so a split is just a seed: training draws scenes of
``TRAIN_SEED`` (the default of ``TrainConfig.seed``), the validation mAP watched during
training uses ``VALIDATION_SEED`` and every reported quality number (``crp-jax evaluate``,
the demo, the quality benchmark, ``weights/TRAINING.md``) uses ``HELDOUT_SEED``. Training
refuses the two reserved seeds (:data:`RESERVED_SEEDS`). Every module reads them from here.
"""

from __future__ import annotations

__all__ = ["TRAIN_SEED", "VALIDATION_SEED", "HELDOUT_SEED", "RESERVED_SEEDS"]

#: Data-set seed of the training scenes by default (``crp-jax train --seed``).
TRAIN_SEED = 0
#: Data-set seed of the validation scenes watched during training (never trained on).
VALIDATION_SEED = 1_000_002
#: Data-set seed of the held-out test scenes (never trained on).
HELDOUT_SEED = 1_000_003
#: Seeds that training refuses.
RESERVED_SEEDS = (HELDOUT_SEED, VALIDATION_SEED)
