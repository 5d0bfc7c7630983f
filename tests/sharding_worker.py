"""Subprocess body for tests/test_sharding.py and tests/test_multihost.py.

Forced host devices (``XLA_FLAGS``) and ``jax.distributed`` must be set before JAX starts,
so each configuration runs in a fresh process. The worker explains the same images and
targets with and without ``mesh=`` and saves both, so the parent compares them against
each other and against its own single-process, unsharded result.

Usage: python sharding_worker.py OUT.npz MODEL METHODS DEVICES [PROCESS_ID NUM_PROCESSES PORT]
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    out, model_name, methods, devices = argv[:4]
    multi = len(argv) > 4
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(devices)}"
    import jax

    if multi:
        pid, nproc, port = int(argv[4]), int(argv[5]), int(argv[6])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    import numpy as np
    from jax.sharding import Mesh

    import crp_jax as cj

    model, variables, meta, x, targets = problem(model_name)
    mesh = Mesh(np.array(jax.devices()), ("batch",))  # global: every process's devices
    result = {"devices": np.int64(len(jax.devices())), "processes": np.int64(jax.process_count())}
    first = methods.split(",")[0]
    result[f"auto_chunk2_{first}"] = cj.explain(
        model, variables, x, targets, method=first, meta=meta, mesh="auto" if not multi else mesh, chunk_size=2
    )
    for m in methods.split(","):
        result[f"sharded_{m}"] = cj.explain(model, variables, x, targets, method=m, meta=meta, mesh=mesh)
        if not multi:
            result[f"plain_{m}"] = cj.explain(model, variables, x, targets, method=m, meta=meta)
    np.savez(out, **result)
    if multi:
        jax.distributed.shutdown()


def problem(model_name: str):
    """The shipped model (128 px), the shipped SSDlite (256 px, depthwise convs, SE, residual
    adds; random weights of its architecture when weights/ssdlite.* is absent) or SSD300
    (random weights, seed 0); 3 images (not a multiple of 2 or 4 devices) with targets spread
    unevenly over them (5, 1, 2 for the shipped models; 2, 0, 1 for SSD300), class targets of
    several contrasts and loc targets."""
    import numpy as np

    import crp_jax as cj

    if model_name == "shipped":
        model, variables, meta = cj.load_pretrained()
        per_image = (5, 1, 2)
    elif model_name == "ssdlite":
        from crp_jax.errors import CheckpointError

        try:
            model, variables, meta = cj.load_pretrained("ssdlite")
        except CheckpointError:
            from crp_jax.ssd.build import build_detector, init_variables
            from crp_jax.training import TrainConfig

            cfg = TrainConfig.preset("ssdlite")
            model = build_detector(cfg.model_config())
            variables, meta = init_variables(model, seed=0), cfg.meta()
        per_image = (5, 1, 2)
    else:
        from crp_jax.ssd import SSD, Meta, SSDConfig

        cfg = SSDConfig.ssd300_vgg16(21)
        model = SSD(cfg)
        variables = cj.init_variables(model, seed=0)
        meta = Meta(cfg, tuple(f"c{k}" for k in range(21)), mean=(0.48, 0.46, 0.41), std=(0.23, 0.22, 0.23))
        per_image = (2, 0, 1)
    S = model.config.image_size
    A, K = model.config.num_anchors(), model.config.num_classes
    rng = np.random.default_rng(7)
    x = rng.uniform(-1.5, 1.5, size=(3, S, S, 3)).astype(np.float32)
    targets = []
    for b, n in enumerate(per_image):
        for j in range(n):
            a = int(rng.integers(A))
            if j % 3 == 2:
                targets.append(cj.LocTarget(b, a, "cx" if j % 2 else "h", -1 if j % 4 else 1))
            else:
                targets.append(cj.ClassTarget(b, a, int(rng.integers(1, K)), None if j % 2 else "none"))
    return model, variables, meta, x, targets


if __name__ == "__main__":
    main(sys.argv[1:])
