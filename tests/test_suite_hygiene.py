"""The test suite checks what it says it checks: an AST scan of ``tests/*.py`` for assertions
that can never fail.

Each pattern below once let a check pass silently (issue 16: ``assert_allclose(a, b) and
assert_allclose(c, d)`` never ran its second half, since ``assert_allclose`` returns None):

- an assertion call inside a boolean expression (``and`` / ``or``);
- ``assert (a, b)`` on a non-empty tuple, or ``assert "text"``: always true;
- a comparison, or an ``allclose`` / ``array_equal`` / ``.all()`` / ``.any()`` result, computed
  as a statement and thrown away;
- ``assert x, a == b``: the comparison sits in the message and is never checked;
- ``pytest.raises(...)`` / ``pytest.warns(...)`` called without ``with`` (and without a
  callable to run): it checks nothing;
- ``assert np.asarray(a) == b`` (an array built on the left or right of ``==`` / ``!=``): the
  truth value of an array is ambiguous, so it must say ``.all()`` or use ``np.testing``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent

# Calls whose only effect is to raise on failure: their value (None) means nothing.
_ASSERT_CALL_PREFIXES = ("assert_",)
# Calls that return a verdict which must be asserted, not dropped.
_VERDICT_CALLS = {"allclose", "array_equal", "array_equiv", "isclose", "all", "any", "approx"}
# numpy / jax.numpy functions that build an array (an array on either side of == is ambiguous).
_ARRAY_BUILDERS = {"array", "asarray", "zeros", "ones", "full", "arange", "linspace", "stack", "concatenate"}
_ARRAY_MODULES = {"np", "numpy", "jnp"}


def _call_name(node: ast.AST) -> str | None:
    """``f`` for ``f(...)`` and ``a.b.f(...)``; None for anything else."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_assert_call(node: ast.AST) -> bool:
    name = _call_name(node)
    return name is not None and name.startswith(_ASSERT_CALL_PREFIXES)


def _builds_array(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner = node.func.value
    return isinstance(owner, ast.Name) and owner.id in _ARRAY_MODULES and node.func.attr in _ARRAY_BUILDERS


def problems(source: str, filename: str = "<test>") -> list[str]:
    """``"file:line: what"`` for every never-failing check in ``source``."""
    tree = ast.parse(source, filename)
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.BoolOp):
            calls = [v for v in node.values if _is_assert_call(v)]
            if calls:
                report(node, f"{_call_name(calls[0])}(...) inside and/or: it returns None, so a part is skipped")
        elif isinstance(node, ast.Assert):
            test = node.test
            if isinstance(test, ast.Tuple) and test.elts:
                report(node, "assert on a non-empty tuple is always true")
            elif isinstance(test, ast.Constant) and isinstance(test.value, str) and test.value:
                report(node, "assert on a non-empty string is always true")
            if isinstance(node.msg, ast.Compare):
                report(node, "a comparison in the assert message is never checked")
            if isinstance(test, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in test.ops):
                if any(_builds_array(side) for side in [test.left, *test.comparators]):
                    report(node, "== on an array inside assert: use .all() or np.testing")
        elif isinstance(node, ast.Expr):
            value = node.value
            if isinstance(value, ast.Compare):
                report(node, "comparison result discarded")
            elif isinstance(value, ast.BoolOp) and all(isinstance(v, ast.Compare) for v in value.values):
                report(node, "comparison result discarded")
            elif _call_name(value) in _VERDICT_CALLS:
                report(node, f"{_call_name(value)}(...) result discarded")
            elif _call_name(value) in ("raises", "warns") and len(value.args) < 2:
                report(node, f"pytest.{_call_name(value)}(...) without `with` checks nothing")
    return found


def _test_files():
    return sorted(TESTS.glob("*.py"))


def test_the_suite_has_test_files_to_scan():
    names = {p.name for p in _test_files()}
    assert {"test_engine.py", "test_rules.py", "test_suite_hygiene.py"} <= names


@pytest.mark.parametrize("path", _test_files(), ids=lambda p: p.name)
def test_no_assertion_in_the_suite_can_pass_vacuously(path):
    assert problems(path.read_text(), path.name) == []


# ---- the checker itself finds each pattern (and leaves sound code alone) -------------------

BAD = {
    "assert_in_and": "np.testing.assert_allclose(a, b) and np.testing.assert_allclose(c, 0)",
    "assert_in_or": "assert_array_equal(a, b) or fail()",
    "assert_in_nested_boolop": "x = ok and np.testing.assert_allclose(a, b)",
    "assert_tuple": "assert (a == b, 'message')",
    "assert_string": "assert 'always true'",
    "comparison_in_message": "assert a, b == c",
    "discarded_comparison": "a == b",
    "discarded_chained_comparisons": "a == b and c < d",
    "discarded_allclose": "np.allclose(a, b)",
    "discarded_all": "(a == b).all()",
    "pytest_raises_without_with": "pytest.raises(ValueError)",
    "array_eq_in_assert": "assert np.asarray(a) == b",
    "array_ne_in_assert": "assert c != jnp.zeros(3)",
}

GOOD = {
    "assert_call_statement": "np.testing.assert_allclose(a, b)\nnp.testing.assert_allclose(c, 0)",
    "assert_and": "assert a and b",
    "assert_all": "assert (np.asarray(a) == b).all()",
    "assert_tuple_equality": "assert (a, b) == (1, 2)",
    "assert_with_message": "assert a == b, (a, b)",
    "with_raises": "with pytest.raises(ValueError):\n    f()",
    "raises_with_callable": "pytest.raises(ValueError, f, 1)",
    "assigned_verdict": "ok = np.allclose(a, b)\nassert ok",
}


@pytest.mark.parametrize("name", list(BAD))
def test_checker_flags_each_vacuous_pattern(name):
    assert len(problems(BAD[name])) == 1, BAD[name]


@pytest.mark.parametrize("name", list(GOOD))
def test_checker_leaves_sound_assertions_alone(name):
    assert problems(GOOD[name]) == [], GOOD[name]
