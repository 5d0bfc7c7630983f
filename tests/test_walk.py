"""The one jaxpr walker (crp_jax.relevance.walk) that signs, cones and the windowed backward
stand on: visiting order, calls, loops, dispatch and reshape grouping, against the traced
functions themselves and hand-written answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.relevance import walk


def _f(x, y):
    h = jax.jit(lambda a: jnp.tanh(a) * 2.0)(x)
    return h + y, jnp.sum(x)


def _evaluate(jaxpr, consts, args):
    """Evaluate a jaxpr with walk.forward, stepping into every call it can."""

    def step(i, eqn, ins):
        body = walk.call_body(eqn)
        if body is not None:
            return _evaluate(body[0], body[1], ins)
        out = eqn.primitive.bind(*ins, **eqn.params)
        return out if eqn.primitive.multiple_results else [out]

    return walk.forward(jaxpr, consts, args, step)


def test_forward_evaluates_like_the_function():
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    y = np.ones((2, 3), np.float32)
    closed = jax.make_jaxpr(_f)(x, y)
    got = _evaluate(closed.jaxpr, closed.consts, [x, y])
    want = _f(x, y)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_backward_reaches_exactly_the_inputs_an_output_reads():
    # union of "which outputs reach me" sets: output 0 reads x and y, output 1 reads only x
    closed = jax.make_jaxpr(_f)(jnp.ones((2, 3)), jnp.ones((2, 3)))

    def reach(jaxpr, outs):
        def step(i, eqn, reached):
            body = walk.call_body(eqn)
            if body is not None:
                return reach(body[0], reached)
            tag = frozenset().union(*(r for r in reached if r is not None))
            return [tag] * len(eqn.invars)

        return walk.backward(jaxpr, outs, step, frozenset.union)

    x, y = reach(closed.jaxpr, [frozenset({0}), frozenset({1})])
    assert x == {0, 1} and y == {0}
    x, y = reach(closed.jaxpr, [None, frozenset({1})])
    assert x == {1} and y is None


def test_call_body_steps_into_calls_never_into_loops():
    def scanned(x):
        return jax.lax.scan(lambda c, a: (c + a, c), 0.0, x)[0]

    def looped(x):
        return jax.lax.while_loop(lambda c: c < 10.0, lambda c: c + 1.0, x)

    called = jax.make_jaxpr(lambda x: jax.jit(jnp.sin)(x))(1.0).jaxpr.eqns
    assert walk.call_body(called[0]) is not None
    for fn, arg in ((scanned, jnp.ones(4)), (looped, 1.0)):
        (eqn,) = jax.make_jaxpr(fn)(arg).jaxpr.eqns
        assert eqn.primitive.name in ("scan", "while")
        assert walk.call_body(eqn) is None


class _Names(walk.Rules):
    def rule_sin(self, eqn):
        return "sin rule"

    def elementwise(self, eqn):
        return "elementwise"

    def fallback(self, eqn):
        return "fallback"


def test_rules_dispatch_order():
    eqns = jax.make_jaxpr(lambda x: jax.lax.cumsum(jnp.sin(x) + jnp.cos(x)))(jnp.ones(3)).jaxpr.eqns
    got = {e.primitive.name: _Names().apply(e) for e in eqns}
    assert got == {"sin": "sin rule", "cos": "elementwise", "add": "elementwise", "cumsum": "fallback"}
    assert "stop_gradient" in walk.ELEMENTWISE and "conv_general_dilated" not in walk.ELEMENTWISE
    with pytest.raises(NotImplementedError):
        walk.Rules().apply(eqns[-1])


@pytest.mark.parametrize(
    "old, new, groups",
    [
        ((2, 3), (6,), [((0, 2), (0, 1))]),
        ((1, 4, 4, 2), (1, 16, 2), [((0, 1), (0, 1)), ((1, 3), (1, 2)), ((3, 4), (2, 3))]),
        ((1, 5, 1), (5,), [((0, 2), (0, 1)), ((2, 3), (1, 1))]),
        ((2, 3), (3, 2), [((0, 2), (0, 2))]),
        ((4, 2, 3, 2, 5), (8, 6, 5), [((0, 2), (0, 1)), ((2, 4), (1, 2)), ((4, 5), (2, 3))]),
    ],
)
def test_reshape_groups(old, new, groups):
    got = walk.reshape_groups(old, new)
    assert got == groups
    for (i0, i1), (j0, j1) in got:  # each group keeps its number of elements
        assert np.prod(old[i0:i1]) == np.prod(new[j0:j1])
