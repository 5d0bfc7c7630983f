"""Build hook: wheels and non-editable installs carry the shipped models.

The top-level ``weights/`` folder stays the source of truth; at build time its files are
copied into the package as ``crp_jax/weights/`` (``crp_jax.ssd.io.default_weights_dir``
looks there first, then next to the package for a checkout or an editable install).
Everything else about the build is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHT_FILES = ("*.msgpack", "*.json", "*.md", "*.tflite", "*.txt")


class BuildPyWithWeights(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads weights/ in place
        src = Path(__file__).resolve().parent / "weights"
        dst = Path(self.build_lib) / "crp_jax" / "weights"
        dst.mkdir(parents=True, exist_ok=True)
        for pattern in WEIGHT_FILES:
            for f in src.glob(pattern):
                shutil.copy2(f, dst / f.name)


setup(cmdclass={"build_py": BuildPyWithWeights})
