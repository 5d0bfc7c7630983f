"""One configuration of ``benchmarks/speed.py`` in a subprocess of its own (``speed.py
--child SPEC``): its timing and its peak memory (peak RSS on a CPU; on an accelerator jax's
``peak_bytes_in_use``), measured apart from everything else the parent has allocated."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
from _common import HERE, block, build_model, make_images, timed
from _speed_report import loadavg
from _speed_runners import make_runners
from _speed_targets import TARGET_SETS


def _proc_status_bytes(field: str) -> float:
    """``field`` of /proc/self/status (a size in kB) in bytes, NaN where /proc lacks it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def _rss_now() -> float:
    return _proc_status_bytes("VmRSS")


def _hwm() -> float:
    return _proc_status_bytes("VmHWM")


def _ru_maxrss() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb * 1024.0 if sys.platform != "darwin" else float(kb)


def _peak_rss() -> float:
    """This process's peak RSS: VmHWM where /proc has it. ``ru_maxrss`` can be inflated in a
    child: Linux folds the high-water mark of the pre-exec (forked) address space, i.e. the
    parent's RSS, into it, so a small child of a big parent reports the parent's size."""
    h = _hwm()
    return h if h == h else _ru_maxrss()


def _device_peak():
    try:
        st = jax.devices()[0].memory_stats() or {}
        return st.get("peak_bytes_in_use")
    except Exception:
        return None


def child_main(spec: dict) -> dict:
    label, model, variables, meta = build_model(spec["model"])
    B, T, chunk, kind = spec["images"], spec["T"], spec["chunk"], spec["method"]
    x = make_images(B, model.config.image_size, meta)
    targets = TARGET_SETS[spec.get("targets", "uniform")](model.config, B, T)
    block(variables)
    rss_base = _rss_now()
    (r,) = make_runners([kind], model, variables, meta, x, targets, chunk, None, B)
    r.first = timed(r.warm)
    rss_warm = _peak_rss()
    steady = timed(r.full)
    return {
        **spec,
        "label": label,
        "first_s": r.first,
        "n_warm": r.n_warm,
        "steady_total_s": steady,
        "per_target_s": steady / T,
        "compile_s": r.first - steady / T * r.n_warm,
        "rss_base_bytes": rss_base,
        "peak_rss_after_warmup_bytes": rss_warm,
        "peak_rss_bytes": _peak_rss(),
        "vmhwm_bytes": _hwm(),
        "ru_maxrss_bytes": _ru_maxrss(),
        "device_peak_bytes": _device_peak(),
        "backend": jax.default_backend(),
        "loadavg_end": loadavg(),
    }


def run_child(spec: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, str(HERE / "speed.py"), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            res = json.loads(line[len("CHILD_RESULT ") :])
            res["wall_s"] = time.perf_counter() - t0
            return res
    tail = (p.stderr or p.stdout)[-800:]
    return {**spec, "error": f"exit {p.returncode}: {tail}"}
