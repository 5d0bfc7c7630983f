#!/usr/bin/env bash
# Cold and warm wall time of `crp-jax explain` on held-out scene 0 (128 px, shipped model), in
# fresh processes with a fresh compilation-cache folder, for the checkout at $1 (label $2):
# the default five-method grid (cold, warm, warm again), then --compare none with the same
# (filled) cache, then import + load_pretrained alone.
#   bash benchmarks/cli_latency.sh "$PWD" after
set -e
ROOT=$1; TAG=$2
cd /tmp
export PYTHONPATH=$ROOT
python -c "
import crp_jax as cj
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from PIL import Image
Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save('/tmp/scene0.png')"
export CRP_JAX_CACHE_DIR=$(mktemp -d)
for run in cold warm warm2; do
  OUT=$(mktemp -d)
  /usr/bin/time -f "$TAG explain $run %e s" python -m crp_jax explain /tmp/scene0.png --out $OUT > /dev/null
done
for run in cold warm; do
  OUT=$(mktemp -d)
  /usr/bin/time -f "$TAG explain --compare none $run %e s" python -m crp_jax explain /tmp/scene0.png --out $OUT --compare none > /dev/null
done
python - <<'PY'
import time
t0 = time.perf_counter()
import crp_jax as cj
m, v, meta = cj.load_pretrained()
print(f"import + load {time.perf_counter() - t0:.2f} s")
PY
