"""TFLite graphs as pure Flax modules (issue 23, docs/design.md "Imported graphs (TFLite)").

- ``reader.py``: the flatbuffer (via the ``tflite`` package, extra ``[tflite]``) -> tensors,
  constants (float16 dequantized exactly), ops; int8/uint8 graphs refused.
- ``ops.py``: the non-conv ops with TFLite's semantics and their relevance kinds.
- ``module.py``: graph -> :class:`TFLiteModule` + variables (convs as ``nn.Conv``).
- ``load.py``: :func:`load_tflite`, one call from a path to ``(model, variables, meta)``.

Nothing here imports the relevance engine.
"""

from crp_jax.tflite.load import TFLiteMeta, load_tflite
from crp_jax.tflite.module import GraphSpec, TFLiteModule, import_graph
from crp_jax.tflite.reader import Graph, read_graph

__all__ = ["load_tflite", "TFLiteMeta", "TFLiteModule", "GraphSpec", "import_graph", "Graph", "read_graph"]
