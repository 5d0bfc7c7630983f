"""Measured parity of the imported BlazeFace graphs with Google's interpreter, and the
astronaut's face.

For each shipped model ("blazeface": short range, "blazeface_full": full range) and each
photo (``skimage.data.astronaut()``, 512x512; ``skimage.data.chelsea()``, 300x451, letterboxed):

- raw outputs: max |ours - ai_edge_litert| of the face logits and the 16 regressors;
- every layer (astronaut): the worst max |diff| over all op outputs, with default delegates
  off so that the interpreter keeps its intermediates;
- detections: ``cj.detect`` (MediaPipe's thresholds) in original pixels.

Writes ``benchmarks/figures/blazeface_astronaut.png`` (short-range box and keypoints).
Usage: ``python benchmarks/parity_blazeface.py`` (needs the ``[test]`` extra: tflite,
ai-edge-litert, scikit-image; about half a minute on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from PIL import Image, ImageDraw

import crp_jax as cj
from crp_jax.blazeface import PRESETS
from crp_jax.ssd.io import default_weights_dir
from crp_jax.tflite import import_graph, read_graph

FIGURE = Path(__file__).resolve().parent / "figures" / "blazeface_astronaut.png"


def interpreter_tensors(path: Path, x: np.ndarray, layers: bool) -> dict[str, np.ndarray]:
    kwargs = {}
    if layers:
        kwargs = dict(
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
    it = Interpreter(model_path=str(path), **kwargs)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.asarray(x, np.float32))
    it.invoke()
    out = {}
    for d in it.get_tensor_details() if layers else it.get_output_details():
        try:
            out[d["name"]] = it.get_tensor(d["index"])
        except ValueError:
            pass
    return out


def main() -> None:
    photos = {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea()}
    print("| model | photo | max diff logits | max diff regressors | worst layer | faces (score, box x1 y1 x2 y2 px) |")
    print("|---|---|---|---|---|---|")
    for name, preset in PRESETS.items():
        path = Path(default_weights_dir()) / preset.filename
        model, variables, meta = cj.load_pretrained(name)
        graph = read_graph(path)
        names = [graph.tensors[op.outputs[0]].name for op in graph.ops]
        every, every_vars = import_graph(graph, names, dict(preset.rename))
        for photo, img in photos.items():
            x, sizes = cj.preprocess_with_sizes(img, meta)
            cls, loc = (np.asarray(o) for o in model.apply(variables, x))
            ref = interpreter_tensors(path, np.asarray(x), layers=False)
            worst = "-"
            if photo == "astronaut":
                ref_all = interpreter_tensors(path, np.asarray(x), layers=True)
                diffs = [
                    (float(np.abs(np.asarray(o) - ref_all[n]).max()), n)
                    for n, o in zip(names, every.apply(every_vars, x))
                ]
                d, n = max(diffs)
                worst = f"{d:.1e} ({n}, {len(diffs)} layers)"
            (dets,) = cj.detect(model, variables, x, meta=meta, image_sizes=sizes)
            faces = "; ".join(
                f"{s:.4f}, ({b[0]:.1f}, {b[1]:.1f})-({b[2]:.1f}, {b[3]:.1f})" for s, b in zip(dets.scores, dets.boxes)
            )
            print(
                f"| {name} | {photo} | {np.abs(cls - ref[preset.outputs[0]]).max():.1e} "
                f"| {np.abs(loc - ref[preset.outputs[1]]).max():.1e} | {worst} | {faces or 'none'} |"
            )
            if name == "blazeface" and photo == "astronaut":
                im = Image.fromarray(img)
                draw = ImageDraw.Draw(im)
                for b, kps in zip(dets.boxes, dets.keypoints):
                    draw.rectangle([float(v) for v in b], outline=(255, 220, 0), width=3)
                    for kx, ky in kps:
                        draw.ellipse([kx - 4, ky - 4, kx + 4, ky + 4], fill=(0, 255, 255))
                FIGURE.parent.mkdir(parents=True, exist_ok=True)
                im.save(FIGURE)
    print(f"figure: {FIGURE}")


if __name__ == "__main__":
    main()
