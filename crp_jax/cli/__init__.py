"""The ``crp-jax`` command line (console script ``crp-jax = crp_jax.cli:main``; also
``python -m crp_jax``).

Subcommands::

    crp-jax demo     [--out DIR] [--seed N] [--index I] [--weights NAME|FILE] ...
    crp-jax detect   IMAGE... [--weights NAME|FILE] [--score-threshold 0.5] [--out DIR]
    crp-jax explain  IMAGE... --out DIR [--method M] [--target cls|cx|cy|w|h] [--sign +|-]
                     [--contrast others|foreground|CLASS...] [--compare methods|classes|none]
                     [--shard K/N]
    crp-jax train | evaluate | convert ...

Modules: :mod:`~crp_jax.cli.app` (command table, dispatch, the exit policy: 0 ok, 2 usage,
1 runtime error, 130 interrupted), :mod:`~crp_jax.progress` (the progress bar, shared with training and evaluation),
:mod:`~crp_jax.cli.common` (shared options, sharding, the per-image loop) and one module per
command group: :mod:`~crp_jax.cli.explain` (demo, detect, explain), :mod:`~crp_jax.cli.train`,
:mod:`~crp_jax.cli.evaluate`, :mod:`~crp_jax.cli.convert`.
"""

from crp_jax.cli.app import main

__all__ = ["main"]
