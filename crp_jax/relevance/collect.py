"""Gathering the results of ``explain``'s backward calls into its output (dense array or
:class:`RelevanceWindows`, on the host or on the device), one call behind the device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.relevance.windows import RelevanceWindows


class Collector:
    """Gathers the backward calls' results, one call behind the device: the device-to-host
    copy of call k starts as soon as it is dispatched and is read while call k + 1 runs.

    Memory: on the host every call's result is copied into its final place at once and
    dropped, so the peak is the output plus one call. The dense output is one array; windows
    go into one buffer per window size, allocated for all ``T`` targets with ``np.empty``
    (pages never written are never resident) and cut to the targets it holds at the end
    (``ndarray.resize``: shrinking reallocates in place), so no window is held twice.
    """

    def __init__(self, T: int, shape, to_host: bool, windows: bool, layers: bool, zeroed: bool):
        self.T, self.shape, self.to_host, self.windows, self.layers = T, tuple(shape), to_host, windows, layers
        # Cropped calls only write their windows, so the dense output must start at zero;
        # otherwise every row is written and np.empty avoids touching 1 MiB per target twice.
        dense_host = to_host and not windows
        self.out = (np.zeros if zeroed else np.empty)((T, *self.shape), np.float32) if dense_host else None
        self.parts: list = []  # on the device: (indices, array) / (indices, windows, offsets)
        self.buffers: dict = {}  # windows on the host: window shape -> [array, [indices], [offsets], count]
        self.flow: dict[str, np.ndarray] = {}
        self.pending = None

    def add_dense(self, idx, rows, slots, res) -> None:
        """Targets ``idx`` are at ``[rows, slots]`` of a dense call's ``[N, c, H, W, C]``
        result (``(result, per-layer totals)`` when collecting layers)."""
        self._add(("dense", idx, (np.asarray(rows), np.asarray(slots)), res))

    def add_windows(self, idx, res) -> None:
        """Targets ``idx`` are the first rows of a cropped call's ``(windows, offsets)``."""
        self._add(("windows", idx, None, res))

    def _add(self, item) -> None:
        if self.to_host:  # start the device-to-host copy now so it overlaps the next call
            jax.tree.map(lambda v: v.copy_to_host_async(), item[3])
        self.flush()
        self.pending = item

    def flush(self) -> None:
        if self.pending is None:
            return
        kind, idx, where, res = self.pending
        self.pending = None
        n = len(idx)
        get = np.asarray if self.to_host else (lambda v: v)
        if kind == "windows":
            wins, offs = get(res[0])[:n], np.asarray(res[1])[:n]
            if self.windows:
                self._keep_windows(idx, wins, offs)
                return
            h, w = wins.shape[1:3]
            for i, t in enumerate(idx):
                top, left = offs[i]
                self.out[t, top : top + h, left : left + w] = wins[i]
            return
        rows, slots = where
        r = res
        if self.layers:
            r, per = res
            for k, v in per.items():
                self.flow.setdefault(k, np.zeros((self.T, 2), np.float32))[idx] = np.asarray(v)[rows, slots]
        r = get(r)[rows, slots]
        if self.windows:
            self._keep_windows(idx, r, np.zeros((n, 2), np.int64))
        elif self.to_host:
            self.out[idx] = r
        else:
            self.parts.append((idx, r))

    def _keep_windows(self, idx, wins, offs) -> None:
        if not self.to_host:
            self.parts.append((idx, wins, offs))
            return
        key = tuple(wins.shape[1:])
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = [np.empty((self.T, *key), np.float32), [], [], 0]
        n = len(idx)
        buf[0][buf[3] : buf[3] + n] = wins
        buf[1].append(np.asarray(idx))
        buf[2].append(np.asarray(offs))
        buf[3] += n

    def result(self):
        """The output: ``[T, H, W, C]`` (numpy, or a ``jax.Array`` on the device) or a
        :class:`RelevanceWindows`."""
        self.flush()
        if self.windows:
            groups = self._window_groups()
            return RelevanceWindows(
                (self.T, *self.shape),
                tuple(g[0] for g in groups),
                tuple(g[1] for g in groups),
                tuple(g[2] for g in groups),
            )
        if self.to_host:
            return self.out
        return gather_parts(self.parts, self.T, self.shape)

    def _window_groups(self) -> list:
        groups = []
        if self.to_host:
            for key in list(self.buffers):
                arr, idx, offs, n = self.buffers.pop(key)
                if n < self.T:
                    try:  # in place: the unused (never written) tail is given back
                        arr.resize((n, *key), refcheck=False)
                    except ValueError:  # pragma: no cover - an array that does not own its data
                        arr = arr[:n]
                groups.append((np.concatenate(idx), arr, np.concatenate(offs)))
            return groups
        by_size: dict = {}
        while self.parts:  # release each part as it is taken
            idx, wins, offs = self.parts.pop(0)
            by_size.setdefault(tuple(wins.shape[1:3]), []).append((idx, wins, offs))
        for ps in by_size.values():
            groups.append(
                (
                    np.concatenate([p[0] for p in ps]),
                    jnp.concatenate([p[1] for p in ps]),
                    np.concatenate([p[2] for p in ps]),
                )
            )
        return groups


def gather_parts(parts, T: int, shape) -> jax.Array:
    """Parts ``(target indices, [n, ...])`` -> ``[T, ...]`` in target order, on the device."""
    if not parts:
        return jnp.zeros((0, *tuple(shape)), jnp.float32)
    order = np.concatenate([idx for idx, _ in parts])
    R = jnp.concatenate([r for _, r in parts]) if len(parts) > 1 else parts[0][1]
    if np.array_equal(order, np.arange(T)):
        return R
    return R[jnp.asarray(np.argsort(order))]


def whole_windows(R) -> RelevanceWindows:
    """Dense ``[T, H, W, C]`` as windows covering the whole image."""
    T = len(R)
    return RelevanceWindows(tuple(R.shape), (np.arange(T),), (R,), (np.zeros((T, 2), np.int64),))
