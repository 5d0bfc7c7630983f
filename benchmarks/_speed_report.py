"""What ``benchmarks/speed.py`` says about a run: the machine it ran on, its results as JSON
(written after every configuration) and the final tables and headlines."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import jax
from _common import SSDLITE_MODELS, log

GiB = 1024.0**3


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    dev = jax.devices()[0]
    info = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": " ".join(load),
        "jax_backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except Exception:
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def save_json(results: dict, path: str | None, final: bool = False) -> None:
    """Write ``results`` to ``path`` (nothing without one); called after every
    configuration, so that a run cut short keeps its results."""
    if not path:
        return
    results["complete"] = final
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)


def _find(results, **kw):
    for r in results["timing"]:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def headlines(results, chunk) -> list[str]:
    out = []
    crp32 = _find(results, model="ssd300", images=1, T=32, method="crp")
    if crp32:
        out.append(f"crp / floor per target, SSD300, T=32, 1 image: {crp32['vs_floor']:.2f}x (target <= 1.15x)")
        z = _find(results, model="ssd300", images=1, T=32, method="zennit")
        if z:
            out.append(
                f"zennit / crp per target, SSD300, T=32: {z['per_target_s'] / crp32['per_target_s']:.2f}x (target >= 3x)"
            )
        else:
            out.append("zennit / crp per target, SSD300, T=32: not measured")
    elif "ssd300" in results["models"]:
        out.append("SSD300 T=32 not measured (run without --quick, --targets including 32)")
    m = results["models"].get("ssd300")
    if m:
        d = m["decomposition"]
        out.append(
            f"crp backward conv throughput, SSD300: {d['crp_backward_gflops']:.1f} GFLOP/s = "
            f"{100 * d['crp_backward_fraction_of_fwd_batch1']:.0f}% of the jitted forward at batch 1 "
            f"({m['forward_gflops_batch1']:.1f} GFLOP/s), {100 * d['crp_backward_fraction_of_fwd_batch_chunk']:.0f}% "
            f"of batch {chunk} ({m['forward_gflops_batch_chunk']:.1f} GFLOP/s) (target >= 70%)"
        )
    pl = results["per_layer"].get("ssd300")
    if pl:
        sm = pl["summary"]
        out.append(
            f"convs alone (--per-layer, batch {chunk}): crp's backward convs {sm['rule_bwd_gflops']:.1f} GFLOP/s = "
            f"{100 * sm['rule_bwd_fraction_of_fwd']:.0f}% of the forward convs ({sm['fwd_gflops']:.1f} GFLOP/s)"
        )
    for r in results["memory"]:
        if r.get("model") == "ssd300" and r.get("T") == 1024 and r.get("method") == "crp" and r.get("images") == 1:
            if "error" in r:
                out.append(f"T=1024 crp SSD300 1 image: {r['error']}")
            else:
                s = f"T=1024 crp SSD300, 1 image: peak RSS {r['peak_rss_bytes'] / GiB:.2f} GiB (target <= 4 GiB)"
                if r.get("device_peak_bytes"):
                    s += f", device peak {r['device_peak_bytes'] / GiB:.2f} GiB"
                out.append(s + f"; {r['per_target_s']:.3f} s/target")
    out += ssdlite_headlines(results)
    return out


def ssdlite_headlines(results) -> list[str]:
    """Per SSDlite model measured: crp / floor per target (goal <= 1.3x) and, on SSDlite320,
    torch's plain gradient / crp per target, at each T of one image (same run, same load)."""
    out = []
    for mname in SSDLITE_MODELS:
        rows = [r for r in results["timing"] if r["model"] == mname and r["images"] == 1 and r["method"] == "crp"]
        for crp in sorted(rows, key=lambda r: r["T"]):
            s = f"crp / floor per target, {mname}, T={crp['T']}, 1 image: {crp['vs_floor']:.2f}x (target <= 1.3x)"
            tg = _find(results, model=mname, images=1, T=crp["T"], method="torch_grad")
            if tg:
                s += f"; torch_grad / crp: {tg['per_target_s'] / crp['per_target_s']:.2f}x"
            out.append(s)
    return out


def report(results, methods, chunk) -> None:
    log("\n" + "=" * 100)
    mi = results["machine"]
    log(
        f"{mi['nproc']} cores, {mi['cpu_model']}, {mi['device_kind']} ({mi['jax_backend']}); load {mi['loadavg']} -> {mi.get('loadavg_end')}"
    )
    log(f"\n{'model':>15} {'B':>2} {'T':>5} {'method':>11} {'s/target':>9} {'x floor':>8} {'compile s':>9}")
    for r in results["timing"]:
        log(
            f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>11} {r['per_target_s']:9.4f} "
            f"{r['vs_floor']:8.2f} {r['compile_s']:9.1f}"
        )
    if results["memory"]:
        log(f"\n{'model':>15} {'B':>2} {'T':>5} {'method':>8} {'s/target':>9} {'peak RSS GiB':>12} {'device GiB':>10}")
        for r in results["memory"]:
            if "error" in r:
                log(f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>8}  error")
                continue
            dp = r.get("device_peak_bytes")
            log(
                f"{r['model']:>15} {r['images']:>2} {r['T']:>5} {r['method']:>8} {r['per_target_s']:9.4f} "
                f"{r['peak_rss_bytes'] / GiB:12.2f} {dp / GiB if dp else float('nan'):10.2f}"
            )
    log("\nheadlines:")
    for h in headlines(results, chunk):
        log("  " + h)
