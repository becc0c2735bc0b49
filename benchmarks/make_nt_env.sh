#!/usr/bin/env bash
# Create a separate venv with neural-tangents 0.6.5 (jax 0.4.23, CPU) for the
# reference side of benchmarks/ntk_bench.py, smoke-test it, print its python.
#
#   bash benchmarks/make_nt_env.sh [DIR]      # default DIR=$HOME/nt-venv
#
# neural-tangents imports tensorflow (via tf2jax) at import time, so TF is part
# of the environment even though benchmarks/nt_reference.py never uses it.
set -euo pipefail

DIR="${1:-$HOME/nt-venv}"

python3.11 -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet \
    neural-tangents==0.6.5 \
    jax==0.4.23 \
    jaxlib==0.4.23 \
    numpy==1.26.4 \
    scipy==1.12.0 \
    ml-dtypes==0.3.2 \
    tf2jax==0.3.6 \
    tensorflow==2.15.1 \
    frozendict==2.4.4 \
    dm-tree==0.1.8

# Smoke test: every implementation on a tiny network, on the CPU.
TF_CPP_MIN_LOG_LEVEL=3 "$DIR/bin/python" - <<'PY'
import jax, jaxlib, numpy, neural_tangents as nt
from neural_tangents import stax

init_fn, apply_fn, _ = stax.serial(stax.Dense(4, b_std=0.1), stax.Relu(), stax.Dense(2))
_, params = init_fn(jax.random.PRNGKey(0), (3, 5))
x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
for impl in (1, 2, 3):
    ntk = nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=impl)(x, None, params)
    assert ntk.shape == (3, 3), ntk.shape
print("neural_tangents", nt.__version__, "jax", jax.__version__, "jaxlib", jaxlib.__version__,
      "numpy", numpy.__version__, "devices", jax.devices())
PY
echo "$DIR/bin/python"
