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
    # ceil mode with padding: the last window must start inside the input or the left padding
    (5, 5, 2, 2, 1, True),  # torch: 3x3 (a 4th window would start in the right padding)
    (3, 6, 2, 2, 1, True),  # 2 rows (dropped window), 4 columns (kept partial window)
    (5, 10, 3, 3, 1, True),  # 2 x 4: both sides drop a window that starts in the padding
    (6, 7, 3, 2, 1, True),  # 4 x 4: ceil adds a window in both directions
]


def _torch_size(n, k, s, p, ceil):
    """torch.nn.MaxPool2d's output size as its documentation states it (checked against a
    hand-worked table and torch itself below)."""
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


# Output sizes worked by hand from torch's rule: out = ceil((n + 2p - k) / s) + 1 windows, then
# drop the last one if it starts at or beyond n + p (in the right padding); the window i starts
# at input row i * s - p. Floor mode: (n + 2p - k) // s + 1.
#   (n, k, s, p): ceil, floor    working (ceil)
SIZES_BY_HAND = {
    (5, 2, 2, 1): (3, 3),  # ceil(5/2)+1 = 4; window 3 starts at 3*2-1 = 5 = n: dropped
    (3, 2, 2, 1): (2, 2),  # ceil(3/2)+1 = 3; window 2 starts at 3 = n: dropped
    (4, 2, 2, 1): (3, 3),  # ceil(4/2)+1 = 3; window 2 starts at 3 < 4: kept
    (5, 3, 3, 1): (2, 2),  # ceil(4/3)+1 = 3; window 2 starts at 5 = n: dropped
    (6, 3, 2, 1): (4, 3),  # ceil(5/2)+1 = 4; window 3 starts at 5 < 6: kept (floor: 3)
    (7, 3, 2, 1): (4, 4),  # (7+2-3)/2 = 3 exactly: ceil and floor agree
    (10, 4, 3, 2): (4, 4),  # ceil(10/3)+1 = 5; window 4 starts at 10 = n: dropped
    (6, 4, 4, 2): (2, 2),  # ceil(6/4)+1 = 3; window 2 starts at 6 = n: dropped
    (75, 2, 2, 0): (38, 37),  # SSD300's pool3
    (19, 3, 1, 1): (19, 19),  # SSD300's pool5
}


def _pool_shape(shape, k, s, p, ceil):
    """The output shape of ``max_pool`` on ``shape``, traced without compiling."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: max_pool(x, k, s, p, ceil_mode=ceil), x).shape


@pytest.mark.parametrize("n,k,s,p", list(SIZES_BY_HAND))
def test_pool_output_size_matches_hand_worked_table(n, k, s, p):
    ceil, floor = SIZES_BY_HAND[n, k, s, p]
    assert _pool_shape((1, n, n, 1), k, s, p, True) == (1, ceil, ceil, 1)
    assert _pool_shape((1, n, n, 1), k, s, p, False) == (1, floor, floor, 1)
    assert (_torch_size(n, k, s, p, True), _torch_size(n, k, s, p, False)) == (ceil, floor)


@pytest.mark.parametrize("ceil", [True, False])
def test_pool_output_size_matches_torch_maxpool2d(ceil):
    torch = pytest.importorskip("torch")
    for n in range(2, 12):
        for k in (2, 3, 4):
            for s in (1, 2, 3, 4):
                for p in range(0, k // 2 + 1):  # torch allows padding up to half the window
                    if n + 2 * p < k:
                        continue
                    want = torch.nn.MaxPool2d(k, s, padding=p, ceil_mode=ceil)(torch.zeros(1, 1, n, n + 3)).shape
                    got = _pool_shape((1, n, n + 3, 1), k, s, p, ceil)
                    assert got[1:3] == tuple(want[2:]), (n, k, s, p, ceil)


def test_pool_values_match_torch_in_ceil_mode_with_padding():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for H, W, k, s, p in [(5, 5, 2, 2, 1), (5, 10, 3, 3, 1), (6, 7, 3, 2, 1), (10, 9, 4, 3, 2)]:
        x = rng.normal(size=(1, H, W, 2)).astype(np.float32)
        want = torch.nn.MaxPool2d(k, s, padding=p, ceil_mode=True)(torch.from_numpy(x).permute(0, 3, 1, 2))
        got = max_pool(jnp.asarray(x), k, s, p, ceil_mode=True)
        np.testing.assert_array_equal(np.asarray(got), want.permute(0, 2, 3, 1).numpy())
