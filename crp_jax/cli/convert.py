"""``crp-jax convert``: a PyTorch SSD300 or SSDlite320 checkpoint to crp-jax weights. The parser and the
body live with the converter (:func:`crp_jax.ssd.convert.convert_main`); this module only
puts the command under the common exit policy (:mod:`crp_jax.cli.app`)."""

from __future__ import annotations

from crp_jax.cli.app import PROG

__all__ = ["convert_main"]


def convert_main(argv=None, prog: str = f"{PROG} convert") -> int:
    """``crp-jax convert SRC.pth OUT.msgpack [--format ...] [--classes NAME ...]``: 0 on
    success, 2 on a usage error, 1 on a runtime error (one line); an interrupt or an
    unexpected error is handled by the caller, :func:`crp_jax.cli.app.run_command`."""
    from crp_jax.ssd.convert import convert_main as run

    return run(argv)
