"""Mutation testing: how many realistic one-line bugs does the test suite catch?

Each mutant below is one small edit to the package (a sign, a comparison, an index, a sort
order), with the tests that should notice it. For every mutant the script copies ``crp_jax/``,
``tests/``, ``weights/`` and ``pyproject.toml`` into a temporary folder, applies the edit
there (the real tree is never modified), and runs the mutant's tests with ``PYTHONPATH``
pointing at the copy. A failing test run kills the mutant; a passing one means the suite
would not notice that bug. The table and the kill rate (killed / (killed + survived)) are
printed; mutants whose snippet no longer occurs exactly once in the package are reported as
``stale`` (update the list after refactors), and runs that error or time out are listed apart.

    python benchmarks/mutation.py                 # all mutants (about 10-20 min on 2 busy cores)
    python benchmarks/mutation.py --list          # what each mutant changes and its tests
    python benchmarks/mutation.py --only nms_unstable_sort,detect_score_ge
    python benchmarks/mutation.py --baseline      # first check every selection passes unmutated
    python benchmarks/mutation.py --tests-dir OLD/tests --whole-files   # an older suite

Results: benchmarks/RESULTS.md ("Mutation testing").
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("crp_jax", "tests", "weights", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    """One edit: ``original`` (must occur exactly once in ``file``) becomes ``replacement``;
    ``tests`` (pytest paths, relative to the repository) filtered by ``k`` should fail."""

    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    k: str | None = None
    why: str = ""


MUTANTS: tuple[Mutant, ...] = (
    # ---- the four survivors of issue 16 ----------------------------------------------------
    Mutant(
        "detect_score_ge",
        "crp_jax/ssd/detect.py",
        "idx = np.flatnonzero(s > score_threshold)",
        "idx = np.flatnonzero(s >= score_threshold)",
        ("tests/test_detect.py",),
        "threshold or underflow",
        "keeps a score equal to the threshold (torchvision: strictly above)",
    ),
    Mutant(
        "nms_unstable_sort",
        "crp_jax/ssd/boxes.py",
        'order = np.argsort(-scores, kind="stable")',
        "order = np.argsort(-scores)",
        ("tests/test_boxes.py",),
        "nms",
        "tied scores lose their input order beyond 16 boxes",
    ),
    Mutant(
        "batched_nms_no_final_sort",
        "crp_jax/ssd/boxes.py",
        "kept = np.sort(np.concatenate(kept))",
        "kept = np.concatenate(kept)",
        ("tests/test_boxes.py",),
        "batched",
        "equal scores of different classes come back grouped by class",
    ),
    Mutant(
        "pool_ceil_window_in_padding",
        "crp_jax/ssd/pool.py",
        "if (out - 1) * stride >= n + padding:",
        "if False:",
        ("tests/test_pool.py",),
        "size or torch or window_loop",
        "ceil mode keeps a last window that starts in the right padding",
    ),
    # ---- boxes, anchors, detection ----------------------------------------------------------
    Mutant(
        "nms_iou_ge",
        "crp_jax/ssd/boxes.py",
        "alive[rest[iou > iou_threshold]] = False",
        "alive[rest[iou >= iou_threshold]] = False",
        ("tests/test_boxes.py",),
        "nms",
        "suppresses at IoU equal to the threshold",
    ),
    Mutant(
        "decode_cx_scaled_by_height",
        "crp_jax/ssd/boxes.py",
        "cx = dx * a[..., 2] + a[..., 0]",
        "cx = dx * a[..., 3] + a[..., 0]",
        ("tests/test_boxes.py",),
        "decode or round_trip",
        "x offset scaled by the anchor's height",
    ),
    Mutant(
        "anchor_order_column_major",
        "crp_jax/ssd/anchors.py",
        'cy, cx = np.meshgrid(centres, centres, indexing="ij")',
        'cy, cx = np.meshgrid(centres, centres, indexing="xy")',
        ("tests/test_anchors.py",),
        None,
        "anchors enumerated column by column instead of row by row",
    ),
    Mutant(
        "anchor_centre_off_by_one",
        "crp_jax/ssd/anchors.py",
        "centres = (np.arange(cells, dtype=np.float64) + 0.5) / f_k",
        "centres = (np.arange(cells, dtype=np.float64) + 1.5) / f_k",
        ("tests/test_anchors.py",),
        None,
        "cell centres shifted by one cell",
    ),
    Mutant(
        "softmax_over_anchors",
        "crp_jax/ssd/detect.py",
        "jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)",
        "jax.nn.softmax(cls_logits.astype(jnp.float32), axis=1)",
        ("tests/test_detect.py",),
        "clear_detection or threshold or underflow",
        "softmax over anchors instead of classes",
    ),
    Mutant(
        "pool_every_tied_max_wins",
        "crp_jax/ssd/pool.py",
        "m = (v == y) & ~taken",
        "m = v == y",
        ("tests/test_pool.py",),
        "window_loop or winners",
        "every tied maximum of a window gets the gradient, not only the first",
    ),
    Mutant(
        "clip_x_to_height",
        "crp_jax/ssd/boxes.py",
        "x = xp.clip(b[..., 0::2], 0, width)",
        "x = xp.clip(b[..., 0::2], 0, height)",
        ("tests/test_boxes.py",),
        "clip",
        "x coordinates clipped to the image height",
    ),
    Mutant(
        "decode_no_clamp",
        "crp_jax/ssd/boxes.py",
        "dw = xp.minimum(d[..., 2] / ww, BBOX_XFORM_CLIP)",
        "dw = d[..., 2] / ww",
        ("tests/test_boxes.py",),
        "decode",
        "no clamp of the log-width offset before exp",
    ),
    Mutant(
        "topk_off_by_one",
        "crp_jax/ssd/detect.py",
        'idx = idx[np.argsort(-s[idx], kind="stable")[:topk]]',
        'idx = idx[np.argsort(-s[idx], kind="stable")[: topk + 1]]',
        ("tests/test_detect.py",),
        "topk",
        "one candidate too many per class",
    ),
    Mutant(
        "preprocess_mean_after_std",
        "crp_jax/ssd/detect.py",
        "resize_bilinear((v - mean) / std, size)",
        "resize_bilinear(v / std - mean, size)",
        ("tests/test_detect.py",),
        "preprocess",
        "normalisation divides before subtracting the mean",
    ),
    Mutant(
        "resize_corner_aligned",
        "crp_jax/ssd/detect.py",
        "src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)",
        "src = scale * np.arange(n_out, dtype=np.float32)",
        ("tests/test_detect.py",),
        "resize or preprocess",
        "resize samples without half-pixel centres",
    ),
    # ---- rules --------------------------------------------------------------------------------
    Mutant(
        "zbox_bound_term_ignores_padding",
        "crp_jax/relevance/rules.py",
        "zb = z + op.apply(jnp.ones_like(x), wb)",
        "zb = z + wb.reshape(-1, wb.shape[-1]).sum(0)",
        ("tests/test_rules.py",),
        "dense_matrix_reference and zbox",
        "z^B's bound term summed over the whole kernel, also where it reads padding",
    ),
    Mutant(
        "stabilize_sign_of_zero_negative",
        "crp_jax/relevance/rules.py",
        "jnp.where(z >= 0, eps, -eps)",
        "jnp.where(z > 0, eps, -eps)",
        ("tests/test_rules.py", "tests/test_composite.py"),
        "stabiliz or cancelling",
        "sign(0) = -1 in the stabiliser",
    ),
    Mutant(
        "alphabeta_beta_sign",
        "crp_jax/relevance/rules.py",
        "return x, wt, self.alpha * inv_p, -self.beta * inv_n",
        "return x, wt, self.alpha * inv_p, self.beta * inv_n",
        ("tests/test_rules.py",),
        "dense_matrix_reference and ab_1_1",
        "the beta term added instead of subtracted",
    ),
    Mutant(
        "wplus_all_weights",
        "crp_jax/relevance/rules.py",
        "return x, op.transpose_kernel(jnp.maximum(w, 0)), 1.0 / stabilize(zp, self.stabilizer)",
        "return x, op.transpose_kernel(w), 1.0 / stabilize(zp, self.stabilizer)",
        ("tests/test_rules.py",),
        "dense_matrix_reference and wplus",
        "w+ rule's numerator uses w instead of max(w, 0)",
    ),
    Mutant(
        "zbox_bounds_swapped",
        "crp_jax/relevance/rules.py",
        "wb = -_per_tap(l, op, w) * jnp.maximum(w, 0) - _per_tap(h, op, w) * jnp.minimum(w, 0)",
        "wb = -_per_tap(h, op, w) * jnp.maximum(w, 0) - _per_tap(l, op, w) * jnp.minimum(w, 0)",
        ("tests/test_rules.py",),
        "dense_matrix_reference and zbox",
        "z^B pairs the low bound with w- and the high bound with w+",
    ),
    Mutant(
        "epsilon_drops_bias",
        "crp_jax/relevance/rules.py",
        "return x, op.transpose_kernel(w), 1.0 / stabilize(z + b, self.epsilon)",
        "return x, op.transpose_kernel(w), 1.0 / stabilize(z, self.epsilon)",
        ("tests/test_rules.py",),
        "bias_is_left_out",
        "LRP-epsilon's denominator without the bias",
    ),
    Mutant(
        "conv_transpose_no_flip",
        "crp_jax/relevance/linear.py",
        "return wt[::-1, ::-1]",
        "return wt",
        ("tests/test_linear.py",),
        "transpose",
        "transposed kernel not flipped spatially",
    ),
    # ---- composites, targets, explain -------------------------------------------------------
    Mutant(
        "composite_last_match_wins",
        "crp_jax/relevance/composite.py",
        "for sel, rule in self.rules:",
        "for sel, rule in reversed(self.rules):",
        ("tests/test_composite.py",),
        None,
        "the last matching selector decides instead of the first",
    ),
    Mutant(
        "crp_loc_alpha1beta0",
        "crp_jax/relevance/composite.py",
        '("loc_*", rules.AlphaBeta(1.0, 1.0)),',
        '("loc_*", rules.AlphaBeta(1.0, 0.0)),',
        ("tests/test_composite.py", "tests/test_explain_reference.py"),
        "preset or float64",
        "crp's localization heads get alpha1beta0",
    ),
    Mutant(
        "crp_l2norm_gradient",
        "crp_jax/relevance/composite.py",
        '_KIND_RULES = (\n    (Kind("rescale"), rules.PassThrough()),',
        "_KIND_RULES = (",
        ("tests/test_composite.py",),
        "preset",
        "crp's L2Norm keeps its gradient instead of passing relevance through",
    ),
    Mutant(
        "contrast_mean_over_all",
        "crp_jax/relevance/targets.py",
        "c[k] -= 1.0 / len(others)",
        "c[k] -= 1.0 / (len(others) + 1)",
        ("tests/test_engine.py", "tests/test_explain_reference.py"),
        "contrast_coefficients or float64",
        "the contrast subtracts the mean over all classes, target included",
    ),
    Mutant(
        "contrast_foreground_with_background",
        "crp_jax/relevance/targets.py",
        "others = [k for k in range(1, K) if k != self.cls]",
        "others = [k for k in range(0, K) if k != self.cls]",
        ("tests/test_engine.py",),
        "contrast_coefficients",
        'contrast="foreground" also subtracts the background class',
    ),
    Mutant(
        "heatmap_abs_of_sum",
        "crp_jax/relevance/explain.py",
        "return xp.abs(R).sum(-1)",
        "return xp.abs(R.sum(-1))",
        ("tests/test_engine.py",),
        "device_output",
        'heatmap "abs" takes the magnitude of the channel sum',
    ),
    Mutant(
        "loc_target_sign_ignored",
        "crp_jax/relevance/targets.py",
        "loc[idx] = float(self.sign)",
        "loc[idx] = 1.0",
        ("tests/test_explain_reference.py",),
        "float64",
        "LocTarget(sign=-1) explained as +1",
    ),
    Mutant(
        "gather_chunks_wrong_permutation",
        "crp_jax/relevance/collect.py",
        "return R[jnp.asarray(np.argsort(order))]",
        "return R[jnp.asarray(order)]",
        ("tests/test_explain_reference.py",),
        "interleaved",
        "to_host=False applies the permutation instead of its inverse",
    ),
)


def _copy_tree(dest: Path, tests_dir: Path) -> None:
    for name in COPIED:
        src = tests_dir if name == "tests" else ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, dest / name)


def _pytest_cmd(m: Mutant, whole_files: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests]
    if m.k and not whole_files:
        cmd += ["-k", m.k]
    return cmd


def _run_pytest(cmd: list[str], cwd: Path, timeout: float) -> tuple[str, float, str]:
    """``(status, seconds, last line)``: status from pytest's exit code (0 passed, 1 failed)."""
    env = dict(os.environ, PYTHONPATH=str(cwd), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    # A session of its own, so that a timeout ends the pytest run and nothing else.
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", time.perf_counter() - t0, f"no result after {timeout:g} s"
    seconds = time.perf_counter() - t0
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    status = {0: "passed", 1: "failed", 5: "no tests"}.get(proc.returncode, f"error (rc {proc.returncode})")
    return status, seconds, last


def run_mutant(m: Mutant, work: Path, timeout: float, whole_files: bool) -> tuple[str, float, str]:
    """Apply ``m`` in ``work`` (a copy of the tree), run its tests, restore the file."""
    path = work / m.file
    original = path.read_text()
    count = original.count(m.original)
    if count != 1:
        return "stale", 0.0, f"snippet found {count} times in {m.file}"
    path.write_text(original.replace(m.original, m.replacement))
    try:
        status, seconds, last = _run_pytest(_pytest_cmd(m, whole_files), work, timeout)
    finally:
        path.write_text(original)
    verdict = {"failed": "killed", "passed": "SURVIVED"}.get(status, status)
    return verdict, seconds, last


def _list(mutants) -> None:
    for m in mutants:
        k = f" -k {m.k!r}" if m.k else ""
        print(f"{m.name}: {m.why}\n  {m.file}: {m.original!r}\n  -> {m.replacement!r}\n  tests: {' '.join(m.tests)}{k}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--only", action="append", default=[], help="mutant names (comma-separated, repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run (default 600)")
    ap.add_argument("--baseline", action="store_true", help="first run each selection on the unmutated copy")
    ap.add_argument("--tests-dir", type=Path, default=ROOT / "tests", help="the test suite to copy (default tests/)")
    ap.add_argument("--whole-files", action="store_true", help="ignore the -k filters: run the whole test files")
    args = ap.parse_args(argv)

    names = [n for group in args.only for n in group.split(",") if n]
    known = {m.name for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; see --list")
    mutants = [m for m in MUTANTS if not names or m.name in names]
    if args.list:
        _list(mutants)
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="crp_mutation_") as tmp:
        work = Path(tmp)
        _copy_tree(work, args.tests_dir.resolve())
        if args.baseline:
            for m in mutants:
                status, seconds, last = _run_pytest(_pytest_cmd(m, args.whole_files), work, args.timeout)
                print(f"baseline {m.name:36s} {status:10s} {seconds:6.1f} s  {last}", flush=True)
                if status != "passed":
                    print(f"  -> the tests of {m.name} do not pass unmutated: its verdict means nothing", flush=True)
        for m in mutants:
            verdict, seconds, last = run_mutant(m, work, args.timeout, args.whole_files)
            results.append((m, verdict, seconds))
            print(f"{m.name:36s} {verdict:10s} {seconds:6.1f} s  {last}", flush=True)

    print()
    print("| mutant | file | verdict | s | tests |\n|---|---|---|---|---|")
    for m, verdict, seconds in results:
        k = f" -k '{m.k}'" if m.k and not args.whole_files else ""
        print(f"| {m.name} | {m.file} | {verdict} | {seconds:.0f} | {' '.join(m.tests)}{k} |")
    killed = sum(v == "killed" for _, v, _ in results)
    survived = [m.name for m, v, _ in results if v == "SURVIVED"]
    other = [(m.name, v) for m, v, _ in results if v not in ("killed", "SURVIVED")]
    decided = killed + len(survived)
    rate = f"{100.0 * killed / decided:.0f}%" if decided else "n/a"
    print(f"\nkill rate: {killed}/{decided} = {rate}")
    if survived:
        print(f"survived: {', '.join(survived)}")
    if other:
        print("not counted: " + ", ".join(f"{n} ({v})" for n, v in other))
    return 0


if __name__ == "__main__":
    sys.exit(main())
