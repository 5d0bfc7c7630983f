"""Explanation targets: what is asked of one detection, as initial relevance.

A target names an image, an anchor (default box, torchvision order) and what is asked:

- :class:`ClassTarget`: "why class ``cls`` (and not the classes in ``contrast``)?". Its
  initial relevance at that anchor's K logits is ``e_cls - mean_{k in C} e_k``; since every
  rule is linear this equals the paper's ``R[cls] - mean_C R[k]`` (docs/design.md §2).
- :class:`LocTarget`: "what pushes the box's ``coord`` (cx, cy, w, h) in direction
  ``sign``?": initial relevance ``sign`` at that anchor's offset ``coord``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from crp_jax.errors import TargetError

COORDS = ("cx", "cy", "w", "h")


@dataclass(frozen=True)
class ClassTarget:
    """Class decision of the box at ``anchor`` in image ``image``.

    ``contrast``: "others" (all other classes, background included; the paper's default),
    "foreground" (other foreground classes), "none" (one-hot), a tuple of class indices
    ("why dog and not cat?": ``(cat,)``), or ``None`` for the method's default ("others"
    for crp, "none" for the LRP baselines and gradients).
    """

    image: int
    anchor: int
    cls: int
    contrast: str | tuple[int, ...] | None = None

    def __post_init__(self):
        c = self.contrast
        if isinstance(c, (list, tuple, np.ndarray)):
            # one rule for lists, tuples and arrays: integer class indices only (no 2.7, no True)
            bad = [k for k in np.asarray(c, dtype=object).reshape(-1) if not _is_index(k)]
            if bad or np.ndim(c) != 1:
                raise TargetError(f"contrast classes must be integer class indices, got {c!r}")
            object.__setattr__(self, "contrast", tuple(int(k) for k in c))
        elif c is not None and not isinstance(c, str):
            raise TargetError(
                f"contrast must be 'others', 'foreground', 'none', a tuple of class indices or None, got {c!r}"
            )

    def coefficients(self, num_classes: int, default_contrast="none") -> tuple[np.ndarray, np.ndarray]:
        """Initial relevance at this anchor: ``(cls_coef [K], loc_coef [4])``."""
        K = num_classes
        _check_index("cls", self.cls, K)
        contrast = default_contrast if self.contrast is None else self.contrast
        c = np.zeros(K, np.float32)
        c[self.cls] = 1.0
        if isinstance(contrast, str):
            if contrast == "none":
                others: Sequence[int] = ()
            elif contrast == "others":
                others = [k for k in range(K) if k != self.cls]
            elif contrast == "foreground":
                others = [k for k in range(1, K) if k != self.cls]
            else:
                raise TargetError(
                    f"contrast {contrast!r} unknown; use 'others', 'foreground', 'none' or a tuple of classes"
                )
        else:
            others = list(contrast)
            for k in others:
                _check_index("contrast class", k, K)
            if self.cls in others:
                raise TargetError(f"contrast {tuple(others)} contains the target class {self.cls}")
            if len(set(others)) != len(others):
                raise TargetError(f"contrast {tuple(others)} repeats a class")
        if contrast != "none" and len(others) == 0:
            raise TargetError(f"contrast {contrast!r} is empty for class {self.cls} of {K} classes")
        for k in others:
            c[k] -= 1.0 / len(others)
        return c, np.zeros(4, np.float32)


@dataclass(frozen=True)
class LocTarget:
    """Box coordinate ``coord`` (cx, cy, w, h or 0..3) of the box at ``anchor``, pushed in
    direction ``sign`` (+1: right/down/wider/taller, -1: the opposite)."""

    image: int
    anchor: int
    coord: str | int
    sign: int = 1

    @property
    def coord_index(self) -> int:
        return coord_index(self.coord)

    def __post_init__(self):
        if not (_is_index(self.sign) and self.sign in (1, -1)):
            raise TargetError(f"sign must be the integer +1 or -1, got {self.sign!r}")
        if not (isinstance(self.coord, str) or _is_index(self.coord)):
            raise TargetError(f"coord must be one of {COORDS} or 0..3, got {self.coord!r}")

    def coefficients(self, num_classes: int, default_contrast=None) -> tuple[np.ndarray, np.ndarray]:
        loc = np.zeros(4, np.float32)
        loc[self.coord_index] = float(self.sign)
        return np.zeros(num_classes, np.float32), loc


Target = ClassTarget | LocTarget


def _is_index(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_index(field: str, value, n: int) -> None:
    if not _is_index(value) or not 0 <= int(value) < n:
        raise TargetError(f"{field} {value!r} out of range: valid is 0..{n - 1}")


def coord_index(coord: str | int) -> int:
    """Index 0..3 of a box coordinate given by name (one of :data:`COORDS`) or by index; the
    one parser of coordinate names (``LocTarget``, ``crp_jax.metrics.box_coordinate``)."""
    if isinstance(coord, str):
        if coord not in COORDS:
            raise TargetError(f"coord {coord!r} unknown; use one of {COORDS} or 0..3")
        return COORDS.index(coord)
    _check_index("coord", coord, 4)
    return int(coord)


def encode_targets(
    targets: Sequence[Target], num_images: int, num_anchors: int, num_classes: int, default_contrast="none"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate targets and pack them: ``(image [T], anchor [T], cls_coef [T, K], loc_coef [T, 4])``."""
    T = len(targets)
    images = np.zeros(T, np.int32)
    anchors = np.zeros(T, np.int32)
    cls_coef = np.zeros((T, num_classes), np.float32)
    loc_coef = np.zeros((T, 4), np.float32)
    for t, tg in enumerate(targets):
        if not isinstance(tg, (ClassTarget, LocTarget)):
            raise TargetError(f"target {t} is a {type(tg).__name__}, not a ClassTarget or LocTarget")
        try:
            _check_index("image", tg.image, num_images)
            _check_index("anchor", tg.anchor, num_anchors)
            cls_coef[t], loc_coef[t] = tg.coefficients(num_classes, default_contrast)
        except TargetError as e:
            raise TargetError(f"target {t} ({tg}): {e}") from None
        images[t], anchors[t] = tg.image, tg.anchor
    return images, anchors, cls_coef, loc_coef


def targets_from_detections(
    detections: Iterable,
    what: str | Sequence[str] = "cls",
    contrast: str | tuple[int, ...] | None = None,
    signs: Sequence[int] = (1,),
) -> list[Target]:
    """Targets for every detection (output of ``crp_jax.detect``), in detection order.

    Args:
      detections: per-image detections with ``image``, ``labels`` and ``anchors``.
      what: "cls", a coordinate name, "loc" (all four) or "all" (class then cx, cy, w, h),
        or a sequence of those.
      contrast: contrast of class targets (None: the method's default).
      signs: directions for coordinate targets.
    """
    kinds = [what] if isinstance(what, str) else list(what)
    expanded: list[str] = []
    for k in kinds:
        if k == "all":
            expanded += ["cls", *COORDS]
        elif k == "loc":
            expanded += list(COORDS)
        elif k == "cls" or k in COORDS:
            expanded.append(k)
        else:
            raise TargetError(f"what {k!r} unknown; use 'cls', 'loc', 'all' or one of {COORDS}")
    out: list[Target] = []
    for i, det in enumerate(detections):
        image = int(getattr(det, "image", i))
        for anchor, label in zip(np.asarray(det.anchors), np.asarray(det.labels)):
            for k in expanded:
                if k == "cls":
                    out.append(ClassTarget(image, int(anchor), int(label), contrast))
                else:
                    out.extend(LocTarget(image, int(anchor), k, int(s)) for s in signs)
    return out
