"""The keras-ntk command and the diagnostics it reports."""

import io

import keras
import numpy as np
import pytest
from sklearn.datasets import load_diabetes

import keras_ntk
from keras_ntk import cli, diagnostics
from references import brute_force_ntk


def test_demo_distances_equal_a_brute_force_recomputation():
    out = io.StringIO()
    distances = cli.demo([16, 256], [1], seeds=2, examples=10, out=out)
    x = load_diabetes().data[:10]
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    analytic = keras_ntk.infinite_width_kernel(x, depth=1).numpy()
    expected = []
    for seed in range(2):
        keras.utils.set_random_seed(seed)
        model = keras_ntk.models.mlp(16, 1, 1, input_shape=(10,))
        kernel = brute_force_ntk(model, x)[:, :, 0, 0]
        expected.append(np.linalg.norm(kernel - analytic) / np.linalg.norm(analytic))
    assert distances[1][0] == pytest.approx(np.mean(expected), rel=1e-4)
    assert distances[1][1] < distances[1][0]
    text = out.getvalue()
    assert "width" in text and "slope" in text and f"{distances[1][1]:.4f}" in text


def test_log_log_slope_recovers_a_power_law():
    widths = np.array([10.0, 100.0, 1000.0])
    assert diagnostics.log_log_slope(widths, 3 * widths**-0.5) == pytest.approx(-0.5)


def test_relative_distance_is_the_relative_frobenius_norm():
    a, b = np.array([[3.0, 0.0], [0.0, 4.0]]), np.zeros((2, 2))
    assert diagnostics.relative_distance(b, a) == pytest.approx(1.0)
    assert diagnostics.relative_distance(a * 1.1, a) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="equal shapes"):
        diagnostics.relative_distance(a, np.zeros(3))


def test_cli_rejects_bad_width_lists(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--widths", "64,-1"])
    assert "positive integers" in capsys.readouterr().err


def test_import_prints_no_tensorflow_start_up_noise():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_NTK_SHOW_TF_STARTUP")}
    done = subprocess.run(
        [sys.executable, "-c", "import keras_ntk, numpy; keras_ntk.models.mlp(4, 1, 1, input_shape=(2,))(numpy.ones((1, 2)))"],
        capture_output=True, text=True, env=env, check=True,
    )
    assert done.stderr == "" and done.stdout == ""
