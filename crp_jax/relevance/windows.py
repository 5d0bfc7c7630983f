"""``RelevanceWindows``: many targets' relevance kept only on their receptive-field windows.

``explain_windows`` returns this instead of ``explain``'s dense ``[T, H, W, C]`` array.
A target's relevance is zero outside its anchor's cone, so for SSD300's first source a
target needs a 108 x 108 window instead of the 300 x 300 image (7.7x less memory; 1024
targets take 143 MiB instead of 1.1 GiB). Targets are stored in groups of equal window size
(one per detector source): ``windows[g]`` is ``[n_g, h_g, w_g, C]``, ``offsets[g]`` the
``[n_g, 2]`` top-left corners (row, column) and ``targets[g]`` the targets' positions in the
list given to ``explain``. Indexing one target (``rw[t]``) or :meth:`dense` gives the dense
arrays back, so ``cj.heatmap``, ``cj.viz`` and numpy code take either form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crp_jax.errors import InputError


@dataclass(frozen=True)
class RelevanceWindows:
    """Relevance of ``T`` targets on their windows.

    Attributes:
      shape: the dense shape, ``(T, H, W, C)`` (``(T, H, W)`` after :func:`cj.heatmap`).
      targets: per group, ``[n_g]`` int target indices.
      windows: per group, ``[n_g, h_g, w_g, ...]`` values on the windows (numpy, or
        ``jax.Array`` with ``explain(..., to_host=False)``).
      offsets: per group, ``[n_g, 2]`` int: each window's top-left (row, column) in the image.
    """

    shape: tuple[int, ...]
    targets: tuple[np.ndarray, ...]
    windows: tuple
    offsets: tuple[np.ndarray, ...]

    def __post_init__(self):
        if not (len(self.targets) == len(self.windows) == len(self.offsets)):
            raise InputError("RelevanceWindows needs as many target, window and offset groups")
        seen = np.concatenate([np.asarray(t, np.int64) for t in self.targets]) if self.targets else np.zeros(0)
        if len(seen) != self.shape[0] or len(np.unique(seen)) != len(seen):
            raise InputError(f"RelevanceWindows groups must hold each of the {self.shape[0]} targets once")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the windows (against ``prod(shape) * 4`` for the dense form)."""
        return int(sum(np.prod(w.shape) * w.dtype.itemsize for w in self.windows))

    def locate(self, t: int) -> tuple[int, int]:
        """``(group, row in group)`` of target ``t``."""
        if not isinstance(t, (int, np.integer)) or not -len(self) <= t < len(self):
            raise InputError(f"target index {t!r} out of range for {len(self)} targets")
        t = int(t) % len(self)
        for g, idx in enumerate(self.targets):
            hit = np.flatnonzero(np.asarray(idx) == t)
            if len(hit):
                return g, int(hit[0])
        raise InputError(f"target {t} is in no group")  # pragma: no cover - __post_init__ checks

    def window(self, t: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Target ``t``'s window ``[h, w, ...]`` and its top-left ``(row, column)``."""
        g, i = self.locate(t)
        top, left = (int(v) for v in np.asarray(self.offsets[g][i]))
        return np.asarray(self.windows[g][i]), (top, left)

    def __getitem__(self, t: int) -> np.ndarray:
        """Target ``t``'s dense relevance ``shape[1:]`` (zero outside its window)."""
        win, (top, left) = self.window(t)
        out = np.zeros(self.shape[1:], win.dtype)
        out[top : top + win.shape[0], left : left + win.shape[1]] = win
        return out

    def dense(self, targets: Sequence[int] | None = None) -> np.ndarray:
        """The dense relevance ``[T, H, W, ...]`` (or of the listed ``targets``, indexed like
        numpy: negative counts from the end, repeats repeat), numpy. An index out of range
        or not an integer raises :class:`InputError` naming it."""
        order = np.arange(len(self)) if targets is None else self._indices(targets)
        out = np.zeros((len(order),) + tuple(self.shape[1:]), np.float32)
        rows: dict[int, list[int]] = {}
        for k, t in enumerate(order):
            rows.setdefault(int(t), []).append(k)
        for idx, wins, offs in zip(self.targets, self.windows, self.offsets):
            idx, offs = np.asarray(idx), np.asarray(offs)
            keep = [i for i, t in enumerate(idx) if int(t) in rows]
            if not keep:
                continue
            wins = np.asarray(wins)
            h, w = wins.shape[1:3]
            for i in keep:
                top, left = offs[i]
                for k in rows[int(idx[i])]:
                    out[k, top : top + h, left : left + w] = wins[i]
        return out

    def _indices(self, targets) -> np.ndarray:
        """``targets`` as non-negative int indices (numpy's rules), or :class:`InputError`."""
        if isinstance(targets, (str, bytes)) or not hasattr(targets, "__iter__"):
            raise InputError(f"targets must be a sequence of target indices, got {targets!r}")
        items = list(targets)
        bad = [t for t in items if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))]
        if bad:
            raise InputError(f"target index {bad[0]!r} is not an integer")
        T = len(self)
        out = [t for t in items if not -T <= t < T]
        if out:
            raise InputError(f"target index {out[0]} out of range for {T} targets (valid: {-T} .. {T - 1})")
        return np.asarray([int(t) % T for t in items], np.int64) if items else np.zeros(0, np.int64)

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def map_windows(self, fn: Callable, shape: tuple[int, ...]) -> RelevanceWindows:
        """The same targets and offsets with ``fn`` applied to every group's windows
        (``fn`` must keep axes 0-2, e.g. a channel reduction); ``shape`` is the new dense shape."""
        return RelevanceWindows(tuple(shape), self.targets, tuple(fn(w) for w in self.windows), self.offsets)
