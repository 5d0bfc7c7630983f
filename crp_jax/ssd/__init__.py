"""The detector: SSD as a pure Flax module, default boxes, box coding, NMS, converters.

Nothing here imports the relevance engine.
"""

from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import Meta
from crp_jax.ssd.model import SSD, L2Norm
from crp_jax.ssd.ssdlite import SSDLite

__all__ = ["SSD", "SSDLite", "SSDConfig", "L2Norm", "Meta"]
