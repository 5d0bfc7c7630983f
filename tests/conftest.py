"""Shared pytest setup.

- Make the checkout importable without installing it, so that plain ``pytest`` works as
  well as ``python -m pytest``.
- Tests are dominated by XLA compile time on a CPU, not by run time: ask XLA for its cheap
  backend passes (same semantics, about half the compile time). Set before jax is imported;
  a user's own XLA_FLAGS are kept.
- The CLI's persistent compilation cache (crp_jax/compile_cache.py) goes to a fresh temporary
  folder, never to the user's ~/.cache.
- Ctrl-C is tested as a terminal delivers it: a runner started as a shell's background job
  (`cmd &`) inherits SIGINT *ignored*, which the package respects (crp_jax/interrupts.py) and
  every child process would inherit; the suite restores Python's default handler, so that
  tests and their subprocesses see SIGINT as an interactive user's would.
"""

import atexit
import os
import shutil
import signal
import sys
import tempfile

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

os.environ["CRP_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="crp-jax-test-cache-")
atexit.register(shutil.rmtree, os.environ["CRP_JAX_CACHE_DIR"], True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop the package's compiled functions and jax's own caches: one
    process runs the whole suite, and XLA programs kept for modules long finished only grow its
    memory (a full run once ended in a segfault inside XLA's compiler near its end)."""
    yield
    import jax

    from crp_jax.compiled import clear_caches

    clear_caches()
    jax.clear_caches()
