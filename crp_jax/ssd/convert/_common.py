"""What every converter shares: torch values to numpy, reading a state dict against a key
map, class names, and reading ``.pth`` files safely (``torch.load(weights_only=True)``).

Values may be torch tensors or numpy arrays; torch is imported only by
:func:`load_torch_state_dict`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.meta import default_class_names


def to_numpy(value: Any, key: str = "?") -> np.ndarray:
    """A torch tensor (duck-typed: ``.detach().cpu()``) or array-like -> float32 numpy."""
    v = value
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):
        v = v.detach().cpu()
        if hasattr(v, "is_floating_point") and v.is_floating_point() and hasattr(v, "float"):
            v = v.float()  # bfloat16/float16 tensors have no .numpy() path of their own
        v = v.numpy()
    try:
        arr = np.asarray(v)
    except Exception as e:
        raise CheckpointError(f"state dict entry {key!r} is not an array ({type(value).__name__}): {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CheckpointError(f"state dict entry {key!r} is not a numeric array (dtype {arr.dtype})")
    return arr.astype(np.float32, copy=False)


def strip_module_prefix(state_dict: Mapping) -> dict:
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def check_mapping(state_dict) -> Mapping:
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"a state dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    return state_dict


def class_names_for(class_names, num_classes: int) -> tuple[str, ...]:
    if class_names is None:
        return default_class_names(num_classes)
    names = tuple(str(c) for c in class_names)
    if len(names) == num_classes - 1:  # foreground names only: add the background
        names = ("__background__",) + names
    if len(names) != num_classes:
        raise ConfigError(
            f"the checkpoint has {num_classes} classes (background included) but {len(names)} class "
            f"names were given; give {num_classes} names (index 0 = background) or {num_classes - 1} "
            "foreground names"
        )
    return names


def read_state_dict(sd: Mapping, keymap: Mapping[str, str], expected: Mapping, *, fix=None, ignore=None):
    """Torch tensors -> our flat float32 arrays: ``(flat, missing, unexpected, misshaped)``.

    ``keymap``: torch key -> our ``path/kernel|bias|...``; ``expected``: our key -> our shape
    (conv kernels ``[kh, kw, Cin, Cout]``, read from torch's ``[Cout, Cin, kh, kw]``);
    ``fix(our_key, array)`` edits an array after the layout change (e.g. BGR -> RGB);
    ``ignore(torch_key)`` marks extra keys that are not unexpected (e.g. BN counters).
    Every key is checked before anything is reported, so one error lists all problems.
    """
    missing = [k for k in keymap if k not in sd]
    unexpected = sorted(str(k) for k in sd if k not in keymap and not (ignore and ignore(str(k))))
    misshaped = []
    flat = {}
    for tkey, okey in keymap.items():
        if tkey not in sd:
            continue
        want = _expected_torch_shape(okey, expected[okey])
        found = getattr(sd[tkey], "shape", None)
        found = tuple(int(s) for s in found) if found is not None else None
        if found != want:
            misshaped.append((tkey, want, found))
            continue
        arr = to_numpy(sd[tkey], tkey)
        if okey.endswith("/kernel"):
            arr = np.transpose(arr, (2, 3, 1, 0))
        if fix is not None:
            arr = fix(okey, arr)
        flat[okey] = np.ascontiguousarray(arr, dtype=np.float32)
    return flat, missing, unexpected, misshaped


def _expected_torch_shape(our_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if our_key.endswith("/kernel"):
        h, w, i, o = shape
        return (o, i, h, w)
    return tuple(shape)


def load_torch_state_dict(path) -> dict:
    """Read a ``.pth``/``.pt`` file with ``torch.load(weights_only=True)`` (no arbitrary
    unpickling). Accepts a raw state dict or a dict holding one under ``"model"`` or
    ``"state_dict"``. Needs torch (``pip install 'crp-jax[convert]'``)."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading .pth files needs torch: pip install 'crp-jax[convert]'") from None
    try:
        with warnings.catch_warnings():  # torch's own warnings ("please file an issue") are not ours
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{p}: not a torch checkpoint that can be read safely (torch.load with weights_only=True): "
            f"{torch_load_reason(e)}"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"{p}: holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to "
            "tensors, possibly under 'model' or 'state_dict')"
        )
    return dict(obj)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Sentences of torch's advice that must not reach our users: loading with
# weights_only=False (or allow-listing globals) runs arbitrary code from the file.
_UNSAFE_ADVICE = re.compile(r"weights_only|re-?run|safe_globals|trust|file an issue|documentation", re.I)


def torch_load_reason(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's ANSI
    codes and without its advice to re-run with ``weights_only=False`` (unsafe: it unpickles
    arbitrary code). Keeps torch's own diagnosis (e.g. "Unsupported global: GLOBAL
    foo.Bar ...") and adds safe advice when the file holds more than tensors."""
    text = _ANSI.sub("", str(e))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    kept = [t.strip() for t in sentences if t.strip() and not _UNSAFE_ADVICE.search(t)]
    reason = " ".join(" ".join(kept).split())[:200] or type(e).__name__
    if "Unsupported global" in reason:
        reason += (
            " (the file holds Python objects besides tensors; re-save only the weights with "
            "torch.save(model.state_dict(), path) where the model's code is trusted)"
        )
    return reason
