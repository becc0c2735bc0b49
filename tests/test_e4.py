"""Experiment E4 (continual learning): sweep, streams, runs, report and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_ntk import data as datasets
from keras_ntk.experiments import configs, e4_continual
from keras_ntk.experiments.configs import e4 as e4_config

KERAS_NTK = [sys.executable, "-c", "import sys; from keras_ntk.cli import main; sys.exit(main())"]
TINY = {
    "mlp_dataset": "digits", "wrn_dataset": "digits", "tasks": "3", "train_examples": "40",
    "test_examples": "20", "probe_examples": "6", "mlp_widths": "8,16", "wrn_widths": "1",
    "seeds": "0", "max_epochs": "4",
}


def _config(**changes):
    return configs.override(e4_config.Config(), {**TINY, **changes})


def test_sweep_points_and_bad_settings():
    config = _config()
    points = e4_continual.points(config)
    # mlp: 2 streams x 2 regimes x 2 widths; wrn: 1 stream x 2 regimes x 1 width
    assert len(points) == 8 + 2
    assert {p["stream"] for p in points if p["architecture"] == "wrn"} == {"split"}
    assert len({tuple(p.items()) for p in points}) == len(points)
    for field, value, message in [("architectures", "mlp,cnn", "architectures"),
                                  ("mlp_streams", "shuffled", "mlp_streams"),
                                  ("regimes", "budget,forever", "regimes"),
                                  ("heads", "many", "heads"), ("tasks", "1", "at least 2")]:
        with pytest.raises(ValueError, match=message):
            e4_continual.points(_config(**{field: value}))


def test_streams_code_their_heads_and_share_one_probe_per_stream():
    config = _config(architectures="mlp,wrn")
    streams = e4_continual.load_data(config)
    assert set(streams) == {("mlp", "permuted"), ("mlp", "rotated"), ("wrn", "split")}
    import sklearn.datasets

    digits = sklearn.datasets.load_digits().images.astype(np.float32)[..., None] / 16.0
    order = np.random.default_rng(config.data_seed).permutation(len(digits))
    x_train = digits[order][int(round(0.3 * len(digits))):]  # 70/30 split of a seeded permutation
    for (architecture, kind), stream in streams.items():
        assert stream.dataset == "digits" and len(stream.train) == len(stream.test) == 3
        multi = kind == "split"  # heads="auto"
        assert stream.heads == (3 if multi else 1)
        assert stream.classes_per_head == (2 if multi else 10)
        for t, (x, y) in enumerate(stream.train + stream.test):
            assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
            heads = y // stream.classes_per_head
            assert np.all(heads == (t % 3 if multi else 0))
        assert len(stream.train[0][0]) <= 40 and len(stream.test[0][0]) <= 20
        per_task = 2  # ceil(6 / 3) probe inputs from each task's test set
        np.testing.assert_array_equal(
            stream.probe, np.concatenate([x[:per_task] for x, _ in stream.test])
        )
    # inputs are scaled by the training set's scalar mean and std
    permuted = streams[("mlp", "permuted")]
    raw = datasets.subset(x_train, None, 40, seed=config.data_seed)[0]
    np.testing.assert_allclose(permuted.train[0][0], (raw - x_train.mean()) / x_train.std(), rtol=1e-5, atol=1e-5)


def _loop_forgetting(matrix):
    t = len(matrix)
    return [max(matrix[l][j] for l in range(j, t - 1)) - matrix[-1][j] for j in range(t - 1)]


@pytest.mark.parametrize("regime", ["budget", "converge"])
def test_a_run_is_reproducible_and_its_metrics_follow_its_matrix(regime):
    config = _config(architectures="mlp", mlp_streams="permuted")
    data = e4_continual.load_data(config)
    params = dict(architecture="mlp", stream="permuted", parametrization="standard", regime=regime, width=16, seed=0)
    first = e4_continual.compute(config, data, params)
    again = e4_continual.compute(config, data, params)  # the kept compiled model, weights drawn anew
    assert again == first
    other = e4_continual.compute(config, data, {**params, "seed": 1})
    assert other["accuracy_matrix"] != first["accuracy_matrix"]

    matrix = first["accuracy_matrix"]
    assert np.array(matrix).shape == (3, 3)
    assert first["forgetting"] == pytest.approx(_loop_forgetting(matrix))
    assert first["average_forgetting"] == pytest.approx(np.mean(_loop_forgetting(matrix)))
    assert first["average_accuracy"] == pytest.approx(np.mean(matrix[-1]))
    assert first["learning_accuracy"] == pytest.approx(np.mean(np.diag(matrix)))
    assert len(first["ntk_changes"]) == 3 and first["ntk_change"] == pytest.approx(np.mean(first["ntk_changes"]))
    assert all(c > 0 for c in first["ntk_changes"]) and first["ntk_change_total"] > 0
    if regime == "budget":
        assert first["epochs"] == [config.budget_epochs] * 3
    else:
        for epochs, accuracy, reached in zip(first["epochs"], first["train_accuracy"], first["target_reached"]):
            assert 1 <= epochs <= config.max_epochs
            assert reached == (accuracy >= config.target_accuracy)
            assert reached or epochs == config.max_epochs  # stopped only at the target or the cap
    json.dumps(first)


def _record(architecture, stream, regime, width, seed, forgetting):
    matrix = [[0.9, 0.1, 0.1], [0.8, 0.9, 0.1], [0.9 - forgetting, 0.9 - forgetting, 0.9]]
    return {
        "params": dict(architecture=architecture, stream=stream, parametrization="standard", regime=regime,
                       width=width, seed=seed),
        "result": {
            "accuracy_matrix": matrix, "average_forgetting": forgetting, "average_accuracy": 0.5,
            "learning_accuracy": 0.9 if regime == "converge" else 0.6, "ntk_change": 0.1 / width,
            "ntk_change_total": 0.2 / width, "epochs": [1, 1, 1], "target_reached": [False] * 3, "parameters": 10,
        },
        "seconds": 1.0,
    }


@pytest.mark.parametrize("converge_effect, verdict", [(0.0, "Width reduces forgetting more"),
                                                      (0.3, "Width does not reduce forgetting more")])
def test_report_finding_is_computed_from_the_runs(tmp_path, converge_effect, verdict):
    config = _config(architectures="mlp", mlp_streams="permuted", seeds="0,1")
    data = e4_continual.load_data(config)
    records = []
    for seed in (0, 1):
        records += [_record("mlp", "permuted", "budget", 8, seed, 0.3), _record("mlp", "permuted", "budget", 16, seed, 0.1),
                    _record("mlp", "permuted", "converge", 8, seed, 0.4),
                    _record("mlp", "permuted", "converge", 16, seed, 0.4 - converge_effect)]
    env = {"python": "3", "platform": "test", "cpu_count": 2, "devices": ["CPU:0"], "packages": {}, "date": "now"}
    path, finding = e4_continual.report(config, data, records, tmp_path, env)
    assert "budget +20.0 points" in finding
    assert f"converge {100 * converge_effect:+.1f} points" in finding
    assert "60.0%" in finding and "90.0%" in finding  # learning accuracy of each regime
    assert verdict in finding
    text = path.read_text()
    assert finding in text
    for stem in ("forgetting_vs_width", "ntk_change_vs_width", "accuracy_matrices_mlp_permuted_standard"):
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 0
        assert f"figures/{stem}.png" in text


def _tiny_cli_arguments(out):
    return ["run", "E4", "--out", str(out), "--architectures", "mlp", "--mlp-streams", "permuted",
            "--mlp-widths", "8", "--regimes", "budget", "--seeds", "0,1,2,3,4,5", "--tasks", "2",
            "--mlp-dataset", "digits", "--train-examples", "40", "--test-examples", "20",
            "--probe-examples", "4"]


@pytest.mark.slow  # 21 s; the harness's kill-and-resume is also checked on E5 in `make test`
def test_killed_e4_sweep_resumes_without_losing_finished_runs(tmp_path):
    runs = tmp_path / "E4" / "runs"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(KERAS_NTK + _tiny_cli_arguments(tmp_path), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert 1 <= len(finished) < 6, "the sweep must be killed part-way"

    result = subprocess.run(KERAS_NTK + _tiny_cli_arguments(tmp_path), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming: {len(finished)} of 6 runs already finished" in result.stdout
    after = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert len(after) == 6
    assert all(after[name] == text for name, text in finished.items())
    assert (tmp_path / "E4" / "report.md").exists() and "(E4/report.md)" in (tmp_path / "index.md").read_text()


def test_the_paper_preset_reads_local_files_and_names_the_missing_ones(tmp_path, monkeypatch):
    """No MNIST or CIFAR-100 files and no network: the paper preset's streams fail naming
    the files to fetch and where to put them (not a silent fall-back to bundled data)."""
    from keras_ntk.data import sources

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(sources, "network_available", lambda *args, **kwargs: False)
    paper = configs.preset("E4", "paper")
    assert (paper.mlp_dataset, paper.wrn_dataset) == ("mnist", "cifar100")
    with pytest.raises(FileNotFoundError, match=r"MNIST not found.*mnist\.npz"):
        e4_continual.load_data(paper)
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 not found.*cifar-100-python.*train.*test"):
        e4_continual.load_data(configs.override(paper, {"architectures": "wrn"}))
