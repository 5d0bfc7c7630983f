"""explain over images sharded across devices equals the unsharded result.

Runs in a subprocess because the CPU device count must be set before jax starts."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    import crp_jax as cj
    from jax.sharding import Mesh
    from crp_jax.ssd import SSD, SSDConfig, Meta
    from crp_jax.ssd.meta import default_class_names
    assert len(jax.devices()) == 4, jax.devices()
    cfg = SSDConfig.small(num_classes=5, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = cj.init_variables(model, 0)
    meta = Meta(cfg, default_class_names(5), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = np.random.default_rng(0).uniform(-2, 2, (3, 64, 64, 3)).astype(np.float32)
    t = [cj.ClassTarget(2, 5, 3), cj.ClassTarget(0, 100, 2), cj.LocTarget(2, 7, "cx", 1),
         cj.ClassTarget(1, 9, 1, (2,)), cj.ClassTarget(2, 60, 4)]
    ref = cj.explain(model, variables, x, t, method="crp", meta=meta)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    got = cj.explain(model, variables, x, t, method="crp", meta=meta, mesh=mesh)
    auto = cj.explain(model, variables, x, t, method="crp", meta=meta, mesh="auto", chunk_size=2)
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(got - ref).max() <= 1e-6 * scale, np.abs(got - ref).max()
    assert np.abs(auto - ref).max() <= 1e-6 * scale, np.abs(auto - ref).max()
    print("SHARDED_OK", np.abs(got - ref).max(), scale)
    """
)


def test_sharded_explain_equals_unsharded():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
