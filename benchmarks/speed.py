"""Propagation speed of crp-jax against its floor (plain gradient) and zennit (docs/design.md §6).

Models (``--model``; ``_common.build_model``): "ssd300", SSD300-VGG16 (random weights from
``init_variables``); "shipped", ``cj.load_pretrained()`` (when no weights are shipped yet,
``SSDConfig.small(num_classes=7)`` with random weights stands in, and the output says so);
"ssdlite320", torchvision's SSDlite320-MobileNetV3-Large layout (91 classes, random weights
and BatchNorm statistics, BN folded into the convs as rules see it); "shipped_ssdlite",
``cj.load_pretrained("ssdlite")`` (else ``SSDConfig.ssdlite_small(num_classes=7)`` at
random, said so); "blazeface", MediaPipe's short-range BlazeFace (``cj.load_pretrained("blazeface")``,
``--crop`` only, target sets "faces_first" and "faces": ``face_targets``). "both" is ssd300 +
shipped, "all" every SSD model. Measured:

- per-target time of ``cj.explain`` with ``--methods`` (crp, lrp_ab, lrp_eps) and with
  method="gradient" (reference), in steady state (after a warm-up call that compiles the
  same shapes; compile time = first call minus the steady time of the same targets);
- the floor: plain gradient computed the fastest way, exactly as ``explain`` batches crp:
  per image one jitted forward that returns ``jax.vjp``'s function (a pytree), then one
  jitted ``vmap`` of it per chunk of ``--chunk`` targets;
- a naive loop: one jitted ``jax.vjp`` (forward + backward) per target, no vmap;
- zennit (``benchmarks/zennit_ssd.py``): the same network and weights in PyTorch, ZBox on
  conv1_1, ZPlus on every other conv, Pass on L2Norm and ReLU; one forward per image, then
  one backward per target with ``retain_graph=True``; also plain torch autograd the same way
  (VGG models only: zennit has no SSDlite canonizer);
- on "ssdlite320", torch's plain input gradient (``benchmarks/torch_ssdlite.py``, row
  "torch_grad"): torchvision's own ``ssdlite320_mobilenet_v3_large`` (its random init, eval
  mode), one forward per image, one ``torch.autograd.grad`` per target, same anchors and
  cotangents as crp's targets; needs torch + torchvision, else skipped with the reason;
- the decomposition of crp and of the floor into their per-image forward (for crp: the
  residuals, i.e. forward + z+ denominators + flipped kernels) and their per-chunk backward;
- XLA conv throughput: GFLOP/s of the jitted forward (FLOPs counted analytically,
  2*Ho*Wo*Cout*(Cin/groups)*kh*kw per conv, so depthwise convs count kh*kw per output) at
  batch 1 and batch ``--chunk``, and the GFLOP/s the crp backward achieves per target (FLOPs
  of the transposed convs it runs: 1x per conv, 2x for AlphaBeta (w+ and w- stacked), 2x
  for ZBox (w and the folded bound kernel stacked), 4x for SignedWPlus (SSDlite));
- per-conv-layer timing (``--per-layer``, SSD300 only);
- peak memory of a separate subprocess per configuration (peak RSS on CPU; on an
  accelerator jax's ``peak_bytes_in_use``), always for T > ``--big-T``.

Timing is steady state, medians of ``--repeats``; the methods of one configuration are
interleaved repeat by repeat, so that a ratio compares runs taken under the same load.
On a shared CPU absolute times mean little: read the ratios.

Usage::

    python benchmarks/speed.py --quick                       # minutes
    python benchmarks/speed.py --model ssd300 --targets 1,8,32,1024 --images 1 --json out.json
    python benchmarks/speed.py --model ssdlite320 --targets 1,8,32 --images 1 --no-mem --json lite.json
    python benchmarks/speed.py --model both --targets 1 --images 1 --no-mem --no-zennit --dataset 48

Runs unchanged on a CUDA build of jax (device name from ``jax.devices()[0].device_kind``;
zennit/torch go to CUDA when torch sees it). Torch uses every core unless
``--torch-threads N``: on a loaded CPU, torch with several threads can be many times slower
than with one (measured: SSDlite320 torch_grad 2.8 s/target on 2 threads vs 0.05 s on 1).

The tables are measured in ``_speed_tables.py`` (``--crop``: ``_speed_crop.py``), with the
target sets in ``_speed_targets.py``, the timed runners in ``_speed_runners.py``, the convs'
FLOPs in ``_speed_convs.py``, the memory subprocesses in ``_speed_child.py`` and the final
tables in ``_speed_report.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common.py, _speed_*.py, zennit_ssd.py, torch_ssdlite.py, beside this script

from _common import MODELS, block, build_model, log  # noqa: E402
from _speed_child import child_main  # noqa: E402
from _speed_crop import crop_section  # noqa: E402
from _speed_report import loadavg, machine_info, report, save_json  # noqa: E402
from _speed_tables import Settings, dataset_table, measure_model, torch_sides  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        choices=MODELS + ("both", "all"),
        default="both",
        help="both: ssd300 and shipped; all: "
        + ", ".join(m for m in MODELS if m != "blazeface")
        + "; blazeface: --crop only",
    )
    p.add_argument(
        "--targets",
        default="1,8,32,128,1024",
        help="comma-separated target counts T (in total, round-robin over the images)",
    )
    p.add_argument("--images", default="1,4", help="comma-separated image counts B")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median reported)")
    p.add_argument("--chunk", type=int, default=8, help="targets per vmapped backward (explain's chunk_size)")
    p.add_argument("--methods", default="crp,lrp_ab,lrp_eps", help="explain methods to time besides gradient")
    p.add_argument(
        "--no-zennit",
        action="store_true",
        help="skip the torch comparisons (zennit and torch_grad; SSDlite's torch_grad)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small T only (T <= 8 plus 32 on the shipped model), 2 repeats, one image count",
    )
    p.add_argument("--json", metavar="OUT", help="write all results as JSON")
    p.add_argument(
        "--big-T",
        type=int,
        default=128,
        help="T above this runs only in a subprocess (timing + peak memory), methods --big-methods, one repeat",
    )
    p.add_argument("--big-methods", default="crp", help="methods run for T > --big-T")
    p.add_argument("--naive-max-T", type=int, default=8, help="largest T for the naive per-target loop")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch's intra-op threads (default 0: every core, as jax uses). On a loaded machine "
        "torch with every core can be many times slower than with one (its threads wait for each other)",
    )
    p.add_argument("--zennit-max-T", type=int, default=32, help="largest T for zennit/torch_grad (one image)")
    p.add_argument(
        "--mem-targets",
        default="32",
        help="T values (<= --big-T) that also get a peak-memory subprocess (crp and floor, one image)",
    )
    p.add_argument("--no-mem", action="store_true", help="no memory subprocesses at all (T > --big-T is then skipped)")
    p.add_argument(
        "--dataset",
        type=int,
        default=0,
        metavar="TOTAL",
        help="also the data-set shape table (benchmarks/dataset_shape.py): 1 x TOTAL, TOTAL/3 x 3 and TOTAL x 1 "
        "targets per image against the batched plain-gradient floor",
    )
    p.add_argument(
        "--host-copy",
        action="store_true",
        help="also time floor_host: the floor plus copying results to one numpy array as explain does",
    )
    p.add_argument(
        "--device-output",
        action="store_true",
        help="also time <method>_dev: explain(..., to_host=False), relevance left on the device",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="per-conv-layer timing of forward, rule backward and autodiff backward (SSD300)",
    )
    p.add_argument(
        "--crop",
        action="store_true",
        help="only the cropped-propagation section: cropped vs dense crp (first-source and "
        "detection-like targets), zennit, compile time and count, peak RSS of --crop-big-T targets",
    )
    p.add_argument("--crop-T", type=int, default=32, help="targets per set in the --crop section")
    p.add_argument("--crop-big-T", type=int, default=1024, help="first-source targets of the --crop memory rows")
    p.add_argument("--child-timeout", type=float, default=None, help="seconds before a subprocess is abandoned")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def settings(args) -> Settings:
    """The models, counts and methods ``args`` ask for (``--quick``: T <= 8, one image
    count, at most 2 repeats)."""
    ssds = [m for m in MODELS if m != "blazeface"]  # blazeface has the --crop section only
    models = {"both": ["ssd300", "shipped"], "all": ssds}.get(args.model, [args.model])
    if "blazeface" in models and not args.crop:
        raise SystemExit("--model blazeface: only the --crop section is measured for it (add --crop)")
    targets, images, repeats = ints(args.targets), ints(args.images), args.repeats
    if args.quick:
        targets = [t for t in targets if t <= 8] or [1, 8]
        images = images[:1]
        repeats = min(repeats, 2)
    methods = [m for m in args.methods.split(",") if m]
    big_methods = [m for m in args.big_methods.split(",") if m]
    return Settings(models, targets, images, repeats, methods, big_methods, args.chunk, ints(args.mem_targets))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        res = child_main(json.loads(args.child))
        print("CHILD_RESULT " + json.dumps(res), flush=True)
        return 0
    s = settings(args)
    info = machine_info()
    info["command"] = "python " + " ".join([sys.argv[0]] + sys.argv[1:])
    log(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, load {info['loadavg']}; jax {info['jax']} "
        f"on {info['jax_backend']} ({info['device_kind']})"
    )
    torch = torch_sides(args, s.models, info)
    results = {"machine": info, "models": {}, "timing": [], "memory": [], "zennit_parity": {}, "per_layer": {}}
    t_start = time.perf_counter()
    save = partial(save_json, results, args.json)
    for mname in s.models:
        label, model, variables, meta = build_model(mname)
        block(variables)
        log(f"\n=== {mname}: {label}")
        results["models"][mname] = {"label": label}
        if args.crop:
            results["models"][mname]["crop"] = crop_section(mname, model, variables, meta, args, torch.zennit)
            save()
            continue
        measure_model(mname, model, variables, meta, args, s, torch, results, save)
        if mname == "ssd300":
            del model, variables
    if args.dataset:
        dataset_table(s.models, args.dataset, s.repeats, results, save)
    results["machine"]["loadavg_end"] = loadavg()
    results["elapsed_s"] = time.perf_counter() - t_start
    if not args.crop:
        report(results, s.methods, s.chunk)
    if args.json:
        save(final=True)
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
