"""``crp-jax report``: a static HTML site that explains every detection of some images.

Layout of a report folder (relative links only; opens from disk, no server, no network)::

    index.html              one card per image; images that could not be read, with the reason
    quality.html            data-set mode (--scenes N): metric x method table with intervals
    report.json             every number on the pages ("generator": "crp-jax report")
    pages/STEM.html         one page per image; detection sections carry data-detection="N",
                            error cases (images with ground truth) data-error="KIND"
    pages/STEM/*.png        the pictures of that page
    pages/legend.png        the colour scale
    scenes/scene_IIII.png   data-set mode: the generated input images
    relevance/STEM.npz      --save-relevance: input relevance [S, S, 3] of every map

Atomic: a report is built in a temporary folder and moved into place at the end
(:meth:`ReportWriter.finish`); an interrupted or failed run removes the temporary folder and
leaves ``--out`` as it was. A new ``--out`` is built beside it and renamed. An existing
``--out`` (perhaps a mount point: a Docker volume, a bind mount, a tmpfs) is built INSIDE
itself, so that every rename stays on one file system: the old report's entries are first
renamed into the temporary folder, then the new ones into place, and only then is the old
report deleted; a failure or Ctrl-C during the move puts the old entries back. An existing
``--out`` that is neither empty nor a previous report is refused unless ``force``.

What a report owns: ``report.json`` lists the top-level entries it wrote (``"files"``); a
rerun replaces exactly those and nothing else. A user's own entry of the same name (a
``pages/`` folder the report did not write) is never deleted: the run is refused, naming it.
The folders are made with the user's umask (not ``mkdtemp``'s 0700).

The numbers are computed in :mod:`crp_jax.report.build` (the errors view in
:mod:`crp_jax.report.errors`), the pictures in
:mod:`crp_jax.report.figures`, the markup in :mod:`crp_jax.report.html`, the data-set table
in :mod:`crp_jax.report.scenes`. The command line (``crp_jax.cli.report``) loads the
model and the images and drives a :class:`ReportWriter`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crp_jax import viz
from crp_jax.apps.explanations import DetectedImage, on_image
from crp_jax.apps.figures import keypoint_cells
from crp_jax.errors import InputError
from crp_jax.interrupts import interrupted
from crp_jax.relevance.targets import LocTarget
from crp_jax.report import errors, figures, html, scenes
from crp_jax.report.build import LOC_QUESTIONS, detection_explanations, keypoint_map_names, loc_key

GENERATOR = "crp-jax report"
#: Top-level entries a report owns in its folder (replaced on a rerun, nothing else is touched).
OVERVIEW_SIDE = 384  # longer side of a small image's overview picture, in pixels
ENTRIES = ("index.html", "quality.html", "report.json", "pages", "scenes", "relevance")
#: Prefix of the temporary folder made inside an existing ``--out``.
TMP_PREFIX = ".crp-jax-report.tmp-"

__all__ = ["GENERATOR", "ENTRIES", "ReportWriter", "is_report", "eta_line", "detection_explanations"]


def is_report(folder: Path) -> bool:
    """True when ``folder/report.json`` was written by ``crp-jax report``."""
    try:
        return json.loads((Path(folder) / "report.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def owned_entries(folder: Path) -> set[str]:
    """Top-level entries of ``folder`` that a previous ``crp-jax report`` wrote: the
    ``"files"`` manifest of its ``report.json`` (a report written before the manifest
    existed: those of :data:`ENTRIES` present); empty when no report is there."""
    folder = Path(folder)
    if not is_report(folder):
        return set()
    files = json.loads((folder / "report.json").read_text()).get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {f for f in files if f in ENTRIES}
    return {n for n in ENTRIES if (folder / n).exists() or (folder / n).is_symlink()}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def eta_line(done: int, total: int, elapsed: float) -> str:
    """``[3/10] 12 s elapsed, about 28 s left`` (mean time per image so far)."""
    left = elapsed / max(done, 1) * (total - done)
    return f"[{done}/{total}] {elapsed:.0f} s elapsed, about {left:.0f} s left"


class ReportWriter:
    """Builds one report in a temporary folder; :meth:`finish` moves it to ``out``.

    Use as a context manager: leaving the ``with`` block without :meth:`finish` (an error,
    Ctrl-C) removes the temporary folder.
    """

    def __init__(
        self,
        out,
        model,
        variables,
        meta,
        *,
        methods: Sequence[str] = ("crp", "lrp_ab"),
        settings: dict,
        force: bool = False,
        save_relevance: bool = False,
        annotations=None,
    ):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} exists and is not a folder")
        if self.out.is_dir() and _has_files(self.out) and not is_report(self.out) and not force:
            raise InputError(
                f"--out {self.out} is a folder with other files and no crp-jax report in it; "
                "choose a new or empty folder, or pass --force to write the report's files into it"
            )
        self.owned = owned_entries(self.out) if self.out.is_dir() else set()
        self.entries_planned = {"index.html", "report.json", "pages"} | ({"relevance"} if save_relevance else set())
        self._check_clash(self.entries_planned)
        self.model, self.variables, self.meta = model, variables, meta
        self.methods = ["crp"] + [m for m in methods if m != "crp"]
        self.settings = dict(settings, methods=self.methods)
        self.save_relevance = save_relevance
        self.annotations = annotations  # crp_jax.eval.coco.CocoAnnotations or None
        self.entries: list[dict] = []
        self.failures: list[dict] = []
        self.scenes: dict[str, object] = {}
        self.scene_seed: int | None = None
        self.scene_values: list[dict] = []
        if self.out.is_dir():  # inside: renames stay on --out's file system (a mount point)
            self.tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.out))
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become the report's mode
        self.started = time.perf_counter()
        figures.save_png(figures.legend_png(), self.tmp / "pages" / "legend.png")

    def _check_clash(self, names) -> None:
        """Refuse to replace entries of ``--out`` that no previous report wrote (``--force``)."""
        if not self.out.is_dir():
            return
        clash = sorted(
            n for n in names if n not in self.owned and ((self.out / n).exists() or (self.out / n).is_symlink())
        )
        if clash:
            raise InputError(
                f"--out {self.out} holds {', '.join(clash)} that no crp-jax report wrote; the report would "
                "replace them: move them away or choose another folder"
            )

    # -- context manager: remove the temporary folder unless finished
    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary folder (a no-op after :meth:`finish`)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # -- inputs
    def add_scenes(self, n: int, seed: int) -> list[str]:
        """Write ``n`` generated scenes of data set ``seed`` into the report; returns their paths."""
        self._check_clash(("scenes", "quality.html"))
        self.scene_seed = seed
        self.scenes = scenes.write_scenes(n, seed, self.tmp / "scenes")
        return list(self.scenes)

    def add_failure(self, path: str, reason: str) -> None:
        """An image that could not be read: listed on the index with ``reason``."""
        shown = self._shown(path)
        for prefix in (f"{path}: ", f"{shown}: "):  # the page shows the path already
            reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
        self.failures.append({"path": shown, "reason": reason})

    def _shown(self, path: str) -> str:
        """How a path is shown: scenes by their place in the report, others as given."""
        if path in self.scenes:
            return "scenes/" + Path(path).name
        return str(path)

    def add_image(self, path: str, stem: str, pixels, x, det, display, size=None) -> int:
        """Explain every detection of one image and write its page.

        Args:
          path, stem: the image file and its unique file-name stem.
          pixels: uint8 ``[h, w, 3]`` as loaded (reduced while reading when the file is
            large); ``x``: its model input ``[1, S, S, 3]``;
          det: its ``Detections`` (boxes in the original pixels).
          display: ``(pixels, box_factor [4], scale)``: ``pixels`` at the size the pages
            show it (``crp_jax.cli``'s display rule), boxes in ``pixels``' pixels multiplied
            by ``box_factor`` and magnified by the integer ``scale``.
          size: ``(H, W)`` of the original image, the pixels ``det``'s boxes are in
            (default: ``pixels``' own size).

        Returns the number of detections explained. On an error nothing of this image stays
        in the report (the caller lists it with :meth:`add_failure`).
        """
        try:
            return self._add_image(path, stem, pixels, x, det, display, size)
        except Exception:
            shutil.rmtree(self.tmp / "pages" / stem, ignore_errors=True)
            (self.tmp / "pages" / f"{stem}.html").unlink(missing_ok=True)
            raise

    def _add_image(self, path: str, stem: str, pixels, x, det, display, size) -> int:
        h, w = pixels.shape[:2]
        H, W = (int(v) for v in size) if size is not None else (h, w)
        scene = self.scenes.get(path)
        exps = detection_explanations(
            self.model, self.variables, self.meta, x, det, (H, W), self.methods, partners=scene is not None
        )
        shown, f, s = display
        # boxes are in the original pixels; the pictures are drawn on the (reduced) pixels
        f = np.asarray(f, np.float64) * np.array([w / W, h / H, w / W, h / H])
        folder = self.tmp / "pages" / stem
        rel = f"{stem}/"

        def pic(img, name: str) -> dict:
            figures.save_png(img, folder / name)
            return {"src": rel + name, "w": img.width, "h": img.height}

        names = self.meta.class_names
        if s > 1:  # a small image: the overview magnified further, so that its tags are legible
            big = max(s, math.ceil(OVERVIEW_SIDE / max(H, W)))
            overview = pic(figures.overview_png(pixels, np.asarray(det.boxes) * f, det, names, big), "overview.png")
        else:
            overview = pic(figures.overview_png(shown, np.asarray(det.boxes) * f, det, names, s), "overview.png")
        entry = {
            "name": Path(path).name,
            "source": self._shown(path),
            "stem": stem,
            "page": f"pages/{stem}.html",
            "width": int(W),
            "height": int(H),
            "overview": overview,
            "thumb": {**overview, "src": f"pages/{stem}/overview.png"},
            "detections": [],
        }
        class_maps = self.methods[:1] + ["crp_pair"] + self.methods[1:]
        arrays = {}
        image = DetectedImage(path, stem, pixels, x, det, (H, W))
        for e in exps:
            d = dict(e.numbers)
            box = np.asarray(e.box) * f
            d["class_maps"] = [n for n in class_maps if n in e.relevance]
            d["maps"], d["scale"] = {}, {}
            locs = [loc_key(c, sg) for c, sg, _ in LOC_QUESTIONS]
            heat = {n: on_image(self.meta, np.asarray(R).sum(-1), (H, W)) for n, R in e.relevance.items()}
            for n in d["class_maps"] + locs:
                d["scale"][n] = viz.robust_max(heat[n])
                # the eight small maps are shown at half the size: half the magnification
                img = figures.overlay_png(shown, heat[n], box, max(1, s // 2) if n in locs else s)
                d["maps"][n] = pic(img, f"det{e.index:02d}_{n.replace('+', 'p')}.png")
            kmaps = [(r, LocTarget(0, e.anchor, r, 1), heat[n]) for r, n in keypoint_map_names(e, self.meta)]
            if kmaps:  # the face with its keypoints, then one picture per keypoint map
                cells, _ = keypoint_cells(image, self.meta, e.index, kmaps, "crp", 0.6, side=160)
                d["keypoint_face"] = pic(cells[0], f"det{e.index:02d}_keypoints.png")
                for (r, _, h), img in zip(kmaps, cells[1:]):
                    n = loc_key(r, 1)
                    d["scale"][n] = viz.robust_max(h)
                    d["maps"][n] = pic(img, f"det{e.index:02d}_{n.replace('+', 'p')}.png")
            entry["detections"].append(d)
            if self.save_relevance:
                arrays.update({f"det{e.index:02d}_{n}": np.asarray(R) for n, R in e.relevance.items()})
        self._add_errors(entry, path, scene, x, (H, W), shown, f, s, pic, arrays)
        if self.save_relevance:
            (self.tmp / "relevance").mkdir(exist_ok=True)
            np.savez_compressed(self.tmp / "relevance" / f"{stem}.npz", **arrays)
            entry["relevance"] = f"relevance/{stem}.npz"
        (self.tmp / entry["page"]).write_text(html.image_page(entry, self.settings, "legend.png"), encoding="utf-8")
        self.entries.append(entry)
        if scene is not None:
            self.scene_values.append(scenes.scene_values(exps, det, scene, self.methods))
        return len(exps)

    def _add_errors(self, entry, path, scene, x, size, shown, f, s, pic, arrays) -> None:
        """The errors view of one image (crp_jax/report/errors.py), where it has ground truth:
        a generated scene's own, or the ``--annotations`` file's."""
        if scene is None and self.annotations is None:
            return
        if scene is not None:
            gt, why = (scene.boxes, scene.labels), ""
        else:
            ann, why = self.annotations.for_image(path)
            gt = None
            if ann is not None:
                errors.check_annotation_size(ann, size, self.annotations.path)
                gt = (ann.boxes, ann.labels)
        entry["annotated"], entry["annotation_note"] = gt is not None, why
        if gt is None:
            return
        cases, counts = errors.image_errors(
            self.model, self.variables, self.meta, x, gt[0], gt[1], size, self.settings, self.methods[0]
        )
        for j, c in enumerate(cases):
            R = c.pop("relevance")
            c["index"], c["maps"], c["scale"] = j, {}, {}
            shown_boxes = [{**b, "box": list(np.asarray(b["box"]) * f)} for b in c["boxes"]]
            for q in c["questions"]:
                h = np.asarray(R[q["key"]]).sum(-1)
                c["scale"][q["key"]] = viz.robust_max(h)
                c["maps"][q["key"]] = pic(figures.error_png(shown, h, shown_boxes, s), f"err{j:02d}_{q['key']}.png")
                if self.save_relevance:
                    arrays[f"err{j:02d}_{q['key']}"] = np.asarray(R[q["key"]])
        entry["errors"], entry["error_counts"] = cases, counts

    # -- output
    def finish(self) -> Path:
        """Write index, quality page and report.json, then move the report to ``out``."""
        quality = None
        if self.scenes:
            quality = scenes.quality_table(self.scene_values, self.methods, len(self.scenes), self.scene_seed)
            (self.tmp / "quality.html").write_text(html.quality_page(quality), encoding="utf-8")
        files = sorted({p.name for p in self.tmp.iterdir()} | {"report.json", "index.html"})
        self._check_clash(files)
        doc = {
            "generator": GENERATOR,
            "files": files,
            "settings": self.settings,
            "seconds": time.perf_counter() - self.started,
            "images": self.entries,
            "failures": self.failures,
            "quality": quality,
        }
        (self.tmp / "report.json").write_text(json.dumps(_plain(doc), indent=1, allow_nan=False), encoding="utf-8")
        (self.tmp / "index.html").write_text(
            html.index_page(self.entries, self.failures, self.settings, quality), encoding="utf-8"
        )
        self._move_into_place()
        return self.out

    def _move_into_place(self) -> None:
        """Rename the new report into place; Ctrl-C waits until the move is done or undone."""
        if interrupted.is_set():  # a Ctrl-C that JAX swallowed (crp_jax/interrupts.py)
            raise KeyboardInterrupt
        with _sigint_deferred() as asked:
            if not self.out.exists():
                os.replace(self.tmp, self.out)
                self.tmp = None
            else:
                self._swap_entries(asked)
        if asked.is_set():  # undone (see _swap_entries): the old report is as it was
            raise KeyboardInterrupt
        self.close()

    def _swap_entries(self, asked: threading.Event) -> None:
        """Old entries (those this report replaces, and stale ones an older report owned)
        into ``tmp/.old``, then the new ones into place, index.html first out and last in;
        the old ones are deleted with ``tmp`` only once everything new is in place. On an
        error or Ctrl-C, everything is put back."""
        new = sorted((p.name for p in self.tmp.iterdir() if p.name in ENTRIES), key=lambda n: n == "index.html")
        old = sorted(
            (n for n in (self.owned | set(new)) if (self.out / n).exists() or (self.out / n).is_symlink()),
            key=lambda n: n != "index.html",
        )
        backup = self.tmp / ".old"
        backup.mkdir()
        moved_out, moved_in = [], []
        try:
            for name in old:
                os.replace(self.out / name, backup / name)
                moved_out.append(name)
            for name in new:
                os.replace(self.tmp / name, self.out / name)
                moved_in.append(name)
            if asked.is_set():
                raise KeyboardInterrupt
        except BaseException:
            for name in reversed(moved_in):
                os.replace(self.out / name, self.tmp / name)
            for name in reversed(moved_out):
                os.replace(backup / name, self.out / name)
            if not isinstance(sys.exc_info()[1], KeyboardInterrupt):
                raise


class _sigint_deferred:
    """While active (main thread), SIGINT only sets the event it returns."""

    def __enter__(self) -> threading.Event:
        self.event = threading.Event()
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self.previous = previous
                signal.signal(signal.SIGINT, lambda signum, frame: self.event.set())
        return self.event

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _has_files(folder: Path) -> bool:
    """Anything in ``folder`` but a temporary folder a killed run left behind."""
    return any(not p.name.startswith(TMP_PREFIX) for p in folder.iterdir())


def _plain(value):
    """JSON-ready copy: numpy scalars to Python numbers, NaN/Inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
