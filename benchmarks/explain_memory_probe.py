"""Resident memory of one process that explains a folder of images one by one with the five
methods (what ``crp-jax explain`` does per image), printed every 25 images with the distinct
target counts met so far and the number of cached compiled functions:

    python benchmarks/explain_memory_probe.py FOLDER

Shows whether memory grows with the number of images or only with new programs (each new
target count is a new backward width).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import crp_jax as cj
from crp_jax.compiled import cache_info

METHODS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")


def rss_mib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def main(folder: str) -> None:
    model, variables, meta = cj.load_pretrained()
    counts: set[int] = set()
    files = sorted(Path(folder).glob("*.png"))
    for i, f in enumerate(files):
        x = cj.preprocess(np.asarray(Image.open(f).convert("RGB")), meta)
        targets = cj.targets_from_detections(cj.detect(model, variables, x, meta, score_threshold=0.5))
        if targets:
            counts.add(len(targets))
            for method in METHODS:
                cj.explain(model, variables, x, targets, method=method, meta=meta)
        if i % 25 == 24 or i == len(files) - 1:
            info = cache_info().values()
            entries, programs = sum(c.entries for c in info), sum(c.compilations for c in info)
            print(
                f"{i + 1} images: RSS {rss_mib()} MiB, target counts {sorted(counts)}, cached functions {entries}, XLA programs {programs}"
            )


if __name__ == "__main__":
    main(sys.argv[1])
