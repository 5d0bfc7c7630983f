"""The package's exception types.

Every error a user can cause (bad image, bad checkpoint, bad target, unknown name)
is raised as a subclass of :class:`CRPError` with a message that names the bad value,
before it can reach XLA as a shape error or turn into a silent NaN.
"""

from __future__ import annotations


class CRPError(Exception):
    """Base class of all crp-jax errors."""


class InputError(CRPError, ValueError):
    """An image batch (or other array argument) has the wrong rank, shape, dtype or values."""


class ConfigError(CRPError, ValueError):
    """An unknown or inconsistent configuration, preset, rule or method name."""


class CheckpointError(CRPError, ValueError):
    """A checkpoint file or state dict that cannot be loaded into the model."""


class TargetError(CRPError, ValueError):
    """An explanation target whose image, anchor, class or coordinate is out of range."""


class NumericsError(CRPError, ArithmeticError):
    """A computation produced NaN or Inf from finite input (e.g. weights that make the
    forward pass overflow float32); the message names the first layer where it happened."""


def one_line(e: BaseException) -> str:
    """An error as one line for command-line output: the message's first line for the
    package's own and OS/value errors (``FILE: reason`` for an OS error about a file),
    ``Type: first line`` for anything unexpected."""
    text = str(e).strip()
    if isinstance(e, OSError) and getattr(e, "filename", None) and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    first = text.splitlines()[0] if text else ""
    if isinstance(e, (CRPError, OSError, ValueError, MemoryError)):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}"


class GraphImportError(CheckpointError):
    """A model graph (a TFLite flatbuffer) that cannot be imported as it is: an op the
    importer does not implement, a quantized (int8/uint8) tensor, an output name the graph
    does not have. The message names the op or tensor (as Netron shows it)."""


class MissingExtraError(CRPError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that adds it."""


class AnnotationError(InputError):
    """A ground-truth annotation file that does not fit the images or the model's classes:
    the message names the file, the field (``annotations[3].bbox``) and the value."""
