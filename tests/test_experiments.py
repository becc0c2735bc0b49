"""The experiment harness: configs, resumable sweeps, E5 runs and the whole quick reproduction."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_ntk
from keras_ntk.experiments import configs, e5_kernel_regime, harness
from keras_ntk import diagnostics

KERAS_NTK = [sys.executable, "-c", "import sys; from keras_ntk.cli import main; sys.exit(main())"]


def test_override_parses_every_field_type_and_names_unknown_fields():
    config = configs.override(
        configs.preset("E5", "quick"),
        {"mlp_widths": "8,16", "step_fraction": "0.25", "dataset": "wine", "steps": "7"},
    )
    assert config.mlp_widths == (8, 16) and config.step_fraction == 0.25
    assert config.dataset == "wine" and config.steps == 7
    with pytest.raises(ValueError, match="no field 'width'.*mlp_widths"):
        configs.override(config, {"width": "3"})
    with pytest.raises(ValueError, match="--mlp-widths.*comma-separated ints"):
        configs.override(config, {"mlp_widths": "8,x"})


def test_sweep_computes_only_missing_runs_and_recomputes_changed_settings(tmp_path):
    store = harness.RunStore(tmp_path)
    points = [{"width": w} for w in (1, 2, 3)]
    calls = []

    def compute(params):
        calls.append(params["width"])
        return {"square": params["width"] ** 2}

    log = open(os.devnull, "w")
    first = harness.run_sweep("T", points[:2], {"a": 1}, compute, store, out=log)
    assert calls == [1, 2]
    second = harness.run_sweep("T", points, {"a": 1}, compute, store, out=log)
    assert calls == [1, 2, 3]
    assert second[:2] == first and [r["result"]["square"] for r in second] == [1, 4, 9]

    store.path(harness.run_key(points[0])).write_text("{not json")
    harness.run_sweep("T", points, {"a": 1}, compute, store, out=log)
    assert calls == [1, 2, 3, 1]
    harness.run_sweep("T", points, {"a": 2}, compute, store, out=log)
    assert calls == [1, 2, 3, 1, 1, 2, 3]
    harness.run_sweep("T", points, {"a": 2}, compute, store, resume=False, out=log)
    assert calls[-3:] == [1, 2, 3]
    assert not list(tmp_path.glob(".*tmp"))


def test_atomic_write_leaves_the_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "run.json"
    harness.write_json_atomically(path, {"ok": 1})
    with pytest.raises(TypeError):
        harness.write_json_atomically(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def _tiny_e5_arguments(out):
    return [
        "run", "E5", "--out", str(out), "--architectures", "mlp", "--parametrizations", "ntk",
        "--mlp-widths", "16,32,64", "--depths", "1", "--seeds", "0,1", "--examples", "12",
        "--test-examples", "8", "--steps", "20",
    ]


@pytest.mark.slow  # 30 s: a subprocess sweep killed and resumed; the in-process reuse check (test_sweep_computes_only_missing_runs...) stays in make test
def test_killed_sweep_resumes_without_recomputing_or_losing_runs(tmp_path):
    runs = tmp_path / "E5" / "runs"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(KERAS_NTK + _tiny_e5_arguments(tmp_path), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert 1 <= len(finished) < 6, "the sweep must be killed part-way"

    result = subprocess.run(KERAS_NTK + _tiny_e5_arguments(tmp_path), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming: {len(finished)} of 6 runs already finished" in result.stdout
    after = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert len(after) == 6
    assert all(after[name] == text for name, text in finished.items())
    assert not list(runs.glob(".*"))
    assert (tmp_path / "E5" / "report.md").exists() and (tmp_path / "index.md").exists()


def test_e5_run_matches_an_independent_computation_of_its_metrics(tmp_path):
    config = configs.override(
        configs.preset("E5", "quick"),
        {"architectures": "cnn", "parametrizations": "standard", "cnn_widths": "8", "depths": "2",
         "seeds": "0", "examples": "10", "test_examples": "6", "steps": "5"},
    )
    data = e5_kernel_regime.load_data(config)
    params = dict(architecture="cnn", parametrization="standard", depth=2, width=8, seed=0)
    result = e5_kernel_regime.compute(config, data, params)

    import keras

    x_train, y_train, _ = data
    x = x_train.reshape(-1, 8, 8, 1)
    keras.utils.set_random_seed(0)
    model = keras_ntk.models.cnn(8, 2, 10, parametrization="standard", pooling="flatten",
                                 input_shape=(8, 8, 1))
    from references import brute_force_ntk

    full = brute_force_ntk(model, x).astype(np.float64)
    analytic = keras_ntk.infinite_width_cnn_kernel(
        x, depth=2, pooling="flatten", parametrization="standard", width=8
    ).numpy()
    trace = np.einsum("nmkk->nm", full) / 10
    assert result["init_distance"] == pytest.approx(diagnostics.relative_distance(trace, analytic), rel=1e-4)
    lambda_max = np.linalg.eigvalsh(full.transpose(0, 2, 1, 3).reshape(100, 100))[-1]
    assert result["learning_rate"] == pytest.approx(config.step_fraction * 2 * 10 / lambda_max, rel=1e-4)
    assert 0 < result["kernel_change"] < 1 and 0 < result["linearization_error"] < 1
    initial_loss = 0.5 * np.sum((model(x).numpy() - y_train) ** 2) / 10
    assert result["train_loss"] < initial_loss


def _image_size(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
def test_quick_reproduction_writes_reports_with_the_kernel_regime_findings(tmp_path):
    """The whole quick preset (`make demo`): every experiment's report, figures and
    finding; E5's slopes near -1/2, growing with depth; E1's runs converged."""
    result = subprocess.run(KERAS_NTK + ["reproduce", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=2400, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "retracing" not in result.stderr
    index = (tmp_path / "index.md").read_text()
    figures = {
        "E1": ["functions_depth2", "distance_vs_width"],
        "E2": ["lambda_min", "stability_constant", "training_mlp_ntk_depth1", "training_cnn_ntk_depth1"],
        "E3": ["regret_wine", "hyperparameters_wine"],
        "E4": ["forgetting_vs_width", "ntk_change_vs_width", "accuracy_matrices_mlp_permuted_standard"],
        "E5": ["init_distance", "kernel_change", "linearization_error"],
    }
    for name, stems in figures.items():
        assert f"({name}/report.md)" in index
        finding = json.loads((tmp_path / name / "summary.json").read_text())["finding"]
        assert finding in (tmp_path / name / "report.md").read_text() and finding in index
        runs = list((tmp_path / name / "runs").glob("*.json"))
        assert len(runs) == len(harness_points(name)), name
        for stem in stems:
            assert (tmp_path / name / "figures" / f"{stem}.pdf").stat().st_size > 0
            width, height = _image_size(tmp_path / name / "figures" / f"{stem}.png")
            assert width > 400 and height > 300

    records = [json.loads(p.read_text()) for p in (tmp_path / "E5" / "runs").glob("*.json")]
    config = configs.preset("E5", "quick")
    for architecture, widths in (("mlp", config.mlp_widths), ("cnn", config.cnn_widths)):
        for depth in config.depths:
            means = [np.mean([r["result"]["init_distance"] for r in records
                              if r["params"]["architecture"] == architecture and r["params"]["depth"] == depth
                              and r["params"]["parametrization"] == "ntk" and r["params"]["width"] == w])
                     for w in widths]
            assert -0.85 < diagnostics.log_log_slope(widths, means) < -0.25, (architecture, depth, means)
        at_widest = [np.mean([r["result"]["init_distance"] for r in records
                              if r["params"]["architecture"] == architecture and r["params"]["depth"] == d
                              and r["params"]["parametrization"] == "ntk" and r["params"]["width"] == widths[-1]])
                     for d in config.depths]
        assert at_widest == sorted(at_widest), (architecture, at_widest)
    assert "slope" in (tmp_path / "E5" / "report.md").read_text()
    e1 = [json.loads(p.read_text())["result"] for p in (tmp_path / "E1" / "runs").glob("*.json")]
    assert all(r["training"]["net"]["converged"] and r["training"]["linearized"]["converged"] for r in e1)
    assert all(r["train_rmse"] < 3 * configs.preset("E1", "quick").noise_std for r in e1)


def harness_points(name):
    """The quick preset's sweep points of experiment `name`."""
    import importlib

    from keras_ntk.experiments import EXPERIMENTS

    module = importlib.import_module(f"keras_ntk.experiments.{EXPERIMENTS[name]}")
    return module.points(configs.preset(name, "quick"))
