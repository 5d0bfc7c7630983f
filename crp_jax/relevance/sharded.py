"""The sharded path: images and their targets spread over the devices of a mesh (one or many
processes), the dense path's compiled functions run as one SPMD program per call.

The forward runs on the whole image batch at once, sharded along the batch axis, and each
backward call takes slots of every image (:mod:`crp_jax.relevance.dense`). The VJP's
residuals then keep the model's kernels unbatched: vmapping a per-image forward over the
images instead made every kernel residual ``[B, ...]``, which JAX lowers to a grouped
convolution over the batch that XLA's SPMD partitioner split incorrectly (docs/design.md §6;
``tests/test_sharding.py`` checks the program has no such convolution).
"""

from __future__ import annotations

import jax
import numpy as np

from crp_jax.errors import ConfigError
from crp_jax.relevance.dense import compiled_functions
from crp_jax.relevance.schedule import plan_sharded, slot_arrays


def explain_sharded(job, mesh, raise_not_finite) -> np.ndarray:
    """Relevance ``[T, H, W, C]`` of ``job``'s targets (an ``explain`` job: images ``xs``,
    encoded targets, composite) on ``mesh`` (a ``jax.sharding.Mesh`` whose first axis shards
    the images, or "auto" for every device). Every image gets the same slots (the largest
    count, rounded up to a whole call; unused slots have zero initial relevance); the batch
    is padded to a multiple of the device count with copies of a real image."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if isinstance(mesh, str) and mesh == "auto":
        mesh = Mesh(np.array(jax.devices()), ("batch",))
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh or 'auto', got {mesh!r}")
    xs, images = job.xs, job.images
    axis = mesh.axis_names[0]
    n_dev = mesh.shape[axis]
    B, T = xs.shape[0], len(images)
    Bp = -(-B // n_dev) * n_dev
    batch = plan_sharded(images, B, job.chunk_size)
    width, idx = batch.width, batch.dense
    A, C, L = slot_arrays(
        batch.rows, batch.slots, job.anchors[idx], job.cls_coef[idx], job.loc_coef[idx], Bp, batch.num_slots
    )
    xp = np.concatenate([xs, np.repeat(xs[:1], Bp - B, axis=0)])
    sharded = NamedSharding(mesh, PartitionSpec(axis))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(a):
        # Each process supplies the shards of its own devices (works on one or many hosts).
        return jax.make_array_from_callback(a.shape, sharded, lambda idx: a[idx])

    fwd, bwd = compiled_functions(job.model, job.comp, width, job.num_boxes)
    x_dev = put(xp)
    host_vars = jax.tree.map(np.asarray, job.variables)
    rep_vars = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, replicated, lambda i: a[i]), host_vars)
    ok, vjp_b = fwd(rep_vars, x_dev)
    out = np.empty((T,) + xs.shape[1:], np.float32)  # every target lands in one slot
    for start, pos in batch.calls():
        sl = slice(start, start + width)
        R = _gather(bwd(vjp_b, x_dev, put(A[:, sl]), put(C[:, sl]), put(L[:, sl])))  # [Bp, width, ...]
        out[idx[pos]] = R[batch.rows[pos], batch.slots[pos] - start]
    if not bool(_gather(ok)):
        raise_not_finite(list(range(B)))
    return out


def _gather(a) -> np.ndarray:
    if a.is_fully_addressable:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
