"""Explanation targets: what is asked of one detection, as initial relevance.

A target names an image, an anchor (default box, torchvision order) and what is asked:

- :class:`ClassTarget`: "why class ``cls`` (and not the classes in ``contrast``)?". Its
  initial relevance at that anchor's K logits is ``e_cls - mean_{k in C} e_k``; since every
  rule is linear this equals the paper's ``R[cls] - mean_C R[k]`` (docs/design.md §2).
- :class:`LocTarget`: "what pushes the regressor ``coord`` in direction ``sign``?": initial
  relevance ``sign`` at that anchor's regressor ``coord``.

Regressors are named by the detector (docs/design.md §3): an SSD's four box offsets are
:data:`COORDS` (``cx, cy, w, h``); a detector with more regressors per anchor (BlazeFace: 16,
the box then six keypoints' x and y) declares them as ``meta.regressor_names`` and
:func:`regressor_names` reads them. Without a meta, a 4-regressor model keeps the box names and
any other model takes regressor indices.

Single-logit (sigmoid) class heads (K = 1, no background column, e.g. BlazeFace's "face"):
a sigmoid score ``p = sigmoid(z)`` is the two-class softmax over ``(z, 0)``, "face" against
an implicit "not face" whose logit is the constant 0. CRP's contrast against the other
classes, ``e_face - mean_{k in C} e_k`` with C = {not face}, therefore puts +1 on the logit
and -1 on a constant, which no layer depends on: the initial relevance is the one-hot +1 on
the logit, the logit being already the face-vs-not-face margin. So on such a head "others"
means "not face" and the class map of CRP equals the LRP-ab class map (same w+ rules); CRP's
own contribution there is the regressor (box, keypoint) maps and explicit anchor-vs-anchor
questions. "foreground" (other *foreground* classes) has nothing to contrast with and raises
:class:`TargetError` saying so, as does an explicit contrast naming a class the head lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from crp_jax.errors import ConfigError, TargetError

#: The box regressors of an SSD, in the order of its ``loc`` output.
COORDS = ("cx", "cy", "w", "h")


def regressor_names(meta=None, num_regressors: int = 4) -> tuple[str, ...] | None:
    """Names of a detector's ``num_regressors`` regressors (the last axis of ``loc``).

    ``meta.regressor_names`` where the meta declares them (SSD metas: :data:`COORDS`;
    BlazeFace: box then keypoints); otherwise :data:`COORDS` for a 4-regressor model and
    None (indices only) for any other count. A meta whose names do not fit the model's
    output raises :class:`ConfigError`.
    """
    names = getattr(meta, "regressor_names", None)
    if names is not None:
        names = tuple(names)
        if len(names) != num_regressors:
            raise ConfigError(
                f"meta names {len(names)} regressors {names} but the model's loc output has {num_regressors}"
            )
        return names
    return COORDS if num_regressors == 4 else None


def _regressors(regressors: Sequence[str] | int | None) -> tuple[tuple[str, ...] | None, int]:
    """``(names or None, count)`` from names or a count (a count of 4 gets the box names)."""
    if isinstance(regressors, (int, np.integer)):
        n = int(regressors)
        return (COORDS if n == 4 else None), n
    names = tuple(regressors)
    return names, len(names)


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

    def coefficients(
        self, num_classes: int, default_contrast="none", regressors: Sequence[str] | int = COORDS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Initial relevance at this anchor: ``(cls_coef [K], loc_coef [R])`` (``R`` the
        number of regressors: ``len(regressors)``, or ``regressors`` itself if an int).

        With a single logit (K = 1, a sigmoid head: module docstring) "others" is "not
        face", whose logit is a constant, so the coefficients are the one-hot +1 on the
        logit; "foreground" and explicit contrast classes have no class to name and raise
        :class:`TargetError`."""
        K = num_classes
        _check_index("cls", self.cls, K)
        R = _regressors(regressors)[1]
        contrast = default_contrast if self.contrast is None else self.contrast
        c = np.zeros(K, np.float32)
        c[self.cls] = 1.0
        if K == 1 and contrast in ("others", "none"):
            # sigmoid head: e_face - e_(not face), and "not face" is the constant logit 0
            return c, np.zeros(R, np.float32)
        if K == 1 and isinstance(contrast, str) and contrast == "foreground":
            raise TargetError(
                "contrast 'foreground' is empty: this head has a single (sigmoid) logit, so there is no "
                "other foreground class; use 'others' (= 'not this class', the logit itself) or 'none'"
            )
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
        return c, np.zeros(R, np.float32)


@dataclass(frozen=True)
class LocTarget:
    """Regressor ``coord`` of the box at ``anchor``, pushed in direction ``sign`` (+1:
    right/down/wider/taller for the box and to the right/down for a keypoint's x/y, -1: the
    opposite).

    ``coord`` is a regressor name of the detector (SSD: ``cx, cy, w, h``; BlazeFace also
    ``nose_tip_x`` and the like, ``meta.regressor_names``) or its index. Names are checked
    against the model's names when the target is explained; an unknown one raises
    :class:`TargetError` naming the valid ones."""

    image: int
    anchor: int
    coord: str | int
    sign: int = 1

    @property
    def coord_index(self) -> int:
        """Index among the box regressors ``cx, cy, w, h`` (a 4-regressor model without a
        meta); :meth:`index_in` for a detector's own names."""
        return coord_index(self.coord)

    def index_in(self, regressors: Sequence[str] | int = COORDS) -> int:
        """Index of ``coord`` among a detector's regressors (names, or a count: indices only
        unless the count is 4, which keeps the box names)."""
        return coord_index(self.coord, regressors)

    def __post_init__(self):
        if not (_is_index(self.sign) and self.sign in (1, -1)):
            raise TargetError(f"sign must be the integer +1 or -1, got {self.sign!r}")
        if not (isinstance(self.coord, str) or _is_index(self.coord)):
            raise TargetError(
                f"coord must be a regressor name (box: {COORDS}; a detector's meta.regressor_names) "
                f"or an index, got {self.coord!r}"
            )

    def coefficients(
        self, num_classes: int, default_contrast=None, regressors: Sequence[str] | int = COORDS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Initial relevance at this anchor: ``(cls_coef [K] zeros, loc_coef [R])``, ``sign``
        at the regressor ``coord``."""
        idx = self.index_in(regressors)
        loc = np.zeros(_regressors(regressors)[1], np.float32)
        loc[idx] = float(self.sign)
        return np.zeros(num_classes, np.float32), loc


Target = ClassTarget | LocTarget


def _is_index(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_index(field: str, value, n: int) -> None:
    if not _is_index(value) or not 0 <= int(value) < n:
        raise TargetError(f"{field} {value!r} out of range: valid is 0..{n - 1}")


def coord_index(coord: str | int, regressors: Sequence[str] | int = COORDS) -> int:
    """Index of a regressor given by name or by index among ``regressors`` (a detector's
    names, or a count: indices only unless the count is 4, which keeps the box names
    :data:`COORDS`); the one parser of coordinate names (``LocTarget``,
    ``crp_jax.metrics.box_coordinate``)."""
    names, n = _regressors(regressors)
    if isinstance(coord, str):
        if names is None or coord not in names:
            valid = f"one of {names} or 0..{n - 1}" if names is not None else f"an index 0..{n - 1} (unnamed)"
            raise TargetError(f"coord {coord!r} unknown for this model; use {valid}")
        return names.index(coord)
    _check_index("coord", coord, n)
    return int(coord)


def encode_targets(
    targets: Sequence[Target],
    num_images: int,
    num_anchors: int,
    num_classes: int,
    default_contrast="none",
    regressors: Sequence[str] | int = COORDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate targets and pack them: ``(image [T], anchor [T], cls_coef [T, K], loc_coef
    [T, R])``; ``regressors``: the detector's regressor names (:func:`regressor_names`) or
    their count R (indices only, except R = 4: the box names)."""
    T = len(targets)
    images = np.zeros(T, np.int32)
    anchors = np.zeros(T, np.int32)
    cls_coef = np.zeros((T, num_classes), np.float32)
    loc_coef = np.zeros((T, _regressors(regressors)[1]), np.float32)
    for t, tg in enumerate(targets):
        if not isinstance(tg, (ClassTarget, LocTarget)):
            raise TargetError(
                f"target {t} is a {type(tg).__name__}, not a ClassTarget or LocTarget (nor an AnchorContrastTarget)"
            )
        try:
            _check_index("image", tg.image, num_images)
            _check_index("anchor", tg.anchor, num_anchors)
            cls_coef[t], loc_coef[t] = tg.coefficients(num_classes, default_contrast, regressors)
        except TargetError as e:
            raise TargetError(f"target {t} ({tg}): {e}") from None
        images[t], anchors[t] = tg.image, tg.anchor
    return images, anchors, cls_coef, loc_coef


def targets_from_detections(
    detections: Iterable,
    what: str | Sequence[str] = "cls",
    contrast: str | tuple[int, ...] | None = None,
    signs: Sequence[int] = (1,),
    regressors: Sequence[str] = COORDS,
) -> list[Target]:
    """Targets for every detection (output of ``crp_jax.detect``), in detection order.

    Args:
      detections: per-image detections with ``image``, ``labels`` and ``anchors``.
      what: "cls", a regressor name, "loc" (the four box coordinates), "keypoints" (every
        regressor after the box's four: BlazeFace's ``right_eye_x`` ... ``left_ear_y``),
        "all" (class then every regressor), or a sequence of those.
      contrast: contrast of class targets (None: the method's default).
      signs: directions for regressor targets.
      regressors: the detector's regressor names (``meta.regressor_names``, or
        :func:`regressor_names`); the box names by default.
    """
    names = tuple(regressors)
    kinds = [what] if isinstance(what, str) else list(what)
    expanded: list[str] = []
    for k in kinds:
        if k == "all":
            expanded += ["cls", *names]
        elif k == "loc":
            expanded += list(COORDS)
        elif k == "keypoints":
            expanded += [n for n in names if n not in COORDS]
        elif k == "cls" or k in names:
            expanded.append(k)
        else:
            raise TargetError(f"what {k!r} unknown; use 'cls', 'loc', 'keypoints', 'all' or one of {names}")
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
