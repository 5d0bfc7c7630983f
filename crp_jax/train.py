"""Old name of :mod:`crp_jax.training` (kept while ``benchmarks/quality.py`` imports
``crp_jax.train.TrainConfig``; new code imports :mod:`crp_jax.training`)."""

from crp_jax.training import TrainConfig, read_checkpoint, train

__all__ = ["TrainConfig", "read_checkpoint", "train"]
