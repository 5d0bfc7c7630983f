#!/usr/bin/env bash
# The GPU speed run behind benchmarks/RESULTS.md's GPU rows (one CUDA machine with jax,
# flax, optax and torch installed). From the repo root:  bash benchmarks/run_gpu.sh OUTDIR
# zennit is optional: when a wheel lies in .whl/ it is installed to /tmp/site first.
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}; mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
if ls .whl/zennit-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/zennit-*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: python3 benchmarks/speed.py $*"; \
  timeout "$limit" python3 benchmarks/speed.py "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"; }
# SSD300, chunk 8: T=32 with zennit on the same GPU and the relevance left on the device
# (<method>_dev) or copied to the host (explain's default); T=1024 in a subprocess
run c8 150 --model ssd300 --targets 32,1024 --images 1 --methods crp,lrp_ab --repeats 3 --mem-targets "" --naive-max-T 0 --host-copy --device-output
# SSD300, chunk 32
run c32 120 --model ssd300 --targets 32,1024 --images 1 --methods crp --repeats 3 --no-zennit --mem-targets "" --naive-max-T 0 --host-copy --device-output --chunk 32
# the shipped model, chunk 32
run shipped 90 --model shipped --targets 32,1024 --images 1,4 --methods crp --repeats 3 --no-zennit --mem-targets "" --naive-max-T 0 --device-output --chunk 32
