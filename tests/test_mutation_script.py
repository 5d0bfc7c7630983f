"""benchmarks/mutation.py: its mutant list is well formed, and on a two-file toy project a
mutant the toy test notices is "killed", one it does not is "SURVIVED", a missing snippet is
"stale", and the mutated file is restored afterwards."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutation():
    name = "crp_benchmarks_mutation"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_mutant_list_is_well_formed(mutation):
    names = [m.name for m in mutation.MUTANTS]
    assert len(names) == len(set(names)) and len(names) >= 14
    issue_16 = {"detect_score_ge", "nms_unstable_sort", "batched_nms_no_final_sort", "pool_ceil_window_in_padding"}
    assert issue_16 <= set(names)
    for m in mutation.MUTANTS:
        assert m.original != m.replacement, m.name
        assert (ROOT / m.file).is_file(), m.name
        assert m.tests and all((ROOT / t).is_file() for t in m.tests), m.name


def test_verdicts_on_a_toy_project(mutation, tmp_path):
    (tmp_path / "toy.py").write_text("def add(a, b):\n    return a + b\n\n\ndef unused():\n    return 1\n")
    (tmp_path / "test_toy.py").write_text("from toy import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    Mutant = mutation.Mutant
    cases = {
        "killed": Mutant("sign", "toy.py", "return a + b", "return a - b", ("test_toy.py",)),
        "SURVIVED": Mutant("dead", "toy.py", "return 1", "return 2", ("test_toy.py",)),
        "stale": Mutant("gone", "toy.py", "return a * b", "return a", ("test_toy.py",)),
    }
    before = (tmp_path / "toy.py").read_text()
    for want, m in cases.items():
        verdict, _, last = mutation.run_mutant(m, tmp_path, timeout=120, whole_files=False)
        assert verdict == want, (m.name, verdict, last)
        assert (tmp_path / "toy.py").read_text() == before  # restored


def test_list_option_prints_every_mutant(mutation, capsys):
    assert mutation.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{m.name}:" in out for m in mutation.MUTANTS)
    with pytest.raises(SystemExit):
        mutation.main(["--only", "no_such_mutant"])
