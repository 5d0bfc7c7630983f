"""Where the seconds of one ``crp-jax explain`` / ``crp-jax report`` run go, cold and warm.

Each run is a fresh process with a fresh (then filled) compilation-cache folder, the way a
person runs the command. The child process calls ``crp_jax.cli.main`` (what ``python -m
crp_jax`` calls) with timers around the phases, each second charged to exactly one phase
(the innermost one running):

- ``import``: every module import (``importlib``'s ``_find_and_load``, nested or not);
- ``load model``: ``load_pretrained``; ``detect``: reading and detecting the image;
- ``crop planning``: ``crop_groups`` (cone/window plans: tracing the forward and the
  cropped backward with the windowed interpreter, shapes only);
- ``jit trace`` / ``lower`` / ``compile``: JAX's own events
  (``/jax/core/compile/jaxpr_trace_duration``, ``jaxpr_to_mlir_module_duration``,
  ``backend_compile_duration``; the last includes the persistent-cache look-up, its
  hashing and loading, so on a warm run it is the cost of cache hits);
- ``explain: run``: the rest of ``explain``/``relevance_flow``'s engine (dispatch, waiting for
  XLA to run, copies to the host, checks);
- ``rest``: everything else in the command (figures, PNG/HTML writing, argument handling).

Wall time is measured by the parent around the whole process (interpreter start included:
``startup`` is wall minus what the child measured). The child also counts programs: jit
traces, lowerings and compilations, persistent-cache hits and misses.

Usage (compare checkouts back to back, their runs interleaved; ``--root`` may repeat, label=path)::

    python benchmarks/cli_phases.py --root before=/work/wt-lat-before --root after=$PWD
    python benchmarks/cli_phases.py --only explain --repeats 3

Commands: ``explain SCENE --out DIR`` (the default five-method grid) and ``report SCENE
--out DIR --no-progress`` (one image, the default methods crp,lrp_ab) on held-out scene 0
(128 px, the shipped model), the same commands as benchmarks/cli_latency.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "startup",
    "import",
    "load model",
    "detect",
    "crop planning",
    "jit trace",
    "lower",
    "compile",
    "explain: run",
    "rest",
)
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "jit trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
# (module, attribute, phase): wrapped when present (the same hooks fit older checkouts).
HOOKS = (
    ("crp_jax.ssd.io", "load_pretrained", "load model"),
    ("crp_jax.apps.explanations", "detect_image", "detect"),
    ("crp_jax.relevance.cropped", "crop_groups", "crop planning"),
    ("crp_jax.relevance.explain", "crop_groups", "crop planning"),
    ("crp_jax.relevance.explain", "_explain", "explain: run"),
    ("crp_jax.relevance.explain", "relevance_flow", "explain: run"),
    ("crp_jax", "relevance_flow", "explain: run"),
    ("crp_jax.relevance", "relevance_flow", "explain: run"),
)


class Clock:
    """Charges elapsed time to the innermost open phase."""

    def __init__(self):
        self.stack = ["rest"]
        self.last = time.perf_counter()
        self.totals: dict[str, float] = defaultdict(float)

    def _charge(self):
        now = time.perf_counter()
        self.totals[self.stack[-1]] += now - self.last
        self.last = now

    def enter(self, name: str):
        self._charge()
        self.stack.append(name)

    def exit(self, name: str):
        self._charge()
        if name in self.stack[1:]:  # pop up to it (robust to an event that never ended)
            while self.stack.pop() != name:
                pass


def _child(argv: list[str]) -> int:
    """Run ``crp_jax.cli.main(argv)`` with the phase clock; print one JSON line on stderr."""
    t_start = time.perf_counter()
    clock = Clock()
    import importlib._bootstrap as boot

    find_and_load = boot._find_and_load

    def timed_find_and_load(name, import_):
        if name in sys.modules:
            return find_and_load(name, import_)
        clock.enter("import")
        try:
            return find_and_load(name, import_)
        finally:
            clock.exit("import")

    boot._find_and_load = timed_find_and_load
    import functools
    import importlib

    counts: Counter = Counter()
    from jax import monitoring

    programs: list = []

    def on_start(event, value, **kw):
        if event in EVENTS:  # JAX's work for the crop plans is the planning's
            clock.enter("crop planning" if "crop planning" in clock.stack else EVENTS[event])

    def on_duration(event, duration, **kw):
        if event in EVENTS:
            planning = (
                clock.stack[-1] == "crop planning" and len(clock.stack) > 2 and clock.stack[-2] == "crop planning"
            )
            clock.exit(clock.stack[-1] if planning else EVENTS[event])
            counts[("planning " if planning else "") + EVENTS[event]] += 1
            programs.append((EVENTS[event], kw.get("fun_name", "?"), round(duration, 3), planning))

    def on_event(event, **kw):
        if event.startswith("/jax/compilation_cache/cache_"):
            counts[event.rsplit("/", 1)[1]] += 1

    monitoring.register_scalar_listener(on_start)
    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)

    def wrap(fn, phase):
        @functools.wraps(fn)
        def timed(*a, **k):
            clock.enter(phase)
            try:
                return fn(*a, **k)
            finally:
                clock.exit(phase)

        timed.__wrapped_phase__ = True
        return timed

    import crp_jax.cli

    for mod, attr, phase in HOOKS:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        fn = getattr(m, attr, None)
        if fn is not None and not getattr(fn, "__wrapped_phase__", False):
            setattr(m, attr, wrap(fn, phase))
    rc = crp_jax.cli.main(argv)
    clock.exit("rest")
    total = time.perf_counter() - t_start
    from crp_jax.compiled import cache_info

    info = {k: (v.entries, v.compilations) for k, v in cache_info().items()}
    print(
        "PHASES "
        + json.dumps(
            {"rc": rc, "total": total, "phases": clock.totals, "counts": counts, "caches": info, "programs": programs}
        ),
        file=sys.stderr,
    )
    return rc


def _run(root: Path, args: list[str], cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), CRP_JAX_CACHE_DIR=str(cache))
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    wall = time.perf_counter() - t
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith("PHASES ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"{root}: crp-jax {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(line[len("PHASES ") :])
    out["wall"] = wall
    out["phases"]["startup"] = wall - out["total"]
    return out


def _fmt_row(label: str, runs: list[dict]) -> str:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    cells = [f"{med([r['wall'] for r in runs]):.2f}"]
    cells += [f"{med([r['phases'].get(p, 0.0) for r in runs]):.2f}" for p in PHASES]
    c = runs[0]["counts"]
    cells.append(
        f"{c.get('jit trace', 0)} / {c.get('lower', 0)} / {c.get('compile', 0)} / "
        f"{c.get('cache_hits', 0)} / {c.get('cache_misses', 0)}"
    )
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", action="append", default=None, metavar="LABEL=PATH", help="checkout (repeatable)")
    p.add_argument("--repeats", type=int, default=2, help="warm runs per command and checkout (median)")
    p.add_argument("--only", default="explain,report", help="comma-separated subset of explain, report")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every run's numbers here")
    args = p.parse_args(argv)
    roots = [tuple(r.split("=", 1)) for r in (args.root or [f"this={ROOT}"])]
    only = args.only.split(",")
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from crp_jax.data import generate_scene
    from crp_jax.data.splits import HELDOUT_SEED

    rows, record = [], {}
    with tempfile.TemporaryDirectory(prefix="crp-jax-cli-phases-") as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene0.png"
        Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save(scene)
        commands = {
            "explain": ["explain", str(scene), "--out"],
            "report": ["report", str(scene), "--no-progress", "--out"],
        }
        for name in only:
            runs = {label: {"cold": [], "warm": []} for label, _ in roots}
            for k in range(1 + args.repeats):  # checkouts interleaved: a change of load hits all alike
                kind = "cold" if k == 0 else "warm"
                for label, root in roots:
                    cache = tmp / f"cache-{name}-{label}"
                    r = _run(Path(root), commands[name] + [str(tmp / f"out-{name}-{label}-{k}")], cache)
                    runs[label][kind].append(r)
                    print(f"{label} {name} {kind}: {r['wall']:.2f} s", file=sys.stderr)
            for label, _ in roots:
                record[f"{label} {name}"] = runs[label]
                rows.append(_fmt_row(f"{label}: `{name}` cold", runs[label]["cold"]))
                rows.append(_fmt_row(f"{label}: `{name}` warm", runs[label]["warm"]))
    print("| run | wall | " + " | ".join(PHASES) + " | traces / lowerings / compiles / cache hits / misses |")
    print("|---|" + "---|" * (len(PHASES) + 2))
    print("\n".join(rows))
    load = os.getloadavg()
    print(f"\nseconds (median of {args.repeats} warm runs, 1 cold); {os.cpu_count()} CPUs; load average {load}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
