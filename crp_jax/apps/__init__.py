"""Application code shared by the command line and scripts: what to explain about an image's
detections (:mod:`~crp_jax.apps.explanations`) and how the results are laid out as figures
(:mod:`~crp_jax.apps.figures`). No argument handling here (that is :mod:`crp_jax.cli`);
nothing in the library below (``relevance``, ``ssd``, ``data``) imports this package.
"""
