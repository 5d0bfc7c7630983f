"""The ``crp-jax`` entry point: the command table, the top-level parser, dispatch and the
one exit policy of every command.

Exit status (every command, train/evaluate/convert included): 0 on success; 2 on a usage
error (argparse's own message, or options that cannot work together: :class:`UsageError`);
1 on a runtime error, printed as ONE line ``crp-jax COMMAND: error: ...`` on stderr (the
message of :func:`crp_jax.errors.one_line`, no traceback); 130 when interrupted (Ctrl-C).

Adding a command is one line in :data:`COMMANDS`: ``Command(NAME, MODULE, HELP)``, where
``MODULE`` defines ``NAME_main(argv, prog) -> int`` (usually ``return run_parsed(prog,
build_parser(prog), run, argv)``, which applies the exit policy). Command modules are
imported only when their command runs, so ``crp-jax --help`` imports no jax.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["PROG", "Command", "COMMANDS", "UsageError", "main", "build_parser", "run_parsed", "print_error"]

PROG = "crp-jax"


@dataclass(frozen=True)
class Command:
    """A subcommand: ``name``, the module that defines ``<name>_main(argv, prog)`` and the
    one-line ``help`` shown by ``crp-jax --help``."""

    name: str
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "crp_jax.cli.explain",
        "explain a generated held-out scene with the shipped model (offline, no arguments)",
    ),
    Command("detect", "crp_jax.cli.explain", "print the detections of images (and draw them with --out)"),
    Command("explain", "crp_jax.cli.explain", "relevance heatmaps for every detection of images"),
    Command(
        "report",
        "crp_jax.cli.report",
        "a static HTML report (index, one page per image, report.json) explaining every detection",
    ),
    Command("train", "crp_jax.cli.train", "train the embedded default SSD on generated glyph scenes"),
    Command("evaluate", "crp_jax.cli.evaluate", "mAP of a detector on held-out generated scenes"),
    Command("convert", "crp_jax.cli.convert", "convert a PyTorch SSD300 or SSDlite320 checkpoint to crp-jax weights"),
)


class UsageError(Exception):
    """Options that parse but cannot work together (exit 2). ``show_usage``: print the
    command's usage line above the error."""

    def __init__(self, message: str, show_usage: bool = True):
        super().__init__(message)
        self.show_usage = show_usage


def print_error(prog: str, e: BaseException | str) -> None:
    """``PROG: error: <one line>`` on stderr."""
    from crp_jax.errors import one_line

    text = e if isinstance(e, str) else one_line(e)
    print(f"{prog}: error: {text}", file=sys.stderr)


def run_parsed(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv) -> int:
    """Parse ``argv`` with ``parser`` and call ``run(args)`` (``args.prog`` is ``prog``)
    under the exit policy of the module doc."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help / --version -> 0, bad usage -> 2
        return 0 if e.code in (0, None) else 2
    args.prog = prog
    try:
        return int(run(args) or 0)
    except UsageError as e:
        if e.show_usage:
            parser.print_usage(sys.stderr)
        print_error(prog, str(e))
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the package's errors and anything else (e.g. XLA's): one line
        print_error(prog, e)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (``--help``, ``--version``, the list of commands). Each command
    parses its own options (:func:`main` hands it the rest of the command line)."""
    from crp_jax import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Explain SSD object detections with Contrastive Relevance Propagation (CRP, Tsunakawa "
            "et al. 2019; not Concept Relevance Propagation) and LRP baselines."
        ),
        epilog=(
            "Run 'crp-jax COMMAND --help' for a command's options. Exit status: 0 ok, 1 error, 2 usage, "
            "130 interrupted. Every command accepts --no-cache and --cache-dir DIR: compiled XLA programs "
            "are kept in $CRP_JAX_CACHE_DIR (off/0 disables), else $XDG_CACHE_HOME/crp-jax/jax or "
            "~/.cache/crp-jax/jax."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def run_command(name: str, argv: Sequence[str]) -> int:
    """Run command ``name`` with its arguments ``argv``; returns the exit status."""
    cmd = next(c for c in COMMANDS if c.name == name)
    prog = f"{PROG} {name}"
    try:
        fn = getattr(importlib.import_module(cmd.module), f"{name}_main")
    except (ImportError, AttributeError) as e:
        print_error(prog, f"not available in this installation ({cmd.module}.{name}_main: {e})")
        return 1
    try:
        return int(fn(list(argv), prog) or 0)
    except SystemExit as e:
        return 0 if e.code in (0, None) else (e.code if isinstance(e.code, int) else 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print_error(prog, e)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime error, 2 usage, 130
    interrupted)."""
    from crp_jax.interrupts import command_sigint

    top_level = argv is None  # the program itself (console script, python -m crp_jax)
    argv, no_cache, cache_dir = _cache_options(list(sys.argv[1:] if argv is None else argv))
    if argv and any(c.name == argv[0] for c in COMMANDS):
        prog = f"{PROG} {argv[0]}"
        # from the first line: a Ctrl-C that JAX swallows while importing or compiling still
        # counts (crp_jax/interrupts.py); the run then exits 130 whatever it returned
        with command_sigint() as interrupted:
            rc, cache = None, None
            try:
                cache = _start_cache(no_cache, cache_dir, prog)
                rc = run_command(argv[0], argv[1:])
            except KeyboardInterrupt:
                pass
            finally:
                from crp_jax.compile_cache import record_entries

                record_entries(cache)
            if rc is None or (interrupted.is_set() and rc != 130):  # rc 130: already said
                print(f"{prog}: interrupted", file=sys.stderr)
                rc = 130
        if rc == 130 and top_level:
            _exit_interrupted()
        return rc
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help / --version -> 0, bad usage -> 2
        return 0 if e.code in (0, None) else 2
    # only reached without a command (a command name is dispatched above)
    parser.print_usage(sys.stderr)
    print_error(PROG, f"choose a command: {', '.join(c.name for c in COMMANDS)}")
    return 2


def _exit_interrupted() -> None:
    """End the program with status 130 now. A KeyboardInterrupt that JAX swallowed can
    leave CPython's "unhandled interrupt" mark set, after which the interpreter kills
    itself with SIGINT at exit (status -2 to the parent, not 130); everything of ours is
    written and closed by now."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


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


def _start_cache(no_cache: bool, cache_dir: str | None, prog: str):
    """JAX's persistent compilation cache, on by default (crp_jax/compile_cache.py); the
    folder in use, or None."""
    from crp_jax.compile_cache import enable_compile_cache, resolve_cache_dir

    return enable_compile_cache(resolve_cache_dir(cache_dir, no_cache), prog)
