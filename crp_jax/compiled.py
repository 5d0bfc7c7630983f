"""Owner of the package's compiled functions and traced plans, one named cache per kind.

Every jitted function or traced plan that is reused across calls (the explain engine's forward
and backward per model, composite and chunk; the cropped backward per anchor group; crop plans
and sign facts per model and shapes; detection's jitted forward per model) is built by a
function decorated with :func:`cached`. Keys are the builder's positional arguments (frozen,
hashable things: Flax modules, composites, shape tuples). An unhashable key (a module holding
arrays) builds afresh every time: correct, only slower.

:func:`cache_info` lists every cache with its entries, hits, misses and the number of XLA
programs its jitted functions compiled; :func:`clear_caches` empties them (benchmarks use it to
time cold starts).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CacheInfo:
    """One cache's counters. ``compilations``: XLA programs compiled by the jitted functions
    it holds now (one per distinct input shape they were called with)."""

    name: str
    entries: int
    hits: int
    misses: int
    compilations: int


class FunctionCache:
    """A least-recently-used cache of what ``build(*key)`` returns, registered by name."""

    def __init__(self, name: str, build: Callable, maxsize: int):
        if name in _CACHES:
            raise ValueError(f"a compiled-function cache named {name!r} exists already")
        self.name, self._build, self.maxsize = name, build, maxsize
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict = {}  # key -> lock held by the thread building it
        self.hits = self.misses = 0
        _CACHES[name] = self
        functools.update_wrapper(self, build)

    def __call__(self, *key: Any):
        try:
            hash(key)
        except TypeError:  # an unhashable model or argument: no cache (correct, only slower)
            return self._build(*key)
        with self._lock:
            if key in self._entries:
                return self._hit(key)
            building = self._building.setdefault(key, threading.RLock())
        # one builder per key: a thread asking for a key another thread is building (the CLI
        # runs methods in threads) waits for it instead of tracing the same program again;
        # other keys build meanwhile (building may trace for seconds)
        with building:
            with self._lock:
                if key in self._entries:
                    return self._hit(key)
                self.misses += 1
            try:
                value = self._build(*key)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._entries[key] = value
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
                self._building.pop(key, None)
        return value

    def _hit(self, key):  # with self._lock held
        self.hits += 1
        self._entries.move_to_end(key)
        return self._entries[key]

    def values(self) -> list:
        """The cached values, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def info(self) -> CacheInfo:
        values = self.values()
        return CacheInfo(self.name, len(values), self.hits, self.misses, sum(map(_compilations, values)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


_CACHES: dict[str, FunctionCache] = {}


def cached(name: str, maxsize: int = 16) -> Callable[[Callable], FunctionCache]:
    """Decorator: the function becomes a :class:`FunctionCache` named ``name`` (positional
    arguments only; they are the key)."""
    return lambda build: FunctionCache(name, build, maxsize)


def cache_info() -> dict[str, CacheInfo]:
    """Every cache of compiled functions and plans the package has created, by name."""
    return {name: cache.info() for name, cache in _CACHES.items()}


def clear_caches() -> None:
    """Drop every compiled function and plan (the next call traces and compiles again; XLA's
    persistent compilation cache on disk, where enabled, is not touched)."""
    for cache in _CACHES.values():
        cache.clear()


def shape_key(tree: Any) -> tuple:
    """``(treedef, ((shape, dtype name), ...))`` of a pytree of arrays (model variables): a
    hashable key for what is built from shapes only. Leaves without a dtype raise
    AttributeError."""
    import jax
    import numpy as np

    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(np.shape(v)), np.dtype(v.dtype).name) for v in leaves)


def shape_tree(key: tuple) -> Any:
    """The pytree of ``jax.ShapeDtypeStruct`` that :func:`shape_key` describes."""
    import jax

    treedef, specs = key
    return treedef.unflatten([jax.ShapeDtypeStruct(s, d) for s, d in specs])


def _compilations(value: Any) -> int:
    """XLA programs held by the jitted functions in ``value`` (a function or a tuple of them)."""
    if isinstance(value, (tuple, list)):
        return sum(map(_compilations, value))
    size = getattr(value, "_cache_size", None)  # jax.jit's wrapped function
    return int(size()) if callable(size) else 0
