"""The schedule of ``explain``: which images share a forward pass, and which targets share a
compiled backward call. Pure numpy, nothing runs on a device here.

- Images are batched through the forward. A batch holds images whose dense targets fill the
  same number of *slots* per backward call (the ``width`` ``c``), at most
  ``chunk_size // c`` of them, so that one dense backward call does at most ``chunk_size``
  targets' backwards (memory is bounded by ``chunk_size``, not by the number of images or
  targets). An image with more dense targets than ``chunk_size`` is a batch of its own,
  its targets in calls of ``chunk_size`` slots.
- Cropped targets (per anchor group) run per image of the batch, on the batch's residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``group_of`` value of a target that runs on the dense path.
DENSE = -1


@dataclass(frozen=True)
class Batch:
    """One forward pass and the backward calls that read it.

    Attributes:
      images: ``[N]`` indices of the batch's images (rows of the forward's input).
      width: dense slots per backward call (0: no dense target in this batch).
      dense: ``[M]`` target indices on the dense path, with ``rows [M]`` (their image's row
        in ``images``) and ``slots [M]`` (0, 1, ... per image, in target order).
      cropped: ``(row, group, target indices)`` per image row and anchor group.
    """

    images: np.ndarray
    width: int
    dense: np.ndarray
    rows: np.ndarray
    slots: np.ndarray
    cropped: tuple[tuple[int, int, np.ndarray], ...]

    @property
    def groups(self) -> tuple[int, ...]:
        """Anchor groups that some cropped target of the batch lies in."""
        return tuple(sorted({g for _, g, _ in self.cropped}))

    @property
    def num_slots(self) -> int:
        """Slots per image row over all calls: the used slots rounded up to whole calls (at
        least one call)."""
        used = int(self.slots.max()) + 1 if len(self.slots) else 0
        return max(self.width, -(-used // self.width) * self.width)

    def calls(self):
        """``(start slot, dense target positions in :attr:`dense`)`` per dense backward call."""
        if not len(self.dense):
            return
        for start in range(0, int(self.slots.max()) + 1, self.width):
            yield start, np.flatnonzero((self.slots >= start) & (self.slots < start + self.width))


def plan(images: np.ndarray, group_of: np.ndarray, chunk_size: int) -> list[Batch]:
    """Batches for targets on images ``images [T]`` whose path is ``group_of [T]``
    (:data:`DENSE` or an anchor group's index), at most ``chunk_size`` targets per call."""
    images, group_of = np.asarray(images, np.int64), np.asarray(group_of, np.int64)
    present = np.unique(images)
    n_dense = np.array([np.count_nonzero((images == b) & (group_of == DENSE)) for b in present], np.int64)
    width = np.minimum(n_dense, chunk_size)
    batches = []
    for w in np.unique(width):  # images of equal width share batches
        members = present[width == w]
        per_batch = max(1, chunk_size // w) if w else chunk_size
        for start in range(0, len(members), per_batch):
            batches.append(_batch(members[start : start + per_batch], int(w), images, group_of))
    return batches


def plan_sharded(images: np.ndarray, num_images: int, chunk_size: int) -> Batch:
    """The sharded path's schedule: one batch of all ``num_images`` images (one SPMD
    forward), every target dense, and every image the same slots per call, so that each call
    has one width on every device: ``width`` is :func:`chunk_size_for` the largest number of
    targets of one image (at least 1)."""
    images = np.asarray(images, np.int64)
    counts = np.bincount(images, minlength=num_images)
    width = chunk_size_for(max(int(counts.max(initial=0)), 1), chunk_size)
    return _batch(np.arange(num_images), width, images, np.full(len(images), DENSE))


def _batch(members: np.ndarray, width: int, images: np.ndarray, group_of: np.ndarray) -> Batch:
    dense, rows, slots, cropped = [], [], [], []
    for row, b in enumerate(members):
        mine = images == b
        d = np.flatnonzero(mine & (group_of == DENSE))
        dense.append(d)
        rows.append(np.full(len(d), row))
        slots.append(np.arange(len(d)))
        for g in np.unique(group_of[mine & (group_of != DENSE)]):
            cropped.append((row, int(g), np.flatnonzero(mine & (group_of == g))))
    cat = np.concatenate
    return Batch(members, width, cat(dense), cat(rows), cat(slots), tuple(cropped))


def slot_arrays(rows, slots, anchors, cls_coef, loc_coef, num_rows: int, width: int):
    """Targets placed in ``[num_rows, width]`` slots: ``(anchors [N, c] int32, cls_coef
    [N, c, K], loc_coef [N, c, R])``, zero where a slot is empty (zero initial relevance)."""
    A = np.zeros((num_rows, width), np.int32)
    C = np.zeros((num_rows, width, cls_coef.shape[-1]), np.float32)
    L = np.zeros((num_rows, width, loc_coef.shape[-1]), np.float32)
    A[rows, slots], C[rows, slots], L[rows, slots] = anchors, cls_coef, loc_coef
    return A, C, L


def chunk_size_for(n_targets: int, chunk_size: int) -> int:
    """Slots per call for ``n_targets`` targets of one image where every call must have the
    same width (the cropped backward, the sharded path): ``chunk_size``, or the next power of
    two at or above ``n_targets`` when that is smaller (few targets do not pay for a whole
    chunk, and compilations repeat)."""
    return min(chunk_size, 1 << max(0, (n_targets - 1).bit_length()))
