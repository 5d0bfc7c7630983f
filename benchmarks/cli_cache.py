"""Wall time of CLI commands without, with an empty, and with a filled compilation cache.

Every ``crp-jax`` command keeps XLA's compiled programs in a per-user folder
(crp_jax/compile_cache.py). This runs each command as a fresh process (``python -m crp_jax``)
and prints a Markdown table of median wall times:

- ``--no-cache``: nothing read or written;
- cold: ``--cache-dir`` pointing at a new, empty folder (compiles, and writes the cache);
- warm: the same command again with the folder the cold run filled.

Commands: ``explain SCENE --out DIR`` and ``report SCENE --out DIR`` on a generated held-out
128 px scene (the shipped model), and ``report --scenes N --out DIR`` (data-set mode), whose
folder size and file count are printed too.

Usage::

    python benchmarks/cli_cache.py                 # 3 repeats, report of 10 scenes once
    python benchmarks/cli_cache.py --only scenes --scene-repeats 3
    python benchmarks/cli_cache.py --repeats 1 --scenes 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "crp_jax", *args], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"crp-jax {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return dt


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per setting for explain and report (median)")
    p.add_argument("--scenes", type=int, default=10, help="scenes of the data-set report")
    p.add_argument("--scene-repeats", type=int, default=1, help="runs per setting of the data-set report")
    p.add_argument("--only", default="explain,report,scenes", help="comma-separated subset of explain, report, scenes")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from crp_jax.data import generate_scene
    from crp_jax.data.splits import HELDOUT_SEED

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CRP_JAX_CACHE_DIR", None)
    with tempfile.TemporaryDirectory(prefix="crp-jax-cli-cache-") as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene.png"
        Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save(scene)
        commands = [
            ("explain", "explain SCENE --out DIR", ["explain", str(scene), "--out"], args.repeats),
            ("report", "report SCENE --out DIR", ["report", str(scene), "--no-progress", "--out"], args.repeats),
            (
                "scenes",
                f"report --scenes {args.scenes} --out DIR",
                ["report", "--scenes", str(args.scenes), "--no-progress", "--out"],
                args.scene_repeats,
            ),
        ]
        rows, sizes = [], {}
        for key, title, cmd, reps in commands:
            if key not in only:
                continue
            times = {"no cache": [], "cold": [], "warm": []}
            for r in range(reps):
                out = tmp / f"out-{len(rows)}-{r}"
                times["no cache"].append(_run(cmd + [str(out / "n"), "--no-cache"], env))
                cache = tmp / f"cache-{len(rows)}-{r}"
                times["cold"].append(_run(cmd + [str(out / "c"), "--cache-dir", str(cache)], env))
                times["warm"].append(_run(cmd + [str(out / "w"), "--cache-dir", str(cache)], env))
                if "--scenes" in cmd:
                    sizes[title] = _size(out / "w")
                cache_mib = _size(cache)[0] / 2**20
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((title, med, reps, cache_mib))
            print(f"{title}: {med}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("| `crp-jax ...` | --no-cache | cold (empty cache) | warm | cache folder | runs (median) |")
    print("|---|---|---|---|---|---|")
    for title, med, reps, mib in rows:
        print(
            f"| `{title}` | {med['no cache']:.1f} s | {med['cold']:.1f} s | {med['warm']:.1f} s | "
            f"{mib:.1f} MiB | {reps} |"
        )
    for title, (nbytes, nfiles) in sizes.items():
        print(f"\n`{title}`: report folder {nbytes / 2**20:.1f} MiB in {nfiles} files.")
    print(f"\n{os.cpu_count()} CPUs, 1-minute load average at the end {load:.2f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
