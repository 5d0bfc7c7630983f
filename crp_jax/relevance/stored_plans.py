"""Crop plans kept on disk beside JAX's persistent compilation cache.

JAX's cache (turned on by every ``crp-jax`` command, crp_jax/compile_cache.py) keeps compiled
XLA programs, not what Python computes before them. The crop plan of a model and composite
(:func:`crp_jax.relevance.cropped.crop_groups`: the windowed interpreter run over the backward
once per head output) was recomputed in every process: 0.4-1 s per method on the 2-core CPU,
most of a warm ``crp-jax explain`` (benchmarks/RESULTS.md, "explain and report: where the warm
seconds go"). So its result is stored as a small JSON file in ``crp-jax-plans/`` inside the
compilation-cache folder, when one is in use (``jax_compilation_cache_dir``; never otherwise).

The key is content-addressed: SHA-256 of the backward's jaxpr as text (the whole computation
the plan is read from, every shape and parameter), the plan's other inputs (image shape,
anchors, classes, regressors, gradient x input), the JAX version and the source of every
module of the package (a changed interpreter or rule makes new keys; stale files are simply
never read again). A file that cannot be read or does not have the expected form is ignored
and rewritten; writing is atomic and never fails the caller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

SUBDIR = "crp-jax-plans"
#: Fields of a stored group, in order (``CropGroup`` without ``image`` and ``spec``).
FIELDS = ("anchors", "grid", "window", "densified", "leaves")


@functools.cache
def _source_digest() -> str:
    """SHA-256 over the package's Python sources (relative path and bytes of each)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(str(file.relative_to(root)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def folder() -> Path | None:
    """``crp-jax-plans/`` in JAX's compilation-cache folder, or None when that is off."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / SUBDIR if base else None


def key(closed_jaxpr, **inputs) -> str:
    """The file name (without ``.json``) of the plan read from ``closed_jaxpr`` with
    ``inputs`` (JSON-able values)."""
    h = hashlib.sha256()
    h.update(_source_digest().encode())
    h.update(jax.__version__.encode())
    h.update(json.dumps(inputs, sort_keys=True).encode())
    h.update(str(closed_jaxpr.jaxpr).encode())
    for c in closed_jaxpr.consts:  # none for the detectors here; hashed by value if there are
        a = np.asarray(c)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stored_or_computed(closed_jaxpr, compute: Callable[[], list[dict]], **inputs) -> list[dict]:
    """The groups stored for ``closed_jaxpr`` and ``inputs``, else ``compute()``'s, which are
    then stored. Without a compilation cache nothing is hashed, read or written (the key
    prints the whole backward jaxpr, which only pays when a file can be reused)."""
    if folder() is None:
        return compute()
    name = key(closed_jaxpr, **inputs)
    groups = load(name)
    if groups is None:
        groups = compute()
        save(name, groups)
    return groups


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


def load(name: str) -> list[dict] | None:
    """The stored groups (``{field: value}`` per group, lists as tuples), or None."""
    base = folder()
    if base is None:
        return None
    try:
        data = json.loads((base / f"{name}.json").read_text())
        groups = [{f: _tuple(g[f]) for f in FIELDS} for g in data["groups"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return groups if all(_valid(g) for g in groups) else None


def _valid(g: dict) -> bool:
    ints = lambda t, n=None: isinstance(t, tuple) and all(type(i) is int for i in t) and (n is None or len(t) == n)  # noqa: E731
    return (
        ints(g["anchors"], 2)
        and (g["grid"] is None or ints(g["grid"], 2))
        and ints(g["window"], 2)
        and isinstance(g["densified"], tuple)
        and all(isinstance(s, str) for s in g["densified"])
        and ints(g["leaves"])
    )


def save(name: str, groups: list[dict]) -> None:
    """Store ``groups`` under ``name`` (atomically; errors are ignored: an optimisation only)."""
    base = folder()
    if base is None:
        return
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps({"groups": [{f: g[f] for f in FIELDS} for g in groups]}))
        os.replace(tmp, base / f"{name}.json")
    except (OSError, TypeError, ValueError):
        pass
