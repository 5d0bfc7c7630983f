"""``python -m crp_jax``: the ``crp-jax`` command line (see :mod:`crp_jax.cli`)."""

from crp_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
