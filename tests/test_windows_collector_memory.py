"""``explain_windows`` must not peak above the dense output: its collector
used to keep every chunk and concatenate them at the end (all windows twice in memory).

Measured here with ``tracemalloc`` (numpy reports its allocations to it, so the figures
are exact and the same on every run), driving the collector with host chunks of known
size: its peak must stay near the output's own size, and the result must hold exactly
the chunks given (reference built by hand). The whole-process figures on the shipped
model are ``benchmarks/windows_memory.py``'s (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from crp_jax.relevance.collect import Collector

T, CHUNK, SHAPE = 256, 8, (32, 32, 3)


class _HostChunk:
    """What the collector gets from a backward: an array with ``copy_to_host_async``."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def copy_to_host_async(self) -> None:
        pass

    def __array__(self, dtype=None, copy=None):
        return self.value


def test_windows_collector_peaks_near_the_output_size_and_keeps_every_value():
    rng = np.random.default_rng(0)
    order = rng.permutation(T)  # targets arrive in any order
    expected = np.zeros((T, *SHAPE), np.float32)
    collect = Collector(T, SHAPE, to_host=True, windows=True, layers=False, zeroed=False)
    tracemalloc.start()
    try:
        for start in range(0, T, CHUNK):
            idx = order[start : start + CHUNK]
            chunk = rng.normal(size=(1, CHUNK, *SHAPE)).astype(np.float32)  # [1, chunk, H, W, C]
            expected[idx] = chunk[0]
            collect.add_dense(idx, np.zeros(CHUNK, int), np.arange(CHUNK), _HostChunk(chunk))
            del chunk
        collect.flush()
        rw = collect.result()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out_bytes = expected.nbytes  # the output itself (also what the dense form needs)
    # (the reference was allocated before tracing began) the collector holds its output and
    # a few chunks (here 3% of it each), never a second copy of everything
    assert peak < 1.25 * out_bytes, peak / out_bytes
    np.testing.assert_array_equal(rw.dense(), expected)
    assert rw.nbytes == out_bytes
