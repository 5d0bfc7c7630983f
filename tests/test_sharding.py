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


TINY_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from types import SimpleNamespace
    from jax.sharding import Mesh
    import crp_jax as cj
    from crp_jax.relevance.composite import get_composite
    from test_explain_reference import HIGH, LOW, _reference, _tiny
    assert len(jax.devices()) == 4, jax.devices()
    model, variables, x = _tiny()
    x = np.concatenate([x, x[:1] * 0.5])  # 3 images on 4 devices: one padded slot
    comp = get_composite("crp", SimpleNamespace(pixel_bounds=(tuple(LOW), tuple(HIGH))))
    t = [cj.ClassTarget(2, 4, 1), cj.LocTarget(0, 3, "h", -1), cj.ClassTarget(2, 8, 2, "none")]
    got = cj.explain(model, variables, x, t, method=comp, mesh="auto", chunk_size=2)
    want = [
        _reference(variables, x[2], cls_vec=[-0.5, 1.0, -0.5], anchor=4),
        _reference(variables, x[0], loc_vec=[0.0, 0.0, 0.0, -1.0], anchor=3),
        _reference(variables, x[2], cls_vec=[0.0, 0.0, 1.0], anchor=8),
    ]
    for g, w in zip(got, want):
        assert np.abs(w).max() > 1e-3
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    print("SHARDED_REFERENCE_OK")
    """
)


def test_sharded_explain_matches_float64_matrices():
    # The comparison above shares every rule with the unsharded path; this one does not.
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), tests, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", TINY_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "SHARDED_REFERENCE_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
