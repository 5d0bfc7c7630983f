"""JAX's persistent compilation cache for the command line: where it lives, how to turn it off.

Almost all of a short CLI run is XLA compilation: ``crp-jax explain scene.png --out DIR`` (one
128 px scene, the five-method grid) took a median 65.9 s with an empty cache and 12.6 s with a
filled one on the shared 2-core development machine (benchmarks/RESULTS.md, "CLI wall time").
JAX can keep compiled executables on disk and load them in the next process
(``jax_compilation_cache_dir``); every ``crp-jax`` command turns that on by default, in a
per-user folder, never inside the repository.

Where (first match wins):

1. ``--no-cache`` / ``--cache-dir DIR`` on the command line (any command, any position);
2. the environment variable ``CRP_JAX_CACHE_DIR``: a folder, or ``off`` / ``0`` / ``none`` /
   ``false`` (any case) to disable;
3. ``$XDG_CACHE_HOME/crp-jax/jax``, or ``~/.cache/crp-jax/jax`` when ``XDG_CACHE_HOME`` is
   unset or empty (the XDG base-directory convention).

The cache is an optimisation only: a folder that cannot be created turns it off with a
one-line note on stderr, and the command still runs. JAX decides once per process, at the
first compilation, whether the cache is in use, so :func:`enable_compile_cache` must run
before anything compiles (``crp_jax.cli.main`` calls it first).

The package keeps its crop plans (what the cropped engine reads from the traced backward,
no compiled code) in ``crp-jax-plans/`` inside the same folder, keyed by content
(crp_jax/relevance/stored_plans.py); a damaged plan file is ignored and rewritten.

Damaged entries: JAX trusts its entries. One whose compressed bytes were damaged (a disk
error, a copy cut short, an edit) made every run warn "Error reading persistent compilation
cache entry" without ever replacing it, and a damaged executable inside intact compression
can crash the process when XLA deserialises it. So each command records the SHA-256 of
every entry when it ends (``crp-jax-entries.json`` in the cache folder; JAX ignores files
that do not end in ``-cache``/``-atime``), and before anything compiles removes, with a
note naming the file, every entry that changed since (or that does not even decompress);
JAX then compiles it afresh and the next run records it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "CRP_JAX_CACHE_DIR"
OFF_WORDS = ("off", "0", "none", "false", "no")
# Executables that compile faster than this are not written: JAX's own default is 1 s, which
# leaves out the many 0.1-0.5 s compilations (preprocess, detect's post-processing, the small
# explain chunks) that add up to several seconds of a CLI run.
MIN_COMPILE_SECONDS = 0.2
# Environment variable that overrides it (seconds; 0 caches every program, e.g. in tests,
# where a fast machine may compile everything in less than the default).
MIN_SECONDS_ENV_VAR = "CRP_JAX_CACHE_MIN_SECONDS"

#: The record of every entry's size, mtime and SHA-256, in the cache folder.
MANIFEST = "crp-jax-entries.json"

__all__ = [
    "ENV_VAR",
    "MANIFEST",
    "default_cache_dir",
    "resolve_cache_dir",
    "enable_compile_cache",
    "check_entries",
    "record_entries",
]


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/crp-jax/jax``, or ``~/.cache/crp-jax/jax`` when it is unset or empty."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crp-jax" / "jax"


def resolve_cache_dir(
    cache_dir: str | None = None, no_cache: bool = False, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """The cache folder to use, or None for no cache (flag, then environment, then XDG)."""
    if no_cache:
        return None
    value = cache_dir if cache_dir is not None else environ.get(ENV_VAR)
    if value is None or value.strip() == "":
        return default_cache_dir(environ)
    if value.strip().lower() in OFF_WORDS:
        return None
    return Path(value).expanduser()


def enable_compile_cache(path: Path | None, prog: str = "crp-jax") -> Path | None:
    """Point JAX's persistent compilation cache at ``path`` (None: leave it off).

    Returns the folder in use, or None when off or when the folder cannot be created (then a
    one-line note goes to stderr and the run continues uncached)."""
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"{prog}: note: compilation cache off: cannot create {path}: {e.strerror or e}", file=sys.stderr)
        return None
    check_entries(path, prog)
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    try:
        min_seconds = float(os.environ.get(MIN_SECONDS_ENV_VAR, MIN_COMPILE_SECONDS))
    except ValueError:
        print(f"{prog}: note: {MIN_SECONDS_ENV_VAR} is not a number; using {MIN_COMPILE_SECONDS} s", file=sys.stderr)
        min_seconds = MIN_COMPILE_SECONDS
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    return path


def _entries(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*-cache") if p.is_file())


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _decompresses(file: Path) -> bool:
    """Whether the entry's bytes decompress as JAX writes them (zstandard when installed,
    else zlib)."""
    data = file.read_bytes()
    try:
        import zstandard

        try:
            zstandard.ZstdDecompressor().decompressobj().decompress(data)
            return True
        except zstandard.ZstdError:
            pass
    except ImportError:
        pass
    try:
        zlib.decompress(data)
        return True
    except zlib.error:
        return False


def check_entries(path: Path, prog: str = "crp-jax") -> list[Path]:
    """Remove the entries of cache folder ``path`` that changed since :func:`record_entries`
    saw them, or that were never recorded and do not decompress; one note per removed file
    on stderr. Returns the removed files. Never fails: a cache problem is not the command's."""
    removed = []
    try:
        manifest = _read_manifest(path)
        for file in _entries(path):
            rec = manifest.get(file.name)
            st = file.stat()
            if isinstance(rec, dict) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
                continue
            if isinstance(rec, dict):
                bad = _sha256(file) != rec.get("sha256")
                why = "its bytes changed since it was written"
            else:
                bad = not _decompresses(file)
                why = "it does not decompress"
            if bad:
                file.unlink(missing_ok=True)
                removed.append(file)
                print(
                    f"{prog}: note: removed damaged compilation-cache entry {file} ({why}; it will be recompiled)",
                    file=sys.stderr,
                )
    except OSError:
        pass
    return removed


def record_entries(path: Path | None) -> None:
    """Record size, mtime and SHA-256 of every entry of cache folder ``path`` (new or
    changed ones are hashed; entries that are gone are dropped). Written atomically; never
    fails."""
    if path is None:
        return
    try:
        old = _read_manifest(path)
        new = {}
        for file in _entries(path):
            st = file.stat()
            rec = old.get(file.name)
            if not (isinstance(rec, dict) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns):
                rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(file)}
            new[file.name] = rec
        if new == old:
            return
        tmp = path / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(new, indent=0))
        os.replace(tmp, path / MANIFEST)
    except OSError:
        pass
