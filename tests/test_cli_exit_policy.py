"""One exit policy for every ``crp-jax`` command: an interrupt is exit 130 with one line, an
unexpected error exit 1 with one line (its type named), no traceback. The commands are
stopped at their first expensive call (loading weights, training, reading a checkpoint) by
monkeypatching it, so nothing is computed."""

from __future__ import annotations

import pytest

from crp_jax.cli import main
from crp_jax.cli.app import COMMANDS


def _argv(name: str, tmp_path) -> list[str]:
    return {
        "demo": ["--out", str(tmp_path / "demo")],
        "detect": [str(tmp_path / "image.png")],
        "explain": [str(tmp_path / "image.png"), "--out", str(tmp_path / "out")],
        "evaluate": ["--n", "2"],
        "train": ["--steps", "2", "--out", str(tmp_path / "w.msgpack"), "--ckpt-dir", str(tmp_path / "ck")],
        "convert": [str(tmp_path / "src.pth"), str(tmp_path / "out.msgpack")],
        "report": [str(tmp_path / "image.png"), "--out", str(tmp_path / "report")],
    }[name]


def _stop_first_expensive_call(monkeypatch, exc: BaseException) -> None:
    def stop(*args, **kwargs):
        raise exc

    import crp_jax.cli.train
    import crp_jax.ssd.convert
    import crp_jax.ssd.io

    monkeypatch.setattr(crp_jax.ssd.io, "load_pretrained", stop)  # demo, detect, explain, report, evaluate
    monkeypatch.setattr(crp_jax.cli.train, "train", stop)
    monkeypatch.setattr(crp_jax.ssd.convert, "load_torch_state_dict", stop)


def test_every_command_is_covered():
    assert {c.name for c in COMMANDS} == {"demo", "detect", "explain", "report", "evaluate", "train", "convert"}


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_an_interrupt_is_exit_130_with_one_line(name, tmp_path, monkeypatch, capsys):
    _stop_first_expensive_call(monkeypatch, KeyboardInterrupt())
    rc = main([name, *_argv(name, tmp_path)])
    err = capsys.readouterr().err
    assert rc == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith(f"crp-jax {name}: interrupted"), err


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_an_unexpected_error_is_exit_1_with_one_line_naming_its_type(name, tmp_path, monkeypatch, capsys):
    _stop_first_expensive_call(monkeypatch, RuntimeError("boom\nsecond line"))
    rc = main([name, *_argv(name, tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.strip().splitlines() == [f"crp-jax {name}: error: RuntimeError: boom"]
