"""dtype="float64" kernels of dense chains do not depend on the tiling.

A chain of dense layers computes its activations and deltas in the kernel's dtype,
so float64 tiles of any size agree with the untiled kernel to float64 rounding, and
both with a float64 brute-force kernel of the same network.
"""

import keras
import numpy as np
import pytest

import keras_ntk
from test_ntk_loop_reference import assert_close, float64_copy, loop_ntk, reduce_output

keras.utils.set_random_seed(12)
MODEL = keras_ntk.models.mlp(16, 2, 3, input_shape=(5,))
X1 = np.random.default_rng(12).normal(size=(11, 5)).astype(np.float32)
X2 = np.random.default_rng(13).normal(size=(7, 5)).astype(np.float32)
REFERENCE = loop_ntk(float64_copy(MODEL), np.concatenate([X1, X2]).astype(np.float64))


@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_float64_tiled_equals_untiled_and_the_float64_reference(output, symmetric):
    x2 = None if symmetric or output == "diagonal" else X2
    untiled = keras_ntk.NTK(MODEL, output=output, dtype="float64")
    tiled = keras_ntk.NTK(MODEL, output=output, dtype="float64", memory_budget=30_000)
    whole, parts = untiled(X1, x2).numpy(), tiled(X1, x2).numpy()
    assert 1 < tiled.plan(11, None if x2 is None else 7).tile < 7  # several tiles, the last padded
    assert untiled.plan(11, None if x2 is None else 7).tile == 11
    assert whole.dtype == parts.dtype == np.float64
    assert_close(parts, whole, 1e-12)
    full = REFERENCE[:11, :11] if x2 is None else REFERENCE[:11, 11:]
    assert_close(whole, reduce_output(full, output), 1e-12)


def test_float64_per_layer_tiled_equals_untiled():
    untiled = keras_ntk.NTK(MODEL, per_layer=True, dtype="float64")(X1)
    tiled_ntk = keras_ntk.NTK(MODEL, per_layer=True, dtype="float64", memory_budget=100_000)
    tiled = tiled_ntk(X1)
    assert tiled_ntk.plan(11).tile < 11
    assert set(tiled) == set(untiled) == {"dense_0", "dense_1", "readout"}
    for name in untiled:
        assert_close(tiled[name], untiled[name].numpy(), 1e-12)
    assert_close(sum(v.numpy() for v in tiled.values()), REFERENCE[:11, :11], 1e-12)
