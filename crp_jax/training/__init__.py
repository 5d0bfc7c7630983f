"""Training the embedded default SSD on the generated glyph data set.

Modules: :mod:`~crp_jax.training.config` (:class:`TrainConfig`, every setting of a run),
:mod:`~crp_jax.training.loop` (:func:`train`, batches, the jitted step, interrupts),
:mod:`~crp_jax.training.checkpoints`, :mod:`~crp_jax.training.optimizer`,
:mod:`~crp_jax.training.augment`. The detector side of the objective (box matching, the
multibox loss) is :mod:`crp_jax.ssd.loss`; the command line is ``crp-jax train``
(:mod:`crp_jax.cli.train`)::

    from crp_jax.training import TrainConfig, train
    model, variables, meta = train(TrainConfig(steps=100, ckpt_dir="/tmp/ckpt"))
"""

from crp_jax.training.checkpoints import (
    CheckpointRecord,
    default_ckpt_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from crp_jax.training.config import TRAIN_PRESETS, TrainConfig
from crp_jax.training.loop import TrainingInterrupted, batch_for_step, init_state, make_train_step, train
from crp_jax.training.optimizer import make_optimizer, make_schedule

__all__ = [
    "CheckpointRecord",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainingInterrupted",
    "batch_for_step",
    "default_ckpt_dir",
    "init_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
