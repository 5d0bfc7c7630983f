"""Multi-host explanation, run for real: two processes on 127.0.0.1 joined with
``jax.distributed``, each with 2 CPU devices (gloo collectives), one global 4-device mesh.

Each process must get the whole relevance, equal to a single-process unsharded run.
An earlier version returned relevance 60% of max|R| off here (docs/design.md, "Sharding").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import crp_jax as cj

WORKER = Path(__file__).with_name("sharding_worker.py")
ROOT = WORKER.parent.parent
METHODS = ("crp", "lrp_ab", "gradient")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_a_global_mesh_each_get_the_single_process_result(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outs = [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(outs[i]), "shipped", ",".join(METHODS), "2", str(i), "2", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=900)[0])
    finally:
        for p in procs:  # never leave a process behind (one may hang waiting for the other)
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)

    sys.path.insert(0, str(WORKER.parent))
    from sharding_worker import problem

    model, variables, meta, x, targets = problem("shipped")
    for m in METHODS:
        ref = cj.explain(model, variables, x, targets, method=m, meta=meta)
        scale = np.abs(ref).max()
        assert scale > 0
        for i, out in enumerate(outs):
            r = np.load(out)
            assert int(r["devices"]) == 4 and int(r["processes"]) == 2
            err = np.abs(r[f"sharded_{m}"] - ref).max()
            assert err <= 1e-5 * scale, f"process {i}, {m}: off by {err:.3g} where max|R| is {scale:.3g}"
