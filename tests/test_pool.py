"""Max-pool with precomputed winner masks (crp_jax/ssd/pool.py) against independent references:
a numpy loop over windows (first maximum in row-major order), torch-style output sizes,
and jax's own reduce_window derivative; and relevance routing through it in the engine."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.relevance import Composite, relevance_vjp, rules
from crp_jax.ssd.pool import max_pool

CASES = [  # (H, W, window, stride, padding, ceil_mode)
    (8, 8, 2, 2, 0, False),
    (7, 9, 2, 2, 0, False),  # floor mode drops the last row/column
    (7, 9, 2, 2, 0, True),  # ceil mode adds a partial window
    (75, 75, 2, 2, 0, True),  # SSD300's conv3 -> 38x38
    (7, 7, 3, 1, 1, False),  # SSD's pool5: overlapping windows
    (9, 8, 3, 2, 1, False),  # overlapping and strided
    (9, 8, 3, 2, 0, True),
    (8, 8, 2, 3, 0, False),  # stride > window: gaps no window reads
]


def _torch_size(n, k, s, p, ceil):
    if ceil:
        out = -(-(n + 2 * p - k) // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


def _windows(H, W, k, s, p, ho, wo):
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - p, j * s - p
            rows = [r for r in range(r0, r0 + k) if 0 <= r < H]
            cols = [c for c in range(c0, c0 + k) if 0 <= c < W]
            yield i, j, rows, cols


def _winners(x, k, s, p, ceil):
    """``(ho, wo)`` and, per output ``(i, j, c)``, the ``(row, col)`` of its window's first
    maximum in row-major order; ``x [H, W, C]``."""
    H, W, C = x.shape
    ho, wo = _torch_size(H, k, s, p, ceil), _torch_size(W, k, s, p, ceil)
    won = {}
    for i, j, rows, cols in _windows(H, W, k, s, p, ho, wo):
        for c in range(C):
            win = x[np.ix_(rows, cols, [c])][:, :, 0]
            a, b = np.unravel_index(np.argmax(win), win.shape)
            won[i, j, c] = rows[a], cols[b]
    return (ho, wo), won


def _reference(x, g, k, s, p, ceil):
    """Forward max and the routed cotangent, ``x [H, W, C]``, ``g [ho, wo, C]``."""
    (ho, wo), won = _winners(x, k, s, p, ceil)
    y = np.zeros((ho, wo, x.shape[2]), x.dtype)
    dx = np.zeros_like(x)
    for (i, j, c), (r, q) in won.items():
        y[i, j, c] = x[r, q, c]
        dx[r, q, c] += g[i, j, c]
    return y, dx


@pytest.mark.parametrize("H,W,k,s,p,ceil", CASES)
def test_forward_and_vjp_match_window_loop(H, W, k, s, p, ceil):
    rng = np.random.default_rng(H * 100 + W + k)
    x = rng.integers(0, 4, size=(H, W, 2)).astype(np.float32)  # many ties
    y, vjp = jax.vjp(lambda x: max_pool(x, k, s, p, ceil), jnp.asarray(x)[None])
    g = rng.normal(size=y.shape[1:]).astype(np.float32)
    y_ref, dx_ref = _reference(x, g, k, s, p, ceil)
    np.testing.assert_array_equal(np.asarray(y)[0], y_ref)
    (dx,) = vjp(jnp.asarray(g)[None])
    np.testing.assert_allclose(np.asarray(dx)[0], dx_ref, atol=1e-6)


@pytest.mark.parametrize("H,W,k,s,p,ceil", CASES)
def test_jvp_picks_the_winners_tangent(H, W, k, s, p, ceil):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(H, W, 3)).astype(np.float32)
    t = rng.normal(size=x.shape).astype(np.float32)
    _, dy = jax.jvp(lambda x: max_pool(x, k, s, p, ceil), (jnp.asarray(x)[None],), (jnp.asarray(t)[None],))
    # The JVP is the adjoint of the reference VJP: dy[o] = t[winner(o)].
    (ho, wo), won = _winners(x, k, s, p, ceil)
    want = np.zeros((ho, wo, 3), np.float32)
    for (i, j, c), (r, q) in won.items():
        want[i, j, c] = t[r, q, c]
    np.testing.assert_allclose(np.asarray(dy)[0], want, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_matches_jax_reduce_window_gradient_and_vmaps_over_cotangents(ties):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 20, 20, 5)).astype(np.float32)
    if ties:  # e.g. all-zero windows after a ReLU: same winner as select_and_scatter
        x = np.maximum(np.round(x), 0)
    x = jnp.asarray(x)
    for k, s, p in [(2, 2, 0), (3, 1, 1)]:
        pads = ((p, p), (p, p))
        ours = jax.vjp(lambda x: max_pool(x, k, s, p), x)
        theirs = jax.vjp(lambda x: nn.max_pool(x, (k, k), strides=(s, s), padding=pads), x)
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))
        gs = jnp.asarray(rng.normal(size=(4,) + ours[0].shape).astype(np.float32))
        a = jax.jit(jax.vmap(lambda g: ours[1](g)[0]))(gs)
        b = jax.vmap(lambda g: theirs[1](g)[0])(gs)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_second_order_and_non_finite_inputs():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 6, 2)).astype(np.float32))

    def f(x):
        return jnp.sum(max_pool(x, 2, 2) ** 2)

    # d/dx sum(y^2) = 2 y at the winners; its derivative again (Hessian-vector) = 2 t at winners.
    hv = jax.jvp(jax.grad(f), (x,), (jnp.ones_like(x),))[1]
    g = jax.grad(f)(x)
    np.testing.assert_allclose(np.asarray(hv), 2.0 * (np.asarray(g) != 0), atol=1e-6)
    xi = x.at[0, 0, 0, 0].set(jnp.inf).at[0, 2, 2, 1].set(-jnp.inf)
    dx = jax.grad(lambda x: jnp.sum(max_pool(x, 2, 2)))(xi)
    assert np.isfinite(np.asarray(dx)).all() and float(dx.sum()) == 18.0  # one winner per output


# ---- through the engine (relevance passes max-pooling as the gradient does) -------------


@pytest.mark.parametrize("window,stride,pad", [(3, 1, 1), (2, 2, 0)])
def test_maxpool_routes_to_winner_and_overlaps_add(window, stride, pad):
    rng = np.random.default_rng(3)
    x = rng.permutation(49).reshape(7, 7).astype(np.float32)
    x[3, 3] = 100.0  # one winner shared by all nine overlapping 3x3 windows around it

    def apply_fn(v, x):
        return max_pool(x, window, stride, padding=pad)

    xin = jnp.asarray(x)[None, :, :, None]
    out, efn = relevance_vjp(apply_fn, {}, xin, Composite(rules=((nn.Conv, rules.WPlus()),)))
    R = rng.normal(size=out.shape[1:3]).astype(np.float32)
    got = np.asarray(efn(jnp.asarray(R)[None, :, :, None]))[0, :, :, 0]
    want = _reference(x[:, :, None], R[:, :, None], window, stride, pad, False)[1][:, :, 0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    if window == 3:
        assert got[3, 3] == pytest.approx(R[2:5, 2:5].sum(), abs=1e-5)


def test_ceil_mode_pool_shape():
    x = jnp.zeros((1, 75, 75, 1))
    assert max_pool(x, 2, 2, ceil_mode=True).shape == (1, 38, 38, 1)
    assert max_pool(x, 2, 2).shape == (1, 37, 37, 1)
