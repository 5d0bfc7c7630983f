"""Argument handling shared by the image commands (``detect``, ``explain``, ``demo``):
argparse types, the model / progress / shard options, output folders, file stems and the
per-image loop that reports a bad image on its line and goes on with the others."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crp_jax.interrupts import SigintFlag, interrupted
from crp_jax.progress import Progress

__all__ = [
    "MAX_SIDE",
    "Shard",
    "add_model_options",
    "add_progress_option",
    "add_shard_option",
    "each_image",
    "int_at_least",
    "load_model",
    "out_dir",
    "parse_shard",
    "resolve_shard",
    "shard_images",
    "threshold",
    "unique_stems",
]

# Longest side at which images are read, detected from and drawn (see crp_jax/cli/explain.py):
# the model sees S x S pixels anyway, and full-size float arrays of a 13000 x 13000 image
# took 14.2 GB peak for explain (issue 9).
MAX_SIDE = 2048


def threshold(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def int_at_least(low: int):
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


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def add_model_options(p: argparse.ArgumentParser, default_threshold: float = 0.5) -> None:
    p.add_argument(
        "--weights",
        metavar="NAME|FILE",
        default=None,
        help="a shipped model (default, ssdlite) or weights NAME.msgpack with its NAME.json sidecar; "
        "default: the shipped default model",
    )
    p.add_argument(
        "--score-threshold",
        type=threshold,
        default=default_threshold,
        metavar="P",
        help=f"report detections with a class probability above P (default {default_threshold})",
    )
    p.add_argument(
        "--max-detections",
        type=positive_int,
        default=20,
        metavar="N",
        help="at most N detections per image, best first (default 20)",
    )


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def progress(total: int, desc: str, args) -> Progress:
    """The bar of a command: on when stderr is a terminal and ``--no-progress`` is not given."""
    enabled = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    return Progress(total, desc, enabled)


def load_model(args):
    """``(model, variables, meta)`` of ``--weights`` (a shipped model's name or a file), or
    the shipped default model."""
    from crp_jax.ssd.io import load_pretrained

    return load_pretrained(args.weights)


def out_dir(path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def unique_stems(paths: Sequence[str]) -> list[str]:
    """File-name-safe stems of ``paths``, made unique by ``-2``, ``-3`` ... in list order.

    A suffixed stem never takes a name that another path has as its own stem (``x.png``,
    ``x-2.png``, ``b/x.png`` -> ``x``, ``x-2``, ``x-3``), and stems that differ only in case
    count as one (a case-insensitive file system would merge their files).
    """
    from crp_jax.apps.figures import safe_name

    stems = [safe_name(Path(p).stem) for p in paths]
    own = {s.casefold() for s in stems}
    used: set[str] = set()
    out = []
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in used or (n > 1 and name.casefold() in own):
            n += 1
            name = f"{stem}-{n}"
        used.add(name.casefold())
        out.append(name)
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


def add_shard_option(p: argparse.ArgumentParser) -> None:
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
    return list(zip(paths, unique_stems(paths)))[shard.index :: shard.count]


def each_image(paths: Sequence[str], args, desc: str, work: Callable[[str, str, Progress], None]) -> int:
    """Run ``work(path, stem, bar)`` per image; an unreadable image is one error line and
    the rest still run. Returns 0, or 1 when any image failed."""
    from crp_jax.errors import CRPError, one_line

    prog = args.prog
    if hasattr(args, "shard"):  # commands with --shard: this process's share of the list
        shard = resolve_shard(args.shard)
        pairs = shard_images(paths, shard)
        if not pairs:
            print(f"{prog}: note: shard {shard} has no images ({len(paths)} given)", file=sys.stderr)
    else:
        pairs = list(zip(paths, unique_stems(paths)))
    bar = progress(len(pairs), desc, args)
    failed = 0
    # Ctrl-C stops between two images (crp_jax/interrupts.py: a KeyboardInterrupt raised
    # inside JAX can be lost); the caller's exit policy turns it into exit 130.
    with SigintFlag(unit="image") as sigint:
        try:
            for path, stem in pairs:
                if sigint.is_set() or interrupted.is_set():
                    raise KeyboardInterrupt
                try:
                    work(path, stem, bar)
                except (CRPError, OSError) as e:
                    failed += 1
                    msg = one_line(e)
                    if path not in msg:
                        msg = f"{path}: {msg}"
                    bar.write(f"{prog}: error: {msg}", err=True)
                bar.update()
            if sigint.is_set() or interrupted.is_set():  # during the last image: the work is done, but stop as asked
                raise KeyboardInterrupt
        finally:
            bar.close()
    return 1 if failed else 0


def fmt_box(box) -> str:
    """``[x1, y1, x2, y2]`` with one decimal."""
    return "[" + ", ".join(f"{float(v):.1f}" for v in box) + "]"


def detect_file(model, variables, meta, path: str, stem: str, args):
    """Read and detect one image file with the command's --score-threshold and
    --max-detections (the same defaults as ``crp-jax detect``)."""
    from crp_jax.apps.explanations import detect_image

    return detect_image(
        model,
        variables,
        meta,
        path,
        stem,
        score_threshold=args.score_threshold,
        max_detections=args.max_detections,
        max_side=MAX_SIDE,
    )
