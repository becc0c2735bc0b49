"""E2 (second-order optimization): its config, one run against independent computations,
the report's finding from the records, and the command with resumption."""

import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk.experiments import configs, e2_optimization, reporting, runner
from keras_ntk.experiments.configs import e2 as e2_config

from test_diagnostics import loop_jacobian

KERAS_NTK = [sys.executable, "-c", "import sys; from keras_ntk.cli import main; sys.exit(main())"]
TINY = {"architectures": "mlp", "parametrizations": "ntk", "mlp_widths": "16", "depths": "1",
        "examples": "6", "ngd_steps": "3", "gd_steps": "8", "adam_steps": "8"}


def test_presets_points_and_bad_settings():
    quick = e2_config.Config()
    paper = dataclasses.replace(quick, **e2_config.PAPER)
    assert max(paper.mlp_widths) > max(quick.mlp_widths) and paper.dataset == "cifar10"
    assert len(quick.depths) >= 2 and set(quick.parametrizations) == {"ntk", "standard"}
    points = e2_optimization.points(quick)
    per_architecture = len(quick.parametrizations) * len(quick.depths) * len(quick.seeds)
    assert len(points) == per_architecture * (len(quick.mlp_widths) + len(quick.cnn_widths))
    assert "mlp_widths" not in configs.settings(quick) and configs.settings(quick)["ngd_steps"] == quick.ngd_steps
    with pytest.raises(ValueError, match="architectures must be 'mlp' or 'cnn'"):
        e2_optimization.points(configs.override(quick, {"architectures": "rnn"}))
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        e2_optimization.load_data(configs.override(quick, {"dataset": "nope"}))
    with pytest.raises(ValueError, match="classification dataset"):
        e2_optimization.load_data(configs.override(quick, {"dataset": "diabetes"}))


def test_a_run_matches_an_independent_computation_of_its_numbers():
    config = configs.override(e2_config.Config(), TINY)
    data = e2_optimization.load_data(config)
    x, y = data
    assert x.shape == (6, 64) and y.shape == (6, 10)
    result = e2_optimization.compute(
        config, data, dict(architecture="mlp", parametrization="ntk", depth=1, width=16, seed=0))

    keras.utils.set_random_seed(0)
    model = keras_ntk.models.mlp(16, 1, 10, input_shape=(64,))
    f_0, jac_0 = loop_jacobian(model, x)
    eigenvalues = np.linalg.eigvalsh(jac_0 @ jac_0.T)
    assert result["lambda_min"] == pytest.approx(eigenvalues[0], rel=1e-4)
    assert result["condition_number"] == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-4)
    assert result["radius"] == pytest.approx(3 * np.linalg.norm(y - f_0) / math.sqrt(eigenvalues[0]), rel=1e-4)
    trajectory = result["trajectory"]
    inside = [d for d, ok in zip(trajectory["jacobian_distance"], trajectory["inside_ball"]) if ok]
    assert result["stability_constant"] == pytest.approx(
        3 * max(inside, default=0.0) / math.sqrt(eigenvalues[0]), rel=1e-4)
    assert result["jacobian_stable"] == (result["stability_constant"] <= 0.5)

    # NGD's first step by dense numpy Gauss-Newton, then ||J_1 - J_0||_2 from loop Jacobians
    curves = result["curves"]
    ngd = curves["ngd"]
    loss_0 = 0.5 * np.sum((f_0 - y) ** 2) / len(x)
    assert ngd["loss"][0] == pytest.approx(loss_0, rel=1e-5)
    damping = config.ngd_damping * np.trace(jac_0 @ jac_0.T) / jac_0.shape[0]
    step = -ngd["learning_rate"] * jac_0.T @ np.linalg.solve(
        jac_0 @ jac_0.T + damping * np.eye(jac_0.shape[0]), (f_0 - y).ravel())
    assert ngd["accepted"][0] == 1.0
    offset = 0
    for variable in model.trainable_variables:
        size = int(np.prod(variable.shape))
        variable.assign(variable.numpy() + step[offset : offset + size].reshape(variable.shape).astype(np.float32))
        offset += size
    f_1, jac_1 = loop_jacobian(model, x)
    assert ngd["loss"][1] == pytest.approx(0.5 * np.sum((f_1 - y) ** 2) / len(x), rel=1e-3, abs=1e-7)
    assert trajectory["jacobian_distance"][0] == pytest.approx(np.linalg.norm(jac_1 - jac_0, 2), rel=1e-3)
    assert trajectory["parameter_distance"][0] == pytest.approx(np.linalg.norm(step), rel=1e-4)

    # gradient descent at the chosen learning rate, by a plain loop of tape.gradient
    gd = curves["gd"]
    assert gd["grid"] == pytest.approx([f * 2 * len(x) / eigenvalues[-1] for f in config.gd_step_fractions],
                                       rel=1e-4)
    finals = gd["grid_final_losses"]
    assert gd["learning_rate"] == gd["grid"][int(np.argmin(finals))] and gd["loss"][-1] == min(finals)
    keras.utils.set_random_seed(0)
    model = keras_ntk.models.mlp(16, 1, 10, input_shape=(64,))
    losses = []
    for _ in range(config.gd_steps + 1):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean(tf.reduce_sum((model(x) - y) ** 2, axis=1))
        losses.append(float(loss))
        for variable, gradient in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
            variable.assign_sub(gd["learning_rate"] * gradient)
    np.testing.assert_allclose(gd["loss"], losses, rtol=1e-4)
    assert len(gd["seconds"]) == len(gd["loss"]) and np.all(np.diff(gd["seconds"]) >= 0)
    threshold = config.loss_threshold * loss_0
    for curve in curves.values():
        reached = [t for t, value in enumerate(curve["loss"]) if value <= threshold]
        assert curve["steps_to_threshold"] == (reached[0] if reached else None)


@pytest.mark.slow  # 20 s through the command; test_a_run_matches_an_independent_computation_of_its_numbers stays in make test
def test_command_runs_e2_resumes_and_reports_a_finding_computed_from_the_records(tmp_path):
    overrides = {**TINY, "mlp_widths": "8,16", "ngd_steps": "2", "gd_steps": "4", "adam_steps": "4"}
    arguments = ["run", "E2", "--out", str(tmp_path)] + [
        part for name, value in overrides.items() for part in (f"--{name.replace('_', '-')}", value)
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(KERAS_NTK + arguments, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[E2] [####################] 2/2" in done.stdout and "retracing" not in done.stderr
    summary = json.loads((tmp_path / "E2" / "summary.json").read_text())
    assert summary["finding"].startswith("Zhang et al.'s stability condition")
    assert "(E2/report.md)" in (tmp_path / "index.md").read_text()
    for stem in ("lambda_min", "stability_constant", "training_mlp_ntk_depth1"):
        assert (tmp_path / "E2" / "figures" / f"{stem}.png").stat().st_size > 0

    config = configs.override(configs.preset("E2", "quick"), overrides)
    log = io.StringIO()
    runner.run_experiment("E2", config, tmp_path, out=log)
    assert "resuming: 2 of 2 runs already finished, 0 to go" in log.getvalue()

    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "E2" / "runs").glob("*.json"))]
    results = [r["result"] for r in records]
    results[0]["stability_constant"], results[0]["jacobian_stable"] = 0.25, True  # the finding must follow
    data = e2_optimization.load_data(config)
    path, finding = e2_optimization.report(config, data, records, tmp_path / "edited", reporting.environment())
    assert "holds in 1 of 2 runs" in finding
    widths = [r["params"]["width"] for r in records if r["result"]["jacobian_stable"]]
    assert ("in every run mlp from width 16 up" if widths == [16] else "in every run mlp at no swept width") in finding
    reached = sum(r["curves"]["ngd"]["steps_to_threshold"] is not None for r in results)
    assert f"NGD (Gauss-Newton) in {reached} " in finding
    text = path.read_text()
    assert finding in text and "eta in [0.5, 1.0]" in text
    assert configs.preset("E2", "paper").dataset == "cifar10"


def test_the_paper_preset_reads_cifar10_from_local_files_and_names_the_missing_ones(tmp_path, monkeypatch):
    """Without the files and without a network, the paper preset's data fails with the
    file names and where to put them, not a bare traceback; with the batches in the
    Keras cache (written here as the pickles CIFAR-10's python version ships) it reads them."""
    import os
    import pickle

    from keras_ntk.data import sources

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(sources, "network_available", lambda *args, **kwargs: False)
    paper = configs.preset("E2", "paper")
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found.*cifar-10-python.tar.gz.*data_batch_1.*test_batch"):
        e2_optimization.load_data(paper)

    directory = tmp_path / "datasets" / "cifar-10-batches-py"
    os.makedirs(directory)
    rng = np.random.default_rng(0)
    labels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(40, 3072), dtype=np.uint8)
        labels[name] = list(rng.integers(0, 10, size=40))
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": labels[name]}, f)
    x, y = e2_optimization.load_data(paper)
    assert x.shape == (paper.examples, 32, 32, 3) and y.shape == (paper.examples, 10)
    np.testing.assert_allclose(y.sum(axis=1), 0.0, atol=1e-6)  # centered one-hot targets


def test_the_width_from_which_the_stability_condition_holds_in_every_run():
    """By hand: mlp widths 32 (one run unstable), 256 (stable), 1024 (stable) -> from 256;
    cnn 8 (stable), 32 (one of two unstable) -> a stable narrow width does not count once
    a wider one fails, so none; a width that is stable in every run at the top -> itself."""
    def record(architecture, width, stable):
        return {"params": {"architecture": architecture, "width": width}, "result": {"jacobian_stable": stable}}

    records = [record("mlp", 32, True), record("mlp", 32, False), record("mlp", 1024, True),
               record("mlp", 256, True), record("cnn", 8, True), record("cnn", 32, True),
               record("cnn", 32, False)]
    assert e2_optimization._stable_from(records) == {"mlp": 256, "cnn": None}
    assert e2_optimization._stable_from(records[:4] + [record("cnn", 64, True)]) == {"mlp": 256, "cnn": 64}
