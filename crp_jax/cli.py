"""The ``crp-jax`` command line (also ``python -m crp_jax``).

Subcommands::

    crp-jax demo     [--out DIR] [--seed N] [--index I] [--weights FILE] ...
    crp-jax detect   IMAGE... [--weights FILE] [--score-threshold 0.5] [--out DIR]
    crp-jax explain  IMAGE... --out DIR [--method M] [--target cls|cx|cy|w|h] [--sign +|-]
                     [--contrast others|foreground|CLASS...] [--compare methods|classes|none]
                     [--shard K/N]
    crp-jax report   [IMAGE...] --out DIR [--methods crp,lrp_ab] [--scenes N] [--save-relevance] [--force]
    crp-jax train | evaluate | convert ...   (delegated to crp_jax.train / .evaluate / .ssd.convert)

Exit status: 0 on success; 2 on a usage error (argparse's own message, or a combination of
options that cannot work together); 1 on a runtime error. Errors a user can cause (missing
or unreadable image, weights that do not fit the model, an unknown class name in
``--contrast``, which depends on the weights and is therefore a runtime error, exit 1)
print ONE line ``crp-jax <command>: error: ...`` on stderr and no traceback. With several
images, an image that cannot be read is reported on its line and the others are still
processed; the exit status is then 1.

Images: anything Pillow reads (grey, RGBA, palette, 16-bit, EXIF-rotated JPEG, any size) is
loaded with :func:`crp_jax.viz.load_image_bounded` and detected at the model's input size;
boxes are printed in the original pixels (``detect(..., image_sizes=...)``) and heatmaps are
resized bilinearly onto the image, so every output PNG has the size of its input image (the
demo's pictures are magnified for viewing), up to ``MAX_SIDE`` (2048) pixels: a longer image
is reduced by Pillow to at most that while it is read (box average by an integer factor),
detected from that, and drawn at that size. Memory is then the decoded file plus bounded
arrays, not a multiple of the image (peak RSS 871 MiB for ``detect`` and 869-936 MiB for
``explain`` of a 12544 x 12544 PNG, where ``detect`` took 6094 MiB before; the bound is
tested in tests/test_cli_big_images.py).

This module is only argument handling and file naming; the work is done by
``crp_jax.ssd.detect``, ``crp_jax.relevance`` and ``crp_jax.viz``. Heavy modules
(jax, flax) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "crp-jax"
# = crp_jax.relevance.composite.PRESETS, spelled out so that `crp-jax --help` needs no jax
# import (tests/test_cli.py checks that the two agree).
METHODS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
METHOD_TITLES = {
    "crp": "CRP",
    "lrp_ab": "LRP-ab",
    "lrp_eps": "LRP-eps",
    "gradient": "gradient",
    "gradient_x_input": "grad x input",
}
TARGETS = ("cls", "cx", "cy", "w", "h")
DELEGATED = {
    "train": ("crp_jax.train", "train_main", "train the embedded default SSD on generated glyph scenes"),
    "evaluate": ("crp_jax.evaluate", "evaluate_main", "mAP of a detector on held-out generated scenes"),
    "convert": ("crp_jax.ssd.convert", "convert_main", "convert a PyTorch SSD300 checkpoint to crp-jax weights"),
}
DEFAULT_DEMO_DIR = "crp_jax_demo"
# Longest side at which images are read, detected from and drawn (see the module doc): the
# model sees S x S pixels anyway, and full-size float arrays of a 13000 x 13000 image took
# 14.2 GB peak for explain (issue 9).
MAX_SIDE = 2048
_DEMO_SCAN = 50  # scenes tried after --index when a scene has no detection


class UsageError(Exception):
    """Options that parse but cannot work together (exit 2)."""


# ---- entry point --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime error, 2 usage)."""
    argv, no_cache, cache_dir = _cache_options(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] in DELEGATED:
        _start_cache(no_cache, cache_dir, f"{PROG} {argv[0]}")
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help / --version -> 0, bad usage -> 2
        return 0 if e.code in (0, None) else 2
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(
            f"{PROG}: error: choose a command: demo, detect, explain, report, train, evaluate, convert", file=sys.stderr
        )
        return 2
    prog = f"{PROG} {args.command}"
    from crp_jax.errors import CRPError

    _start_cache(no_cache, cache_dir, prog)
    try:
        return args.func(args)
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        _error(prog, e)
        return 2
    except (CRPError, OSError, MemoryError) as e:
        _error(prog, e)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _cache_options(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Take ``--no-cache`` and ``--cache-dir DIR`` out of ``argv`` (every command accepts them,
    before or after its name; nothing after ``--`` is looked at)."""
    rest, no_cache, cache_dir = [], False, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a == "--no-cache":
            no_cache = True
        elif a == "--cache-dir" and i + 1 < len(argv):
            cache_dir, i = argv[i + 1], i + 1
        elif a.startswith("--cache-dir="):
            cache_dir = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return rest, no_cache, cache_dir


def _start_cache(no_cache: bool, cache_dir: str | None, prog: str) -> None:
    """JAX's persistent compilation cache, on by default (crp_jax/compile_cache.py)."""
    from crp_jax.compile_cache import enable_compile_cache, resolve_cache_dir

    enable_compile_cache(resolve_cache_dir(cache_dir, no_cache), prog)


def _error(prog: str, e) -> None:
    print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)


def _one_line(e) -> str:
    text = str(e).strip()
    if isinstance(e, OSError) and getattr(e, "filename", None) and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    first = text.splitlines()[0] if text else type(e).__name__
    return first


def _delegate(name: str, argv: list[str]) -> int:
    module, func, _ = DELEGATED[name]
    prog = f"{PROG} {name}"
    try:
        import importlib

        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"{prog}: error: not available in this installation ({module}.{func}: {_one_line(e)})", file=sys.stderr)
        return 1
    from crp_jax.errors import CRPError

    try:
        rc = fn(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else (e.code if isinstance(e.code, int) else 1)
    except (CRPError, OSError, MemoryError) as e:
        _error(prog, e)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


# ---- parser -------------------------------------------------------------------------------


def _threshold(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def _int_at_least(low: int):
    """argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _add_model_options(p: argparse.ArgumentParser, threshold: float = 0.5) -> None:
    p.add_argument(
        "--weights",
        metavar="FILE",
        default=None,
        help="weights NAME.msgpack (with its NAME.json sidecar); default: the shipped model in weights/",
    )
    p.add_argument(
        "--score-threshold",
        type=_threshold,
        default=threshold,
        metavar="P",
        help=f"report detections with a class probability above P (default {threshold})",
    )
    p.add_argument(
        "--max-detections",
        type=_positive_int,
        default=20,
        metavar="N",
        help="at most N detections per image, best first (default 20)",
    )


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    from crp_jax import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Explain SSD object detections with Contrastive Relevance Propagation (CRP, Tsunakawa "
            "et al. 2019; not Concept Relevance Propagation) and LRP baselines."
        ),
        epilog=(
            "Run 'crp-jax COMMAND --help' for a command's options. Exit status: 0 ok, 1 error, 2 usage. "
            "Every command accepts --no-cache and --cache-dir DIR: compiled XLA programs are kept in "
            "$CRP_JAX_CACHE_DIR (off/0 disables), else $XDG_CACHE_HOME/crp-jax/jax or ~/.cache/crp-jax/jax."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # demo
    p = sub.add_parser(
        "demo",
        help="explain a generated held-out scene with the shipped model (offline, no arguments)",
        description=(
            "Load the shipped model, generate a held-out glyph scene, detect, and explain every "
            "detection's class with CRP and LRP-ab: an overlay PNG per detection and method, a grid "
            "comparing the two methods for every detection, and a class-swap grid for one detection "
            "of a confusable pair (E/F, O/Q, P/R): rows LRP-ab and CRP, columns the detected class "
            "and its partner; CRP contrasts the two ('why E and not F', 'why F and not E')."
        ),
    )
    p.add_argument(
        "--out", default=DEFAULT_DEMO_DIR, metavar="DIR", help=f"output folder (default ./{DEFAULT_DEMO_DIR})"
    )
    p.add_argument(
        "--seed",
        type=_nonneg_int,
        default=None,
        metavar="N",
        help="data-set seed of the generated scene (default: the held-out test seed, never trained on)",
    )
    p.add_argument(
        "--index",
        type=_nonneg_int,
        default=0,
        metavar="I",
        help=f"scene number in that data set (default 0; if it has no detection the next {_DEMO_SCAN} are tried)",
    )
    _add_model_options(p)
    p.set_defaults(func=cmd_demo, parser=p)

    # detect
    p = sub.add_parser(
        "detect",
        help="print the detections of images (and draw them with --out)",
        description=(
            "Detect objects in images; prints per image each detection's class, score and box "
            "(x1, y1, x2, y2) in the original image's pixels. With --out, writes "
            "STEM_detections.png per image."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    _add_model_options(p)
    p.add_argument("--out", default=None, metavar="DIR", help="write annotated PNGs here")
    _add_progress_option(p)
    p.set_defaults(func=cmd_detect, parser=p)

    # explain
    p = sub.add_parser(
        "explain",
        help="relevance heatmaps for every detection of images",
        description=(
            "Explain every detection of each image: per detection an overlay PNG of the signed "
            "heatmap of --method (red supports the target, blue speaks against it, white/grey is "
            "zero; normalised symmetrically by the 99.5th percentile of |R|), with the box and "
            "label; per image a grid comparing all five methods (--compare methods), or the "
            "detection's class against other classes (--compare classes), side by side."
        ),
        epilog=(
            "Files: STEM_detNN_CLASS_TARGET_METHOD.png per detection and STEM_grid.png per image. "
            "--contrast CLASS... names classes of the weights' meta; an unknown name is an error "
            "(exit 1). A detection whose own class is the only contrast class is skipped."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument(
        "--method", choices=METHODS, default="crp", help="method of the per-detection overlays (default crp)"
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="cls",
        help="what to explain: the class decision (cls, default) or a box coordinate (cx, cy, w, h)",
    )
    p.add_argument(
        "--sign",
        choices=("+", "-"),
        default=None,
        help="box coordinates only: '+' explains what pushes the box right/down/wider/taller "
        "(default), '-' the opposite",
    )
    p.add_argument(
        "--contrast",
        nargs="+",
        default=None,
        metavar="C",
        help="class targets only: contrast set: 'others' (all other classes), 'foreground' (other "
        "foreground classes) or class names ('--contrast F': why E and not F). Default: each "
        "method's own (others for crp, none for the rest)",
    )
    p.add_argument(
        "--compare",
        choices=("methods", "classes", "none"),
        default="methods",
        help="per-image grid: all five methods (default), the detected class against other classes "
        "with --method (cls target only), or no grid",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_options(p)
    p.add_argument(
        "--alpha", type=_threshold, default=0.6, metavar="A", help="heatmap opacity over the image (default 0.6)"
    )
    _add_shard_option(p)
    _add_progress_option(p)
    p.set_defaults(func=cmd_explain, parser=p)

    # report
    p = sub.add_parser(
        "report",
        help="a static HTML report (index, one page per image, report.json) explaining every detection",
        description=(
            "Explain every detection of the images (detections as 'crp-jax detect' prints them, same "
            "--score-threshold and --max-detections) and write a self-contained HTML site to --out: "
            "index.html, one page per image with the CRP class heatmap, the contrast against the "
            "runner-up class, the --methods beside it, eight localization maps, the per-layer "
            "relevance flow and the numbers; report.json holds every number. With --scenes N, N "
            "generated held-out scenes are added with a quality table (quality.html)."
        ),
        epilog=(
            "The report is built in a temporary folder and moved to --out at the end; an interrupted run "
            "(Ctrl-C, exit 130) leaves no half-written report. Unreadable images are listed on the index "
            "(exit 1, the rest is still written)."
        ),
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (created; a previous report is replaced)")
    p.add_argument(
        "--methods",
        default="crp,lrp_ab",
        metavar="M,M",
        help=f"comma-separated methods shown beside CRP (of {', '.join(METHODS)}; default crp,lrp_ab)",
    )
    p.add_argument("--scenes", type=_nonneg_int, default=0, metavar="N", help="add N generated held-out scenes")
    p.add_argument(
        "--seed", type=_nonneg_int, default=None, metavar="N", help="data-set seed of --scenes (default: held-out)"
    )
    p.add_argument("--save-relevance", action="store_true", help="also write relevance/STEM.npz per image")
    p.add_argument("--force", action="store_true", help="write into an existing folder that holds other files")
    _add_model_options(p)
    _add_progress_option(p)
    p.set_defaults(func=cmd_report, parser=p)

    # delegated commands: parsed by their own modules (main() dispatches before this parser)
    for name, (_, _, text) in DELEGATED.items():
        d = sub.add_parser(name, help=text, add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


# ---- shared helpers -----------------------------------------------------------------------


class _Progress:
    """tqdm when importable, else a minimal stderr bar; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n = total, desc, 0
        self.enabled = enabled and total > 1
        self._tqdm = None
        if self.enabled:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)
            except ImportError:
                self._draw()

    def _draw(self) -> None:
        width = 24
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total}")
        sys.stderr.flush()

    def update(self) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(1)
        else:
            self._draw()

    def write(self, text: str, err: bool = False) -> None:
        stream = sys.stderr if err else sys.stdout
        if self._tqdm is not None:
            self._tqdm.write(text, file=stream)
        elif self.enabled:
            sys.stderr.write("\r" + " " * (40 + len(self.desc)) + "\r")
            print(text, file=stream)
            self._draw()
        else:
            print(text, file=stream)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (40 + len(self.desc)) + "\r")
            sys.stderr.flush()


def _progress(total: int, desc: str, args) -> _Progress:
    enabled = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    return _Progress(total, desc, enabled)


def _load_model(args):
    from crp_jax.ssd.io import load_pretrained, load_weights

    if args.weights:
        return load_weights(args.weights)
    return load_pretrained()


def _out_dir(path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _safe(text: str) -> str:
    """A file-name-safe version of a class name or stem."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "x"


def _unique_stems(paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = _safe(Path(p).stem)
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n + 1}")
    return out


# ---- sharding a list of images over processes ------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count`` (0-based): it takes items ``index, index + count, ...``
    of the list as given on the command line (not re-sorted: a shell glob is already sorted,
    and every process must see the same list)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> ``Shard(K, N)``; anything else (non-numeric, ``N < 1``, ``K < 0``,
    ``K >= N``) raises ``argparse.ArgumentTypeError`` naming the value (a usage error)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None:
        raise argparse.ArgumentTypeError(f"expected K/N with integers 0 <= K < N, got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or k >= n:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return Shard(k, n)


def _add_shard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="K/N",
        help="process K of N (0-based) takes every N-th image of the list as given (K, K+N, ...) and "
        "writes only their outputs; default 0/1, or jax.process_index()/jax.process_count() "
        "when jax.distributed is initialised",
    )


def resolve_shard(shard: Shard | None) -> Shard:
    """``shard``, or when None the JAX process's: ``jax.process_index()`` of
    ``jax.process_count()`` (``0/1`` unless ``jax.distributed`` is initialised)."""
    if shard is not None:
        return shard
    import jax

    return Shard(int(jax.process_index()), int(jax.process_count()))


def shard_images(paths: Sequence[str], shard: Shard) -> list[tuple[str, str]]:
    """``(path, stem)`` of the images ``shard`` handles: ``paths[K::N]``. Stems are made
    unique over the WHOLE list first, so a shard names its files exactly as an unsharded
    run would."""
    return list(zip(paths, _unique_stems(paths)))[shard.index :: shard.count]


def _display(pixels, small: int = 160, large: int = 400):
    """Grid cells at a readable size: ``(pixels, box_factor, scale)``. Small images are
    magnified by an integer ``scale`` (nearest), large ones shrunk to ``large`` pixels on
    their longer side (boxes multiplied by ``box_factor``); the heatmap follows either way."""
    import numpy as np
    from PIL import Image

    H, W = pixels.shape[:2]
    side = max(H, W)
    if side > large:
        f = large / side
        w, h = max(1, round(W * f)), max(1, round(H * f))
        small_px = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.LANCZOS))
        return small_px, np.array([w / W, h / H, w / W, h / H], np.float32), 1
    return pixels, np.ones(4, np.float32), max(1, min(8, math.ceil(small / max(1, side))))


def _class_name(meta, k: int) -> str:
    names = meta.class_names
    return names[k] if 0 <= k < len(names) else str(k)


@dataclass
class _Image:
    path: str
    stem: str
    pixels: object  # uint8 [h, w, 3]: the image, reduced to MAX_SIDE when it is larger
    x: object  # model input [1, S, S, 3]
    det: object  # Detections, boxes in original pixels
    size: tuple | None = None  # (H, W) of the original image; None: pixels' own size

    @property
    def full_size(self) -> tuple[int, int]:
        return tuple(self.size) if self.size is not None else tuple(self.pixels.shape[:2])

    def on_pixels(self, boxes):
        """Boxes ``[..., 4]`` in original pixels -> in ``pixels``' pixels (for drawing)."""
        import numpy as np

        H, W = self.full_size
        h, w = self.pixels.shape[:2]
        if (h, w) == (H, W):
            return boxes
        return np.asarray(boxes, np.float32) * np.array([w / W, h / H, w / W, h / H], np.float32)


def _detect_one(model, variables, meta, path: str, stem: str, args) -> _Image:
    from crp_jax import viz
    from crp_jax.ssd.detect import detect, preprocess_with_sizes

    pixels, size = viz.load_image_bounded(path, MAX_SIDE)
    x = preprocess_with_sizes([pixels], meta)[0]
    det = detect(
        model,
        variables,
        x,
        meta,
        score_threshold=args.score_threshold,
        max_detections=args.max_detections,
        image_sizes=[size],
    )[0]
    return _Image(path, stem, pixels, x, det, size)


def _each_image(paths: Sequence[str], args, desc: str, work: Callable[[str, str, _Progress], None]) -> int:
    """Run ``work(path, stem, bar)`` per image; an unreadable image is one error line and
    the rest still run. Returns 0, or 1 when any image failed."""
    from crp_jax.errors import CRPError

    prog = f"{PROG} {args.command}"
    if hasattr(args, "shard"):  # commands with --shard: this process's share of the list
        shard = resolve_shard(args.shard)
        pairs = shard_images(paths, shard)
        if not pairs:
            print(f"{prog}: note: shard {shard} has no images ({len(paths)} given)", file=sys.stderr)
    else:
        pairs = list(zip(paths, _unique_stems(paths)))
    bar = _progress(len(pairs), desc, args)
    failed = 0
    try:
        for path, stem in pairs:
            try:
                work(path, stem, bar)
            except (CRPError, OSError) as e:
                failed += 1
                msg = _one_line(e)
                if path not in msg:
                    msg = f"{path}: {msg}"
                bar.write(f"{prog}: error: {msg}", err=True)
            bar.update()
    finally:
        bar.close()
    return 1 if failed else 0


def _fmt_box(box) -> str:
    return "[" + ", ".join(f"{float(v):.1f}" for v in box) + "]"


# ---- detect -------------------------------------------------------------------------------


def cmd_detect(args) -> int:
    from crp_jax import viz

    model, variables, meta = _load_model(args)
    out = _out_dir(args.out) if args.out else None

    def work(path, stem, bar):
        im = _detect_one(model, variables, meta, path, stem, args)
        H, W = im.full_size
        d = im.det
        lines = [f"{path} ({W}x{H}): {len(d)} detection{'s' if len(d) != 1 else ''}"]
        for k in range(len(d)):
            name = _class_name(meta, int(d.labels[k]))
            lines.append(f"  {name:<12} {float(d.scores[k]):.3f}  {_fmt_box(d.boxes[k])}")
        if out is not None:
            file = out / f"{stem}_detections.png"
            viz.draw_detections(im.pixels, im.on_pixels(d.boxes), d.labels, d.scores, meta.class_names).save(file)
            lines.append(f"  wrote {file}")
        bar.write("\n".join(lines))

    return _each_image(args.images, args, "detect", work)


# ---- explain ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    """What is asked of every detection: target kind, sign, contrast spec."""

    target: str  # cls | cx | cy | w | h
    sign: int
    contrast: object  # None | "others" | "foreground" | tuple of class indices


def _resolve_contrast(values, meta):
    """``--contrast`` words -> None, "others", "foreground" or a tuple of class indices
    (names resolved with ``meta.class_index``: an unknown name raises ConfigError)."""
    if not values:
        return None
    words = [v for v in values]
    if len(words) == 1 and words[0] in ("others", "foreground"):
        return words[0]
    if any(w in ("others", "foreground") for w in words):
        raise UsageError("--contrast takes 'others', 'foreground' or class names, not a mixture")
    out = []
    for w in words:
        k = meta.class_index(w)
        if k not in out:
            out.append(k)
    return tuple(out)


def _target_for(ask: _Ask, anchor: int, cls: int, contrast="default"):
    """The target of one detection (class ``cls`` at ``anchor``), or None when the contrast
    set leaves nothing to contrast with."""
    from crp_jax.relevance.targets import ClassTarget, LocTarget

    if ask.target != "cls":
        return LocTarget(0, int(anchor), ask.target, ask.sign)
    c = ask.contrast if contrast == "default" else contrast
    if isinstance(c, tuple):
        c = tuple(k for k in c if k != cls)
        if not c:
            return None
    return ClassTarget(0, int(anchor), int(cls), c)


def _describe(meta, target, method: str) -> str:
    """Short human description: 'CRP: why E not F' / 'LRP-ab: cx +'."""
    from crp_jax.relevance.targets import ClassTarget

    m = METHOD_TITLES.get(method, method)
    if not isinstance(target, ClassTarget):
        return f"{m}: {target.coord} {'+' if target.sign > 0 else '-'}"
    name = _class_name(meta, target.cls)
    c = target.contrast if target.contrast is not None else ("others" if method == "crp" else "none")
    if c == "none":
        return f"{m}: {name}"
    if isinstance(c, str):
        return f"{m}: {name} not {c}"
    return f"{m}: {name} not {'/'.join(_class_name(meta, k) for k in c)}"


def _heatmaps(model, variables, meta, x, targets, method: str):
    """``[T, S, S]`` signed heatmaps (channels summed) for ``targets`` of one image."""
    from crp_jax.relevance import explain, heatmap

    if not targets:
        return []
    R = explain(model, variables, x, list(targets), method=method, meta=meta)
    return list(heatmap(R))


def explain_image(model, variables, meta, im: _Image, ask: _Ask, method: str, compare: str):
    """All heatmaps of one image. Returns ``(dets, main, columns)``: ``dets`` the detection
    numbers explained (a detection whose contrast set is empty is left out), ``main`` the
    overlays' ``{det: (target, heatmap)}`` for ``method``, ``columns`` the grid's comparison
    columns as ``(title, method, {det: (target, heatmap)})`` (empty for ``compare="none"``).
    Each ``explain`` call holds one target per detection, so its compiled shapes repeat
    from image to image."""
    d = im.det
    base = {}
    for i in range(len(d)):
        t = _target_for(ask, d.anchors[i], int(d.labels[i]))
        if t is not None:
            base[i] = t
    dets = sorted(base)
    cache: dict[str, dict] = {}

    def run(m: str, targets: dict) -> dict:
        hs = _heatmaps(model, variables, meta, im.x, [targets[i] for i in sorted(targets)], m)
        return {i: (targets[i], h) for i, h in zip(sorted(targets), hs)}

    cache[method] = run(method, base)
    columns = []
    if compare == "methods":
        for m in METHODS:
            if m not in cache:
                cache[m] = run(m, base)
            columns.append((METHOD_TITLES[m], m, cache[m]))
    elif compare == "classes":
        # column p: the p-th class of each detection's list: its own class first, then the
        # explicit contrast classes, or all other foreground classes.
        per_det = {}
        for i in dets:
            own = int(d.labels[i])
            if isinstance(ask.contrast, tuple):
                others = [k for k in ask.contrast if k != own]
                per_det[i] = [(own, tuple(others))] + [(k, tuple(j for j in [own] + others if j != k)) for k in others]
            else:
                fg = [k for k in range(1, meta.num_classes) if k != own]
                per_det[i] = [(k, "default") for k in [own] + fg]
        ncols = max((len(v) for v in per_det.values()), default=0)
        for p in range(ncols):
            targets = {}
            for i, cl in per_det.items():
                if p < len(cl):
                    k, c = cl[p]
                    t = _target_for(ask, d.anchors[i], k, c)
                    if t is not None:
                        targets[i] = t
            title = "detected class" if p == 0 else f"class #{p + 1}"
            columns.append((title, method, cache[method] if p == 0 else run(method, targets)))
    return dets, cache[method], columns


def cmd_explain(args) -> int:
    from crp_jax import viz

    if args.target == "cls" and args.sign is not None:
        raise UsageError("--sign applies to box coordinates (--target cx|cy|w|h), not to cls")
    if args.target != "cls" and args.contrast:
        raise UsageError("--contrast applies to class targets (--target cls) only")
    if args.compare == "classes" and args.target != "cls":
        raise UsageError("--compare classes needs --target cls")
    model, variables, meta = _load_model(args)
    ask = _Ask(args.target, -1 if args.sign == "-" else 1, _resolve_contrast(args.contrast, meta))
    out = _out_dir(args.out)

    def work(path, stem, bar):
        im = _detect_one(model, variables, meta, path, stem, args)
        H, W = im.full_size
        d = im.det
        if len(d) == 0:
            bar.write(f"{path} ({W}x{H}): no detections above {args.score_threshold}; nothing to explain")
            return
        dets, main, columns = explain_image(model, variables, meta, im, ask, args.method, args.compare)
        written = []
        for i in range(len(d)):
            if i not in dets:
                bar.write(
                    f"{PROG} explain: note: {path}: detection {i} ({_class_name(meta, int(d.labels[i]))}) "
                    "skipped: its class is the only contrast class",
                    err=True,
                )
        for i in dets:
            target, h = main[i]
            name = _class_name(meta, int(d.labels[i]))
            label = f"{name} {float(d.scores[i]):.2f} | {_describe(meta, target, args.method)}"
            img = viz.overlay(im.pixels, h, box=im.on_pixels(d.boxes[i]), label=label, alpha=args.alpha)
            what = args.target if args.target == "cls" else f"{args.target}{'+' if ask.sign > 0 else '-'}"
            file = out / f"{stem}_det{i:02d}_{_safe(name)}_{what}_{args.method}.png"
            img.save(file)
            written.append(file)
        if columns:
            written.append(_save_grid(out / f"{stem}_grid.png", im, meta, dets, columns, args.alpha))
        lines = [
            f"{path} ({W}x{H}): {len(d)} detection{'s' if len(d) != 1 else ''}, wrote {len(written)} files to {out}"
        ]
        lines += [f"  {f.name}" for f in written]
        bar.write("\n".join(lines))

    return _each_image(args.images, args, "explain", work)


def _save_grid(file: Path, im: _Image, meta, dets, columns, alpha: float) -> Path:
    """Rows: detections; first column the image with the box, then one column per entry of
    ``columns`` (an empty cell where a detection has no such column)."""
    from crp_jax import viz

    pixels, f, s = _display(im.pixels)
    d = im.det
    cells, titles = [], []
    for i in dets:
        name = _class_name(meta, int(d.labels[i]))
        box = im.on_pixels(d.boxes[i]) * f
        cells.append(
            viz.draw_detections(pixels, box[None], d.labels[i : i + 1], d.scores[i : i + 1], meta.class_names, scale=s)
        )
        titles.append(f"det {i}: {name} {float(d.scores[i]):.2f}\ninput")
        for _, method, col in columns:
            if i not in col:
                cells.append(None)
                titles.append("")
                continue
            target, h = col[i]
            cells.append(viz.overlay(pixels, h, box=box, alpha=alpha, scale=s))
            titles.append(_describe(meta, target, method).replace(": ", ":\n", 1))
    viz.grid(cells, titles, ncols=len(columns) + 1).save(file)
    return file


# ---- report -------------------------------------------------------------------------------


def cmd_report(args) -> int:
    """``crp-jax report``: the loop over images; the report itself is crp_jax/report/."""
    import time

    from crp_jax.errors import CRPError
    from crp_jax.report import ReportWriter, eta_line

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"--methods {args.methods!r}: unknown {bad or 'empty'}; choose from {', '.join(METHODS)}")
    if not args.images and not args.scenes:
        raise UsageError("give IMAGE files, --scenes N, or both")
    if args.seed is not None and not args.scenes:
        raise UsageError("--seed applies to --scenes N only")
    model, variables, meta = _load_model(args)
    settings = {
        "score_threshold": args.score_threshold,
        "max_detections": args.max_detections,
        "weights": args.weights or "shipped default (weights/)",
    }
    with ReportWriter(
        args.out,
        model,
        variables,
        meta,
        methods=methods,
        settings=settings,
        force=args.force,
        save_relevance=args.save_relevance,
    ) as writer:
        paths = list(args.images)
        if args.scenes:
            paths += writer.add_scenes(args.scenes, _heldout_seed() if args.seed is None else args.seed)
        start = time.perf_counter()

        def work(path, stem, bar):
            try:
                im = _detect_one(model, variables, meta, path, stem, args)
                n = writer.add_image(path, stem, im.pixels, im.x, im.det, _display(im.pixels, 256, 384))
            except (CRPError, OSError) as e:  # listed on the index; _each_image prints it
                writer.add_failure(path, _one_line(e))
                raise
            if not args.no_progress:  # bar.n counts the images before this one
                line = eta_line(bar.n + 1, len(paths), time.perf_counter() - start)
                bar.write(f"{PROG} report: {line}: {writer.entries[-1]['name']}, {n} detections", err=True)

        rc = _each_image(paths, args, "report", work)
        out = writer.finish()
    print(f"wrote {out / 'index.html'} ({len(writer.entries)} pages, {len(writer.failures)} unreadable)")
    return rc


# ---- demo ---------------------------------------------------------------------------------


def _heldout_seed() -> int:
    try:
        from crp_jax.evaluate import HELDOUT_SEED

        return int(HELDOUT_SEED)
    except (ImportError, AttributeError):
        return 1_000_003


def _partner(meta, k: int):
    """Index of the confusable partner of class ``k`` in ``meta`` (E/F, O/Q, P/R), or None."""
    from crp_jax.data import PARTNER

    name = _class_name(meta, k)
    other = PARTNER.get(name)
    if other is None or other not in meta.class_names:
        return None
    return meta.class_names.index(other)


def cmd_demo(args) -> int:
    from crp_jax import viz
    from crp_jax.data import generate_scene
    from crp_jax.ssd.detect import detect, preprocess_with_sizes

    model, variables, meta = _load_model(args)
    seed = _heldout_seed() if args.seed is None else args.seed
    im = None
    for index in range(args.index, args.index + _DEMO_SCAN + 1):
        scene = generate_scene(seed, index)
        x, sizes = preprocess_with_sizes([scene.image], meta)
        det = detect(
            model,
            variables,
            x,
            meta,
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            image_sizes=sizes,
        )[0]
        if len(det):
            im = _Image(f"scene {index} of data set {seed}", "scene", scene.image, x, det)
            break
    if im is None:
        from crp_jax.errors import CRPError

        raise CRPError(
            f"the model detected nothing above {args.score_threshold} in scenes {args.index}.."
            f"{args.index + _DEMO_SCAN} of data set {seed}; try a lower --score-threshold"
        )
    out = _out_dir(args.out)
    d = im.det
    H, W = im.pixels.shape[:2]
    s = max(1, math.ceil(384 / max(H, W)))  # magnify the small scenes for viewing
    written = []

    def save(img, name):
        file = out / name
        img.save(file)
        written.append(file)

    save(viz.grid([im.pixels], [""], scale=s, pad=0), "scene.png")
    save(viz.draw_detections(im.pixels, d.boxes, d.labels, d.scores, meta.class_names, scale=s), "detections.png")

    ask = _Ask("cls", 1, None)
    per_method = {}
    for m in ("crp", "lrp_ab"):
        targets = [_target_for(ask, d.anchors[i], int(d.labels[i])) for i in range(len(d))]
        per_method[m] = _heatmaps(model, variables, meta, im.x, targets, m)
        for i in range(len(d)):
            name = _class_name(meta, int(d.labels[i]))
            label = f"{name} {float(d.scores[i]):.2f} | {_describe(meta, targets[i], m)}"
            save(
                viz.overlay(im.pixels, per_method[m][i], box=d.boxes[i], label=label, scale=s),
                f"det{i:02d}_{_safe(name)}_{m}.png",
            )
    cells, titles = [], []
    for i in range(len(d)):
        name = _class_name(meta, int(d.labels[i]))
        cells.append(
            viz.draw_detections(
                im.pixels, d.boxes[i : i + 1], d.labels[i : i + 1], d.scores[i : i + 1], meta.class_names, scale=s
            )
        )
        titles.append(f"det {i}: {name} {float(d.scores[i]):.2f}")
        for m, desc in (("crp", f"CRP: why {name} (vs all others)"), ("lrp_ab", f"LRP-ab: {name}")):
            cells.append(viz.overlay(im.pixels, per_method[m][i], box=d.boxes[i], scale=s))
            titles.append(desc)
    save(viz.grid(cells, titles, ncols=3), "methods_grid.png")

    swap = next((i for i in range(len(d)) if _partner(meta, int(d.labels[i])) is not None), None)
    if swap is None:
        print(
            f"{PROG} demo: note: no detection of a confusable pair class (E/F, O/Q, P/R); no class-swap grid",
            file=sys.stderr,
        )
    else:
        written.append(_class_swap(out, model, variables, meta, im, swap, s))
    print(f"{im.path}: {len(d)} detection{'s' if len(d) != 1 else ''}")
    for i in range(len(d)):
        print(f"  det {i}: {_class_name(meta, int(d.labels[i])):<6} {float(d.scores[i]):.3f}  {_fmt_box(d.boxes[i])}")
    print(f"wrote {len(written)} files to {out.resolve()}:")
    for f in written:
        print(f"  {f.name}")
    return 0


def _class_swap(out: Path, model, variables, meta, im: _Image, i: int, s: int) -> Path:
    """Rows LRP-ab and CRP, columns the detected class and its partner; CRP contrasts the
    pair ("why E and not F", "why F and not E"). Each row shares one colour scale, so the
    two columns are comparable. Two targets per explain call, like the other calls."""
    from crp_jax import viz
    from crp_jax.relevance.targets import ClassTarget

    d = im.det
    k = int(d.labels[i])
    p = _partner(meta, k)
    a = int(d.anchors[i])
    kn, pn = _class_name(meta, k), _class_name(meta, p)
    rows = [
        ("lrp_ab", [ClassTarget(0, a, k), ClassTarget(0, a, p)], [f"LRP-ab: {kn}", f"LRP-ab: {pn}"]),
        (
            "crp",
            [ClassTarget(0, a, k, (p,)), ClassTarget(0, a, p, (k,))],
            [f"CRP: why {kn} and not {pn}", f"CRP: why {pn} and not {kn}"],
        ),
    ]
    cells, titles = [], []
    for method, targets, names in rows:
        hs = _heatmaps(model, variables, meta, im.x, targets, method)
        vmax = max(viz.robust_max(h) for h in hs)
        for h, t in zip(hs, names):
            cells.append(viz.overlay(im.pixels, h, box=d.boxes[i], vmax=vmax, scale=s))
            titles.append(f"{t}\n(det {i}, score {float(d.scores[i]):.2f})")
    file = out / f"class_swap_det{i:02d}_{_safe(kn)}_{_safe(pn)}.png"
    viz.grid(cells, titles, ncols=2).save(file)
    return file


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
