"""Anchor-vs-anchor contrast: "why box a (class k) and not box b (class k')?".

A detector's errors are often between two of its own outputs: a duplicate that NMS
suppressed, a true object whose box lost to a neighbour's. The question is CRP's contrast
taken across anchors instead of across classes: initial relevance ``e_{a,k} - e_{b,k'}`` on
the class head (``k'`` defaults to ``k``), or ``sign * (e_{a,c} - e_{b,c})`` on regressor ``c``
of the localization head.

How it is computed: for a fixed forward pass every rule is linear in the initial relevance
(docs/design.md §2), so the relevance of a pair is the relevance of its first half minus
that of its second. :func:`expand_pairs` replaces each :class:`AnchorContrastTarget` by two
one-hot elementary targets (:class:`ClassTarget` with contrast "none", or
:class:`LocTarget`) that go through the same ``explain`` call as every other target (the
same forward, the same vmapped backward chunks; with cropping each half propagates in its
own anchor's cone), and its ``combine`` subtracts them back to one row per target given.

Order of the elementary targets: every given target keeps its position (a pair's first
half takes it) and the pairs' second halves follow, so an error that ``encode_targets``
raises about a pair's ``anchor`` names the pair's own index; one about ``other_anchor``
names an index past the end, with the pair's fields in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crp_jax.errors import ConfigError, TargetError
from crp_jax.relevance.targets import ClassTarget, LocTarget, _is_index
from crp_jax.relevance.windows import RelevanceWindows

__all__ = ["AnchorContrastTarget", "expand_pairs"]


@dataclass(frozen=True)
class AnchorContrastTarget:
    """ "Why the box at ``anchor`` and not the one at ``other_anchor``?" in image ``image``.

    Exactly one of ``cls`` (a class question: initial relevance ``+1`` at logit ``cls`` of
    ``anchor``, ``-1`` at logit ``other_cls`` of ``other_anchor``; ``other_cls`` defaults to
    ``cls``) and ``coord`` (a regressor question: ``sign`` at regressor ``coord`` of
    ``anchor``, ``-sign`` at the same regressor of ``other_anchor``; a name of
    ``meta.regressor_names`` or an index, as :class:`LocTarget`).

    Positive relevance supports ``anchor``'s output over ``other_anchor``'s; negative
    relevance supports the other box. Anchors and classes are checked against the model
    when explained (:class:`TargetError` naming the value).
    """

    image: int
    anchor: int
    other_anchor: int
    cls: int | None = None
    other_cls: int | None = None
    coord: str | int | None = None
    sign: int = 1

    def __post_init__(self):
        for name in ("image", "anchor", "other_anchor"):
            value = getattr(self, name)
            if not _is_index(value) or value < 0:
                raise TargetError(f"{name} must be a non-negative integer index, got {value!r}")
        if self.anchor == self.other_anchor:
            raise TargetError(
                f"anchor and other_anchor are the same anchor {self.anchor}: an anchor contrast needs two "
                "anchors (for two classes at one anchor use ClassTarget(..., contrast=(other_cls,)))"
            )
        if (self.cls is None) == (self.coord is None):
            raise TargetError(
                f"give exactly one of cls (a class question) and coord (a regressor question), got "
                f"cls={self.cls!r}, coord={self.coord!r}"
            )
        if self.cls is not None:
            for name in ("cls", "other_cls"):
                value = getattr(self, name)
                if value is not None and (not _is_index(value) or value < 0):
                    raise TargetError(f"{name} must be a non-negative integer class index, got {value!r}")
            if self.sign != 1:
                raise TargetError(
                    f"sign applies to regressor questions only; a class question has sign 1, got {self.sign!r}"
                )
        else:
            if self.other_cls is not None:
                raise TargetError(
                    f"other_cls {self.other_cls!r} is given for a regressor question (coord={self.coord!r})"
                )
            LocTarget(self.image, self.anchor, self.coord, self.sign)  # validates coord and sign

    def halves(self) -> tuple[ClassTarget | LocTarget, ClassTarget | LocTarget]:
        """The two one-hot elementary targets whose relevance difference is this target's."""
        if self.cls is not None:
            other = self.cls if self.other_cls is None else self.other_cls
            return (
                ClassTarget(self.image, self.anchor, self.cls, "none"),
                ClassTarget(self.image, self.other_anchor, other, "none"),
            )
        return (
            LocTarget(self.image, self.anchor, self.coord, self.sign),
            LocTarget(self.image, self.other_anchor, self.coord, self.sign),
        )


def expand_pairs(targets: Sequence, *, layers: bool = False) -> tuple[list, Callable]:
    """Replace anchor contrasts by elementary targets: ``(elementary, combine)``.

    ``elementary`` holds the given targets in place (a pair's first half at the pair's
    position) followed by the pairs' second halves; ``combine(R)`` maps ``explain``'s result
    for ``elementary`` (``[T', H, W, C]`` numpy or ``jax.Array``, or a
    :class:`RelevanceWindows`) to one row per given target, ``R[first] - R[second]`` for a
    pair. Windows stay windows for the other targets; a pair's two windows lie in two cones,
    so its row is a whole-image window. Without pairs ``combine`` returns ``R`` unchanged.

    ``layers=True`` (``relevance_flow``: per-layer totals of relevance and of its magnitude)
    is refused for pairs: the magnitude of a difference is not the difference of magnitudes.
    """
    targets = list(targets)
    pairs = [t for t, tg in enumerate(targets) if isinstance(tg, AnchorContrastTarget)]
    if not pairs:
        return targets, _identity
    if layers:
        raise ConfigError(
            f"relevance_flow does not take AnchorContrastTarget (target {pairs[0]}): per-layer absolute "
            "totals of a difference cannot be combined from its halves; explain the two halves instead"
        )
    elementary = list(targets)
    second = []
    for t in pairs:
        first, other = targets[t].halves()
        elementary[t] = first
        second.append(other)
    rows = np.asarray(pairs, np.int64)
    minus = len(targets) + np.arange(len(pairs), dtype=np.int64)
    return elementary + second, _Combine(len(targets), rows, minus)


def _identity(R):
    return R


@dataclass(frozen=True, eq=False)
class _Combine:
    """``R[:T]`` with ``R[rows] -= R[minus]`` (see :func:`expand_pairs`)."""

    T: int
    rows: np.ndarray
    minus: np.ndarray

    def __call__(self, R):
        if isinstance(R, RelevanceWindows):
            return self._windows(R)
        if isinstance(R, np.ndarray):
            out = R[: self.T].copy()
            out[self.rows] -= R[self.minus]
            return out
        return R[: self.T].at[self.rows].add(-R[self.minus])  # a jax.Array stays on its device

    def _windows(self, R: RelevanceWindows) -> RelevanceWindows:
        is_pair = np.zeros(len(R), bool)
        is_pair[self.rows] = True
        is_pair[self.T :] = True  # second halves leave
        targets, windows, offsets = [], [], []
        for idx, wins, offs in zip(R.targets, R.windows, R.offsets):
            keep = ~is_pair[np.asarray(idx)]
            if keep.any():
                sel = np.flatnonzero(keep)
                targets.append(np.asarray(idx)[sel])
                windows.append(wins[sel])
                offsets.append(np.asarray(offs)[sel])
        pair_rows = R.dense(self.rows) - R.dense(self.minus)
        targets.append(self.rows)
        windows.append(pair_rows)
        offsets.append(np.zeros((len(self.rows), 2), np.int64))
        return RelevanceWindows((self.T, *R.shape[1:]), tuple(targets), tuple(windows), tuple(offsets))
