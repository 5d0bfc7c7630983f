"""Training checkpoints: flax msgpack files ``ckpt_00001000.msgpack`` holding the
parameters, the optimiser state, the step and the run's :class:`TrainConfig` as JSON,
written atomically (temporary file, then rename); nothing is pickled. :func:`read_checkpoint`
is the one reader (training's resume and any tool that evaluates a checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from crp_jax.errors import CheckpointError
from crp_jax.training.config import TrainConfig

__all__ = [
    "CKPT_PREFIX",
    "CKPT_SUFFIX",
    "CheckpointRecord",
    "checkpoint_path",
    "default_ckpt_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
]

CKPT_PREFIX = "ckpt_"
CKPT_SUFFIX = ".msgpack"
CKPT_FORMAT = "crp-jax-train-checkpoint-1"


def checkpoint_path(ckpt_dir, step: int) -> Path:
    """``ckpt_dir/ckpt_<step, 8 digits>.msgpack``."""
    return Path(ckpt_dir) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def default_ckpt_dir(cfg: TrainConfig) -> Path:
    """``$XDG_CACHE_HOME/crp-jax/train/<hash>`` (``~/.cache`` when unset): one folder per
    set of result-relevant settings, so the same command finds its checkpoints again with
    ``--resume`` and runs with other settings never share a folder."""
    key = json.dumps(cfg.result_dict(), sort_keys=True).encode()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crp-jax" / "train" / hashlib.sha256(key).hexdigest()[:16]


def list_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        name = p.name
        if name.startswith(CKPT_PREFIX) and name.endswith(CKPT_SUFFIX):
            digits = name[len(CKPT_PREFIX) : -len(CKPT_SUFFIX)]
            if digits.isdigit():
                out.append((int(digits), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir) -> Path | None:
    """The newest checkpoint in ``ckpt_dir`` (highest step), or None."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(ckpt_dir, state: dict, cfg: TrainConfig, keep: int | None = None) -> Path:
    """Write ``state`` (params, optimiser state, step) and the config to
    ``ckpt_dir/ckpt_<step>.msgpack`` (flax msgpack, atomic rename); keep the newest ``keep``."""
    step = int(jax.device_get(state["step"]))
    path = checkpoint_path(ckpt_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": CKPT_FORMAT,
        "step": np.asarray(step, np.int64),
        "train_config": json.dumps(cfg.to_dict()),
        "params": serialization.to_state_dict(jax.device_get(state["params"])),
        "opt_state": serialization.to_state_dict(jax.device_get(state["opt_state"])),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(record))
    os.replace(tmp, path)
    keep = cfg.keep_checkpoints if keep is None else keep
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


@dataclass(frozen=True)
class CheckpointRecord:
    """A training checkpoint as read from disk: ``step``, the run's :class:`TrainConfig`
    (``config``) and the state dicts of ``params`` and ``opt_state`` (numpy leaves)."""

    path: Path
    step: int
    config: TrainConfig
    params: dict
    opt_state: Any


def read_checkpoint(path) -> CheckpointRecord:
    """Read a checkpoint written by :func:`save_checkpoint` without a template (for tools
    that only need the parameters: ``{"params": record.params}`` fits ``SSD(record.config.
    model_config())``). Raises :class:`CheckpointError` naming ``path`` for a missing or
    unreadable file, a file that is not a crp-jax training checkpoint, or a config that
    does not parse."""
    path = Path(path)
    try:
        record = serialization.msgpack_restore(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from None
    except Exception as e:  # msgpack raises many types on garbage
        raise CheckpointError(f"{path}: not a crp-jax training checkpoint ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a crp-jax training checkpoint")
    try:
        config = TrainConfig.from_dict(json.loads(record["train_config"]))
        step = int(record["step"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable training config in checkpoint: {e}") from None
    return CheckpointRecord(path, step, config, record.get("params"), record.get("opt_state"))


def load_checkpoint(path, template: dict, cfg: TrainConfig | None = None) -> dict:
    """Restore a state written by :func:`save_checkpoint` into the structure of
    ``template`` (from :func:`crp_jax.training.init_state`). With ``cfg``, refuse a
    checkpoint of a run whose result-relevant settings differ."""
    rec = read_checkpoint(path)
    path = rec.path
    if cfg is not None:
        a, b = rec.config.result_dict(), cfg.result_dict()
        diff = sorted(k for k in a if a[k] != b.get(k))
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a[k]!r} vs now {b[k]!r}" for k in diff)
            raise CheckpointError(
                f"{path}: checkpoint was made with other settings ({detail}); resume with the same settings or another --ckpt-dir"
            )
    try:
        params = serialization.from_state_dict(template["params"], rec.params)
        opt_state = serialization.from_state_dict(template["opt_state"], rec.opt_state)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint does not fit this model/optimiser: {e}") from None
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = jax.tree_util.tree_map(jnp.asarray, opt_state)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(rec.step, jnp.int32)}
